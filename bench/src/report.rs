//! Tables: each row a quantity measured on both stacks (median, min, max, ratio), plus
//! reference rows measured once per run (the machine's own limits, strata alone).

use std::fmt::Write;

use crate::stats::summary;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Wall time: less is better.
    Seconds,
    /// Throughput in 10^6 bytes per second: more is better.
    MegabytesPerSecond,
    /// Memory in MiB (reference rows only).
    Mebibytes,
}

impl Unit {
    fn format(self, v: f64) -> String {
        match self {
            Unit::Seconds if v < 0.01 => format!("{:.2} ms", v * 1e3),
            Unit::Seconds if v < 0.1 => format!("{:.1} ms", v * 1e3),
            Unit::Seconds if v < 1.0 => format!("{:.0} ms", v * 1e3),
            Unit::Seconds => format!("{v:.2} s"),
            Unit::MegabytesPerSecond => format!("{v:.0} MB/s"),
            Unit::Mebibytes => format!("{v:.0} MiB"),
        }
    }
}

/// One quantity, sampled on both stacks.
#[derive(Clone, Debug)]
pub struct Row {
    pub label: String,
    pub unit: Unit,
    pub builtin: Vec<f64>,
    pub strata: Vec<f64>,
    /// The ratio the project aims for (at least), if any.
    pub target: Option<f64>,
    /// The two compared columns when they are not containerd's built-ins and strata (two
    /// strata set-ups): `builtin` holds the first's samples. Such rows stay out of the plot,
    /// which compares strata with the built-ins.
    pub columns: Option<[&'static str; 2]>,
}

impl Row {
    pub fn new(label: impl Into<String>, unit: Unit, target: Option<f64>) -> Row {
        Row {
            label: label.into(),
            unit,
            builtin: Vec::new(),
            strata: Vec::new(),
            target,
            columns: None,
        }
    }

    /// The row compares `first` (its `builtin` samples) with `second` (its `strata` ones).
    pub fn between(mut self, first: &'static str, second: &'static str) -> Row {
        self.columns = Some([first, second]);
        self
    }

    pub fn push(&mut self, side: crate::side::Side, v: f64) {
        match side {
            crate::side::Side::Builtin => self.builtin.push(v),
            crate::side::Side::Strata => self.strata.push(v),
        }
    }

    /// How many times better strata's median is: built-in / strata for times, strata /
    /// built-in for throughputs. Above 1: strata is faster.
    pub fn ratio(&self) -> f64 {
        let (b, s) = (summary(&self.builtin).median, summary(&self.strata).median);
        match self.unit {
            Unit::Seconds => b / s,
            Unit::MegabytesPerSecond | Unit::Mebibytes => s / b,
        }
    }

    /// The ratio as a table shows it: two decimals, three where two would round a missed
    /// target up to look met.
    pub fn ratio_text(&self) -> String {
        let r = self.ratio();
        match self.target {
            Some(t) if r < t && format!("{r:.2}").parse::<f64>().is_ok_and(|s| s >= t) => {
                format!("{r:.3}x")
            }
            _ => format!("{r:.2}x"),
        }
    }

    /// `Some(true)` when the row has a target and its ratio meets it.
    pub fn met(&self) -> Option<bool> {
        self.target.map(|t| self.ratio() >= t)
    }
}

/// A quantity measured once per run, not a comparison: the machine's limits on the same data
/// (`tar -x`, decompressors, `sha256sum`), strata alone on its socket, servers' memory.
#[derive(Clone, Debug)]
pub struct Reference {
    pub label: String,
    pub unit: Unit,
    pub samples: Vec<f64>,
}

impl Reference {
    pub fn new(label: impl Into<String>, unit: Unit) -> Reference {
        Reference {
            label: label.into(),
            unit,
            samples: Vec::new(),
        }
    }
}

/// One workload's results.
#[derive(Clone, Debug, Default)]
pub struct Section {
    pub title: String,
    /// What was measured and how, for the reader of docs/benchmarks.md.
    pub about: String,
    pub rows: Vec<Row>,
    pub references: Vec<Reference>,
}

fn cell(unit: Unit, samples: &[f64]) -> String {
    if samples.is_empty() {
        return "-".into();
    }
    let s = summary(samples);
    if samples.len() == 1 {
        unit.format(s.median)
    } else {
        format!(
            "{} ({}-{})",
            unit.format(s.median),
            unit.format(s.min),
            unit.format(s.max)
        )
    }
}

impl Section {
    /// The section as Markdown: its title at `level`, the description, the comparison table
    /// and the reference table.
    pub fn markdown(&self, level: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{} {}\n", "#".repeat(level), self.title);
        if !self.about.is_empty() {
            let _ = writeln!(out, "{}\n", self.about);
        }
        // A table per run of rows comparing the same two columns, each headed by their names.
        let mut head = None;
        for r in &self.rows {
            let columns = r.columns.unwrap_or(["built-in", "strata"]);
            if head != Some(columns) {
                if head.is_some() {
                    out.push('\n');
                }
                let [a, b] = columns;
                let _ = writeln!(
                    out,
                    "| | {a} | {b} | ratio | target |\n|---|---|---|---|---|"
                );
                head = Some(columns);
            }
            {
                let target = match (r.target, r.met()) {
                    (Some(t), Some(true)) => format!(">= {t:.2}x met"),
                    (Some(t), _) => format!(">= {t:.2}x **missed**"),
                    (None, _) => String::new(),
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | **{}** | {target} |",
                    r.label,
                    cell(r.unit, &r.builtin),
                    cell(r.unit, &r.strata),
                    r.ratio_text()
                );
            }
        }
        if head.is_some() {
            out.push('\n');
        }
        if !self.references.is_empty() {
            out.push_str("| reference | median (min-max) |\n|---|---|\n");
            for r in &self.references {
                let _ = writeln!(out, "| {} | {} |", r.label, cell(r.unit, &r.samples));
            }
            out.push('\n');
        }
        out
    }
}

/// `rows` whose target is missed, as `label (ratio)`.
pub fn missed<'a>(sections: impl IntoIterator<Item = &'a Section>) -> Vec<String> {
    sections
        .into_iter()
        .flat_map(|s| &s.rows)
        .filter(|r| r.met() == Some(false))
        .map(|r| {
            format!(
                "{} ({}, target {:.2}x)",
                r.label,
                r.ratio_text(),
                r.target.unwrap_or(0.0)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::side::Side;

    #[test]
    fn ratios_favour_strata_above_one() {
        let mut t = Row::new("import", Unit::Seconds, Some(1.0));
        t.push(Side::Builtin, 2.0);
        t.push(Side::Strata, 1.0);
        assert_eq!(t.ratio(), 2.0);
        assert_eq!(t.met(), Some(true));
        let mut m = Row::new("ingest", Unit::MegabytesPerSecond, Some(1.0));
        m.push(Side::Builtin, 200.0);
        m.push(Side::Strata, 100.0);
        assert_eq!(m.ratio(), 0.5);
        assert_eq!(m.met(), Some(false));
        let s = Section {
            title: "t".into(),
            rows: vec![t, m],
            ..Section::default()
        };
        let md = s.markdown(3);
        assert!(
            md.contains("| import | 2.00 s | 1.00 s | **2.00x** | >= 1.00x met |"),
            "{md}"
        );
        assert!(md.contains("**missed**"), "{md}");
        assert_eq!(
            missed([&s]),
            vec!["ingest (0.50x, target 1.00x)".to_string()]
        );
    }

    #[test]
    fn a_missed_target_never_reads_as_met() {
        let mut r = Row::new("start", Unit::Seconds, Some(1.0));
        r.push(Side::Builtin, 0.1235);
        r.push(Side::Strata, 0.124);
        assert_eq!(r.met(), Some(false));
        assert_eq!(r.ratio_text(), "0.996x");
        assert!(r.label.contains("start"));
        assert_eq!(cell(Unit::Seconds, &[0.124]), "124 ms");
        assert_eq!(cell(Unit::Seconds, &[0.0124]), "12.4 ms");
        assert_eq!(cell(Unit::Seconds, &[0.00042]), "0.42 ms");
        assert_eq!(cell(Unit::Seconds, &[1.24]), "1.24 s");
    }

    #[test]
    fn named_columns_head_the_table() {
        let mut r = Row::new("read", Unit::MegabytesPerSecond, None).between("local", "s3");
        r.push(Side::Builtin, 100.0);
        r.push(Side::Strata, 100.0);
        let s = Section {
            title: "t".into(),
            rows: vec![r],
            ..Section::default()
        };
        assert!(
            s.markdown(3).contains("| | local | s3 | ratio |"),
            "{}",
            s.markdown(3)
        );
    }

    #[test]
    fn rows_of_other_columns_get_a_table_of_their_own() {
        let row = |label: &str| {
            let mut r = Row::new(label, Unit::Seconds, None);
            r.push(Side::Builtin, 1.0);
            r.push(Side::Strata, 1.0);
            r
        };
        let s = Section {
            title: "t".into(),
            rows: vec![
                row("a"),
                row("b"),
                row("c").between("metrics off", "metrics on"),
            ],
            ..Section::default()
        };
        let md = s.markdown(3);
        let heads: Vec<&str> = md.lines().filter(|l| l.starts_with("| |")).collect();
        assert_eq!(
            heads,
            [
                "| | built-in | strata | ratio | target |",
                "| | metrics off | metrics on | ratio | target |"
            ],
            "{md}"
        );
        let c = md.find("| c |").expect("row c");
        assert!(md.find("metrics off").expect("its head") < c, "{md}");
    }
}
