//! The content API through containerd: a 1 GiB ingest (one Write stream of 1 MiB WRITEs, the
//! commit naming size and digest; messages prepared before the clock starts), the whole blob
//! read back (containerd answers in 1 MiB messages) and 128 MiB of it read in 32 KiB calls.
//! The same calls straight on strata-content's socket are reference rows: strata's ceiling,
//! and what containerd's proxy hop costs.

use std::time::Instant;

use strata_common::namespace::RequestContext;
use strata_proto::content::DeleteContentRequest;
use strata_tests::PluginKind;
use strata_tests::bench::{MIB, content_client, ingest, ingest_messages, mbps, payload, read_all};

use super::{Ctx, Result};
use crate::report::{Reference, Row, Section, Unit};
use crate::side::Side;

/// Throughputs of one round: ingest, 1 MiB reads, 32 KiB reads (MB/s).
type Round = [f64; 3];

/// One round of the three calls on `socket` in `cx`, deleting the blob afterwards.
async fn round(
    socket: &std::path::Path,
    cx: &RequestContext,
    data: &[u8],
    digest: &str,
    r: &str,
) -> Round {
    let mut c = content_client(socket);
    let small = (128 * MIB).min(data.len());
    let msgs = ingest_messages(r, data, digest);
    let t = Instant::now();
    ingest(&mut c, cx, digest, msgs).await;
    let ingested = mbps(data.len(), t.elapsed());
    let t = Instant::now();
    assert_eq!(
        read_all(&mut c, cx, digest, 0, 0).await,
        data.len(),
        "whole-blob read"
    );
    let read_1m = mbps(data.len(), t.elapsed());
    let t = Instant::now();
    let mut off = 0;
    while off < small {
        let n = read_all(&mut c, cx, digest, off as i64, 32 << 10).await;
        assert!(n > 0, "empty read at {off}");
        off += n;
    }
    let read_32k = mbps(small, t.elapsed());
    let req = cx
        .request(DeleteContentRequest {
            digest: digest.to_string(),
        })
        .expect("a request context");
    c.delete(req).await.expect("Delete");
    [ingested, read_1m, read_32k]
}

pub fn run(ctx: &Ctx) -> Result<Section> {
    let mib = if ctx.quick { 32 } else { 1024 };
    let data = payload(mib * MIB, 0);
    let digest = strata_testkit::sha256_digest(&data);
    let labels = [
        format!("ingest {mib} MiB, 1 MiB WRITEs"),
        "Read, whole blob (1 MiB messages)".to_string(),
        format!("Read, {} MiB in 32 KiB calls", 128.min(mib)),
    ];
    let mut rows: Vec<Row> = labels
        .iter()
        .map(|l| Row::new(l.clone(), Unit::MegabytesPerSecond, None))
        .collect();
    let mut direct: Vec<Reference> = labels
        .iter()
        .map(|l| {
            Reference::new(
                format!("{l}, strata-content alone on its socket"),
                Unit::MegabytesPerSecond,
            )
        })
        .collect();
    // Both stacks side by side for the whole workload, turns interleaved.
    let stacks = [Side::Builtin, Side::Strata]
        .map(|side| side.start(ctx.version).map_err(|e| e.to_string()));
    let [builtin, strata] = stacks;
    let (builtin, strata) = (builtin?, strata?);
    for run in 0..ctx.runs {
        for side in Side::order(run) {
            let stack = if side == Side::Builtin {
                &builtin
            } else {
                &strata
            };
            let (lease, cx) = stack.lease("bench").map_err(|e| e.to_string())?;
            let got = ctx.rt.block_on(round(
                &stack.containerd.socket(),
                &cx,
                &data,
                &digest,
                &format!("bench-{run}"),
            ));
            for (row, v) in rows.iter_mut().zip(got) {
                row.push(side, v);
            }
            stack
                .containerd
                .try_ctr_ok(&["leases", "delete", "--sync", &lease])
                .map_err(|e| e.to_string())?;
        }
        let store = strata
            .plugins
            .get(PluginKind::Content)
            .ok_or("strata-content is not running")?;
        let cx = RequestContext {
            namespace: Some("bench-direct".into()),
            lease: None,
        };
        let got = ctx.rt.block_on(round(
            store.socket(),
            &cx,
            &data,
            &digest,
            &format!("direct-{run}"),
        ));
        for (r, v) in direct.iter_mut().zip(got) {
            r.samples.push(v);
        }
    }
    Ok(Section {
        title: "Content store".into(),
        about: "A client on containerd's socket moving 1 MiB per call (ctr moves 32 KiB and \
                would measure ctr): one Write stream of 1 MiB WRITEs committed with size and \
                digest, the whole blob read back, and reads of 32 KiB per call (through the \
                proxy each is an Info and a Read stream to strata). Reference rows: the same \
                calls on strata-content's own socket."
            .into(),
        rows,
        references: direct,
    })
}
