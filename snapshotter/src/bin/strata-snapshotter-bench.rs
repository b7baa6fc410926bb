//! Measures containerd's Snapshots API through containerd's own socket for several snapshotters
//! (by default containerd's built-in `overlayfs` and the proxied `strata`) in one run, so both
//! pay containerd's metadata layer, and prints medians and ratios. A benchmark, not a test:
//! see docs/benchmarks.md for the set-up and the figures.
//!
//! Calls of the snapshotters under test alternate, so drift (page cache, other load) hits both
//! alike. Every snapshot carries a `containerd.io/gc.root` label so containerd's garbage
//! collector leaves it alone until the run removes it. Commit against layer size writes the
//! files straight into the active snapshot's directory (the bench must run as root on the
//! machine containerd runs on).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use strata_common::client::unix_channel;
use strata_common::namespace::RequestContext;
use strata_proto::snapshots as pb;
use strata_proto::snapshots::snapshots_client::SnapshotsClient;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(name = "strata-snapshotter-bench")]
struct Args {
    /// containerd's gRPC socket.
    #[arg(long)]
    containerd: PathBuf,
    /// Namespace the snapshots are made in.
    #[arg(long, default_value = "strata-bench")]
    namespace: String,
    /// Snapshotters to compare; ratios are against the first.
    #[arg(long, value_delimiter = ',', default_value = "overlayfs,strata")]
    snapshotters: Vec<String>,
    /// Rounds of the per-call measurements.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Snapshots listed in the List measurement.
    #[arg(long, default_value_t = 1000)]
    list: usize,
    /// Layer sizes (files) for Commit against layer size.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    files: Vec<usize>,
    /// Commits measured per layer size.
    #[arg(long, default_value_t = 3)]
    file_rounds: usize,
}

type Client = SnapshotsClient<Channel>;

struct Bench {
    client: Client,
    ctx: RequestContext,
    run: String,
}

fn labels() -> HashMap<String, String> {
    HashMap::from([(
        "containerd.io/gc.root".to_string(),
        "strata-bench".to_string(),
    )])
}

impl Bench {
    fn req<T>(&self, m: T) -> Result<tonic::Request<T>, String> {
        self.ctx.request(m).map_err(|e| e.to_string())
    }

    async fn prepare(
        &mut self,
        sn: &str,
        key: &str,
        parent: &str,
    ) -> Result<Vec<strata_proto::types::Mount>, String> {
        let r = self.req(pb::PrepareSnapshotRequest {
            snapshotter: sn.into(),
            key: key.into(),
            parent: parent.into(),
            labels: labels(),
        })?;
        Ok(self
            .client
            .prepare(r)
            .await
            .map_err(|e| format!("prepare {key}: {e}"))?
            .into_inner()
            .mounts)
    }

    async fn view(&mut self, sn: &str, key: &str, parent: &str) -> Result<(), String> {
        let r = self.req(pb::ViewSnapshotRequest {
            snapshotter: sn.into(),
            key: key.into(),
            parent: parent.into(),
            labels: labels(),
        })?;
        self.client
            .view(r)
            .await
            .map_err(|e| format!("view {key}: {e}"))?;
        Ok(())
    }

    async fn commit(&mut self, sn: &str, name: &str, key: &str) -> Result<(), String> {
        let r = self.req(pb::CommitSnapshotRequest {
            snapshotter: sn.into(),
            name: name.into(),
            key: key.into(),
            labels: labels(),
            parent: String::new(),
        })?;
        self.client
            .commit(r)
            .await
            .map_err(|e| format!("commit {key}: {e}"))?;
        Ok(())
    }

    async fn remove(&mut self, sn: &str, key: &str) -> Result<(), String> {
        let r = self.req(pb::RemoveSnapshotRequest {
            snapshotter: sn.into(),
            key: key.into(),
        })?;
        self.client
            .remove(r)
            .await
            .map_err(|e| format!("remove {key}: {e}"))?;
        Ok(())
    }

    async fn stat(&mut self, sn: &str, key: &str) -> Result<(), String> {
        let r = self.req(pb::StatSnapshotRequest {
            snapshotter: sn.into(),
            key: key.into(),
        })?;
        self.client
            .stat(r)
            .await
            .map_err(|e| format!("stat {key}: {e}"))?;
        Ok(())
    }

    async fn mounts(&mut self, sn: &str, key: &str) -> Result<(), String> {
        let r = self.req(pb::MountsRequest {
            snapshotter: sn.into(),
            key: key.into(),
        })?;
        self.client
            .mounts(r)
            .await
            .map_err(|e| format!("mounts {key}: {e}"))?;
        Ok(())
    }

    async fn usage(&mut self, sn: &str, key: &str) -> Result<(), String> {
        let r = self.req(pb::UsageRequest {
            snapshotter: sn.into(),
            key: key.into(),
        })?;
        self.client
            .usage(r)
            .await
            .map_err(|e| format!("usage {key}: {e}"))?;
        Ok(())
    }

    async fn list(&mut self, sn: &str, filter: &str) -> Result<usize, String> {
        let r = self.req(pb::ListSnapshotsRequest {
            snapshotter: sn.into(),
            filters: vec![filter.to_string()],
        })?;
        let mut s = self
            .client
            .list(r)
            .await
            .map_err(|e| format!("list: {e}"))?
            .into_inner();
        let mut n = 0;
        while let Some(m) = s.message().await.map_err(|e| format!("list: {e}"))? {
            n += m.info.len();
        }
        Ok(n)
    }

    async fn cleanup(&mut self, sn: &str) -> Result<(), String> {
        let r = self.req(pb::CleanupRequest {
            snapshotter: sn.into(),
        })?;
        match self.client.cleanup(r).await {
            // containerd's snapshots service does not pass Cleanup on; its GC calls it.
            Err(e) if e.code() == tonic::Code::Unimplemented => Ok(()),
            Err(e) => Err(format!("cleanup: {e}")),
            Ok(_) => Ok(()),
        }
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One row: each snapshotter's median and its ratio to the first.
fn report(name: &str, medians: &[(String, Duration)]) {
    let base = medians.first().map(|(_, d)| *d).unwrap_or_default();
    let mut line = format!("{name:<28}");
    for (sn, d) in medians {
        let ratio = if base.is_zero() {
            0.0
        } else {
            d.as_secs_f64() / base.as_secs_f64()
        };
        line.push_str(&format!(" {sn}={:>9.1}us ({ratio:.2}x)", us(*d)));
    }
    println!("{line}");
}

/// Where an active snapshot without parent keeps its files: the bind mount's source.
fn own_dir(m: &[strata_proto::types::Mount]) -> Result<PathBuf, String> {
    let m = m.first().ok_or("no mounts")?;
    if m.r#type == "bind" {
        return Ok(PathBuf::from(&m.source));
    }
    m.options
        .iter()
        .find_map(|o| o.strip_prefix("upperdir="))
        .map(PathBuf::from)
        .ok_or_else(|| format!("no upperdir in {m:?}"))
}

async fn run(args: Args) -> Result<(), String> {
    let client =
        SnapshotsClient::new(unix_channel(&args.containerd)).max_decoding_message_size(16 << 20);
    let run = format!("{}", std::process::id());
    let mut b = Bench {
        client,
        ctx: RequestContext::with_namespace(args.namespace.clone()),
        run,
    };
    let sns = args.snapshotters.clone();
    let r = b.run.clone();

    // A committed base each, so Prepare/View have a parent as in real use.
    for sn in &sns {
        b.prepare(sn, &format!("{r}-base-a"), "").await?;
        b.commit(sn, &format!("{r}-base"), &format!("{r}-base-a"))
            .await?;
    }
    let base = format!("{r}-base");

    let ops = [
        "Prepare",
        "Mounts",
        "Stat",
        "Usage (active)",
        "Commit",
        "View",
        "Stat (committed)",
        "Remove",
    ];
    let mut times: HashMap<(&str, String), Vec<Duration>> = HashMap::new();
    for i in 0..args.iterations {
        for sn in &sns {
            let key = format!("{r}-{i}-a");
            let name = format!("{r}-{i}");
            let view = format!("{r}-{i}-v");
            let mut t =
                |op: &'static str, d: Duration| times.entry((op, sn.clone())).or_default().push(d);
            let s = Instant::now();
            b.prepare(sn, &key, &base).await?;
            t("Prepare", s.elapsed());
            let s = Instant::now();
            b.mounts(sn, &key).await?;
            t("Mounts", s.elapsed());
            let s = Instant::now();
            b.stat(sn, &key).await?;
            t("Stat", s.elapsed());
            let s = Instant::now();
            b.usage(sn, &key).await?;
            t("Usage (active)", s.elapsed());
            let s = Instant::now();
            b.commit(sn, &name, &key).await?;
            t("Commit", s.elapsed());
            let s = Instant::now();
            b.view(sn, &view, &name).await?;
            t("View", s.elapsed());
            let s = Instant::now();
            b.stat(sn, &name).await?;
            t("Stat (committed)", s.elapsed());
            let s = Instant::now();
            b.remove(sn, &view).await?;
            t("Remove", s.elapsed());
            b.remove(sn, &name).await?;
        }
    }
    println!(
        "per call, median of {} rounds, through containerd:",
        args.iterations
    );
    for op in ops {
        let medians: Vec<(String, Duration)> = sns
            .iter()
            .map(|sn| {
                (
                    sn.clone(),
                    median(
                        times
                            .get_mut(&(op, sn.clone()))
                            .map(Vec::as_mut_slice)
                            .unwrap_or(&mut []),
                    ),
                )
            })
            .collect();
        report(op, &medians);
    }

    // List: containerd lists its own metadata and asks the backend for each snapshot.
    let mut list_medians = Vec::new();
    for sn in &sns {
        for i in 0..args.list {
            b.prepare(sn, &format!("{r}-list-{i}"), "").await?;
        }
        let mut v = Vec::new();
        for _ in 0..10 {
            let s = Instant::now();
            let n = b.list(sn, "").await?;
            v.push(s.elapsed());
            if n < args.list {
                return Err(format!("{sn}: listed {n}, expected at least {}", args.list));
            }
        }
        list_medians.push((sn.clone(), median(&mut v)));
        for i in 0..args.list {
            b.remove(sn, &format!("{r}-list-{i}")).await?;
        }
    }
    report(&format!("List of {}", args.list), &list_medians);

    // Commit against layer size: the median of `--file-rounds` commits per size.
    let mut big = Vec::new();
    for &files in &args.files {
        let mut per_sn: HashMap<String, Vec<Duration>> = HashMap::new();
        for round in 0..args.file_rounds {
            for sn in &sns {
                let key = format!("{r}-files-{files}-{round}-a");
                let name = format!("{r}-files-{files}-{round}");
                let m = b.prepare(sn, &key, "").await?;
                let dir = own_dir(&m)?;
                let per_dir = 1000;
                for d in 0..files.div_ceil(per_dir) {
                    let sub = dir.join(format!("d{d}"));
                    std::fs::create_dir(&sub)
                        .map_err(|e| format!("mkdir {}: {e}", sub.display()))?;
                    for f in 0..per_dir.min(files - d * per_dir) {
                        std::fs::write(sub.join(format!("f{f}")), b"strata bench file\n")
                            .map_err(|e| format!("write: {e}"))?;
                    }
                }
                // Every commit starts from a quiet machine: not behind the files' writeback,
                // nor beside strata's background measurement of the previous layer. Twice:
                // on a loop device, the first sync's writeback of the loop file system dirties
                // its backing file, possibly after that sync had passed the file system under
                // it, and the commit's flush would then write those pages out.
                nix::unistd::sync();
                nix::unistd::sync();
                tokio::time::sleep(Duration::from_secs(2)).await;
                let s = Instant::now();
                b.commit(sn, &name, &key).await?;
                per_sn.entry(sn.clone()).or_default().push(s.elapsed());
                // Removed at the end: a removal now would have containerd's GC deleting
                // 100k files under the next commit.
                big.push((sn.clone(), name));
            }
        }
        let medians: Vec<(String, Duration)> = sns
            .iter()
            .map(|sn| {
                (
                    sn.clone(),
                    median(per_sn.get_mut(sn).map(Vec::as_mut_slice).unwrap_or(&mut [])),
                )
            })
            .collect();
        report(&format!("Commit, {files} files"), &medians);
    }

    for (sn, name) in &big {
        b.remove(sn, name).await?;
    }
    for sn in &sns {
        b.remove(sn, &base).await?;
        b.cleanup(sn).await?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strata-snapshotter-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-snapshotter-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
