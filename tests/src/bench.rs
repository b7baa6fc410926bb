//! What strata-bench and the tests share: a sync before each timed step, timing a command,
//! whether a tool is installed, a content API client moving 1 MiB per call, and a process's
//! peak memory and CPU time.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use strata_common::client::unix_channel;
use strata_common::namespace::RequestContext;
use strata_proto::content::content_client::ContentClient;
use strata_proto::content::{ReadContentRequest, WriteAction, WriteContentRequest};
use tonic::codegen::tokio_stream::{self, StreamExt};
use tonic::transport::Channel;

pub const MIB: usize = 1 << 20;

/// Flushes every file system, so writeback of one step does not land on the next.
pub fn sync() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Runs `cmd` after a [`sync`], stdout to /dev/null; its wall time. Panics if it fails.
pub fn timed(cmd: &mut Command) -> f64 {
    sync();
    let t = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let d = t.elapsed().as_secs_f64();
    assert!(status.success(), "{cmd:?}: {status}");
    d
}

/// Whether `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Megabytes (10^6) per second.
pub fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// `n` bytes, incompressible and not all-equal so that no layer can shortcut them; another
/// `seed` gives other bytes (and another digest).
pub fn payload(n: usize, seed: u64) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    if x == 0 {
        x = 1;
    }
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// A content API client on the unix socket `socket` (containerd's or strata-content's) that
/// takes messages of up to 64 MiB. Call it inside a tokio runtime.
pub fn content_client(socket: impl AsRef<Path>) -> ContentClient<Channel> {
    ContentClient::new(unix_channel(socket))
        .max_decoding_message_size(64 * MIB)
        .max_encoding_message_size(64 * MIB)
}

/// The messages of an ingest of `data` (digest `digest`) under `r`: a STAT, 1 MiB WRITEs, and
/// a COMMIT with size and digest carrying the last piece. Built before the clock starts, so
/// that the figure is the store's and not the client's copying.
pub fn ingest_messages(r: &str, data: &[u8], digest: &str) -> Vec<WriteContentRequest> {
    let digest = digest.to_string();
    let total = data.len() as i64;
    let mut msgs = vec![WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: r.to_string(),
        total,
        expected: digest.clone(),
        ..Default::default()
    }];
    let chunks: Vec<&[u8]> = data.chunks(MIB).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        msgs.push(WriteContentRequest {
            action: if last {
                WriteAction::Commit
            } else {
                WriteAction::Write
            } as i32,
            offset: (i * MIB) as i64,
            data: chunk.to_vec(),
            total: if last { total } else { 0 },
            expected: if last { digest.clone() } else { String::new() },
            ..Default::default()
        });
    }
    msgs
}

/// Sends `msgs` (from [`ingest_messages`]) as one Write stream; panics unless the commit is
/// answered with `digest`.
pub async fn ingest(
    c: &mut ContentClient<Channel>,
    cx: &RequestContext,
    digest: &str,
    msgs: Vec<WriteContentRequest>,
) {
    // containerd answers each request before reading the next, so a bounded channel keeps
    // the client one message ahead, as a streaming writer would be.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let sender = tokio::spawn(async move {
        for m in msgs {
            if tx.send(m).await.is_err() {
                break;
            }
        }
    });
    let req = cx
        .request(tokio_stream::wrappers::ReceiverStream::new(rx))
        .expect("a request context");
    let mut resp = c.write(req).await.expect("Write").into_inner();
    let mut last = None;
    while let Some(m) = resp.next().await {
        let m = m.expect("a Write answer");
        if m.action == WriteAction::Commit as i32 {
            last = Some(m);
            break;
        }
    }
    sender.await.expect("the sending task");
    let last = last.expect("commit answered");
    assert_eq!(last.digest, digest);
}

/// Stores `data` under ref `r` in one Write stream (STAT, 1 MiB WRITEs, COMMIT with size and
/// digest, as containerd's pull does), without a namespace; its digest.
pub async fn write_blob(
    c: &mut ContentClient<Channel>,
    r: &str,
    data: &[u8],
) -> Result<String, tonic::Status> {
    let digest = strata_testkit::sha256_digest(data);
    let msgs = ingest_messages(r, data, &digest);
    let mut answers = c.write(tokio_stream::iter(msgs)).await?.into_inner();
    let mut last = None;
    while let Some(a) = answers.next().await {
        last = Some(a?);
    }
    match last {
        Some(a) if a.digest == digest => Ok(digest),
        other => Err(tonic::Status::internal(format!(
            "commit of {digest} answered {other:?}"
        ))),
    }
}

/// The bytes of blob `d` (one Read call, no namespace), checking that its messages come in
/// order.
pub async fn read_blob(c: &mut ContentClient<Channel>, d: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut s = c
        .read(ReadContentRequest {
            digest: d.to_string(),
            offset: 0,
            size: 0,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        if m.offset != out.len() as i64 {
            return Err(tonic::Status::internal(format!(
                "read of {d}: chunk at {} after {} bytes",
                m.offset,
                out.len()
            )));
        }
        out.extend_from_slice(&m.data);
    }
    Ok(out)
}

/// One Read call of `size` bytes (0: to the end) at `off`; how many bytes came back.
pub async fn read_all(
    c: &mut ContentClient<Channel>,
    cx: &RequestContext,
    d: &str,
    off: i64,
    size: i64,
) -> usize {
    let req = cx
        .request(ReadContentRequest {
            digest: d.to_string(),
            offset: off,
            size,
        })
        .expect("a request context");
    let mut s = c.read(req).await.expect("Read").into_inner();
    let mut n = 0;
    while let Some(m) = s.message().await.expect("a Read message") {
        n += m.data.len();
    }
    n
}

/// A field of `/proc/PID/status` in bytes (`VmHWM`, `VmRSS`...); 0 when unreadable.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Starts measuring the peak RSS of process `pid` afresh (`/proc/PID/clear_refs` = 5 resets
/// `VmHWM` to the current RSS). Panics if the kernel refuses.
pub fn reset_peak_rss(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .unwrap_or_else(|e| panic!("resetting the peak RSS of {pid}: {e}"));
}

/// Process `pid`'s peak RSS in bytes since it started or [`reset_peak_rss`] (`VmHWM`).
pub fn peak_rss(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM")
}

/// Process `pid`'s RSS in bytes now (`VmRSS`).
pub fn rss(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS")
}

/// (thread id, thread name, CPU seconds used so far) of every live thread of process `pid`.
fn thread_cpu(pid: u32) -> Vec<(u32, String, f64)> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let tid = task
            .file_name()
            .to_string_lossy()
            .parse::<u32>()
            .unwrap_or(0);
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `tid (comm) state ...`: comm may hold spaces and parentheses, so cut at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
        let field = |i: usize| rest.get(i - 3).and_then(|v| v.parse::<f64>().ok());
        if let (Some(u), Some(s)) = (field(14), field(15)) {
            out.push((tid, stat[open + 1..close].to_string(), (u + s) / ticks));
        }
    }
    out
}

/// Per (process, thread id): (thread name, CPU seconds at the span's start, latest sample).
type ThreadSamples = HashMap<(u32, u32), (String, f64, f64)>;

/// The CPU time some processes use over a span, by thread name, including threads that start
/// and end within it (sampled every 50 ms, so up to the last 50 ms of an ended thread are
/// missed).
pub struct CpuSampler {
    stop: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<ThreadSamples>,
}

impl CpuSampler {
    pub fn start(pids: &[u32]) -> CpuSampler {
        let pids = pids.to_vec();
        let sample = move |seen: &mut ThreadSamples, first: bool| {
            for &pid in &pids {
                for (tid, name, secs) in thread_cpu(pid) {
                    let e = seen.entry((pid, tid)).or_insert((
                        name,
                        if first { secs } else { 0.0 },
                        0.0,
                    ));
                    e.2 = secs;
                }
            }
        };
        let mut seen = ThreadSamples::new();
        sample(&mut seen, true);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let sampler = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                sample(&mut seen, false);
            }
            sample(&mut seen, false);
            seen
        });
        CpuSampler { stop, sampler }
    }

    /// CPU seconds used since [`start`](Self::start), by (process, thread name).
    pub fn stop(self) -> BTreeMap<(u32, String), f64> {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.sampler.join().expect("the CPU sampler");
        let mut out = BTreeMap::new();
        for ((pid, _), (name, first, last)) in seen {
            *out.entry((pid, name)).or_insert(0.0) += (last - first).max(0.0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tools() {
        assert!(have("sh"));
        assert!(!have("strata-no-such-tool"));
    }

    #[test]
    fn payloads_differ_by_seed() {
        let (a, b) = (payload(4099, 0), payload(4099, 1));
        assert_eq!(a.len(), 4099);
        assert_ne!(a, b);
        assert_eq!(a, payload(4099, 0));
    }

    #[test]
    fn reads_own_process_figures() {
        let me = std::process::id();
        let now = rss(me);
        assert!(now > 0 && peak_rss(me) >= now);
        let cpu = CpuSampler::start(&[me]);
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(200) {
            std::hint::black_box(payload(4096, 2));
        }
        let used: f64 = cpu.stop().values().sum();
        assert!(used > 0.0 && used < 5.0, "{used}");
    }
}
