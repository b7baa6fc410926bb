//! The gRPC face of [`Snapshotter`]: containerd's `containerd.services.snapshots.v1.Snapshots`.
//! Converts messages, runs the core (on blocking threads, quick metadata reads in place), maps
//! errors to containerd's codes and streams List in batches.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;

use strata_common::rpc::record_key;
use strata_common::time::to_timestamp;
use strata_common::{Error, Result};
use strata_proto::snapshots as pb;
use strata_proto::snapshots::snapshots_server::Snapshots;
use strata_proto::types;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::metadata::{Info, Kind};
use crate::mounts::Mount;
use crate::snapshotter::{Snapshotter, UsageLookup};

/// Infos per List message, as containerd's own snapshots service batches them.
pub const LIST_BATCH: usize = 100;

#[derive(Clone)]
pub struct Service {
    snapshotter: Snapshotter,
}

impl Service {
    pub fn new(snapshotter: Snapshotter) -> Self {
        Service { snapshotter }
    }

    /// The tonic server for this service, accepting containerd's largest messages.
    pub fn into_server(self) -> pb::snapshots_server::SnapshotsServer<Service> {
        pb::snapshots_server::SnapshotsServer::new(self).max_decoding_message_size(16 << 20)
    }

    async fn run<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Snapshotter) -> Result<T> + Send + 'static,
    {
        let s = self.snapshotter.clone();
        match tokio::task::spawn_blocking(move || f(&s)).await {
            Ok(r) => r.map_err(|e| {
                tracing::debug!(error = %e.chain(), "snapshots call failed");
                Status::from(e)
            }),
            Err(e) => Err(Status::from(Error::internal(format!(
                "snapshotter task failed: {e}"
            )))),
        }
    }

    /// Runs a call that only reads metadata right here on the async worker. Such a call is
    /// one indexed read on the reader connection, which under WAL never waits for a writer:
    /// microseconds, less than the two thread hand-offs of [`Service::run`].
    fn read<T>(&self, f: impl FnOnce(&Snapshotter) -> Result<T>) -> Result<T, Status> {
        f(&self.snapshotter).map_err(|e| {
            tracing::debug!(error = %e.chain(), "snapshots call failed");
            Status::from(e)
        })
    }
}

fn labels(m: HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

fn mounts(ms: Vec<Mount>) -> Vec<types::Mount> {
    ms.into_iter()
        .map(|m| types::Mount {
            r#type: m.kind,
            source: m.source,
            target: m.target,
            options: m.options,
        })
        .collect()
}

fn kind(k: Kind) -> pb::Kind {
    match k {
        Kind::View => pb::Kind::View,
        Kind::Active => pb::Kind::Active,
        Kind::Committed => pb::Kind::Committed,
    }
}

/// The wire form of an [`Info`].
pub fn info_to_proto(i: Info) -> pb::Info {
    pb::Info {
        name: i.name,
        parent: i.parent,
        kind: kind(i.kind) as i32,
        created_at: Some(to_timestamp(i.created)),
        updated_at: Some(to_timestamp(i.updated)),
        labels: i.labels.into_iter().collect(),
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for Service {
    async fn prepare(
        &self,
        req: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = req.into_inner();
        record_key(&r.key);
        let l = labels(r.labels);
        let m = self.run(move |s| s.prepare(&r.key, &r.parent, &l)).await?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: mounts(m),
        }))
    }

    async fn view(
        &self,
        req: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = req.into_inner();
        record_key(&r.key);
        let l = labels(r.labels);
        let m = self.run(move |s| s.view(&r.key, &r.parent, &l)).await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: mounts(m),
        }))
    }

    async fn mounts(
        &self,
        req: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let r = req.into_inner();
        record_key(&r.key);
        let m = self.read(|s| s.mounts(&r.key))?;
        Ok(Response::new(pb::MountsResponse { mounts: mounts(m) }))
    }

    async fn commit(
        &self,
        req: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        record_key(&r.key);
        let l = labels(r.labels);
        self.run(move |s| s.commit(&r.name, &r.key, &l, &r.parent))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        record_key(&r.key);
        self.run(move |s| s.remove(&r.key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let r = req.into_inner();
        record_key(&r.key);
        let info = self.read(|s| s.stat(&r.key))?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(info_to_proto(info)),
        }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = req.into_inner();
        let info = r
            .info
            .ok_or_else(|| Status::from(Error::invalid_argument("update needs info")))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let l = labels(info.labels);
        let name = info.name;
        record_key(&name);
        let info = self.run(move |s| s.update(&name, &l, &paths)).await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(info_to_proto(info)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let r = req.into_inner();
        let infos = self.run(move |s| s.list(&r.filters)).await?;
        let mut batches = Vec::with_capacity(infos.len() / LIST_BATCH + 1);
        let mut it = infos.into_iter().peekable();
        while it.peek().is_some() {
            let info: Vec<pb::Info> = it.by_ref().take(LIST_BATCH).map(info_to_proto).collect();
            batches.push(Ok(pb::ListSnapshotsResponse { info }));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(
        &self,
        req: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let r = req.into_inner();
        record_key(&r.key);
        let u = match self.read(|s| s.usage_lookup(&r.key))? {
            UsageLookup::Known(u) => u,
            // A directory walk: not on an async worker.
            UsageLookup::Walk(w) => self.run(move |s| s.measure(w)).await?,
        };
        Ok(Response::new(pb::UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, _req: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        self.run(|s| s.cleanup().map(|_| ())).await?;
        Ok(Response::new(()))
    }
}
