//! strata-content's own metrics, next to the per-call ones every server has
//! (`strata_content_requests_total`, `strata_content_request_duration_seconds`):
//!
//! - `strata_content_ingested_bytes_total`, `strata_content_read_bytes_total`: bytes written
//!   by Write streams and sent by Read streams;
//! - at each scrape, from the store: `strata_content_blobs` and `strata_content_blob_bytes`
//!   (blobs this node holds), `strata_content_ingests_in_flight` (ingests started and neither
//!   committed nor aborted, as ListStatuses shows them) and, with the S3 backend,
//!   `strata_content_cache_bytes` (the local cache);
//! - with the S3 backend, its requests to the object store:
//!   `strata_content_object_store_requests_total{op}` and `..._errors_total{op}` (`op`: HEAD,
//!   GET, PUT, PUT_MULTIPART, DELETE, LIST; an absent object is an answer, not an error), and
//!   `strata_content_object_store_downloaded_bytes_total` / `..._uploaded_bytes_total`.

use std::fmt;
use std::sync::{Arc, LazyLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

/// What the S3 backend asks of its object store. One per process, as the backend is: the
/// object store client is made deep inside the backend, and a process serves one store.
#[derive(Debug, Default)]
pub struct ObjectStoreMetrics {
    requests: Family<OpLabels, Counter>,
    errors: Family<OpLabels, Counter>,
    downloaded: Counter,
    uploaded: Counter,
}

/// The object store metrics of this process.
pub static OBJECT_STORE: LazyLock<ObjectStoreMetrics> = LazyLock::new(ObjectStoreMetrics::default);

impl ObjectStoreMetrics {
    /// One request `op` (HEAD, GET, PUT, PUT_MULTIPART, DELETE, LIST) was made.
    pub fn request(&self, op: &'static str) {
        self.requests.get_or_create(&OpLabels { op }).inc();
    }

    /// Request `op` failed (not: answered that the object is absent).
    pub fn error(&self, op: &'static str) {
        self.errors.get_or_create(&OpLabels { op }).inc();
    }

    pub fn downloaded(&self, bytes: u64) {
        self.downloaded.inc_by(bytes);
    }

    pub fn uploaded(&self, bytes: u64) {
        self.uploaded.inc_by(bytes);
    }

    /// Requests made so far of `op` (tests).
    pub fn requests_of(&self, op: &'static str) -> u64 {
        self.requests.get_or_create(&OpLabels { op }).get()
    }

    /// Bytes downloaded and uploaded so far (tests).
    pub fn bytes(&self) -> (u64, u64) {
        (self.downloaded.get(), self.uploaded.get())
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "object_store_requests",
            "Requests to the object store, by operation",
            self.requests.clone(),
        );
        registry.register(
            "object_store_errors",
            "Requests to the object store that failed or timed out, by operation",
            self.errors.clone(),
        );
        registry.register_with_unit(
            "object_store_downloaded",
            "Bytes downloaded from the object store",
            Unit::Bytes,
            self.downloaded.clone(),
        );
        registry.register_with_unit(
            "object_store_uploaded",
            "Bytes uploaded to the object store",
            Unit::Bytes,
            self.uploaded.clone(),
        );
    }
}

/// The local cache's size, asked at each scrape.
pub type CacheSize = Box<dyn Fn() -> u64 + Send + Sync>;

impl ContentMetrics {
    /// Registers the counters and the store's sizes in `registry`; with `cache_bytes` (the S3
    /// backend), the cache's size and the object store's requests too.
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
        if cache_bytes.is_some() {
            OBJECT_STORE.register(registry);
        }
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
