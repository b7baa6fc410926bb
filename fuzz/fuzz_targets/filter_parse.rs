//! containerd's filter language: arbitrary text through `Filter::parse` and
//! `Filter::parse_all` (the lines of the input as a List request's filters), every parsed
//! filter matched against a few fixed field maps, every error displayed.
//!
//! Checks besides "no panic": `parse_all` of one string agrees with `parse`, an error's
//! position lies inside (or at the end of) its input, and `parse_all` fails exactly when one
//! of its strings does.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use strata_common::filter::{Adaptor, FieldMap, Filter, FilterError};

fn check_error(e: &FilterError, input: &str) {
    assert!(
        e.position() <= input.len(),
        "error position {} past the input's {} bytes",
        e.position(),
        input.len()
    );
    assert_eq!(e.input(), input);
    let _ = e.to_string();
    let _ = e.message();
}

fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let labels: BTreeMap<String, String> = [
        ("a", "b"),
        ("a.b", "c"),
        ("containerd.io/gc.root", "2024-01-01T00:00:00Z"),
        ("empty", ""),
        ("ünï", "cödé"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let none = BTreeMap::new();
    let maps = [
        FieldMap::new()
            .with_field("name", "x")
            .with_field("parent", "")
            .with_field("kind", "committed")
            .with_labels(&labels),
        FieldMap::new()
            .with_field("digest", "sha256:0123")
            .with_labels(&none),
        FieldMap::new().with_field("ref", "ingest-1"),
        FieldMap::new(),
    ];
    let matches = |f: &Filter| -> Vec<bool> {
        let mut v: Vec<bool> = maps.iter().map(|m| f.matches(m)).collect();
        // A closure adaptor: every path present, its value the path joined.
        let all = |p: &[String]| Some(p.join("."));
        v.push(f.matches(&all));
        let _ = all.field(&[]);
        v
    };

    let single = Filter::parse(&text);
    let all_one = Filter::parse_all(&[text.as_ref()]);
    match (&single, &all_one) {
        (Ok(a), Ok(b)) => assert_eq!(matches(a), matches(b), "parse and parse_all disagree"),
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "parse and parse_all fail differently");
            check_error(a, &text);
        }
        _ => panic!("parse: {single:?}, parse_all: {all_one:?}"),
    }

    let lines: Vec<&str> = text.split('\n').collect();
    let each: Vec<_> = lines.iter().map(|l| Filter::parse(l)).collect();
    match Filter::parse_all(&lines) {
        Ok(f) => {
            assert!(
                each.iter().all(Result::is_ok),
                "parse_all accepted a string parse refuses"
            );
            let got = matches(&f);
            // OR of the strings' filters.
            let mut want = vec![false; got.len()];
            for one in each.iter().flatten() {
                for (w, m) in want.iter_mut().zip(matches(one)) {
                    *w |= m;
                }
            }
            assert_eq!(got, want, "parse_all is not the OR of its strings");
        }
        Err(e) => {
            assert!(
                each.iter().any(Result::is_err),
                "parse_all refused strings parse accepts: {e}"
            );
            check_error(&e, e.input());
        }
    }
}

fuzz_target!(|data: &[u8]| run(data));
