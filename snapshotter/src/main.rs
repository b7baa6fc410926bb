use std::process::ExitCode;

use clap::Parser;
use strata_common::cli::{self, ServerArgs};
use strata_snapshotter::config::{Config, NAME};

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
    // The Snapshots service is not served yet: containerd gets Unimplemented from it.
    strata_common::app::run(&format!("strata-{NAME}"), &args.server, config, &[], |_| {
        Ok(Box::new(|router| router))
    })
}
