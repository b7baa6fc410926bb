//! The two stacks compared: containerd's built-ins, and strata's three plugins.

use strata_tests::stack::DIFFER_APPLIED_LOG;
use strata_tests::{PluginKind, PluginSet, Stack, StackOptions, Version};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Builtin,
    Strata,
}

impl Side {
    /// The order of one run's turns: A B, then B A, so neither stack always goes first (and
    /// meets the page cache, writeback or a neighbour's load the other left behind).
    pub fn order(run: usize) -> [Side; 2] {
        if run.is_multiple_of(2) {
            [Side::Builtin, Side::Strata]
        } else {
            [Side::Strata, Side::Builtin]
        }
    }

    /// The snapshotter `ctr --snapshotter` and Prepare name.
    pub fn snapshotter(self) -> &'static str {
        match self {
            Side::Builtin => "overlayfs",
            Side::Strata => strata_tests::proxy::SNAPSHOTTER_NAME,
        }
    }

    /// A fresh private containerd of `version`: with only the built-ins, or with all three
    /// strata plugins wired, the differ reading layer blobs from strata-content's directory as
    /// `deploy/strata/differ.toml` sets it up. Servers log at `info`, as deployed.
    pub fn start(self, version: Version) -> Result<Stack, strata_tests::Error> {
        let options = match self {
            Side::Builtin => StackOptions::only(PluginSet::NONE),
            Side::Strata => StackOptions {
                differ_reads_blob_files: true,
                ..StackOptions::full()
            },
        };
        Stack::start(version, &options)
    }

    /// The strata servers of `stack` (none for the built-ins): (binary name, pid).
    pub fn servers(stack: &Stack) -> Vec<(&'static str, u32)> {
        PluginKind::ALL
            .into_iter()
            .filter_map(|k| stack.plugins.get(k).map(|p| (k.binary_name(), p.pid())))
            .collect()
    }
}

/// Fails unless strata-differ (not containerd's `walking`, which a proxy differ falls back to
/// without a word) applied `layers` layers since `before` ([`Stack::differ_applied`]).
pub fn check_strata_applied(stack: &Stack, before: usize, layers: usize) -> Result<(), String> {
    let applied = stack.differ_applied() - before;
    if applied == layers {
        Ok(())
    } else {
        Err(format!(
            "strata-differ logged {applied} `{DIFFER_APPLIED_LOG}` for {layers} layers: \
             containerd used another differ"
        ))
    }
}
