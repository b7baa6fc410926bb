//! strata-differ's own metrics, next to the per-call ones every server has
//! (`strata_differ_requests_total`, `strata_differ_request_duration_seconds`):
//!
//! - `strata_differ_layers_applied_total{media_type,source}`: layers applied, by media type
//!   and by where the blob was read from (`blob_file`: the content store's directory,
//!   `content_service`: streamed from containerd);
//! - `strata_differ_applied_bytes_total`: bytes of the layer blobs applied (as stored,
//!   compressed or not);
//! - `strata_differ_layers_diffed_total{media_type}`, `strata_differ_diffed_bytes_total`:
//!   layers Diff wrote, and their bytes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};

/// Where Apply read a layer blob from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobSource {
    /// The blob's file in the content store's directory (`content_root`).
    File,
    /// A Read stream from containerd's content service.
    ContentService,
}

impl BlobSource {
    pub fn label(self) -> &'static str {
        match self {
            BlobSource::File => "blob_file",
            BlobSource::ContentService => "content_service",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppliedLabels {
    media_type: String,
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DiffedLabels {
    media_type: String,
}

/// The differ's counters. Unregistered ones (an Applier built without metrics) count for
/// nobody. Media types are only counted after the differ accepted them, so the label has
/// the few values strata handles.
#[derive(Debug, Default)]
pub struct DifferMetrics {
    layers_applied: Family<AppliedLabels, Counter>,
    applied_bytes: Counter,
    layers_diffed: Family<DiffedLabels, Counter>,
    diffed_bytes: Counter,
}

impl DifferMetrics {
    pub fn register(registry: &mut Registry) -> DifferMetrics {
        let m = DifferMetrics::default();
        registry.register(
            "layers_applied",
            "Layers applied, by media type and by where the blob was read from",
            m.layers_applied.clone(),
        );
        registry.register_with_unit(
            "applied",
            "Bytes of the layer blobs applied, as stored",
            Unit::Bytes,
            m.applied_bytes.clone(),
        );
        registry.register(
            "layers_diffed",
            "Layers written by Diff, by media type",
            m.layers_diffed.clone(),
        );
        registry.register_with_unit(
            "diffed",
            "Bytes of the layer blobs written by Diff",
            Unit::Bytes,
            m.diffed_bytes.clone(),
        );
        m
    }

    pub fn applied(&self, media_type: &str, source: BlobSource, bytes: u64) {
        self.layers_applied
            .get_or_create(&AppliedLabels {
                media_type: media_type.to_string(),
                source: source.label(),
            })
            .inc();
        self.applied_bytes.inc_by(bytes);
    }

    pub fn diffed(&self, media_type: &str, bytes: u64) {
        self.layers_diffed
            .get_or_create(&DiffedLabels {
                media_type: media_type.to_string(),
            })
            .inc();
        self.diffed_bytes.inc_by(bytes);
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::prometheus_text;

    use super::*;

    #[test]
    fn names_and_labels() {
        let mut registry = Registry::with_prefix("strata_differ");
        let m = DifferMetrics::register(&mut registry);
        let gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
        m.applied(gzip, BlobSource::File, 100);
        m.applied(gzip, BlobSource::ContentService, 20);
        m.diffed(gzip, 7);
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).unwrap();
        for line in [
            format!(
                "strata_differ_layers_applied_total{{media_type=\"{gzip}\",source=\"blob_file\"}} 1"
            ),
            format!(
                "strata_differ_layers_applied_total{{media_type=\"{gzip}\",source=\"content_service\"}} 1"
            ),
            "strata_differ_applied_bytes_total 120".to_string(),
            format!("strata_differ_layers_diffed_total{{media_type=\"{gzip}\"}} 1"),
            "strata_differ_diffed_bytes_total 7".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
