use std::process::ExitCode;

use clap::Parser;
use strata_common::cli::{self, ServerArgs};
use strata_snapshotter::config::{Config, NAME};
use strata_snapshotter::{SERVICE_NAME, Service, Snapshotter};

/// containerd proxy snapshotter (overlayfs, SQLite metadata).
#[derive(Parser, Debug)]
#[command(name = "strata-snapshotter", version)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match cli::load(&args.server, Config::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("strata-snapshotter: {e}");
            return ExitCode::FAILURE;
        }
    };
    strata_common::app::run(
        &format!("strata-{NAME}"),
        &args.server,
        config,
        &[SERVICE_NAME],
        |cfg| {
            let snapshotter = Snapshotter::open(&cfg.server.root, cfg.snapshotter.clone())
                .map_err(|e| e.chain())?;
            let server = Service::new(snapshotter).into_server();
            Ok(Box::new(move |router| router.add_service(server)))
        },
    )
}
