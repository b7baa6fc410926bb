//! Prints the containerd configuration strata's tests generate, for demos and for wiring a
//! containerd by hand:
//!
//!   strata-containerd-config --containerd 2 --snapshotter /run/strata/snapshotter.sock \
//!       --differ /run/strata/differ.sock                # the [proxy_plugins] tables only
//!   strata-containerd-config ... --dir /tmp/ctd         # a whole config.toml rooted in DIR

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use strata_tests::config::config_toml;
use strata_tests::{ProxyPlugins, Version};

#[derive(Parser)]
#[command(about = "Print the containerd config that wires strata's sockets in as proxy plugins")]
struct Args {
    /// containerd version the config is for: 1.7 or 2
    #[arg(long = "containerd", default_value = "2")]
    version: String,
    /// strata-snapshotter's socket
    #[arg(long)]
    snapshotter: Option<PathBuf>,
    /// strata-content's socket (also disables containerd's built-in content store)
    #[arg(long)]
    content: Option<PathBuf>,
    /// strata-differ's socket
    #[arg(long)]
    differ: Option<PathBuf>,
    /// platform for the differ and the unpack entries (default: this machine's)
    #[arg(long)]
    platform: Option<String>,
    /// print a complete config.toml whose root, state and sockets are in DIR
    #[arg(long)]
    dir: Option<PathBuf>,
    /// containerd log level in a complete config
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let version: Version = match args.version.parse() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let proxy = ProxyPlugins {
        snapshotter: args.snapshotter,
        content: args.content,
        differ: args.differ,
        platform: args.platform,
    };
    match args.dir {
        Some(dir) => print!(
            "{}",
            config_toml(
                version,
                &dir,
                &args.log_level,
                &proxy.disabled_plugins(),
                &proxy.toml()
            )
        ),
        None => {
            let disabled = proxy.disabled_plugins();
            if !disabled.is_empty() {
                // a top-level key: it can't be appended after the tables printed below
                eprintln!(
                    "note: also put {disabled:?} in the top-level disabled_plugins of the config"
                );
            }
            print!("{}", proxy.toml());
        }
    }
    ExitCode::SUCCESS
}
