use std::process::ExitCode;

use clap::Parser;
use strata_common::cli::{self, ServerArgs};
use strata_content::config::{Config, NAME};

/// containerd proxy content store (local disk or object storage).
#[derive(Parser, Debug)]
#[command(name = "strata-content", version)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match cli::load(&args.server, Config::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("strata-content: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The Content service is not served yet: containerd gets Unimplemented from it.
    strata_common::app::run(&format!("strata-{NAME}"), &args.server, config, &[], |_| {
        Ok(Box::new(|router| router))
    })
}
