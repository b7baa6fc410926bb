use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use strata_common::cli::ServerArgs;
use strata_content::backend::{BlobBackend, LocalBackend, S3Backend};
use strata_content::config::{BackendKind, Config, NAME};
use strata_content::metrics::{CacheSize, ContentMetrics};
use strata_content::{ContentService, ContentStore, SERVICE_NAME};

/// containerd proxy content store (local disk or object storage).
#[derive(Parser, Debug)]
#[command(name = "strata-content", version = strata_common::VERSION)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    strata_common::app::run(
        &format!("strata-{NAME}"),
        &args.server,
        Config::default(),
        |_| {},
        &[SERVICE_NAME],
        |cfg: &Config, registry| {
            let root = &cfg.server.root;
            let mut cache_bytes: Option<CacheSize> = None;
            let backend: Box<dyn BlobBackend> = match cfg.content.backend {
                BackendKind::Local => Box::new(LocalBackend::open(root).map_err(|e| e.chain())?),
                BackendKind::S3 => {
                    let s3 = S3Backend::open(root, &cfg.content.s3).map_err(|e| e.chain())?;
                    let every = cfg.content.s3.gc_interval_secs;
                    if every > 0 {
                        s3.spawn_sweeper(Duration::from_secs(every))
                            .map_err(|e| e.chain())?;
                    }
                    let cache = s3.clone();
                    cache_bytes = Some(Box::new(move || cache.cached_bytes()));
                    Box::new(s3)
                }
            };
            let store = ContentStore::open(root, backend).map_err(|e| e.chain())?;
            match store.prune_metadata() {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "pruned metadata of deleted blobs"),
                Err(e) => tracing::warn!(error = %e.chain(), "cannot prune metadata"),
            }
            let expiry = cfg.content.ingest_expiry_secs;
            if expiry > 0 {
                ContentService::spawn_ingest_expiry(store.clone(), Duration::from_secs(expiry));
            }
            let metrics = ContentMetrics::register(registry, store.clone(), cache_bytes);
            let server = ContentService::new(store)
                .with_metrics(metrics)
                .into_server();
            Ok(Box::new(move |router| router.add_service(server)))
        },
    )
}
