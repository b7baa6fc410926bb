//! Where an import's time went, from containerd's own debug log: containerd 2.x's unpacker
//! logs `layer unpacked duration=...` per layer (Prepare, Apply, Commit), on either stack
//! alike, so the import splits into its unpack and the rest (reading the archive from ctr and
//! writing the blobs into the content store). containerd 1.7's `ctr images import` unpacks in
//! ctr itself, which logs nothing: no split there.

/// The sum of the `layer unpacked` durations in `log`, in seconds; `None` without any.
pub fn unpack_secs(log: &str) -> Option<f64> {
    let mut total = None;
    for line in log.lines().filter(|l| l.contains("msg=\"layer unpacked\"")) {
        let Some(d) = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("duration="))
            .and_then(go_duration)
        else {
            continue;
        };
        *total.get_or_insert(0.0) += d;
    }
    total
}

/// A Go `time.Duration` string (`1m2.5s`, `850.2ms`, `12µs`) in seconds.
pub fn go_duration(s: &str) -> Option<f64> {
    let mut rest = s.trim_matches('"');
    let mut secs = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let (scale, len) = [
            ("ns", 1e-9),
            ("us", 1e-6),
            ("µs", 1e-6),
            ("ms", 1e-3),
            ("s", 1.0),
            ("m", 60.0),
            ("h", 3600.0),
        ]
        .iter()
        .find(|(unit, _)| rest.starts_with(unit))
        .map(|(unit, scale)| (*scale, unit.len()))?;
        secs += value * scale;
        rest = &rest[len..];
    }
    Some(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("3.5s"), Some(3.5));
        assert_eq!(go_duration("1m2.5s"), Some(62.5));
        assert_eq!(go_duration("850ms"), Some(0.85));
        assert_eq!(go_duration("12µs"), Some(12e-6));
        assert_eq!(go_duration("1h"), Some(3600.0));
        assert_eq!(go_duration(""), None);
        assert_eq!(go_duration("3x"), None);
    }

    #[test]
    fn sums_unpacked_layers() {
        let log = "time=\"t\" level=debug msg=\"layer unpacked\" duration=3.8s layer=\"sha256:a\"\n\
                   time=\"t\" level=debug msg=\"image unpacked\" duration=9s\n\
                   time=\"t\" level=debug msg=\"layer unpacked\" duration=200ms layer=\"sha256:b\"\n";
        let got = unpack_secs(log).expect("two layers");
        assert!((got - 4.0).abs() < 1e-9, "{got}");
        assert_eq!(unpack_secs("nothing"), None);
    }
}
