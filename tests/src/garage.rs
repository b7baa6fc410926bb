//! A private 3-node [Garage](https://garagehq.deuxfleurs.fr/) cluster, the S3-compatible object
//! store strata-content's `s3` backend is tested against: node `i` (0, 1, 2) listens on
//! 127.0.0.{i+1} only, with its own metadata and data dirs in a scratch dir, replication factor
//! 3 over three zones, a bucket and a key allowed on it. Everything is set up through Garage's
//! own CLI (`garage -c nodeI.toml ...`), as an operator would.
//!
//! Garage is built once per machine by `scripts/install-deps.sh` (see [`garage_binary`]).
//!
//! Things about Garage worth knowing when writing tests against it:
//! - a killed node is noticed by each peer on its own, only when a ping times out, 5-9 s later;
//!   until then `garage status` still lists it as healthy;
//! - with one node of three down every partition keeps its quorum (2 of 3): reads and writes
//!   keep working, also in the seconds before the death is noticed;
//! - a restarted node does not rejoin by itself quickly (peers retry a lost node at growing
//!   intervals, 30 s and more), so [`GarageCluster::start_node`] connects it to the running
//!   nodes and them to it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use crate::logs;
use crate::process;
use crate::tmp::{self, TestDir};

/// The Garage release the harness runs; `scripts/install-deps.sh` builds the same one
/// (`GARAGE_VERSION` there).
pub const GARAGE_VERSION: &str = "2.5.0";
/// Nodes in a cluster; also Garage's replication factor here.
pub const NODES: usize = 3;
/// How long a node gets to answer after it is started, and the cluster to become healthy.
/// Generous: a loaded CI machine with two cores may be building or running other tests.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node gets between SIGTERM and SIGKILL in [`GarageCluster::stop`].
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Bound on one `garage` CLI invocation.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

const REGION: &str = "garage";
const BUCKET: &str = "strata";
const KEY_NAME: &str = "strata-test";
/// Like Garage's quick-start; path-style requests (`http://IP:PORT/BUCKET/KEY`) work whatever
/// it is, since an IP address never ends with it.
const ROOT_DOMAIN: &str = ".s3.garage.localhost";
/// Capacity assigned to each node in the layout. Only a weight: Garage does not reserve it.
const NODE_CAPACITY: &str = "1G";

/// Ports are handed out in slots of three (S3 API, RPC, admin API), the same on each node's
/// address, from below Linux's default ephemeral range (32768-60999) so that outgoing
/// connections do not take them.
const PORT_FIRST: u16 = 20000;
const PORT_SLOTS: u16 = 4000;
const PORTS_PER_SLOT: u16 = 3;

/// Variables the `garage` binary reads that would override the generated configs.
const GARAGE_ENV: &[&str] = &[
    "GARAGE_CONFIG_FILE",
    "GARAGE_RPC_HOST",
    "GARAGE_RPC_SECRET",
    "GARAGE_RPC_SECRET_FILE",
    "GARAGE_ADMIN_TOKEN",
    "GARAGE_ADMIN_TOKEN_FILE",
    "GARAGE_METRICS_TOKEN",
    "GARAGE_METRICS_TOKEN_FILE",
    "GARAGE_ALLOW_WORLD_READABLE_SECRETS",
];

/// The `garage` binary: `$STRATA_GARAGE`, else the one `scripts/install-deps.sh` builds into
/// `/var/cache/strata/garage-VERSION/bin/garage`; checked to exist.
pub fn garage_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("STRATA_GARAGE").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::new(format!(
                "STRATA_GARAGE={} is not a file",
                path.display()
            )))
        };
    }
    let path = PathBuf::from(format!(
        "/var/cache/strata/garage-{GARAGE_VERSION}/bin/garage"
    ));
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::new(format!(
            "garage {GARAGE_VERSION} not found at {} (run scripts/install-deps.sh as root once, \
             which builds it there, or set STRATA_GARAGE to a garage binary)",
            path.display()
        )))
    }
}

/// What `garage json-api GetClusterHealth` reports, as seen from one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterHealth {
    /// `healthy`, `degraded` or `unavailable`.
    pub status: String,
    pub known_nodes: u64,
    /// Nodes this one is connected to, itself included.
    pub connected_nodes: u64,
    pub storage_nodes: u64,
    pub storage_nodes_up: u64,
    pub partitions: u64,
    /// Partitions with a quorum of their nodes up: reads and writes to them work.
    pub partitions_quorum: u64,
    /// Partitions with all their nodes up.
    pub partitions_all_ok: u64,
}

impl ClusterHealth {
    fn parse(json: &str) -> Result<ClusterHealth> {
        let v: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| Error::new(format!("GetClusterHealth answered {json:?}: {e}")))?;
        let num = |key: &str| {
            v.get(key).and_then(|n| n.as_u64()).ok_or_else(|| {
                Error::new(format!(
                    "GetClusterHealth answer has no number {key}: {json}"
                ))
            })
        };
        Ok(ClusterHealth {
            status: v
                .get("status")
                .and_then(|s| s.as_str())
                .ok_or_else(|| {
                    Error::new(format!("GetClusterHealth answer has no status: {json}"))
                })?
                .to_string(),
            known_nodes: num("knownNodes")?,
            connected_nodes: num("connectedNodes")?,
            storage_nodes: num("storageNodes")?,
            storage_nodes_up: num("storageNodesUp")?,
            partitions: num("partitions")?,
            partitions_quorum: num("partitionsQuorum")?,
            partitions_all_ok: num("partitionsAllOk")?,
        })
    }

    /// Every storage node up and every partition fully replicated.
    pub fn is_fully_healthy(&self) -> bool {
        self.status == "healthy"
            && self.storage_nodes > 0
            && self.storage_nodes_up == self.storage_nodes
            && self.partitions_all_ok == self.partitions
    }
}

/// The three ports of a cluster, reserved against other clusters of this harness (in this
/// and other processes) by a lock file held as long as the cluster lives.
#[derive(Debug)]
struct Ports {
    s3: u16,
    rpc: u16,
    admin: u16,
    _lock: Flock<File>,
}

impl Ports {
    /// The first slot, starting from one derived from our pid (so parallel test processes
    /// start apart), whose lock we get and whose ports every node address can bind now.
    fn reserve() -> Result<Ports> {
        let lock_dir = tmp::base_dir().join("strata-garage-ports");
        std::fs::create_dir_all(&lock_dir)
            .map_err(|e| Error::io(format!("creating {}", lock_dir.display()), e))?;
        let first = u16::try_from(std::process::id() % u32::from(PORT_SLOTS)).unwrap_or(0);
        for n in 0..PORT_SLOTS {
            let slot = (first + n) % PORT_SLOTS;
            let base = PORT_FIRST + slot * PORTS_PER_SLOT;
            let path = lock_dir.join(format!("{base}.lock"));
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            let ports = [base, base + 1, base + 2];
            let free = (0..NODES).all(|i| {
                ports
                    .iter()
                    .all(|&p| TcpListener::bind((node_ip(i), p)).is_ok())
            });
            if free {
                return Ok(Ports {
                    s3: base,
                    rpc: base + 1,
                    admin: base + 2,
                    _lock: lock,
                });
            }
        }
        Err(Error::new(format!(
            "no free slot of {PORTS_PER_SLOT} ports in {PORT_FIRST}-{} on 127.0.0.1-{NODES} \
             (locks in {})",
            PORT_FIRST + PORT_SLOTS * PORTS_PER_SLOT - 1,
            lock_dir.display()
        )))
    }
}

/// Node `i`'s address: 127.0.0.{i+1}.
fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, u8::try_from(i + 1).unwrap_or(u8::MAX))
}

#[derive(Debug)]
struct Node {
    ip: Ipv4Addr,
    config: PathBuf,
    log: PathBuf,
    /// `garage node id -q`: `FULL_HEX_ID@IP:RPC_PORT`, known once the node first started.
    id: String,
    child: Option<Child>,
}

impl Node {
    fn name(&self) -> String {
        format!("garage {}", self.ip)
    }

    /// Ok while the process runs; an error with its exit status once it has exited.
    fn still_running(&mut self) -> Result<()> {
        let name = self.name();
        let Some(child) = self.child.as_mut() else {
            return Err(Error::new(format!("{name} is not running")));
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::new(format!(
                "{name} (pid {}) exited: {status}",
                child.id()
            ))),
            Err(e) => Err(Error::io(format!("waiting for {name}"), e)),
        }
    }
}

/// A running 3-node Garage cluster with bucket [`bucket`](Self::bucket) and a key allowed to
/// read, write and own it. Nodes are numbered 0, 1, 2. Dropping it SIGKILLs every node, then
/// removes the scratch dir.
#[derive(Debug)]
pub struct GarageCluster {
    binary: PathBuf,
    nodes: Vec<Node>,
    ports: Ports,
    access_key_id: String,
    secret_access_key: String,
    credentials: PathBuf,
    // Last, so the nodes are gone before their dirs are removed.
    dir: TestDir,
}

impl GarageCluster {
    /// Starts the three nodes, connects them, applies a layout of one node per zone, waits
    /// until every node reports the cluster fully healthy, and creates the bucket and the key.
    /// A failure's message ends with the tails of the nodes' logs.
    pub fn start() -> Result<GarageCluster> {
        let binary = garage_binary()?;
        let dir = TestDir::new("garage")?;
        let ports = Ports::reserve()?;
        let secret = rpc_secret()?;
        let mut nodes = Vec::with_capacity(NODES);
        for i in 0..NODES {
            let ip = node_ip(i);
            let meta = dir.join(format!("node{i}/meta"));
            let data = dir.join(format!("node{i}/data"));
            for d in [&meta, &data] {
                std::fs::create_dir_all(d)
                    .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
            }
            let config = dir.join(format!("node{i}.toml"));
            let text = format!(
                "# garage node {i} of a strata-tests cluster\n\
                 metadata_dir = {meta}\n\
                 data_dir = {data}\n\
                 db_engine = \"sqlite\"\n\
                 replication_factor = {NODES}\n\
                 # test data: no fsync\n\
                 metadata_fsync = false\n\
                 data_fsync = false\n\
                 rpc_bind_addr = \"{ip}:{rpc}\"\n\
                 rpc_public_addr = \"{ip}:{rpc}\"\n\
                 rpc_secret = \"{secret}\"\n\
                 \n\
                 [s3_api]\n\
                 s3_region = \"{REGION}\"\n\
                 api_bind_addr = \"{ip}:{s3}\"\n\
                 root_domain = \"{ROOT_DOMAIN}\"\n\
                 \n\
                 [admin]\n\
                 api_bind_addr = \"{ip}:{admin}\"\n",
                meta = toml_string(&meta)?,
                data = toml_string(&data)?,
                rpc = ports.rpc,
                s3 = ports.s3,
                admin = ports.admin,
            );
            write_private(&config, &text)?;
            nodes.push(Node {
                ip,
                config,
                log: dir.join(format!("node{i}.log")),
                id: String::new(),
                child: None,
            });
        }
        let credentials = dir.join("credentials");
        let mut cluster = GarageCluster {
            binary,
            nodes,
            ports,
            access_key_id: String::new(),
            secret_access_key: String::new(),
            credentials,
            dir,
        };
        if let Err(e) = cluster.bootstrap() {
            let tails = cluster.log_tails(40);
            cluster.kill_all();
            return Err(Error::new(format!("starting a garage cluster: {e}")).with_details(tails));
        }
        Ok(cluster)
    }

    fn bootstrap(&mut self) -> Result<()> {
        for i in 0..NODES {
            self.spawn(i)?;
        }
        for i in 0..NODES {
            self.wait_answering(i, START_TIMEOUT)?;
            let id = self.garage(i, ["node", "id", "-q"])?.trim().to_string();
            if !id.contains('@') {
                return Err(Error::new(format!(
                    "`garage node id -q` of node {i} printed {id:?}, not ID@ADDRESS"
                )));
            }
            self.nodes[i].id = id;
        }
        for i in 1..NODES {
            let peer = self.nodes[i].id.clone();
            self.garage(0, ["node", "connect", &peer])?;
        }
        for i in 0..NODES {
            let hex = self.node_id(i).to_string();
            let zone = format!("dc{}", i + 1);
            self.garage(
                0,
                ["layout", "assign", "-z", &zone, "-c", NODE_CAPACITY, &hex],
            )?;
        }
        self.garage(0, ["layout", "apply", "--version", "1"])?;
        self.wait_healthy(START_TIMEOUT)?;

        self.garage(0, ["bucket", "create", BUCKET])?;
        self.garage(0, ["key", "create", KEY_NAME])?;
        self.access_key_id = self
            .garage(0, ["key", "info", "--key-id", KEY_NAME])?
            .trim()
            .to_string();
        self.secret_access_key = self
            .garage(0, ["key", "info", "--secret-key", KEY_NAME])?
            .trim()
            .to_string();
        if self.access_key_id.is_empty() || self.secret_access_key.is_empty() {
            return Err(Error::new(format!(
                "`garage key info` printed no key id or secret for {KEY_NAME}"
            )));
        }
        self.garage(
            0,
            [
                "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", KEY_NAME,
            ],
        )?;
        write_private(
            &self.credentials,
            &format!(
                "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                self.access_key_id, self.secret_access_key
            ),
        )
    }

    /// `http://127.0.0.{i+1}:PORT`: node `i`'s S3 API (path-style, plain HTTP).
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}:{}", self.nodes[i].ip, self.ports.s3)
    }

    /// `http://127.0.0.{i+1}:PORT`: node `i`'s admin API (no admin token is configured, so
    /// only its unauthenticated endpoints such as `/health` answer).
    pub fn admin_endpoint(&self, i: usize) -> String {
        format!("http://{}:{}", self.nodes[i].ip, self.ports.admin)
    }

    /// The S3 region to sign requests for.
    pub fn region(&self) -> &str {
        REGION
    }

    pub fn bucket(&self) -> &str {
        BUCKET
    }

    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    /// The key in an AWS shared-credentials file (profile `default`), for
    /// `AWS_SHARED_CREDENTIALS_FILE`.
    pub fn credentials_file(&self) -> &Path {
        &self.credentials
    }

    /// Node `i`'s full hex node ID (public key).
    pub fn node_id(&self, i: usize) -> &str {
        let id = &self.nodes[i].id;
        id.split_once('@').map_or(id.as_str(), |(hex, _)| hex)
    }

    /// The first 16 hex digits of node `i`'s ID, as `garage status` shows it.
    pub fn short_node_id(&self, i: usize) -> &str {
        let hex = self.node_id(i);
        hex.get(..16).unwrap_or(hex)
    }

    /// The scratch dir: `nodeI.toml`, `nodeI.log`, `nodeI/{meta,data}`, `credentials`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Node `i`'s config file, for `garage -c` (see also [`garage`](Self::garage)).
    pub fn config_path(&self, i: usize) -> &Path {
        &self.nodes[i].config
    }

    /// Node `i`'s log: everything each of its runs wrote, runs separated by a harness line.
    pub fn log_path(&self, i: usize) -> &Path {
        &self.nodes[i].log
    }

    /// Whether node `i`'s process is alive (not whether the cluster sees it up).
    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes[i].still_running().is_ok()
    }

    /// The last `lines` lines of every node's log, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|n| logs::titled_tail(&n.name(), &n.log, lines))
            .collect()
    }

    /// Runs `garage -c nodeI.toml ARGS...` against node `i` and returns its stdout; an error
    /// with the command and its output unless it exits 0.
    pub fn garage<I, S>(&self, i: usize, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let node = self.node(i)?;
        let mut all: Vec<std::ffi::OsString> = vec!["-c".into(), node.config.clone().into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        let command = process::command_line(self.binary.as_os_str(), &all);
        let mut cmd = self.command();
        cmd.args(&all);
        let output = process::run_with_timeout(&mut cmd, CLI_TIMEOUT)
            .map_err(|e| Error::io(format!("running {command}"), e))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(Error::new(process::describe_output(&command, &output)))
        }
    }

    /// `garage status` as seen from node `i`.
    pub fn status(&self, i: usize) -> Result<String> {
        self.garage(i, ["status"])
    }

    /// The cluster's health as seen from node `i` (`garage json-api GetClusterHealth`).
    pub fn health(&self, i: usize) -> Result<ClusterHealth> {
        ClusterHealth::parse(&self.garage(i, ["json-api", "GetClusterHealth"])?)
    }

    /// Polls node `i`'s view of the cluster's health until `accept` holds, for at most
    /// `timeout`; `what` names the condition in the error.
    pub fn wait_health(
        &self,
        i: usize,
        timeout: Duration,
        what: &str,
        accept: impl Fn(&ClusterHealth) -> bool,
    ) -> Result<ClusterHealth> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.health(i) {
                Ok(h) if accept(&h) => return Ok(h),
                Ok(h) => format!("{h:?}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::new(format!(
                    "node {i} did not report {what} within {timeout:?}; last answer: {last}"
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until every node is running and reports all three nodes up and every partition
    /// fully replicated.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for i in 0..NODES {
            if self.nodes[i].child.is_none() {
                return Err(Error::new(format!("node {i} is not running")));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait_health(i, left, "a fully healthy cluster", |h| {
                h.is_fully_healthy() && h.storage_nodes_up == NODES as u64
            })?;
        }
        Ok(())
    }

    /// SIGKILLs node `i` and reaps it. A no-op if it is not running.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        self.node(i)?;
        if let Some(mut child) = self.nodes[i].child.take() {
            process::signal(&mut child, Signal::SIGKILL)
                .map_err(|e| Error::io(format!("killing node {i}"), e))?;
            child
                .wait()
                .map_err(|e| Error::io(format!("reaping node {i}"), e))?;
        }
        Ok(())
    }

    /// SIGKILLs every node.
    pub fn kill_all(&mut self) {
        for i in 0..self.nodes.len() {
            if let Err(e) = self.kill(i) {
                eprintln!("strata-tests: {e}");
            }
        }
    }

    /// SIGTERM to every node, SIGKILL after [`STOP_GRACE`]. Idempotent.
    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                process::terminate(&mut child, STOP_GRACE);
            }
        }
    }

    /// Starts node `i` again (same config, dirs and ports) after [`kill`](Self::kill) or
    /// [`stop`](Self::stop), and waits until it answers and is connected both ways to every
    /// other running node. The cluster may still report it down for a moment; use
    /// [`wait_healthy`](Self::wait_healthy) for that.
    pub fn start_node(&mut self, i: usize) -> Result<()> {
        self.node(i)?;
        if self.nodes[i].child.is_some() {
            return Err(Error::new(format!("node {i} is already running")));
        }
        self.restart(&[i]).map_err(|e| {
            e.with_details(logs::titled_tail(
                &self.nodes[i].name(),
                &self.nodes[i].log,
                40,
            ))
        })
    }

    /// Starts every node that is not running and waits until the cluster is fully healthy.
    pub fn start_all(&mut self) -> Result<()> {
        let stopped: Vec<usize> = (0..NODES)
            .filter(|&i| self.nodes[i].child.is_none())
            .collect();
        self.restart(&stopped)
            .and_then(|()| self.wait_healthy(START_TIMEOUT))
            .map_err(|e| e.with_details(self.log_tails(40)))
    }

    fn restart(&mut self, which: &[usize]) -> Result<()> {
        for &i in which {
            self.spawn(i)?;
        }
        for &i in which {
            self.wait_answering(i, START_TIMEOUT)?;
        }
        // Peers retry a lost node only every 30 s or more: connect each pair explicitly.
        let running: Vec<usize> = (0..NODES)
            .filter(|&i| self.nodes[i].child.is_some())
            .collect();
        for &i in which {
            for &j in &running {
                if i != j {
                    let (to_j, to_i) = (self.nodes[j].id.clone(), self.nodes[i].id.clone());
                    self.garage(i, ["node", "connect", &to_j])?;
                    self.garage(j, ["node", "connect", &to_i])?;
                }
            }
        }
        let want = running.len() as u64;
        for &i in &running {
            self.wait_health(i, START_TIMEOUT, &format!("{want} connected nodes"), |h| {
                h.connected_nodes >= want
            })?;
        }
        Ok(())
    }

    fn node(&self, i: usize) -> Result<&Node> {
        self.nodes
            .get(i)
            .ok_or_else(|| Error::new(format!("no garage node {i} (nodes are 0..{NODES})")))
    }

    /// A `garage` command with an environment that cannot override the generated configs.
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        for var in GARAGE_ENV {
            cmd.env_remove(var);
        }
        cmd.env("NO_COLOR", "1").env("RUST_LOG", "info");
        cmd
    }

    /// Starts node `i`'s server process, output appended to its log.
    fn spawn(&mut self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| Error::io(format!("opening {}", node.log.display()), e))?;
        let args = [
            std::ffi::OsString::from("-c"),
            node.config.clone().into(),
            "server".into(),
        ];
        let command = process::command_line(self.binary.as_os_str(), &args);
        writeln!(log, "==== strata-tests: {command} ====")
            .map_err(|e| Error::io(format!("writing {}", node.log.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io(format!("duplicating {}", node.log.display()), e))?;
        let child = self
            .command()
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| Error::io(format!("starting {command}"), e))?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// Waits until node `i` answers on RPC (`GetClusterHealth` through the CLI) and accepts
    /// connections on its S3 port.
    fn wait_answering(&mut self, i: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let s3 = SocketAddr::from((self.nodes[i].ip, self.ports.s3));
        loop {
            self.nodes[i].still_running()?;
            let last = match self.health(i) {
                Ok(_) => match TcpStream::connect_timeout(&s3, Duration::from_secs(1)) {
                    Ok(_) => return Ok(()),
                    Err(e) => format!("connecting to {s3}: {e}"),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::new(format!(
                    "node {i} did not answer within {timeout:?}: {last}"
                )));
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for GarageCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// 32 random bytes from /dev/urandom, hex: Garage's `rpc_secret`.
fn rpc_secret() -> Result<String> {
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| Error::io("reading /dev/urandom", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `path` as a TOML basic string.
fn toml_string(path: &Path) -> Result<String> {
    let s = path
        .to_str()
        .filter(|s| !s.chars().any(char::is_control))
        .ok_or_else(|| Error::new(format!("{} cannot go in a TOML config", path.display())))?;
    Ok(format!(
        "\"{}\"",
        s.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// Writes `text` to a new file only root can read (configs and credentials hold secrets).
fn write_private(path: &Path, text: &str) -> Result<()> {
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_health() {
        let h = ClusterHealth::parse(
            r#"{"connectedNodes":2,"knownNodes":3,"partitions":256,"partitionsAllOk":0,
                "partitionsQuorum":256,"status":"degraded","storageNodes":3,"storageNodesUp":2}"#,
        )
        .unwrap();
        assert_eq!(h.status, "degraded");
        assert_eq!(h.storage_nodes_up, 2);
        assert_eq!(h.partitions_quorum, 256);
        assert!(!h.is_fully_healthy());
        assert!(ClusterHealth::parse(r#"{"status":"healthy"}"#).is_err());
    }

    #[test]
    fn quotes_toml_strings() {
        assert_eq!(toml_string(Path::new("/tmp/a")).unwrap(), r#""/tmp/a""#);
        assert_eq!(
            toml_string(Path::new(r#"/a"b\c"#)).unwrap(),
            r#""/a\"b\\c""#
        );
        assert!(toml_string(Path::new("/a\nb")).is_err());
    }

    #[test]
    fn node_addresses() {
        assert_eq!(node_ip(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(node_ip(2), Ipv4Addr::new(127, 0, 0, 3));
    }
}
