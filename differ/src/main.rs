use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use strata_common::cli::ServerArgs;
use strata_common::client::unix_channel;
use strata_differ::config::{Config, NAME};
use strata_differ::metrics::DifferMetrics;
use strata_differ::{Applier, Comparer, DiffService, Fetcher, SERVICE_NAME, Uploader};

/// containerd proxy differ (Apply and Diff of tar layers).
#[derive(Parser, Debug)]
#[command(name = "strata-differ", version = strata_common::VERSION)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// Content service to read layer blobs from and write Diff results to (containerd's socket).
    #[arg(long, value_name = "SOCKET")]
    content_address: Option<PathBuf>,
    /// Namespace to read layers in when containerd sends none and the content service cannot
    /// list namespaces.
    #[arg(long, value_name = "NAMESPACE")]
    fallback_namespace: Option<String>,
    /// Directory of that content service's store (`blobs/sha256/<hex>` inside), to read
    /// layers from disk when they are there and write Diff results into.
    #[arg(long, value_name = "DIR")]
    content_root: Option<PathBuf>,
}

/// A temporary blob file nothing has written to for this long was left by a killed differ.
const STALE_BLOB_FILE: std::time::Duration = std::time::Duration::from_secs(3600);

fn main() -> ExitCode {
    let args = Args::parse();
    let (content_address, fallback_namespace, content_root) = (
        args.content_address,
        args.fallback_namespace,
        args.content_root,
    );
    strata_common::app::run(
        &format!("strata-{NAME}"),
        &args.server,
        Config::default(),
        |config| {
            if let Some(a) = content_address {
                config.differ.content_address = a;
            }
            if let Some(ns) = fallback_namespace {
                config.differ.fallback_namespace = Some(ns);
            }
            if let Some(root) = content_root {
                config.differ.content_root = Some(root);
            }
        },
        &[SERVICE_NAME],
        |config, registry| {
            // Lazy: the differ starts before containerd's socket exists.
            let channel = unix_channel(&config.differ.content_address);
            let fetcher = Fetcher::new(channel.clone(), config.differ.fallback_namespace.clone())
                .with_content_root(config.differ.content_root.clone());
            if let Some(root) = &config.differ.content_root {
                match strata_differ::diff::blob_file::remove_stale(root, STALE_BLOB_FILE) {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(
                        removed = n,
                        root = %root.display(),
                        "removed blob files an interrupted Diff left behind"
                    ),
                    Err(e) => tracing::warn!(
                        root = %root.display(),
                        error = %e,
                        "cannot look for blob files an interrupted Diff left behind"
                    ),
                }
            }
            let scratch = config.server.root.join("mounts");
            // A killed predecessor's mounts would stay forever (and pin what they show).
            match strata_differ::apply::target::reap_scratch(&scratch) {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    removed = n,
                    scratch = %scratch.display(),
                    "removed mounts an interrupted Apply or Diff left behind"
                ),
                Err(e) => tracing::warn!(
                    scratch = %scratch.display(),
                    error = %e,
                    "cannot look for mounts an interrupted Apply or Diff left behind"
                ),
            }
            let comparer = Comparer::new(
                fetcher.clone(),
                Uploader::new(channel.clone()),
                scratch.clone(),
            )
            .with_blob_root(config.differ.content_root.clone())
            .with_levels(config.differ.levels())
            .map_err(|e| format!("differ config: {e}"))?;
            let applier = Applier::new(fetcher, scratch);
            let metrics = std::sync::Arc::new(DifferMetrics::register(registry));
            let service = DiffService::new(applier, comparer)
                .with_metrics(metrics)
                .with_concurrency(config.differ.concurrency())
                .into_server();
            Ok(Box::new(move |router| router.add_service(service)))
        },
    )
}
