//! `strata-bench`: strata's three plugins against containerd's built-ins, through the same
//! private containerd, in one run.
//!
//! Two stacks of one containerd release take turns (A B, then B A, ...): one with only the
//! built-ins (`overlayfs`, the local content store, `walking`), one with strata-snapshotter,
//! strata-content and strata-differ wired in `[proxy_plugins]`. Every figure is a set of
//! samples per stack; tables show medians, min and max and the ratio (above 1: strata is
//! faster). Scratch data lives on a journaled loop ext4 made for the run.

pub mod hog;
pub mod machine;
pub mod plot;
pub mod report;
pub mod scratch;
pub mod side;
pub mod stats;
pub mod workloads;
