//! containerd's `containerd.services.diff.v1.Diff` over gRPC: requests to [`Applier`] calls,
//! errors to the codes containerd branches on.

use std::sync::Arc;

use strata_common::error::{Error, ErrorKind};
use strata_common::fieldpath::validate_labels;
use strata_common::namespace::RequestContext;
use strata_common::rpc::record_digest;
use strata_proto::diff::diff_server::{Diff, DiffServer};
use strata_proto::diff::{ApplyRequest, ApplyResponse, DiffRequest, DiffResponse};
use tokio::sync::{Semaphore, SemaphorePermit};
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::apply::Applier;
use crate::diff::compare::Comparer;
use crate::metrics::DifferMetrics;

/// [`DiffService::new`]'s limit; the server sets its own from the config.
const DEFAULT_CONCURRENCY: usize = 4;

#[derive(Clone, Debug)]
pub struct DiffService {
    applier: Applier,
    comparer: Comparer,
    metrics: Arc<DifferMetrics>,
    /// Applies and Diffs running at once (see `max_concurrent` in the config): 64 at once
    /// took the server from 10 MiB to 1 GiB, and kept it there, with no gain in throughput.
    running: Arc<Semaphore>,
}

impl DiffService {
    pub fn new(applier: Applier, comparer: Comparer) -> DiffService {
        DiffService {
            applier,
            comparer,
            metrics: Arc::default(),
            running: Arc::new(Semaphore::new(DEFAULT_CONCURRENCY)),
        }
    }

    /// Lets `n` (at least 1) Applies and Diffs run at once; the others wait in order.
    pub fn with_concurrency(mut self, n: usize) -> DiffService {
        self.running = Arc::new(Semaphore::new(n.max(1)));
        self
    }

    async fn turn(&self) -> Result<SemaphorePermit<'_>, Status> {
        self.running
            .acquire()
            .await
            .map_err(|_| Status::unavailable("strata-differ is shutting down"))
    }

    /// Counts applied and diffed layers in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<DifferMetrics>) -> DiffService {
        self.applier = self.applier.with_metrics(metrics.clone());
        self.metrics = metrics;
        self
    }

    pub fn into_server(self) -> DiffServer<DiffService> {
        DiffServer::new(self)
    }
}

#[tonic::async_trait]
impl Diff for DiffService {
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let ctx = RequestContext::from_metadata(request.metadata())?;
        let req = request.into_inner();
        let desc = req
            .diff
            .ok_or_else(|| Error::invalid_argument("apply request without a diff descriptor"))?;
        record_digest(&desc.digest);
        let _turn = self.turn().await?;
        match self
            .applier
            .apply(&ctx, &desc, &req.mounts, req.sync_fs)
            .await
        {
            Ok(applied) => Ok(Response::new(ApplyResponse {
                applied: Some(applied.descriptor()),
            })),
            Err(e) => {
                warn!(digest = %desc.digest, media_type = %desc.media_type, error = %e.chain(), "apply failed");
                Err(e.into())
            }
        }
    }

    async fn diff(&self, request: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        let ctx = RequestContext::from_metadata(request.metadata())?;
        let req = request.into_inner();
        // containerd's walking differ commits the labels with the blob, where its metadata
        // store refuses oversized ones: refuse them before any work (and even when the blob
        // turns out to be there already).
        let labels: std::collections::BTreeMap<String, String> =
            req.labels.clone().into_iter().collect();
        validate_labels(&labels).map_err(|e| Error::invalid_argument(e.to_string()))?;
        let media_type = req.media_type.clone();
        let _turn = self.turn().await?;
        match self.comparer.compare(&ctx, req).await {
            Ok(c) => {
                record_digest(&c.descriptor.digest);
                self.metrics.diffed(
                    &c.descriptor.media_type,
                    u64::try_from(c.descriptor.size).unwrap_or(0),
                );
                Ok(Response::new(DiffResponse {
                    diff: Some(c.descriptor),
                }))
            }
            Err(e) => {
                // Unimplemented is containerd's cue to try its next differ: not a failure.
                if !e.is(ErrorKind::Unimplemented) {
                    warn!(media_type = %media_type, error = %e.chain(), "diff failed");
                }
                Err(e.into())
            }
        }
    }
}
