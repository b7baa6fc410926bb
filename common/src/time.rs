//! Time conversions the plugins share: the nanosecond integers their metadata stores on disk
//! and the protobuf timestamps containerd receives.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the epoch (0 for times before it, which nothing here produces).
pub fn to_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub fn from_nanos(n: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(n).unwrap_or(0))
}

pub fn to_timestamp(t: SystemTime) -> strata_proto::prost_types::Timestamp {
    let n = to_nanos(t);
    strata_proto::prost_types::Timestamp {
        seconds: n.div_euclid(1_000_000_000),
        nanos: i32::try_from(n.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}

/// `t` as RFC 3339 in UTC to the second (`2026-11-23T01:02:03Z`), the form containerd parses
/// in labels such as `containerd.io/gc.expire`.
pub fn to_rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm), for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(to_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_914_123);
        assert_eq!(to_rfc3339(t), "2026-11-29T01:02:03Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(to_rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn nanos_round_trip() {
        let t = UNIX_EPOCH + Duration::new(1_800_000_000, 123);
        assert_eq!(from_nanos(to_nanos(t)), t);
        let ts = to_timestamp(t);
        assert_eq!((ts.seconds, ts.nanos), (1_800_000_000, 123));
        assert_eq!(to_nanos(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
