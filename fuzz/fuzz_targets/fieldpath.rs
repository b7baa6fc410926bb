//! Update masks: arbitrary paths and label maps through `apply_label_update` and
//! `validate_labels`, as the snapshots and content Update RPCs run them.
//!
//! The input is text, one item a line (see [`strata_fuzz::fieldpath`]): the target, the
//! stored labels, the request's labels and the mask's paths.
//!
//! Checks besides "no panic": on error the stored labels are unchanged; on success the result
//! validates, holds no empty value, and is what containerd's rules say (no paths or `labels`:
//! the request's labels; `labels.<key>`: that key set or deleted), and errors display.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use strata_common::fieldpath::{
    FieldPathError, MAX_LABEL_SIZE, UpdateTarget, apply_label_update, validate_labels,
};
use strata_fuzz::fieldpath::Input;

fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let input = Input::parse(&text);
    let target = if input.snapshot {
        UpdateTarget::Snapshot(&input.name)
    } else {
        UpdateTarget::Content(&input.name)
    };
    let (current, new) = (&input.current, &input.new);
    for labels in [current, new] {
        if let Err(e) = validate_labels(labels) {
            let _ = e.to_string();
        }
    }

    let mut updated = current.clone();
    match apply_label_update(target, &mut updated, new, &input.paths) {
        Err(e) => {
            assert_eq!(&updated, current, "a failed update changed the labels");
            let text = e.to_string();
            match &e {
                FieldPathError::Label(l) => {
                    assert!(l.total > MAX_LABEL_SIZE, "{text}");
                    assert!(l.key.len() <= 64, "error key not cut: {text}");
                }
                FieldPathError::Immutable { path, .. } => {
                    assert!(
                        path != "labels" && !path.starts_with("labels."),
                        "{path:?} refused"
                    );
                }
            }
        }
        Ok(()) => {
            assert!(validate_labels(&updated).is_ok(), "stored labels invalid");
            assert!(
                updated.values().all(|v| !v.is_empty()),
                "empty label value stored"
            );
            // What containerd's rules give, computed independently.
            let mut want: BTreeMap<String, String> = if input.paths.is_empty() {
                new.clone()
            } else {
                current.clone()
            };
            for p in &input.paths {
                if p == "labels" {
                    want = new.clone();
                } else if let Some(k) = p.strip_prefix("labels.") {
                    want.insert(k.to_owned(), new.get(k).cloned().unwrap_or_default());
                } else {
                    panic!("path {p:?} accepted");
                }
            }
            want.retain(|_, v| !v.is_empty());
            assert_eq!(updated, want);
        }
    }
}

fuzz_target!(|data: &[u8]| run(data));
