//! Update masks (`update_mask.paths`) of the snapshots and content Update RPCs, applied the
//! way containerd's metadata store applies them (`core/metadata/snapshot.go` and
//! `content.go`; the snapshot storage's `UpdateInfo` and the local content store share the
//! path rules):
//!
//! - no paths: replace every mutable field, which for both snapshots and content means the
//!   labels;
//! - `labels`: replace the whole label map;
//! - `labels.<key>`: set that one label from the request, or delete it when the request does
//!   not carry it or carries it empty (`<key>` is the rest of the path, dots included);
//! - anything else (`name`, `parent`, `kind`, `digest`, `size`, ...) is rejected.
//!
//! Labels with empty values are never stored (containerd's `boltutil.WriteLabels` drops
//! them), and the resulting label set must pass [`validate_labels`].
//! Every error here is InvalidArgument in containerd.

use std::collections::BTreeMap;

use crate::filter::is_graphic;

/// containerd's limit on a label's key and value together, in bytes (`pkg/labels`).
pub const MAX_LABEL_SIZE: usize = 4096;

// containerd cuts the key in its error message to this many bytes.
const KEY_MAX_LEN: usize = 64;

const LABELS: &str = "labels";

/// What an update applies to; names the object in errors the way containerd does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateTarget<'a> {
    /// A snapshot, by its key/name.
    Snapshot(&'a str),
    /// A content blob, by its digest.
    Content(&'a str),
}

/// An update mask or label set that containerd would reject with InvalidArgument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldPathError {
    /// A path naming a field that cannot be updated.
    #[error("cannot update {} field on {object} {}", go_quote(.path), go_quote(.name))]
    Immutable {
        /// The offending path as given.
        path: String,
        /// `snapshot` or `content info`.
        object: &'static str,
        /// The snapshot name or content digest.
        name: String,
    },
    /// A label over [`MAX_LABEL_SIZE`], in containerd's `info.Labels: ...` wording.
    #[error("info.Labels: {0}")]
    Label(#[from] LabelError),
}

/// One label whose key and value together exceed [`MAX_LABEL_SIZE`] (containerd's
/// `labels.Validate`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "label key and value length ({total} bytes) greater than maximum size ({MAX_LABEL_SIZE} bytes), key: {key}"
)]
pub struct LabelError {
    /// The key, cut to its first 64 bytes as containerd's message does.
    pub key: String,
    /// Key plus value length in bytes.
    pub total: usize,
}

/// Applies `paths` from an Update request whose labels are `new` to the stored `current`
/// labels. On error `current` is left unchanged, so the caller can return before persisting.
pub fn apply_label_update<S: AsRef<str>>(
    target: UpdateTarget<'_>,
    current: &mut BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    paths: &[S],
) -> Result<(), FieldPathError> {
    let mut updated = if paths.is_empty() {
        new.clone()
    } else {
        let mut updated = current.clone();
        for path in paths {
            let path = path.as_ref();
            if let Some(key) = path.strip_prefix("labels.") {
                updated.insert(key.to_owned(), new.get(key).cloned().unwrap_or_default());
            } else if path == LABELS {
                updated = new.clone();
            } else {
                let (object, name) = match target {
                    UpdateTarget::Snapshot(name) => ("snapshot", name),
                    UpdateTarget::Content(digest) => ("content info", digest),
                };
                return Err(FieldPathError::Immutable {
                    path: path.to_owned(),
                    object,
                    name: name.to_owned(),
                });
            }
        }
        updated
    };
    // containerd validates before writing, so an oversized key with an empty value still fails.
    validate_labels(&updated)?;
    updated.retain(|_, value| !value.is_empty());
    *current = updated;
    Ok(())
}

/// Checks every label as containerd's metadata store does before storing a snapshot's or a
/// blob's labels (on create, commit and update).
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), FieldPathError> {
    for (key, value) in labels {
        validate_label(key, value)?;
    }
    Ok(())
}

/// containerd's `labels.Validate`: key and value together at most [`MAX_LABEL_SIZE`] bytes.
pub fn validate_label(key: &str, value: &str) -> Result<(), LabelError> {
    let total = key.len() + value.len();
    if total <= MAX_LABEL_SIZE {
        return Ok(());
    }
    // Go cuts at byte 64 even inside a rune; stay on a char boundary instead.
    let mut end = key.len().min(KEY_MAX_LEN);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    Err(LabelError {
        key: key.get(..end).unwrap_or_default().to_owned(),
        total,
    })
}

/// Go's `%q` (`strconv.Quote`), so messages read exactly like containerd's.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            // Go prints graphic runes except spaces other than U+0020.
            c if c == ' ' || (is_graphic(c) && !c.is_whitespace()) => out.push(c),
            c if u32::from(c) < 0x80 => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c if u32::from(c) < 0x10000 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push_str(&format!("\\U{:08x}", u32::from(c))),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn apply(
        current: &[(&str, &str)],
        new: &[(&str, &str)],
        paths: &[&str],
    ) -> Result<BTreeMap<String, String>, FieldPathError> {
        let mut current = map(current);
        apply_label_update(
            UpdateTarget::Snapshot("snap"),
            &mut current,
            &map(new),
            paths,
        )?;
        Ok(current)
    }

    const CURRENT: &[(&str, &str)] = &[("a", "1"), ("b", "2")];

    #[test]
    fn empty_mask_replaces_labels() {
        let got = apply(CURRENT, &[("c", "3"), ("d", "")], &[]).unwrap();
        assert_eq!(got, map(&[("c", "3")]));
        assert_eq!(apply(CURRENT, &[], &[]).unwrap(), map(&[]));
    }

    #[test]
    fn labels_path_replaces_labels() {
        let got = apply(CURRENT, &[("b", "20"), ("c", "3")], &["labels"]).unwrap();
        assert_eq!(got, map(&[("b", "20"), ("c", "3")]));
        assert_eq!(apply(CURRENT, &[], &["labels"]).unwrap(), map(&[]));
    }

    #[test]
    fn label_key_path_sets_one_label() {
        let new = [("a", "10"), ("b", "20"), ("c", "30")];
        let got = apply(CURRENT, &new, &["labels.a"]).unwrap();
        assert_eq!(got, map(&[("a", "10"), ("b", "2")]));
        let got = apply(CURRENT, &new, &["labels.c"]).unwrap();
        assert_eq!(got, map(&[("a", "1"), ("b", "2"), ("c", "30")]));
        let got = apply(&[], &new, &["labels.c", "labels.a"]).unwrap();
        assert_eq!(got, map(&[("a", "10"), ("c", "30")]));
    }

    #[test]
    fn label_key_path_deletes_when_absent_or_empty() {
        let got = apply(CURRENT, &[], &["labels.a"]).unwrap();
        assert_eq!(got, map(&[("b", "2")]));
        let got = apply(CURRENT, &[("b", "")], &["labels.b"]).unwrap();
        assert_eq!(got, map(&[("a", "1")]));
        // Deleting a label that is not there is fine.
        let got = apply(CURRENT, &[], &["labels.zzz"]).unwrap();
        assert_eq!(got, map(CURRENT));
    }

    #[test]
    fn label_key_keeps_dots_and_is_case_sensitive() {
        let new = [("containerd.io/gc.ref.content", "sha256:x")];
        let got = apply(&[], &new, &["labels.containerd.io/gc.ref.content"]).unwrap();
        assert_eq!(got, map(&new));
        // "labels." addresses the empty key.
        assert_eq!(apply(CURRENT, &[("", "x")], &["labels."]).unwrap(), {
            let mut m = map(CURRENT);
            m.insert(String::new(), "x".to_owned());
            m
        });
        assert!(apply(CURRENT, &[], &["Labels"]).is_err());
        assert!(apply(CURRENT, &[], &["Labels.a"]).is_err());
    }

    #[test]
    fn paths_apply_in_order() {
        let new = [("a", "10"), ("c", "30")];
        // A later whole-map replacement wins over an earlier key...
        let got = apply(CURRENT, &new, &["labels.b", "labels"]).unwrap();
        assert_eq!(got, map(&new));
        // ...and a key after the replacement is applied on top of it.
        let got = apply(CURRENT, &[("a", "10")], &["labels", "labels.b"]).unwrap();
        assert_eq!(got, map(&[("a", "10")]));
    }

    #[test]
    fn other_paths_are_rejected_without_changes() {
        let mut current = map(CURRENT);
        let new = map(&[("a", "changed")]);
        for path in ["name", "parent", "kind", "created_at", "labels_x", ""] {
            let err = apply_label_update(
                UpdateTarget::Snapshot("my snap"),
                &mut current,
                &new,
                &["labels.a", path],
            )
            .unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("cannot update \"{path}\" field on snapshot \"my snap\"")
            );
            assert_eq!(current, map(CURRENT));
        }

        let err = apply_label_update(
            UpdateTarget::Content("sha256:abc"),
            &mut current,
            &new,
            &[String::from("size")],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"cannot update "size" field on content info "sha256:abc""#
        );
        let err = apply_label_update(
            UpdateTarget::Content("sha256:abc"),
            &mut current,
            &new,
            &["digest"],
        )
        .unwrap_err();
        assert_eq!(
            err,
            FieldPathError::Immutable {
                path: "digest".to_owned(),
                object: "content info",
                name: "sha256:abc".to_owned(),
            }
        );
    }

    #[test]
    fn error_quotes_like_go() {
        let err = apply(CURRENT, &[], &["na\"me\t\u{1}\u{a0}é"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"cannot update "na\"me\t\x01\u00a0é" field on snapshot "snap""#
        );
        assert_eq!(
            go_quote("a\\b\u{7f}\u{10FFFD}😀"),
            r#""a\\b\x7f\U0010fffd😀""#
        );
    }

    #[test]
    fn oversized_labels_are_rejected_without_changes() {
        let big = "v".repeat(MAX_LABEL_SIZE);
        let mut current = map(CURRENT);
        let new = map(&[("k", &big)]);
        for paths in [&[][..], &["labels"][..], &["labels.k"][..]] {
            let err = apply_label_update(UpdateTarget::Snapshot("s"), &mut current, &new, paths)
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                "info.Labels: label key and value length (4097 bytes) greater than maximum size (4096 bytes), key: k"
            );
            assert_eq!(current, map(CURRENT));
        }
        // The limit is inclusive.
        let fits = map(&[("k", &big[1..])]);
        apply_label_update(
            UpdateTarget::Content("d"),
            &mut current,
            &fits,
            &["labels.k"],
        )
        .unwrap();
        assert_eq!(current.get("k").map(String::len), Some(MAX_LABEL_SIZE - 1));
    }

    #[test]
    fn oversized_key_with_empty_value_is_rejected() {
        let key = "k".repeat(MAX_LABEL_SIZE + 1);
        let err = apply(&[], &[(&key, "")], &["labels"]).unwrap_err();
        assert!(matches!(err, FieldPathError::Label(LabelError { total, .. }) if total == 4097));
    }

    // containerd's pkg/labels validate_test.go.
    #[test]
    fn valid_labels() {
        assert_eq!(validate_label("some", "value"), Ok(()));
        assert_eq!(validate_label("s", &"s".repeat(MAX_LABEL_SIZE - 1)), Ok(()));
    }

    #[test]
    fn invalid_labels() {
        let err = validate_label(&"s".repeat(MAX_LABEL_SIZE), "s").unwrap_err();
        assert_eq!(err.total, MAX_LABEL_SIZE + 1);
        assert_eq!(err.key, "s".repeat(KEY_MAX_LEN));
        assert_eq!(
            validate_labels(&map(&[("a", "b"), (&"s".repeat(MAX_LABEL_SIZE), "s")])),
            Err(FieldPathError::Label(err))
        );
    }

    #[test]
    fn long_key() {
        let key = "s".repeat(KEY_MAX_LEN + 1);
        assert_eq!(
            validate_label(&key, &"v".repeat(MAX_LABEL_SIZE - key.len())),
            Ok(())
        );

        let key = "s".repeat(KEY_MAX_LEN + 12);
        let err = validate_label(&key, &"v".repeat(MAX_LABEL_SIZE - key.len() + 1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "label key and value length (4097 bytes) greater than maximum size (4096 bytes), key: {}",
                "s".repeat(KEY_MAX_LEN)
            )
        );

        let key = "s".repeat(KEY_MAX_LEN - 1);
        assert_eq!(
            validate_label(&key, &"v".repeat(MAX_LABEL_SIZE - key.len())),
            Ok(())
        );
        assert_eq!(
            validate_label(&key, &"v".repeat(MAX_LABEL_SIZE - key.len() - 1)),
            Ok(())
        );
    }

    #[test]
    fn long_key_is_cut_on_a_char_boundary() {
        // 63 ASCII bytes then a 3-byte rune straddling byte 64.
        let key = format!("{}牛", "s".repeat(KEY_MAX_LEN - 1));
        let err = validate_label(&key, &"v".repeat(MAX_LABEL_SIZE)).unwrap_err();
        assert_eq!(err.key, "s".repeat(KEY_MAX_LEN - 1));
    }
}
