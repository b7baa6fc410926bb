//! The life of a strata server process, shared by the three `main.rs` files: effective config,
//! `--print-config`, logging, state directory, runtime, serve until SIGTERM.

use std::process::ExitCode;

use tonic::transport::server::Router;
use tracing::{error, info};

use crate::cli::{self, PluginConfig, ServerArgs};

/// Runs a server: reads its config (`defaults`, the file, then the flags in `args`, then
/// `overrides` for the plugin's own flags); `build` turns the effective config into the
/// plugin's gRPC services (added to a router that already serves `grpc.health.v1`);
/// `services` are their full names, reported SERVING by the health service.
pub fn run<C, O, B>(
    name: &str,
    args: &ServerArgs,
    defaults: C,
    overrides: O,
    services: &[&str],
    build: B,
) -> ExitCode
where
    C: PluginConfig,
    O: FnOnce(&mut C),
    B: FnOnce(&C) -> Result<Box<dyn FnOnce(Router) -> Router>, String>,
{
    let mut config = match cli::load(args, defaults) {
        Ok(c) => c,
        Err(e) => return fail(name, &e.to_string()),
    };
    overrides(&mut config);
    if args.print_config {
        return match cli::render(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(name, &e.to_string()),
        };
    }
    let server = config.server();
    if let Err(e) = crate::telemetry::init(&server.log_level, server.log_format) {
        return fail(name, &e);
    }
    if let Err(e) = std::fs::create_dir_all(&server.root) {
        return fail(name, &format!("create root {}: {e}", server.root.display()));
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().thread_name(name);
    if let Some(n) = server.worker_threads.filter(|&n| n > 0) {
        runtime.worker_threads(n);
    }
    let runtime = match runtime.build() {
        Ok(rt) => rt,
        Err(e) => return fail(name, &format!("start runtime: {e}")),
    };
    let result = runtime.block_on(async {
        let add = build(&config)?;
        info!(
            version = env!("CARGO_PKG_VERSION"),
            address = %config.server().address.display(),
            root = %config.server().root.display(),
            "{name} starting"
        );
        crate::serve::serve(config.server(), services, add)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logging is up by now; one line in the journal is enough.
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn fail(name: &str, message: &str) -> ExitCode {
    eprintln!("{name}: {message}");
    ExitCode::FAILURE
}
