//! Medians, min and max of a set of samples.

/// What a table shows of one set of samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// The median (upper middle for an even count), min and max; NaNs for no samples.
pub fn summary(samples: &[f64]) -> Summary {
    if samples.is_empty() {
        return Summary {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        };
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    Summary {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        let s = summary(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(summary(&[4.0, 1.0, 3.0, 2.0]).median, 3.0);
        assert!(summary(&[]).median.is_nan());
    }
}
