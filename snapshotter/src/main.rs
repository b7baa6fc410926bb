use std::process::ExitCode;

use clap::Parser;
use strata_common::cli::ServerArgs;
use strata_snapshotter::config::{Config, NAME};
use strata_snapshotter::{SERVICE_NAME, Service, Snapshotter};

/// containerd proxy snapshotter (overlayfs, SQLite metadata).
#[derive(Parser, Debug)]
#[command(name = "strata-snapshotter", version = strata_common::VERSION)]
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
        |cfg, registry| {
            let snapshotter = Snapshotter::open(&cfg.server.root, cfg.snapshotter.clone())
                .map_err(|e| e.chain())?;
            strata_snapshotter::metrics::register(registry, snapshotter.clone());
            let server = Service::new(snapshotter).into_server();
            Ok(Box::new(move |router| router.add_service(server)))
        },
    )
}
