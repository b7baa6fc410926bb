//! Crash safety: the real server binary is SIGKILLed at random moments under a stream of
//! operations, restarted on the same root, and then its metadata, its directories and the
//! operations it acknowledged must agree. Replay a run with `STRATA_CRASH_SEED=<seed>`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use strata_common::client::unix_channel;
use strata_proto::snapshots::snapshots_client::SnapshotsClient;
use strata_snapshotter::Kind;
use tonic::Code;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: enough to spread kill times and choices; reproducible from the seed.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn start_server(dir: &Path, async_remove: bool, durability: &str) -> Child {
    let config = dir.join("snapshotter.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\naddress = \"{}\"\nroot = \"{}\"\nsocket_mode = \"0600\"\nlog_level = \"warn\"\nlog_format = \"text\"\nshutdown_timeout_secs = 1\n\n[snapshotter]\nasync_remove = {async_remove}\ndurability = \"{durability}\"\n",
            dir.join("s.sock").display(),
            dir.join("root").display()
        ),
    )
    .unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_strata-snapshotter"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start strata-snapshotter")
}

async fn wait_ready(dir: &Path, child: &mut Child) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "server exited with {status} at start-up:\n{}",
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            );
        }
        let mut c = SnapshotsClient::new(unix_channel(dir.join("s.sock")));
        match stat(&mut c, "readiness-probe").await {
            Err(s) if s.code() == Code::NotFound => return c,
            _ if Instant::now() > deadline => panic!("server not ready in 30 s"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Prepare { key: String, parent: String },
    View { key: String, parent: String },
    Commit { name: String, key: String },
    Remove { key: String },
    Write { key: String },
    Cleanup,
}

type Model = BTreeMap<String, (Kind, String)>;

fn children(model: &Model, name: &str) -> bool {
    model.values().any(|(_, p)| p == name)
}

fn pick(rng: &mut Rng, model: &Model, n: &mut u64) -> Op {
    let committed: Vec<&String> = model
        .iter()
        .filter(|(_, (k, _))| *k == Kind::Committed)
        .map(|(n, _)| n)
        .collect();
    let active: Vec<&String> = model
        .iter()
        .filter(|(_, (k, _))| *k == Kind::Active)
        .map(|(n, _)| n)
        .collect();
    let leaves: Vec<&String> = model.keys().filter(|k| !children(model, k)).collect();
    *n += 1;
    let parent = if committed.is_empty() || rng.below(3) == 0 {
        String::new()
    } else {
        committed[rng.below(committed.len() as u64) as usize].clone()
    };
    match rng.below(10) {
        0..=2 => Op::Prepare {
            key: format!("k{n}"),
            parent,
        },
        3 if !committed.is_empty() => Op::View {
            key: format!("v{n}"),
            parent,
        },
        4..=5 if !active.is_empty() => Op::Commit {
            name: format!("c{n}"),
            key: active[rng.below(active.len() as u64) as usize].clone(),
        },
        6..=7 if !leaves.is_empty() && model.len() > 6 => Op::Remove {
            key: leaves[rng.below(leaves.len() as u64) as usize].clone(),
        },
        8 if !active.is_empty() => Op::Write {
            key: active[rng.below(active.len() as u64) as usize].clone(),
        },
        9 => Op::Cleanup,
        _ => Op::Prepare {
            key: format!("k{n}"),
            parent,
        },
    }
}

/// Where a snapshot's own files are, from its mounts.
fn own_dir(m: &[strata_snapshotter::Mount]) -> Option<PathBuf> {
    let m = m.first()?;
    if m.kind == "bind" {
        return Some(PathBuf::from(&m.source));
    }
    m.options
        .iter()
        .find_map(|o| o.strip_prefix("upperdir="))
        .map(PathBuf::from)
}

async fn run(c: &mut Client, op: &Op) -> Result<(), tonic::Status> {
    match op {
        Op::Prepare { key, parent } => prepare(c, key, parent).await.map(|_| ()),
        Op::View { key, parent } => view(c, key, parent).await.map(|_| ()),
        Op::Commit { name, key } => commit(c, name, key).await,
        Op::Remove { key } => remove(c, key).await,
        Op::Cleanup => cleanup(c).await,
        Op::Write { key } => {
            let m = mounts(c, key).await?;
            let dir = own_dir(&m).unwrap();
            for i in 0..20 {
                // The server may have died, taking nothing with it: the directory stays.
                let _ = std::fs::write(dir.join(format!("f{i}")), vec![7u8; 3000]);
            }
            Ok(())
        }
    }
}

fn apply_to_model(model: &mut Model, op: &Op) {
    match op {
        Op::Prepare { key, parent } => {
            model.insert(key.clone(), (Kind::Active, parent.clone()));
        }
        Op::View { key, parent } => {
            model.insert(key.clone(), (Kind::View, parent.clone()));
        }
        Op::Commit { name, key } => {
            let (_, parent) = model.remove(key).unwrap();
            model.insert(name.clone(), (Kind::Committed, parent));
        }
        Op::Remove { key } => {
            model.remove(key);
        }
        Op::Write { .. } | Op::Cleanup => {}
    }
}

/// The snapshots the server has, as the model writes them.
async fn actual(c: &mut Client) -> Model {
    let infos = list_batches(c, &[]).await.unwrap().into_iter().flatten();
    infos
        .map(|i| {
            let kind = match i.kind {
                1 => Kind::View,
                2 => Kind::Active,
                3 => Kind::Committed,
                k => panic!("kind {k}"),
            };
            (i.name, (kind, i.parent))
        })
        .collect()
}

/// Metadata rows and directories agree: every row has its directories, no directory is
/// without a row (start-up reaped them), every active or view snapshot mounts from existing
/// paths.
async fn check_consistent(root: &Path, c: &mut Client, model: &Model) {
    let conn = strata_snapshotter::metadata::open(&root.join("metadata.db")).unwrap();
    let ids = strata_snapshotter::metadata::ids(&conn).unwrap();
    let dirs: BTreeSet<String> = std::fs::read_dir(root.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let want: BTreeSet<String> = ids.iter().map(u64::to_string).collect();
    assert_eq!(
        dirs, want,
        "directories under snapshots/ are exactly the rows' ids"
    );
    for id in &ids {
        assert!(
            root.join(format!("snapshots/{id}/fs")).is_dir(),
            "snapshot {id} has fs/"
        );
    }
    assert_eq!(model.len(), ids.len(), "one row per snapshot");
    for (name, (kind, _)) in model {
        if *kind == Kind::Committed {
            continue;
        }
        let m = mounts(c, name).await.unwrap();
        let own = own_dir(&m);
        for path in m[0]
            .options
            .iter()
            .filter_map(|o| o.strip_prefix("lowerdir="))
            .flat_map(|l| l.split(':'))
            .map(PathBuf::from)
            .chain(own)
        {
            assert!(path.is_dir(), "{name}: {} exists", path.display());
        }
        if *kind == Kind::Active && m[0].kind == "overlay" {
            let work = m[0]
                .options
                .iter()
                .find_map(|o| o.strip_prefix("workdir="))
                .unwrap();
            assert!(Path::new(work).is_dir(), "{name}: work dir exists");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_leaves_metadata_and_directories_in_agreement() {
    let seed = std::env::var("STRATA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test seed {seed} (STRATA_CRASH_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let root = dir.join("root");
    let mut model = Model::new();
    let mut n = 0u64;
    let mut kills_mid_op = 0;
    let rounds = 15;
    for round in 0..rounds {
        let async_remove = round % 2 == 0;
        // Both durability modes must survive SIGKILL.
        let durability = if round % 3 == 1 { "process" } else { "full" };
        let mut child = start_server(dir, async_remove, durability);
        let mut c = wait_ready(dir, &mut child).await;

        let after_restart = actual(&mut c).await;
        assert_eq!(
            after_restart, model,
            "round {round}: the server has exactly what it acknowledged"
        );
        check_consistent(&root, &mut c, &model).await;

        // Operations until the kill; the op in flight then may or may not have happened.
        let killed = Arc::new(AtomicBool::new(false));
        let kill_after = Duration::from_millis(10 + rng.below(250));
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let k = killed.clone();
        let killer = tokio::spawn(async move {
            tokio::time::sleep(kill_after).await;
            k.store(true, Ordering::SeqCst);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        });
        let mut done = 0;
        let in_flight = loop {
            let op = pick(&mut rng, &model, &mut n);
            let was_killed = killed.load(Ordering::SeqCst);
            match run(&mut c, &op).await {
                Ok(()) => {
                    apply_to_model(&mut model, &op);
                    done += 1;
                }
                Err(status) => {
                    assert!(
                        was_killed || killed.load(Ordering::SeqCst),
                        "round {round}: {op:?} failed before the kill: {status:?}"
                    );
                    break op;
                }
            }
        };
        killer.await.unwrap();
        child.wait().unwrap();
        eprintln!(
            "round {round}: killed after {kill_after:?}, {done} ops acknowledged, in flight: {in_flight:?}"
        );

        // Restart and settle the in-flight op: it happened entirely or not at all.
        let mut child2 = start_server(dir, async_remove, durability);
        let mut c = wait_ready(dir, &mut child2).await;
        let got = actual(&mut c).await;
        let mut applied = model.clone();
        apply_to_model(&mut applied, &in_flight);
        if got == applied && applied != model {
            kills_mid_op += 1;
            model = applied;
        }
        assert_eq!(
            got, model,
            "round {round}: state after restart is the acknowledged one (plus, at most, the whole in-flight op {in_flight:?})"
        );
        check_consistent(&root, &mut c, &model).await;
        child2.kill().unwrap();
        child2.wait().unwrap();
    }
    eprintln!("{rounds} kills, {kills_mid_op} of them after the in-flight op was applied");
    assert!(!model.is_empty());
}
