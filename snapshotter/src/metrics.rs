//! strata-snapshotter's own metrics, next to the per-call ones every server has
//! (`strata_snapshotter_requests_total`, `strata_snapshotter_request_duration_seconds`):
//! `strata_snapshotter_snapshots{kind}` (committed, active, view), read from the metadata at
//! each scrape, so it is right after a restart and never drifts from what List shows.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::metadata::Kind;
use crate::snapshotter::Snapshotter;

/// Registers the snapshot counts of `snapshotter` in `registry`.
pub fn register(registry: &mut Registry, snapshotter: Snapshotter) {
    registry.register_collector(Box::new(SnapshotCounts(snapshotter)));
}

struct SnapshotCounts(Snapshotter);

impl fmt::Debug for SnapshotCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SnapshotCounts")
    }
}

impl Collector for SnapshotCounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let infos = match self.0.list(&[]) {
            Ok(infos) => infos,
            Err(e) => {
                // Left out of this scrape (absent in Prometheus) rather than a failed page.
                tracing::debug!(error = %e.chain(), "metrics: cannot list snapshots");
                return Ok(());
            }
        };
        let mut counts = [0i64; 3];
        for i in &infos {
            counts[match i.kind {
                Kind::Committed => 0,
                Kind::Active => 1,
                Kind::View => 2,
            }] += 1;
        }
        let mut family = encoder.encode_descriptor(
            "snapshots",
            "Snapshots by kind.",
            None,
            MetricType::Gauge,
        )?;
        for (kind, n) in ["committed", "active", "view"].iter().zip(counts) {
            let labels = [("kind", *kind)];
            ConstGauge::new(n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
