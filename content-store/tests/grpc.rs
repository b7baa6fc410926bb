//! Every RPC and error code of the content API over a real socket, with containerd's content
//! conformance cases (`core/content/testsuite`) ported where they apply to a server.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use common::*;
use strata_proto::content::{
    AbortRequest, DeleteContentRequest, Info, InfoRequest, ListContentRequest, ListStatusesRequest,
    ReadContentRequest, StatusRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use tonic::Code;

async fn setup(backend: Backend) -> (tempfile::TempDir, Server, Client) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let server = Server::start_with(&root, tmp.path(), &backend).await;
    let client = server.client();
    (tmp, server, client)
}

// Each case runs against both backends: local disk, and S3 on a real Garage cluster.
cases!(
    write_commit_info_read,
    info_update_delete_errors,
    list_and_list_statuses_filter_and_batch,
    write_protocol_errors,
    existing_blob_is_already_exists,
    second_writer_on_a_ref_is_unavailable_until_the_first_ends,
    concurrent_writers_on_one_ref_exactly_one_wins_at_a_time,
    two_refs_writing_one_digest,
    resume_after_dropped_connection,
    abort_removes_the_ingest,
    blobs_are_stored_in_containerds_layout_read_only,
    large_writes_hash_in_background_yet_digests_given_and_commit_are_exact,
    commit_of_an_existing_blob_leaves_the_writer_knowing_its_digest,
);

async fn info(c: &mut Client, d: &str) -> Result<Info, tonic::Status> {
    Ok(c.info(InfoRequest {
        digest: d.to_string(),
    })
    .await?
    .into_inner()
    .info
    .unwrap())
}

async fn status_offset(c: &mut Client, r: &str) -> Result<i64, tonic::Status> {
    Ok(c.status(StatusRequest {
        r#ref: r.to_string(),
    })
    .await?
    .into_inner()
    .status
    .unwrap()
    .offset)
}

async fn list(c: &mut Client, filters: &[&str]) -> Result<Vec<Info>, tonic::Status> {
    let mut s = c
        .list(ListContentRequest {
            filters: filters.iter().map(|f| f.to_string()).collect(),
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        assert!(
            !m.info.is_empty() && m.info.len() <= 100,
            "batches of 1..=100"
        );
        out.extend(m.info);
    }
    Ok(out)
}

async fn write_commit_info_read(backend: Backend) {
    let (_tmp, server, mut c) = setup(backend).await;
    let data = bytes(3 << 20 | 12345, 1);
    let d = sha256(&data);

    let (mut w, st) = Writer::open(&mut c, stat_req("ref-1", data.len() as i64, &d))
        .await
        .unwrap();
    assert_eq!(st.action, WriteAction::Stat as i32);
    assert_eq!((st.offset, st.total), (0, data.len() as i64));
    assert_eq!(st.digest, sha256(b""), "STAT reports the digest so far");
    assert!(st.started_at.is_some() && st.updated_at.is_some());
    let r = w.write(0, &data[..1000]).await.unwrap();
    assert_eq!((r.action, r.offset), (WriteAction::Write as i32, 1000));
    assert_eq!(r.digest, sha256(&data[..1000]));
    // Status from another connection sees the in-progress ingest.
    assert_eq!(
        status_offset(&mut server.client(), "ref-1").await.unwrap(),
        1000
    );
    let mut labels = HashMap::new();
    labels.insert("containerd.io/gc.root".to_string(), "yes".to_string());
    let r = w
        .send(WriteContentRequest {
            action: WriteAction::Commit as i32,
            offset: 1000,
            data: data[1000..].to_vec(),
            total: data.len() as i64,
            expected: d.clone(),
            labels: labels.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (r.action, r.offset),
        (WriteAction::Commit as i32, data.len() as i64)
    );
    assert_eq!(r.digest, d);
    w.close().await;

    let i = info(&mut c, &d).await.unwrap();
    assert_eq!(i.digest, d);
    assert_eq!(i.size, data.len() as i64);
    assert_eq!(i.labels, labels);
    assert!(i.created_at.is_some() && i.updated_at.is_some());
    let e = c
        .status(StatusRequest {
            r#ref: "ref-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "commit removes the ingest");

    assert_eq!(read(&mut c, &d, 0, 0).await.unwrap(), data);
    assert_eq!(
        read(&mut c, &d, 5, 32 << 10).await.unwrap(),
        data[5..5 + (32 << 10)]
    );
    assert_eq!(read(&mut c, &d, 1 << 20, 0).await.unwrap(), data[1 << 20..]);
    // A size past the end is cut to the end, as containerd does.
    let tail = data.len() as i64 - 10;
    assert_eq!(
        read(&mut c, &d, tail, 1 << 20).await.unwrap(),
        data[data.len() - 10..]
    );
    assert!(
        read(&mut c, &d, data.len() as i64, 0)
            .await
            .unwrap()
            .is_empty()
    );
    let e = read(&mut c, &d, data.len() as i64 + 1, 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    // A negative offset reads from 0 and a negative size to the end, as containerd's
    // content service does.
    assert_eq!(read(&mut c, &d, 0, -1).await.unwrap(), data);
    let mut s = c
        .read(ReadContentRequest {
            digest: d.clone(),
            offset: -1,
            size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut from_zero = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        assert_eq!(m.offset, from_zero.len() as i64);
        from_zero.extend_from_slice(&m.data);
    }
    assert_eq!(from_zero, data);
    let e = read(&mut c, &sha256(b"absent"), 0, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().ends_with(": not found"), "{}", e.message());
    let e = read(&mut c, "sha256:nothex", 0, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    server.stop().await;
}

async fn info_update_delete_errors(backend: Backend) {
    let (_tmp, _server, mut c) = setup(backend).await;
    let e = info(&mut c, &sha256(b"none")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = info(&mut c, "md5:abc").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let d = ingest(&mut c, "u", b"update me", 4).await.unwrap();
    let upd = |labels: &[(&str, &str)], paths: &[&str]| UpdateRequest {
        info: Some(Info {
            digest: d.clone(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
        update_mask: (!paths.is_empty()).then(|| prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    };
    let before = info(&mut c, &d).await.unwrap();
    let r = c.update(upd(&[("a", "1"), ("b", "2")], &[])).await.unwrap();
    let got = r.into_inner().info.unwrap();
    assert_eq!(got.labels.len(), 2);
    assert_eq!(got.created_at, before.created_at);
    let r = c
        .update(upd(&[("a", "x"), ("c", "3")], &["labels.a", "labels.b"]))
        .await
        .unwrap();
    let want: HashMap<_, _> = [("a".to_string(), "x".to_string())].into();
    assert_eq!(
        r.into_inner().info.unwrap().labels,
        want,
        "b deleted, c ignored"
    );
    assert_eq!(info(&mut c, &d).await.unwrap().labels, want, "durable");
    let r = c.update(upd(&[("z", "9")], &["labels"])).await.unwrap();
    assert_eq!(r.into_inner().info.unwrap().labels.len(), 1);
    let e = c.update(upd(&[], &["size"])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let big = "v".repeat(5000);
    let e = c.update(upd(&[("k", &big)], &[])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .update(UpdateRequest {
            info: Some(Info {
                digest: sha256(b"none"),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    c.delete(DeleteContentRequest { digest: d.clone() })
        .await
        .unwrap();
    assert_eq!(info(&mut c, &d).await.unwrap_err().code(), Code::NotFound);
    let e = c
        .delete(DeleteContentRequest { digest: d.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .delete(DeleteContentRequest {
            digest: "bogus".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Committing the same bytes again starts fresh: no labels come back from the old blob.
    let d2 = ingest(&mut c, "u2", b"update me", 4).await.unwrap();
    assert_eq!(d2, d);
    assert!(info(&mut c, &d).await.unwrap().labels.is_empty());
}

async fn list_and_list_statuses_filter_and_batch(backend: Backend) {
    let (_tmp, _server, mut c) = setup(backend).await;
    let mut digests = Vec::new();
    for i in 0..230u32 {
        digests.push(
            ingest(&mut c, &format!("l{i}"), &i.to_le_bytes(), 64)
                .await
                .unwrap(),
        );
    }
    assert_eq!(list(&mut c, &[]).await.unwrap().len(), 230);
    c.update(UpdateRequest {
        info: Some(Info {
            digest: digests[7].clone(),
            labels: [("team".to_string(), "blue".to_string())].into(),
            ..Default::default()
        }),
        update_mask: None,
    })
    .await
    .unwrap();
    let sel = list(&mut c, &["labels.team==blue"]).await.unwrap();
    assert_eq!(sel.len(), 1);
    assert_eq!(sel[0].digest, digests[7]);
    let f = format!("digest=={}", digests[3]);
    let f2 = format!("digest=={}", digests[4]);
    let sel = list(&mut c, &[f.as_str(), f2.as_str()]).await.unwrap();
    assert_eq!(sel.len(), 2, "filter strings are OR-ed");
    assert!(
        list(&mut c, &["labels.team==red"])
            .await
            .unwrap()
            .is_empty()
    );
    let e = list(&mut c, &["labels.team=="]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let mut open = Vec::new();
    for r in ["pull-a", "pull-b", "push-c"] {
        let (mut w, _) = Writer::stat(&mut c, r).await.unwrap();
        w.write(0, b"part").await.unwrap();
        open.push(w);
    }
    let statuses = |filters: &[&str]| ListStatusesRequest {
        filters: filters.iter().map(|f| f.to_string()).collect(),
    };
    let all = c
        .list_statuses(statuses(&[]))
        .await
        .unwrap()
        .into_inner()
        .statuses;
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|s| s.offset == 4 && s.started_at.is_some()));
    let mut refs: Vec<_> = c
        .list_statuses(statuses(&["ref~=^pull-"]))
        .await
        .unwrap()
        .into_inner()
        .statuses
        .into_iter()
        .map(|s| s.r#ref)
        .collect();
    refs.sort();
    assert_eq!(refs, ["pull-a", "pull-b"]);
    let e = c.list_statuses(statuses(&["ref=="])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    for w in open {
        w.close().await;
    }
}

async fn write_protocol_errors(backend: Backend) {
    let (_tmp, _server, mut c) = setup(backend).await;
    // The first message must name a ref.
    let e = Writer::open(&mut c, stat_req("", 0, ""))
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Writes must happen at the current offset.
    let (mut w, _) = Writer::stat(&mut c, "off").await.unwrap();
    w.write(0, b"abcd").await.unwrap();
    let e = w.write(2, b"zz").await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(
        e.message().contains("must occur at current offset 4"),
        "{}",
        e.message()
    );
    // The ingest survives the failed stream, and offset 0 truncates it.
    let (mut w, st) = retry_unavailable(|| stat_owned(c.clone(), "off"))
        .await
        .unwrap();
    assert_eq!(st.offset, 4);
    let r = w.write(0, b"xy").await.unwrap();
    assert_eq!(r.offset, 2);
    assert_eq!(r.digest, sha256(b"xy"));
    let r = w.commit(2, 2, &sha256(b"xy")).await.unwrap();
    assert_eq!(r.digest, sha256(b"xy"));
    // After a commit the stream has nothing left to write to.
    let e = w.write(2, b"more").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Wrong size: FailedPrecondition, nothing committed, ingest kept.
    let data = b"hello world";
    let (mut w, _) = Writer::stat(&mut c, "size").await.unwrap();
    w.write(0, data).await.unwrap();
    let e = w.commit(11, 12, "").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(
        info(&mut c, &sha256(data)).await.unwrap_err().code(),
        Code::NotFound
    );
    let off = retry_unavailable(|| status_offset_owned(c.clone(), "size"))
        .await
        .unwrap();
    assert_eq!(off, 11);

    // Wrong digest (corrupt data): FailedPrecondition, nothing committed.
    let (mut w, st) = retry_unavailable(|| stat_owned(c.clone(), "size"))
        .await
        .unwrap();
    assert_eq!(st.offset, 11);
    let e = w.commit(11, 11, &sha256(b"hello worle")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("unexpected commit digest"),
        "{}",
        e.message()
    );
    assert!(
        list(&mut c, &[])
            .await
            .unwrap()
            .iter()
            .all(|i| i.digest != sha256(data))
    );
    assert!(
        list(&mut c, &[])
            .await
            .unwrap()
            .iter()
            .all(|i| i.digest != sha256(b"hello worle"))
    );

    // A bad expected digest is the client's mistake.
    let e = Writer::open(&mut c, stat_req("bad", 0, "sha256:zz"))
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = Writer::open(&mut c, stat_req("neg", -1, ""))
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::InvalidArgument);
    let (mut w, _) = Writer::stat(&mut c, "act").await.unwrap();
    let e = w
        .send(WriteContentRequest {
            action: 7,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

async fn stat_owned(
    mut c: Client,
    r: &'static str,
) -> Result<(Writer, strata_proto::content::WriteContentResponse), tonic::Status> {
    Writer::stat(&mut c, r).await
}

async fn status_offset_owned(mut c: Client, r: &'static str) -> Result<i64, tonic::Status> {
    status_offset(&mut c, r).await
}

async fn existing_blob_is_already_exists(backend: Backend) {
    let (_tmp, _server, mut c) = setup(backend).await;
    let d = ingest(&mut c, "a", b"same", 2).await.unwrap();
    // Expected digest on the first message: refused at once, ingest removed.
    let e = Writer::open(&mut c, stat_req("b", 4, &d))
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    // Without expectation, the commit finds the blob there.
    let (mut w, _) = Writer::stat(&mut c, "c").await.unwrap();
    w.write(0, b"same").await.unwrap();
    let e = w.commit(4, 0, "").await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let e = c
        .status(StatusRequest { r#ref: "c".into() })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::NotFound,
        "the loser's ingest is gone, as in containerd"
    );
    // Expected on a later message (containerd's push path) is checked too.
    let (mut w, _) = Writer::stat(&mut c, "d").await.unwrap();
    w.write(0, b"sa").await.unwrap();
    let e = w.commit(2, 0, &d).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert_eq!(read(&mut c, &d, 0, 0).await.unwrap(), b"same");
}

async fn second_writer_on_a_ref_is_unavailable_until_the_first_ends(backend: Backend) {
    let (_tmp, server, mut c) = setup(backend).await;
    let (mut w, _) = Writer::stat(&mut c, "locked").await.unwrap();
    w.write(0, b"first").await.unwrap();
    let mut other = server.client();
    let e = Writer::stat(&mut other, "locked").await.err().unwrap();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(
        e.message().starts_with("ref locked locked for "),
        "{}",
        e.message()
    );
    assert!(e.message().contains("(since 20"), "{}", e.message());
    // Other refs are not affected.
    Writer::stat(&mut other, "free")
        .await
        .unwrap()
        .0
        .close()
        .await;
    w.close().await;
    let (mut w2, st) = retry_unavailable(|| stat_owned(other.clone(), "locked"))
        .await
        .unwrap();
    assert_eq!(st.offset, 5);
    w2.commit(5, 5, &sha256(b"first")).await.unwrap();
}

async fn concurrent_writers_on_one_ref_exactly_one_wins_at_a_time(backend: Backend) {
    let (_tmp, server, _c) = setup(backend).await;
    let data = bytes(256 << 10, 9);
    let d = sha256(&data);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut c = server.client();
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            // Each contender behaves like containerd's writer: STAT, write from the offset it
            // is told, commit; Unavailable means someone else holds the ref.
            match ingest(&mut c, "shared-ref", &data, 8 << 10 | i).await {
                Ok(d) => Ok(d),
                Err(s) => Err(s.code()),
            }
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(got) => {
                assert_eq!(got, d);
                won += 1;
            }
            Err(code) => assert!(
                matches!(
                    code,
                    Code::Unavailable | Code::AlreadyExists | Code::NotFound | Code::OutOfRange
                ),
                "unexpected {code:?}"
            ),
        }
    }
    assert!(won >= 1);
    let mut c = server.client();
    assert_eq!(read(&mut c, &d, 0, 0).await.unwrap(), data);
}

async fn two_refs_writing_one_digest(backend: Backend) {
    let (_tmp, server, mut c) = setup(backend).await;
    let data = bytes(1 << 20, 3);
    let d = sha256(&data);
    let (mut a, _) = Writer::stat(&mut c, "ref-a").await.unwrap();
    let mut c2 = server.client();
    let (mut b, _) = Writer::stat(&mut c2, "ref-b").await.unwrap();
    // Interleaved writes, as two pulls of one layer would do.
    for (i, piece) in data.chunks(64 << 10).enumerate() {
        let off = (i * (64 << 10)) as i64;
        a.write(off, piece).await.unwrap();
        b.write(off, piece).await.unwrap();
    }
    let n = data.len() as i64;
    let (ra, rb) = tokio::join!(a.commit(n, n, &d), b.commit(n, n, &d));
    let codes = [
        ra.as_ref().err().map(|e| e.code()),
        rb.as_ref().err().map(|e| e.code()),
    ];
    assert!(
        codes.contains(&None) && codes.contains(&Some(Code::AlreadyExists)),
        "exactly one commit wins: {codes:?}"
    );
    assert_eq!(read(&mut c, &d, 0, 0).await.unwrap(), data);
    assert!(
        c.list_statuses(ListStatusesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .statuses
            .is_empty(),
        "both ingests gone"
    );
}

async fn resume_after_dropped_connection(backend: Backend) {
    let (tmp, server, _) = setup(backend).await;
    let data = bytes(2 << 20, 5);
    let d = sha256(&data);
    {
        // A client on its own connection that dies mid-transfer.
        let mut c = server.client();
        let (mut w, _) = Writer::open(&mut c, stat_req("resume", data.len() as i64, &d))
            .await
            .unwrap();
        w.write(0, &data[..700_000]).await.unwrap();
        w.write(700_000, &data[700_000..900_000]).await.unwrap();
        drop(w);
        drop(c);
    }
    let mut c = common::client(&tmp.path().join("content.sock"));
    let st = c
        .status(StatusRequest {
            r#ref: "resume".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!((st.offset, st.total), (900_000, data.len() as i64));
    assert_eq!(st.expected, d);
    // Resume exactly as containerd's proxy writer does: STAT, then write from its offset.
    let got = retry_unavailable(|| {
        let mut c = c.clone();
        let data = data.clone();
        async move { ingest(&mut c, "resume", &data, 1 << 20).await }
    })
    .await
    .unwrap();
    assert_eq!(got, d);
    assert_eq!(read(&mut c, &d, 0, 0).await.unwrap(), data);
}

async fn abort_removes_the_ingest(backend: Backend) {
    let (_tmp, _server, mut c) = setup(backend).await;
    let e = c
        .abort(AbortRequest {
            r#ref: "none".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let (mut w, _) = Writer::stat(&mut c, "ab").await.unwrap();
    w.write(0, b"partial").await.unwrap();
    w.close().await;
    c.abort(AbortRequest { r#ref: "ab".into() }).await.unwrap();
    let e = c
        .status(StatusRequest { r#ref: "ab".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let (_, st) = Writer::stat(&mut c, "ab").await.unwrap();
    assert_eq!(st.offset, 0, "a new ingest starts from nothing");
}

async fn blobs_are_stored_in_containerds_layout_read_only(backend: Backend) {
    use std::os::unix::fs::PermissionsExt;
    let (tmp, _server, mut c) = setup(backend).await;
    let d = ingest(&mut c, "layout", b"layout", 3).await.unwrap();
    let hex = d.strip_prefix("sha256:").unwrap();
    let path = tmp.path().join("root/blobs/sha256").join(hex);
    assert_eq!(std::fs::read(&path).unwrap(), b"layout");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o222,
        0
    );
    let ingest_dir = tmp.path().join("root/ingest");
    assert_eq!(std::fs::read_dir(ingest_dir).unwrap().count(), 0);
}

async fn large_writes_hash_in_background_yet_digests_given_and_commit_are_exact(backend: Backend) {
    let (_tmp, _server, mut c) = setup(backend).await;
    let data = bytes(3 << 20, 11);
    let (mut w, _) = Writer::stat(&mut c, "bg").await.unwrap();
    let r = w.write(0, &data[..1 << 20]).await.unwrap();
    assert_eq!(r.offset, 1 << 20);
    // A large WRITE may answer before its hash is done, so its digest is optional...
    assert!(r.digest.is_empty() || r.digest == sha256(&data[..1 << 20]));
    w.write(1 << 20, &data[1 << 20..2 << 20]).await.unwrap();
    // ...and so is a STAT's (it does not wait for hashing either), but one given is exact.
    let st = w.send(stat_req("", 0, "")).await.unwrap();
    assert_eq!(st.offset, 2 << 20);
    assert!(st.digest.is_empty() || st.digest == sha256(&data[..2 << 20]));
    // Truncation resets the background hash too.
    w.write(0, &data[..1 << 20]).await.unwrap();
    w.write(1 << 20, &data[1 << 20..]).await.unwrap();
    let e = w
        .commit(3 << 20, 3 << 20, &sha256(&data[1..]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let (mut w, st) = retry_unavailable(|| stat_owned(c.clone(), "bg"))
        .await
        .unwrap();
    assert_eq!(st.digest, sha256(&data), "resume re-hashes the file");
    let r = w.commit(3 << 20, 3 << 20, &sha256(&data)).await.unwrap();
    assert_eq!(r.digest, sha256(&data));
}

/// containerd's proxy writer keeps the digest of the latest answer that carried one (WRITE or
/// a successful COMMIT), and its metadata store takes that as the blob's digest when a commit
/// answers AlreadyExists (importing an image into a second namespace): it must be exact even
/// when the last WRITE answered before its hash was done.
async fn commit_of_an_existing_blob_leaves_the_writer_knowing_its_digest(backend: Backend) {
    let (_tmp, _server, mut c) = setup(backend).await;
    let data = bytes(12 << 20, 5);
    let d = ingest(&mut c, "first", &data, 4 << 20).await.unwrap();
    for (i, expected) in ["", d.as_str()].iter().cycle().take(6).enumerate() {
        let r = format!("again-{i}");
        let (mut w, _) = Writer::open(&mut c, stat_req(&r, 0, "")).await.unwrap();
        let mut known = String::new();
        let mut off = 0;
        for piece in data.chunks(4 << 20) {
            let resp = w.write(off, piece).await.unwrap();
            off = resp.offset;
            if !resp.digest.is_empty() {
                known = resp.digest;
            }
        }
        match w.commit(off, off, expected).await {
            Ok(resp) => {
                assert_eq!(resp.digest, d);
                known = resp.digest;
            }
            Err(e) => assert_eq!(e.code(), Code::AlreadyExists, "{e:?}"),
        }
        assert_eq!(known, d, "round {i}, expected {expected:?}");
        let e = c.status(StatusRequest { r#ref: r }).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "the ingest is gone");
    }
    assert_eq!(read(&mut c, &d, 0, 0).await.unwrap(), data);
}
