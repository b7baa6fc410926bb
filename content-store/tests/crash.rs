//! The real binary killed with SIGKILL in the middle of writes and commits, then restarted on
//! the same root: committed blobs intact, acknowledged ingest data still there (but at most
//! the last few queued messages) and resumable,
//! and no blob visible whose bytes do not hash to its name.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use common::*;
use strata_content::append::UNWRITTEN_MAX_BYTES;
use strata_proto::content::{ListContentRequest, ListStatusesRequest, StatusRequest};

fn spawn(dir: &Path) -> Child {
    let config = dir.join("content.toml");
    if !config.exists() {
        let text = strata_common::cli::render(&strata_content::config::Config::default()).unwrap();
        std::fs::write(&config, text).unwrap();
    }
    Command::new(env!("CARGO_BIN_EXE_strata-content"))
        .arg("--config")
        .arg(&config)
        .arg("--address")
        .arg(dir.join("content.sock"))
        .arg("--root")
        .arg(dir.join("root"))
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_ready(c: &mut Client) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match c.list_statuses(ListStatusesRequest::default()).await {
            Ok(_) => return,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("strata-content did not come up: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_write_then_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("content.sock");
    let mut child = spawn(tmp.path());
    let mut c = client(&sock);
    wait_ready(&mut c).await;

    let committed = bytes(4 << 20, 42);
    let committed_digest = ingest(&mut c, "before-crash", &committed, 1 << 20)
        .await
        .unwrap();

    // Long writers, each recording the offset the server acknowledged.
    let big: Vec<Vec<u8>> = (0..4).map(|i| bytes(64 << 20, i)).collect();
    let acked: Vec<Arc<AtomicI64>> = (0..4).map(|_| Arc::new(AtomicI64::new(0))).collect();
    let mut tasks = Vec::new();
    for (i, data) in big.iter().enumerate() {
        let (mut c, data, acked) = (client(&sock), data.clone(), acked[i].clone());
        tasks.push(tokio::spawn(async move {
            let r = format!("long-{i}");
            let (mut w, _) = Writer::open(&mut c, stat_req(&r, data.len() as i64, &sha256(&data)))
                .await
                .map_err(|e| e.to_string())?;
            let mut off = 0i64;
            for piece in data.chunks(256 << 10) {
                off = w.write(off, piece).await.map_err(|e| e.to_string())?.offset;
                acked.store(off, Ordering::SeqCst);
            }
            Ok::<_, String>(())
        }));
    }
    // Small blobs committed back to back, so the kill likely lands inside a commit.
    let small_done = Arc::new(std::sync::Mutex::new(Vec::<(String, Vec<u8>)>::new()));
    {
        let (mut c, done) = (client(&sock), small_done.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0u32.. {
                let data = bytes(20_000 + (n as usize % 7) * 10_000, (n % 251) as u8);
                let data = [n.to_le_bytes().as_slice(), &data].concat();
                let d = ingest(&mut c, &format!("small-{n}"), &data, 64 << 10)
                    .await
                    .map_err(|e| e.to_string())?;
                done.lock().unwrap().push((d, data));
            }
            Ok(())
        }));
    }
    // Kill once every long writer is well under way and a small blob has been committed
    // (each commit syncs, so under load the writers can get ahead of the first one).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.iter().any(|a| a.load(Ordering::SeqCst) < (4 << 20))
        || small_done.lock().unwrap().is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writers made no progress"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The committer loops forever, so it can only have ended by losing the server (a long
    // writer on a fast machine might just have finished its 64 MiB).
    let committer = tasks.pop().unwrap();
    assert!(
        committer.await.unwrap().is_err(),
        "the committer saw the server die"
    );
    for t in tasks {
        let _ = t.await.unwrap();
    }
    let acked: Vec<i64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    let small_done = small_done.lock().unwrap().clone();
    assert!(!small_done.is_empty());

    let mut child = spawn(tmp.path());
    let mut c = client(&sock);
    wait_ready(&mut c).await;

    assert_eq!(
        read(&mut c, &committed_digest, 0, 0).await.unwrap(),
        committed
    );
    for (d, data) in &small_done {
        assert_eq!(
            &read(&mut c, d, 0, 0).await.unwrap(),
            data,
            "acknowledged commit {d}"
        );
    }
    // Nothing half-visible: every listed blob hashes to its digest.
    let mut listed = c
        .list(ListContentRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(batch) = listed.message().await.unwrap() {
        for info in batch.info {
            let data = read(&mut c, &info.digest, 0, 0).await.unwrap();
            assert_eq!(sha256(&data), info.digest);
            assert_eq!(data.len() as i64, info.size);
            n += 1;
        }
    }
    assert!(
        n > small_done.len(),
        "the pre-crash blob and the small ones are listed"
    );

    // The interrupted ingests kept all they acknowledged but the last few queued messages
    // (strata_content::append: a kill may take back at most UNWRITTEN_MAX_BYTES); resume them
    // from where Status says, as containerd's writers do, and commit them.
    for (i, data) in big.iter().enumerate() {
        let r = format!("long-{i}");
        let st = c
            .status(StatusRequest { r#ref: r.clone() })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert!(
            st.offset >= acked[i] - UNWRITTEN_MAX_BYTES as i64,
            "{r}: offset {} more than {UNWRITTEN_MAX_BYTES} short of acked {}",
            st.offset,
            acked[i]
        );
        assert_eq!(st.total, data.len() as i64);
        let d = ingest(&mut c, &r, data, 1 << 20).await.unwrap();
        assert_eq!(read(&mut c, &d, 0, 0).await.unwrap(), *data);
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
