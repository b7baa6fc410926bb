//! strata-content's own metrics, next to the per-call ones every server has
//! (`strata_content_requests_total`, `strata_content_request_duration_seconds`):
//!
//! - `strata_content_ingested_bytes_total`, `strata_content_read_bytes_total`: bytes written
//!   by Write streams and sent by Read streams;
//! - at each scrape, from the store: `strata_content_blobs` and `strata_content_blob_bytes`
//!   (blobs this node holds), `strata_content_ingests_in_flight` (ingests started and neither
//!   committed nor aborted, as ListStatuses shows them) and, with the S3 backend,
//!   `strata_content_cache_bytes` (the local cache).

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use strata_common::filter::Filter;
use tracing::debug;

use crate::store::ContentStore;

/// The counters the gRPC service adds to. Unregistered ones (a service built without
/// metrics) count for nobody.
#[derive(Debug, Default)]
pub struct ContentMetrics {
    pub ingested_bytes: Counter,
    pub read_bytes: Counter,
}

/// The local cache's size, asked at each scrape.
pub type CacheSize = Box<dyn Fn() -> u64 + Send + Sync>;

impl ContentMetrics {
    /// Registers the counters and the store's sizes (and `cache_bytes`, with a cache) in
    /// `registry`.
    pub fn register(
        registry: &mut Registry,
        store: ContentStore,
        cache_bytes: Option<CacheSize>,
    ) -> Arc<ContentMetrics> {
        let m = ContentMetrics::default();
        registry.register_with_unit(
            "ingested",
            "Bytes written to the store by Write streams",
            Unit::Bytes,
            m.ingested_bytes.clone(),
        );
        registry.register_with_unit(
            "read",
            "Bytes sent by Read streams",
            Unit::Bytes,
            m.read_bytes.clone(),
        );
        registry.register_collector(Box::new(StoreSizes { store, cache_bytes }));
        Arc::new(m)
    }
}

struct StoreSizes {
    store: ContentStore,
    cache_bytes: Option<CacheSize>,
}

impl fmt::Debug for StoreSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSizes").finish_non_exhaustive()
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> Result<(), fmt::Error> {
    let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    let metric = encoder.encode_descriptor(name, help, unit, g.metric_type())?;
    g.encode(metric)
}

impl Collector for StoreSizes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        // A store that cannot be read now leaves its series out of this scrape (Prometheus
        // shows them absent) rather than failing the whole page.
        match self.store.list(&Filter::default()) {
            Ok(infos) => {
                let bytes = infos.iter().map(|i| i.size).sum();
                gauge(
                    &mut encoder,
                    "blobs",
                    "Blobs in the store.",
                    None,
                    infos.len() as u64,
                )?;
                gauge(
                    &mut encoder,
                    "blob",
                    "Bytes of the blobs in the store.",
                    Some(&Unit::Bytes),
                    bytes,
                )?;
            }
            Err(e) => debug!(error = %e.chain(), "metrics: cannot list blobs"),
        }
        match self.store.list_statuses(&Filter::default()) {
            Ok(ingests) => gauge(
                &mut encoder,
                "ingests_in_flight",
                "Ingests started and neither committed nor aborted.",
                None,
                ingests.len() as u64,
            )?,
            Err(e) => debug!(error = %e.chain(), "metrics: cannot list ingests"),
        }
        if let Some(cache) = &self.cache_bytes {
            gauge(
                &mut encoder,
                "cache",
                "Bytes of blobs in the local cache of the object store.",
                Some(&Unit::Bytes),
                cache(),
            )?;
        }
        Ok(())
    }
}
