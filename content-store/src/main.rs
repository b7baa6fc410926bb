use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use strata_common::cli::ServerArgs;
use strata_content::config::{Config, NAME};
use strata_content::{ContentService, ContentStore, SERVICE_NAME};

/// containerd proxy content store (local disk or object storage).
#[derive(Parser, Debug)]
#[command(name = "strata-content", version)]
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
        |cfg: &Config| {
            let store = ContentStore::open_local(&cfg.server.root).map_err(|e| e.chain())?;
            match store.prune_metadata() {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "pruned metadata of deleted blobs"),
                Err(e) => tracing::warn!(error = %e.chain(), "cannot prune metadata"),
            }
            let expiry = cfg.content.ingest_expiry_secs;
            if expiry > 0 {
                ContentService::spawn_ingest_expiry(store.clone(), Duration::from_secs(expiry));
            }
            let server = ContentService::new(store).into_server();
            Ok(Box::new(move |router| router.add_service(server)))
        },
    )
}
