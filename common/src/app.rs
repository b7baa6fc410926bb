//! The life of a strata server process, shared by the three `main.rs` files: effective config,
//! `--print-config`, logging, state directory, runtime, serve until SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tracing::{error, info};

use crate::cli::{self, PluginConfig, ServerArgs};
use crate::metrics::{MetricsListener, registry_for};
use crate::rpc::{RpcLayer, RpcMetrics};
use crate::serve::Router;

/// Runs a server: reads its config (`defaults`, the file, then the flags in `args`, then
/// `overrides` for the plugin's own flags); `build` turns the effective config into the
/// plugin's gRPC services (added to a router that already serves `grpc.health.v1`) and
/// registers the plugin's own metrics in the registry it is given (named `strata_<plugin>_`,
/// served at `metrics_address` when that is set); `services` are their full names, reported
/// SERVING by the health service.
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
    B: FnOnce(&C, &mut Registry) -> Result<Box<dyn FnOnce(Router) -> Router>, String>,
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
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().thread_name(name);
    if let Some(n) = server.worker_threads.filter(|&n| n > 0) {
        runtime.worker_threads(n);
    }
    let runtime = match runtime.build() {
        Ok(rt) => rt,
        Err(e) => return fail(name, &format!("start runtime: {e}")),
    };
    // The OTLP exporter's gRPC channel lives on this runtime.
    let telemetry = {
        let _entered = runtime.enter();
        crate::telemetry::init(
            &server.log_level,
            server.log_format,
            server.otlp_endpoint.as_deref(),
            name,
        )
    };
    let telemetry = match telemetry {
        Ok(t) => t,
        Err(e) => return fail(name, &e),
    };
    if let Err(e) = std::fs::create_dir_all(&server.root) {
        return fail(name, &format!("create root {}: {e}", server.root.display()));
    }
    let result = runtime.block_on(async {
        let mut registry = registry_for(name);
        let rpc_metrics = RpcMetrics::register(&mut registry);
        let add = build(&config, &mut registry)?;
        let server = config.server();
        info!(
            version = crate::VERSION,
            address = %server.address.display(),
            root = %server.root.display(),
            "{name} starting"
        );
        // Metrics cost a few atomic increments per call; without an endpoint nobody reads
        // them, so the calls are not counted at all.
        let rpc = match &server.metrics_address {
            Some(address) => {
                let mode = server.socket_mode_bits().map_err(|e| e.to_string())?;
                let listener = MetricsListener::bind(address, mode, server.socket_gid)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(listener.serve(Arc::new(registry)));
                RpcLayer::with_metrics(rpc_metrics)
            }
            None => RpcLayer::new(),
        };
        tokio::spawn(crate::memory::trim_when_idle());
        crate::serve::serve(server, services, add, rpc)
            .await
            .map_err(|e| e.to_string())
    });
    telemetry.shutdown();
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
