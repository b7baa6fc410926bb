//! Decompression bombs through the real servers: a layer of a few hundred KiB that inflates to
//! 512 MiB is applied by strata-differ, read through strata-content, with the differ's peak
//! RSS bounded (decompression and hashing stream). The other hostile layers are the differ's
//! unit tests (`differ/src/apply/hostile_tests.rs`, `differ/src/apply/tests.rs`).
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt;

use strata_common::client::unix_channel;
use strata_proto::content::content_client::ContentClient;
use strata_proto::diff::ApplyRequest;
use strata_proto::diff::diff_client::DiffClient;
use strata_proto::types::{Descriptor, Mount};
use strata_testkit::Compression;
use strata_testkit::layer::Layer;
use strata_testkit::prelude::{Content, file};
use strata_tests::bench::{peak_rss, write_blob};
use strata_tests::tmp::TestDir;
use strata_tests::{PluginKind, StrataProcess};

const INFLATED: u64 = 512 << 20;
/// The differ's whole peak: it streams in chunks of 1 MiB.
const PEAK_BOUND: u64 = 128 << 20;

#[test]
fn decompression_bombs_apply_in_bounded_memory() {
    let dir = TestDir::new("bomb").unwrap();
    let content = StrataProcess::start(PluginKind::Content, dir.path(), &[]).unwrap();
    let differ = StrataProcess::start(
        PluginKind::Differ,
        dir.path(),
        &["--content-address".into(), content.socket().into()],
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for c in [Compression::Gzip, Compression::Zstd] {
        let layer = Layer::new(
            strata_testkit::tree![file("bomb", Content::zeros(INFLATED))],
            c,
        )
        .unwrap();
        let blob = layer.blob_bytes().unwrap();
        assert!(
            (blob.len() as u64) < INFLATED / 500,
            "{c:?}: {} bytes is no bomb",
            blob.len()
        );
        let target = dir.path().join(format!("target-{c:?}"));
        std::fs::create_dir(&target).unwrap();
        rt.block_on(async {
            let mut cc = ContentClient::new(unix_channel(content.socket()));
            let d = write_blob(&mut cc, &format!("bomb-{c:?}"), &blob)
                .await
                .unwrap();
            assert_eq!(d, layer.digest);
            DiffClient::new(unix_channel(differ.socket()))
                .apply(ApplyRequest {
                    diff: Some(Descriptor {
                        media_type: layer.media_type.clone(),
                        digest: layer.digest.clone(),
                        size: layer.size as i64,
                        annotations: Default::default(),
                    }),
                    mounts: vec![Mount::bind(&target, false)],
                    payloads: Default::default(),
                    sync_fs: false,
                })
                .await
                .unwrap_or_else(|e| panic!("{c:?}: {e}\n{}", differ.log_tail(40)));
        });
        let md = std::fs::metadata(target.join("bomb")).unwrap();
        assert_eq!(md.len(), INFLATED, "{c:?}");
        let peak = peak_rss(differ.pid());
        eprintln!(
            "{c:?}: a {} KiB blob inflated to {} MiB ({} MiB on disk); differ peak RSS {} MiB",
            blob.len() >> 10,
            INFLATED >> 20,
            (md.blocks() * 512) >> 20,
            peak >> 20
        );
        assert!(
            peak < PEAK_BOUND,
            "{c:?}: differ peak RSS {} MiB",
            peak >> 20
        );
        std::fs::remove_dir_all(&target).unwrap();
    }
}
