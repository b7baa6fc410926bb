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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanos_round_trip() {
        let t = UNIX_EPOCH + Duration::new(1_800_000_000, 123);
        assert_eq!(from_nanos(to_nanos(t)), t);
        let ts = to_timestamp(t);
        assert_eq!((ts.seconds, ts.nanos), (1_800_000_000, 123));
        assert_eq!(to_nanos(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
