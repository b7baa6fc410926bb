use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use strata_common::cli::{self, ServerArgs};
use strata_differ::config::{Config, NAME};

/// containerd proxy differ (Apply and Diff of tar layers).
#[derive(Parser, Debug)]
#[command(name = "strata-differ", version)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// Content service to read layer blobs from and write Diff results to (containerd's socket).
    #[arg(long, value_name = "SOCKET")]
    content_address: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = match cli::load(&args.server, Config::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("strata-differ: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(a) = args.content_address {
        config.differ.content_address = a;
    }
    // The Diff service is not served yet: containerd gets Unimplemented from it and moves on
    // to the next differ in its chain.
    strata_common::app::run(&format!("strata-{NAME}"), &args.server, config, &[], |_| {
        Ok(Box::new(|router| router))
    })
}
