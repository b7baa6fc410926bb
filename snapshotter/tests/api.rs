//! containerd's snapshotter conformance suite (`core/snapshots/testsuite`), ported to run over
//! a real socket against strata-snapshotter with real overlay mounts, plus every error code the
//! API promises. Needs root (mounts); fails rather than skips without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;

use common::*;
use strata_proto::snapshots as pb;
use strata_snapshotter::config::SnapshotterConfig;
use strata_snapshotter::probe::Features;
use tonic::Code;

/// Prepares each layer on the previous one, applies its changes through the mount, commits;
/// then checks a view of the top against the same changes applied to a plain directory.
async fn check_layers(s: &Server, layers: &[Vec<Op>]) {
    let mut c = s.client();
    let flat = s.scratch("flat");
    let mut parent = String::new();
    for (i, ops) in layers.iter().enumerate() {
        let key = format!("layer-{i}-active");
        let target = s.scratch(&key);
        let m = prepare(&mut c, &key, &parent).await.unwrap();
        {
            let g = mount(&m, &target);
            assert_same_tree(&flat, g.path(), &format!("layer {i} before apply"));
            apply(g.path(), ops);
            g.unmount().unwrap();
        }
        apply(&flat, ops);
        let name = format!("layer-{i}");
        commit(&mut c, &name, &key).await.unwrap();
        parent = name;
    }
    let target = s.scratch("final-view");
    let m = view(&mut c, "final-view", &parent).await.unwrap();
    let g = mount(&m, &target);
    assert_same_tree(&flat, g.path(), "view of the top layer");
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_workflow() {
    let s = Server::start().await;
    let mut c = s.client();
    let initial = vec![
        file("/foo", "foo\n", 0o777),
        Op::Dir("/a", 0o755),
        Op::Dir("/a/b", 0o755),
        Op::Dir("/a/b/c", 0o755),
    ];
    let diff = vec![
        file("/bar", "bar\n", 0o777),
        file("/foo", "bar\n", 0o777),
        Op::RemoveAll("/a/b"),
    ];

    let preparing = s.scratch("preparing");
    let m = prepare(&mut c, "preparing", "").await.unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].kind, "bind");
    {
        let g = mount(&m, &preparing);
        apply(g.path(), &initial);
        g.unmount().unwrap();
    }
    commit(&mut c, "committed", "preparing").await.unwrap();
    let si = stat(&mut c, "committed").await.unwrap();
    assert_eq!(si.parent, "");
    assert_eq!(si.kind, pb::Kind::Committed as i32);
    assert_code(
        stat(&mut c, "preparing").await,
        Code::NotFound,
        "stat of a committed key",
    );

    let next = s.scratch("next");
    let m = prepare(&mut c, "next", "committed").await.unwrap();
    assert_eq!(m[0].kind, "overlay");
    let expected1 = s.scratch("expected1");
    apply(&expected1, &initial);
    {
        let g = mount(&m, &next);
        assert_same_tree(&expected1, g.path(), "child sees its parent");
        apply(g.path(), &diff);
        g.unmount().unwrap();
    }
    let ni = stat(&mut c, "next").await.unwrap();
    assert_eq!(ni.parent, "committed");
    assert_eq!(ni.kind, pb::Kind::Active as i32);
    commit(&mut c, "committed-next", "next").await.unwrap();
    let si2 = stat(&mut c, "committed-next").await.unwrap();
    assert_eq!(si2.parent, "committed");
    assert_eq!(si2.kind, pb::Kind::Committed as i32);
    assert_code(
        stat(&mut c, "next").await,
        Code::NotFound,
        "stat of a committed key",
    );

    let walked: Vec<pb::Info> = list_batches(&mut c, &[])
        .await
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(walked.len(), 2);
    assert!(
        walked.contains(&si) && walked.contains(&si2),
        "list agrees with stat"
    );

    let nn = s.scratch("nextnext");
    let m = view(&mut c, "nextnext", "committed-next").await.unwrap();
    assert_eq!(m[0].kind, "overlay", "a view of two layers is an overlay");
    let expected2 = s.scratch("expected2");
    apply(&expected2, &initial);
    apply(&expected2, &diff);
    {
        let g = mount(&m, &nn);
        assert_same_tree(&expected2, g.path(), "view of both layers");
    }
    remove(&mut c, "nextnext").await.unwrap();
    let err = remove(&mut c, "committed").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("remove"), "{err:?}");
    remove(&mut c, "committed-next").await.unwrap();
    remove(&mut c, "committed").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn stat_active_committed_and_transitivity() {
    let s = Server::start().await;
    let mut c = s.client();
    let m = prepare(&mut c, "preparing", "").await.unwrap();
    let t = s.scratch("p");
    {
        let g = mount(&m, &t);
        apply(g.path(), &[file("/foo", "foo\n", 0o777)]);
        let si = stat(&mut c, "preparing").await.unwrap();
        assert_eq!(
            (si.name.as_str(), si.kind, si.parent.as_str()),
            ("preparing", pb::Kind::Active as i32, "")
        );
    }
    commit(&mut c, "snapA", "preparing").await.unwrap();
    let m = prepare(&mut c, "next", "snapA").await.unwrap();
    {
        let g = mount(&m, &t);
        apply(g.path(), &[file("/foo", "foo bar\n", 0o777)]);
    }
    commit(&mut c, "snapB", "next").await.unwrap();
    let a = stat(&mut c, "snapA").await.unwrap();
    let b = stat(&mut c, "snapB").await.unwrap();
    let pb_ = stat(&mut c, &b.parent).await.unwrap();
    assert_eq!(a.parent, "");
    assert_eq!(b.parent, "snapA");
    assert_eq!(pb_.parent, "");
    assert_eq!(a.kind, pb::Kind::Committed as i32);
}

#[tokio::test(flavor = "multi_thread")]
async fn prepare_and_view_of_an_existing_key_fail_with_already_exists() {
    let s = Server::start().await;
    let mut c = s.client();
    prepare(&mut c, "preparing", "").await.unwrap();
    commit(&mut c, "snapA", "preparing").await.unwrap();
    prepare(&mut c, "newlayer", "snapA").await.unwrap();
    assert_code(
        view(&mut c, "newlayer", "snapA").await,
        Code::AlreadyExists,
        "view over an active key",
    );
    prepare(&mut c, "prepLayer", "snapA").await.unwrap();
    assert_code(
        prepare(&mut c, "prepLayer", "snapA").await,
        Code::AlreadyExists,
        "prepare twice",
    );
    view(&mut c, "viewLayer", "snapA").await.unwrap();
    assert_code(
        view(&mut c, "viewLayer", "snapA").await,
        Code::AlreadyExists,
        "view twice",
    );
    assert_code(
        prepare(&mut c, "snapA", "").await,
        Code::AlreadyExists,
        "prepare over a committed name",
    );
}

async fn base_snapshots(c: &mut Client) {
    prepare(c, "c1-a", "").await.unwrap();
    commit(c, "c1", "c1-a").await.unwrap();
    prepare(c, "c2-a", "c1").await.unwrap();
    commit(c, "c2", "c2-a").await.unwrap();
    prepare(c, "a1", "c2").await.unwrap();
    prepare(c, "a2", "").await.unwrap();
    view(c, "v1", "c2").await.unwrap();
    view(c, "v2", "").await.unwrap();
}

fn ts(t: &Option<prost_types::Timestamp>) -> std::time::SystemTime {
    let t = t.as_ref().unwrap();
    std::time::UNIX_EPOCH + std::time::Duration::new(t.seconds as u64, t.nanos as u32)
}

#[tokio::test(flavor = "multi_thread")]
async fn update_changes_labels_and_nothing_else() {
    let s = Server::start().await;
    let mut c = s.client();
    let t1 = std::time::SystemTime::now();
    base_snapshots(&mut c).await;
    let t2 = std::time::SystemTime::now();
    let cases = [
        ("c1", pb::Kind::Committed, ""),
        ("c2", pb::Kind::Committed, "c1"),
        ("a1", pb::Kind::Active, "c2"),
        ("a2", pb::Kind::Active, ""),
        ("v1", pb::Kind::View, "c2"),
        ("v2", pb::Kind::View, ""),
    ];
    for (name, kind, parent) in cases {
        let st = stat(&mut c, name).await.unwrap();
        let created = ts(&st.created_at);
        assert!(
            created >= t1 && created <= t2,
            "{name}: created {created:?}"
        );
        assert_eq!(st.created_at, st.updated_at, "{name}");
        assert_eq!(
            (st.kind, st.parent.as_str(), st.name.as_str()),
            (kind as i32, parent, name)
        );

        let root = "2026-02-02T00:00:00Z";
        let expected = labels(&[
            ("l1", "v1"),
            ("l2", "v2"),
            ("l3", "v3"),
            ("containerd.io/gc.root", root),
        ]);
        let mut info = st.clone();
        info.parent = "doesnotexist".into();
        info.labels = expected.clone();
        let u1 = std::time::SystemTime::now();
        let up = c
            .update(pb::UpdateSnapshotRequest {
                snapshotter: "strata".into(),
                info: Some(info),
                update_mask: None,
            })
            .await
            .unwrap()
            .into_inner()
            .info
            .unwrap();
        let u2 = std::time::SystemTime::now();
        assert_eq!(up.created_at, st.created_at, "{name}: created kept");
        let updated = ts(&up.updated_at);
        assert!(
            updated >= u1 && updated <= u2,
            "{name}: updated {updated:?}"
        );
        assert_eq!(
            (up.kind, up.parent.as_str()),
            (kind as i32, parent),
            "{name}: only labels change"
        );
        assert_eq!(up.labels, expected);
        assert_eq!(
            stat(&mut c, name).await.unwrap(),
            up,
            "{name}: stored as returned"
        );

        let mut info = up.clone();
        info.labels = labels(&[("l1", "updated"), ("l4", "v4")]);
        let up = c
            .update(pb::UpdateSnapshotRequest {
                snapshotter: "strata".into(),
                info: Some(info),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["labels.l1".into(), "labels.l2".into()],
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .info
            .unwrap();
        assert_eq!(
            up.labels,
            labels(&[
                ("l1", "updated"),
                ("l3", "v3"),
                ("containerd.io/gc.root", root)
            ])
        );

        let mut info = up.clone();
        info.labels = labels(&[("l4", "v4"), ("containerd.io/gc.root", root)]);
        let up = c
            .update(pb::UpdateSnapshotRequest {
                snapshotter: "strata".into(),
                info: Some(info.clone()),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["labels".into()],
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .info
            .unwrap();
        assert_eq!(up.labels, info.labels);

        for path in ["parent", "kind", "name"] {
            let r = c
                .update(pb::UpdateSnapshotRequest {
                    snapshotter: "strata".into(),
                    info: Some(up.clone()),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec![path.into()],
                    }),
                })
                .await;
            assert_code(
                r,
                Code::InvalidArgument,
                &format!("{name}: update of {path}"),
            );
        }
    }
    let missing = pb::Info {
        name: "nope".into(),
        ..Default::default()
    };
    let r = c
        .update(pb::UpdateSnapshotRequest {
            snapshotter: "strata".into(),
            info: Some(missing),
            update_mask: None,
        })
        .await;
    assert_code(r, Code::NotFound, "update of a missing snapshot");
    let r = c
        .update(pb::UpdateSnapshotRequest {
            snapshotter: "strata".into(),
            info: None,
            update_mask: None,
        })
        .await;
    assert_code(r, Code::InvalidArgument, "update without info");
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_frees_the_key_for_reuse() {
    let s = Server::start().await;
    let mut c = s.client();
    prepare(&mut c, "committed-a", "").await.unwrap();
    commit(&mut c, "committed-1", "committed-a").await.unwrap();
    prepare(&mut c, "reuse-1", "committed-1").await.unwrap();
    remove(&mut c, "reuse-1").await.unwrap();
    view(&mut c, "reuse-1", "committed-1").await.unwrap();
    remove(&mut c, "reuse-1").await.unwrap();
    prepare(&mut c, "reuse-1", "").await.unwrap();
    remove(&mut c, "committed-1").await.unwrap();
    commit(&mut c, "committed-1", "reuse-1").await.unwrap();
    assert_code(
        remove(&mut c, "reuse-1").await,
        Code::NotFound,
        "remove of a committed key",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_intermediate_snapshot_fails_until_its_children_go() {
    let s = Server::start().await;
    let mut c = s.client();
    prepare(&mut c, "base", "").await.unwrap();
    commit(&mut c, "committed-base", "base").await.unwrap();
    prepare(&mut c, "intermediate", "committed-base")
        .await
        .unwrap();
    commit(&mut c, "committed-inter", "intermediate")
        .await
        .unwrap();
    prepare(&mut c, "toplayer", "committed-inter")
        .await
        .unwrap();
    assert_code(
        remove(&mut c, "committed-inter").await,
        Code::FailedPrecondition,
        "remove with a child",
    );
    remove(&mut c, "toplayer").await.unwrap();
    remove(&mut c, "committed-inter").await.unwrap();
    remove(&mut c, "committed-base").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn list_filters_like_containerd_and_streams_in_batches() {
    let s = Server::start().await;
    let mut c = s.client();
    let walk = labels(&[("containerd.io/gc.root", "check-walk")]);
    let p = |c: &mut Client,
             key: &'static str,
             parent: &'static str,
             l: std::collections::HashMap<String, String>| {
        let mut c = c.clone();
        async move {
            c.prepare(pb::PrepareSnapshotRequest {
                snapshotter: "strata".into(),
                key: key.into(),
                parent: parent.into(),
                labels: l,
            })
            .await
            .unwrap();
        }
    };
    let with_l = |v: &str| labels(&[("l", v), ("containerd.io/gc.root", "check-walk")]);
    p(&mut c, "a-np", "", walk.clone()).await;
    p(&mut c, "p-tmp", "", walk.clone()).await;
    commit_with(&mut c, "p", "p-tmp", walk.clone(), "")
        .await
        .unwrap();
    p(&mut c, "a", "p", walk.clone()).await;
    c.view(pb::ViewSnapshotRequest {
        snapshotter: "strata".into(),
        key: "v".into(),
        parent: "p".into(),
        labels: walk.clone(),
    })
    .await
    .unwrap();
    p(&mut c, "p-wl-tmp", "", walk.clone()).await;
    commit_with(&mut c, "p-wl", "p-wl-tmp", with_l("1"), "")
        .await
        .unwrap();
    p(&mut c, "a-wl", "p-wl", with_l("2")).await;
    c.view(pb::ViewSnapshotRequest {
        snapshotter: "strata".into(),
        key: "v-wl".into(),
        parent: "p-wl".into(),
        labels: with_l("3"),
    })
    .await
    .unwrap();
    p(&mut c, "a-np-wl", "", with_l("2")).await;

    let gc = r#"labels."containerd.io/gc.root"==check-walk"#;
    let cases: Vec<(Vec<&str>, Vec<String>)> = vec![
        (
            vec!["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"],
            vec![gc.into()],
        ),
        (
            vec!["a-np", "a", "a-wl", "a-np-wl"],
            vec![format!("kind==active,{gc}")],
        ),
        (vec!["v", "v-wl"], vec![format!("kind==view,{gc}")]),
        (vec!["p", "p-wl"], vec![format!("kind==committed,{gc}")]),
        (
            vec!["p", "a-np-wl"],
            vec![
                "name==p".into(),
                "labels.l==2,kind==active,parent==\"\"".into(),
            ],
        ),
        (vec!["p-wl"], vec!["labels.l==1".into()]),
        (vec!["a", "v"], vec![format!("parent==p,{gc}")]),
        (vec!["a-wl", "v-wl"], vec!["parent==p-wl".into()]),
        (
            vec!["a-np-wl", "a-wl", "p-wl", "v-wl"],
            vec!["labels.l".into()],
        ),
        (vec!["a-wl", "a-np-wl"], vec!["labels.l~=2".into()]),
    ];
    for (want, filters) in cases {
        let f: Vec<&str> = filters.iter().map(String::as_str).collect();
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(
            list_names(&mut c, &f).await.unwrap(),
            want,
            "filters {filters:?}"
        );
    }
    assert_code(
        list_batches(&mut c, &["name=="]).await.map(|_| ()),
        Code::InvalidArgument,
        "bad filter",
    );

    for i in 0..245 {
        p(
            &mut c,
            Box::leak(format!("bulk-{i:03}").into_boxed_str()),
            "",
            walk.clone(),
        )
        .await;
    }
    let batches = list_batches(&mut c, &[]).await.unwrap();
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    assert_eq!(sizes, [100, 100, 53], "253 snapshots in batches of 100");
}

#[tokio::test(flavor = "multi_thread")]
async fn layer_file_update() {
    let s = Server::start().await;
    check_layers(
        &s,
        &[
            vec![file("/foo", "foo\n", 0o777)],
            vec![file("/foo", "bar\n", 0o777)],
            vec![file("/foo", "baz\n", 0o777)],
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_directory_in_lower_layer() {
    let s = Server::start().await;
    check_layers(
        &s,
        &[
            vec![
                Op::Dir("/lib", 0o700),
                file("/lib/hidden", "", 0o644),
                Op::Dir("/lib/keep", 0o755),
                file("/lib/keep/f", "k", 0o644),
            ],
            vec![
                Op::RemoveAll("/lib"),
                Op::Dir("/lib", 0o700),
                file("/lib/newfile", "", 0o644),
            ],
            vec![Op::RemoveAll("/lib/newfile"), Op::Dir("/lib/x", 0o755)],
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chown_in_a_lower_layer_shows_through() {
    let s = Server::start().await;
    check_layers(
        &s,
        &[
            vec![
                Op::Dir("/opt", 0o755),
                Op::Dir("/opt/a", 0o755),
                Op::Dir("/opt/a/b", 0o755),
                file("/opt/a/b/file.txt", "hello", 0o644),
            ],
            vec![
                Op::Chown("/opt", 1, 1),
                Op::Chown("/opt/a", 1, 1),
                Op::Chown("/opt/a/b", 1, 1),
                Op::Chown("/opt/a/b/file.txt", 1, 1),
            ],
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn directory_permission_on_commit() {
    let s = Server::start().await;
    check_layers(
        &s,
        &[
            vec![
                Op::Dir("/dir1", 0o700),
                Op::Dir("/dir2", 0o700),
                Op::Dir("/dir3", 0o700),
                file("/dir1/f", "", 0o644),
            ],
            vec![file("/dir2/f", "", 0o644), Op::Dir("/dir3/sub", 0o755)],
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_files_in_child_snapshot() {
    let s = Server::start().await;
    check_layers(
        &s,
        &[
            vec![
                file("/foo", "foo\n", 0o777),
                file("/foobar", "foobar\n", 0o777),
            ],
            vec![Op::RemoveAll("/foobar")],
            vec![],
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn move_file_from_lower_layer() {
    let s = Server::start().await;
    check_layers(
        &s,
        &[
            vec![
                Op::Dir("/dir1", 0o700),
                file("/dir1/f1", "Hello", 0o644),
                Op::Dir("/dir2", 0o700),
                file("/dir2/f2", "...", 0o644),
            ],
            vec![
                Op::Dir("/dir3", 0o700),
                file("/dir3/f1", "Hello", 0o644),
                Op::RemoveAll("/dir1"),
                Op::Link("/dir2/f2", "/dir3/f2"),
                Op::RemoveAll("/dir2/f2"),
                Op::Rename("/dir3/f1", "/dir3/f1-moved"),
                Op::Symlink("../dir3/f2", "/dir2/link"),
            ],
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn views_are_read_only_mounts() {
    let s = Server::start().await;
    let mut c = s.client();
    prepare(&mut c, "preparing", "").await.unwrap();
    commit(&mut c, "committed", "preparing").await.unwrap();
    for (key, parent) in [("view", "committed"), ("view-none", "")] {
        let m = view(&mut c, key, parent).await.unwrap();
        let t = s.scratch(key);
        let g = mount(&m, &t);
        let err = std::fs::write(g.path().join("testfile"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{key}: {err}");
    }
    // A view of two layers is an overlay without upper: read-only too.
    prepare(&mut c, "second", "committed").await.unwrap();
    commit(&mut c, "committed2", "second").await.unwrap();
    let m = view(&mut c, "view2", "committed2").await.unwrap();
    assert_eq!(m[0].kind, "overlay");
    assert!(!m[0].options.iter().any(|o| o.starts_with("upperdir=")));
    let t = s.scratch("view2");
    let g = mount(&m, &t);
    let err = std::fs::write(g.path().join("testfile"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn root_of_a_new_snapshot_is_0755() {
    let s = Server::start().await;
    let mut c = s.client();
    let m = prepare(&mut c, "preparing", "").await.unwrap();
    let t = s.scratch("p");
    let g = mount(&m, &t);
    assert_eq!(std::fs::metadata(g.path()).unwrap().mode() & 0o777, 0o755);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_upper_dir_takes_its_parents_root_owner() {
    let s = Server::start().await;
    let mut c = s.client();
    let m = prepare(&mut c, "base", "").await.unwrap();
    let t = s.scratch("base");
    {
        let g = mount(&m, &t);
        std::os::unix::fs::chown(g.path(), Some(1000), Some(1001)).unwrap();
    }
    commit(&mut c, "base-c", "base").await.unwrap();
    let m = prepare(&mut c, "child", "base-c").await.unwrap();
    let g = mount(&m, &t);
    let md = std::fs::metadata(g.path()).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 1001));
}

/// Every error code the API promises, one call each.
#[tokio::test(flavor = "multi_thread")]
async fn error_codes() {
    let s = Server::start().await;
    let mut c = s.client();
    prepare(&mut c, "active", "").await.unwrap();
    view(&mut c, "view", "").await.unwrap();
    prepare(&mut c, "tmp", "").await.unwrap();
    commit(&mut c, "committed", "tmp").await.unwrap();

    assert_code(
        prepare(&mut c, "", "").await,
        Code::InvalidArgument,
        "prepare with empty key",
    );
    assert_code(
        view(&mut c, "", "committed").await,
        Code::InvalidArgument,
        "view with empty key",
    );
    assert_code(
        mounts(&mut c, "").await,
        Code::InvalidArgument,
        "mounts with empty key",
    );
    assert_code(
        stat(&mut c, "").await,
        Code::InvalidArgument,
        "stat with empty key",
    );
    assert_code(
        usage(&mut c, "").await,
        Code::InvalidArgument,
        "usage with empty key",
    );
    assert_code(
        remove(&mut c, "").await,
        Code::InvalidArgument,
        "remove with empty key",
    );
    assert_code(
        commit(&mut c, "", "active").await,
        Code::InvalidArgument,
        "commit with empty name",
    );
    assert_code(
        commit(&mut c, "x", "").await,
        Code::InvalidArgument,
        "commit with empty key",
    );

    assert_code(
        prepare(&mut c, "active", "").await,
        Code::AlreadyExists,
        "prepare of an existing key",
    );
    assert_code(
        view(&mut c, "committed", "").await,
        Code::AlreadyExists,
        "view named like a committed snapshot",
    );
    assert_code(
        commit(&mut c, "committed", "active").await,
        Code::AlreadyExists,
        "commit onto an existing name",
    );

    assert_code(
        prepare(&mut c, "x", "missing").await,
        Code::NotFound,
        "prepare on a missing parent",
    );
    assert_code(
        view(&mut c, "x", "missing").await,
        Code::NotFound,
        "view of a missing parent",
    );
    assert_code(
        mounts(&mut c, "missing").await,
        Code::NotFound,
        "mounts of a missing key",
    );
    assert_code(
        stat(&mut c, "missing").await,
        Code::NotFound,
        "stat of a missing key",
    );
    assert_code(
        usage(&mut c, "missing").await,
        Code::NotFound,
        "usage of a missing key",
    );
    assert_code(
        remove(&mut c, "missing").await,
        Code::NotFound,
        "remove of a missing key",
    );
    assert_code(
        commit(&mut c, "x", "missing").await,
        Code::NotFound,
        "commit of a missing key",
    );

    assert_code(
        prepare(&mut c, "x", "active").await,
        Code::InvalidArgument,
        "prepare on an active parent",
    );
    assert_code(
        view(&mut c, "x", "view").await,
        Code::InvalidArgument,
        "view of a view",
    );
    assert_code(
        commit(&mut c, "x", "view").await,
        Code::FailedPrecondition,
        "commit of a view",
    );
    assert_code(
        commit(&mut c, "x", "committed").await,
        Code::FailedPrecondition,
        "commit of a committed snapshot",
    );
    assert_code(
        mounts(&mut c, "committed").await,
        Code::FailedPrecondition,
        "mounts of a committed snapshot",
    );
    prepare(&mut c, "child", "committed").await.unwrap();
    assert_code(
        remove(&mut c, "committed").await,
        Code::FailedPrecondition,
        "remove with a child",
    );
    let big = labels(&[("k", &"v".repeat(5000))]);
    let r = c
        .prepare(pb::PrepareSnapshotRequest {
            snapshotter: "strata".into(),
            key: "big".into(),
            parent: String::new(),
            labels: big,
        })
        .await;
    assert_code(r, Code::InvalidArgument, "oversized label");
    assert_code(
        commit_with(&mut c, "x", "active", gc_root(), "view").await,
        Code::FailedPrecondition,
        "commit rebased on a view",
    );
    assert_code(
        commit_with(&mut c, "x", "child", gc_root(), "missing").await,
        Code::NotFound,
        "commit rebased on a missing parent",
    );
    prepare(&mut c, "tmp2", "").await.unwrap();
    commit(&mut c, "other", "tmp2").await.unwrap();
    assert_code(
        commit_with(&mut c, "x", "child", gc_root(), "other").await,
        Code::InvalidArgument,
        "commit changing an existing parent",
    );
    // Nothing above left a snapshot behind.
    assert_eq!(
        list_names(&mut c, &[]).await.unwrap(),
        ["active", "child", "committed", "other", "view"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mounts_carry_the_detected_and_configured_options() {
    let s = Server::start().await;
    let mut c = s.client();
    prepare(&mut c, "a", "").await.unwrap();
    commit(&mut c, "c", "a").await.unwrap();
    let m = prepare(&mut c, "b", "c").await.unwrap();
    let has_index = std::path::Path::new("/sys/module/overlay/parameters/index").exists();
    assert_eq!(m[0].options.iter().any(|o| o == "index=off"), has_index);
    assert!(
        !m[0].options.iter().any(|o| o == "userxattr"),
        "real root needs no userxattr"
    );
    assert_eq!(
        mounts(&mut c, "b").await.unwrap(),
        m,
        "Mounts repeats Prepare's answer"
    );

    let cfg = SnapshotterConfig {
        mount_options: vec!["volatile".into()],
        ..Default::default()
    };
    let s2 = Server::start_with(
        cfg,
        Some(Features {
            index: true,
            userxattr: true,
            idmapped_mounts: true,
        }),
    )
    .await;
    let mut c2 = s2.client();
    prepare(&mut c2, "a", "").await.unwrap();
    commit(&mut c2, "c", "a").await.unwrap();
    let m = prepare(&mut c2, "b", "c").await.unwrap();
    let root = s2.root();
    assert_eq!(
        m[0].options,
        [
            format!("workdir={}/snapshots/2/work", root.display()),
            format!("upperdir={}/snapshots/2/fs", root.display()),
            format!("lowerdir={}/snapshots/1/fs", root.display()),
            "userxattr".into(),
            "index=off".into(),
            "volatile".into(),
        ]
    );
    // And the configured option really mounts.
    let s3 = Server::start_with(
        SnapshotterConfig {
            mount_options: vec!["volatile".into()],
            ..Default::default()
        },
        None,
    )
    .await;
    let mut c3 = s3.client();
    prepare(&mut c3, "a", "").await.unwrap();
    commit(&mut c3, "c", "a").await.unwrap();
    let m = prepare(&mut c3, "b", "c").await.unwrap();
    let t = s3.scratch("b");
    let g = mount(&m, &t);
    std::fs::write(g.path().join("f"), b"x").unwrap();
}

fn du(path: &std::path::Path) -> (i64, i64) {
    let mut seen = std::collections::HashSet::new();
    let mut size = 0i64;
    for e in walkdir::WalkDir::new(path) {
        let md = e.unwrap().path().symlink_metadata().unwrap();
        if seen.insert(md.ino()) {
            size += md.blocks() as i64 * 512;
        }
    }
    (size, seen.len() as i64)
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_is_measured_for_active_and_stored_for_committed() {
    let s = Server::start().await;
    let mut c = s.client();
    let m = prepare(&mut c, "a", "").await.unwrap();
    let fs = std::path::PathBuf::from(&m[0].source);
    assert_eq!(usage(&mut c, "a").await.unwrap(), du(&fs), "empty snapshot");
    let t = s.scratch("a");
    {
        let g = mount(&m, &t);
        std::fs::write(g.path().join("big"), vec![1u8; 1 << 20]).unwrap();
        std::fs::hard_link(g.path().join("big"), g.path().join("big-link")).unwrap();
        std::fs::create_dir(g.path().join("d")).unwrap();
        std::fs::write(g.path().join("d/small"), b"x").unwrap();
        let (size, inodes) = usage(&mut c, "a").await.unwrap();
        assert_eq!((size, inodes), du(&fs), "active usage agrees with a walk");
        assert_eq!(inodes, 4, "root, big (twice linked), d, d/small");
        assert!(size >= 1 << 20);
    }
    let before = usage(&mut c, "a").await.unwrap();
    commit(&mut c, "c", "a").await.unwrap();
    assert_eq!(
        usage(&mut c, "c").await.unwrap(),
        before,
        "committed usage is the upper dir's"
    );
    // Stored: changing the files of a committed snapshot (nobody should) does not change it.
    std::fs::write(fs.join("later"), vec![2u8; 1 << 20]).unwrap();
    assert_eq!(usage(&mut c, "c").await.unwrap(), before);

    let m = prepare(&mut c, "child", "c").await.unwrap();
    let upper = m[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("upperdir="))
        .unwrap()
        .to_string();
    let t = s.scratch("child");
    {
        let g = mount(&m, &t);
        std::fs::write(g.path().join("new"), vec![3u8; 8192]).unwrap();
    }
    let u = usage(&mut c, "child").await.unwrap();
    assert_eq!(
        u,
        du(std::path::Path::new(&upper)),
        "only the upper dir counts"
    );
    view(&mut c, "v", "c").await.unwrap();
    assert_eq!(
        usage(&mut c, "v").await.unwrap(),
        (0, 0),
        "views report the stored zero, as containerd"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn commit_with_parent_rebases_a_parentless_layer() {
    let s = Server::start().await;
    let mut c = s.client();
    let m = prepare(&mut c, "base-a", "").await.unwrap();
    let t = s.scratch("t");
    {
        let g = mount(&m, &t);
        apply(
            g.path(),
            &[
                file("/keep", "k", 0o644),
                file("/gone", "g", 0o644),
                Op::Dir("/etc", 0o755),
                file("/etc/conf", "old", 0o644),
            ],
        );
    }
    commit(&mut c, "base", "base-a").await.unwrap();
    // containerd 2.2's parallel unpack: the layer is prepared without its parent and applied
    // as an overlay diff (whiteouts as 0/0 char devices), then committed onto the parent.
    let m = prepare(&mut c, "layer-a", "").await.unwrap();
    assert_eq!(m[0].kind, "bind");
    {
        let g = mount(&m, &t);
        nix::sys::stat::mknod(
            &g.path().join("gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        std::fs::create_dir(g.path().join("etc")).unwrap();
        std::fs::write(g.path().join("etc/conf"), b"new").unwrap();
    }
    commit_with(&mut c, "layer", "layer-a", gc_root(), "base")
        .await
        .unwrap();
    assert_eq!(stat(&mut c, "layer").await.unwrap().parent, "base");
    assert_code(
        remove(&mut c, "base").await,
        Code::FailedPrecondition,
        "rebased layer is a child of base",
    );
    let m = view(&mut c, "v", "layer").await.unwrap();
    let g = mount(&m, &t);
    let tree = capture(g.path());
    assert!(tree.contains_key("/keep"));
    assert!(
        !tree.contains_key("/gone"),
        "whiteout hides the parent's file"
    );
    assert_eq!(std::fs::read(g.path().join("etc/conf")).unwrap(), b"new");
}

#[tokio::test(flavor = "multi_thread")]
async fn async_remove_leaves_directories_for_cleanup_and_sync_does_not() {
    let s = Server::start().await;
    let mut c = s.client();
    let m = prepare(&mut c, "a", "").await.unwrap();
    let dir = std::path::PathBuf::from(&m[0].source)
        .parent()
        .unwrap()
        .to_path_buf();
    remove(&mut c, "a").await.unwrap();
    assert!(dir.exists(), "async remove keeps the directory");
    prepare(&mut c, "a", "").await.unwrap();
    cleanup(&mut c).await.unwrap();
    assert!(!dir.exists(), "Cleanup deletes it");
    assert!(
        stat(&mut c, "a").await.is_ok(),
        "Cleanup leaves live snapshots alone"
    );
    let entries = std::fs::read_dir(s.root().join("snapshots"))
        .unwrap()
        .count();
    assert_eq!(entries, 1);

    let s = Server::start_with(
        SnapshotterConfig {
            async_remove: false,
            ..Default::default()
        },
        None,
    )
    .await;
    let mut c = s.client();
    let m = prepare(&mut c, "a", "").await.unwrap();
    let dir = std::path::PathBuf::from(&m[0].source)
        .parent()
        .unwrap()
        .to_path_buf();
    remove(&mut c, "a").await.unwrap();
    assert!(!dir.exists(), "sync remove deletes at once");
}

#[tokio::test(flavor = "multi_thread")]
async fn native_mode_serves_the_same_api_with_copies() {
    let s = Server::start_with(
        SnapshotterConfig {
            mode: strata_snapshotter::config::Mode::Native,
            ..Default::default()
        },
        None,
    )
    .await;
    check_layers(
        &s,
        &[
            vec![
                file("/foo", "foo\n", 0o777),
                Op::Dir("/d", 0o700),
                file("/d/x", "x", 0o600),
                Op::Symlink("foo", "/l"),
            ],
            vec![
                Op::RemoveAll("/d"),
                file("/foo", "bar\n", 0o644),
                Op::Link("/foo", "/foo2"),
            ],
        ],
    )
    .await;
    let mut c = s.client();
    let m = mounts(&mut c, "final-view").await.unwrap();
    assert_eq!(m[0].kind, "bind");
    assert_eq!(m[0].options, ["ro", "rbind"]);
}

/// containerd's 128-layer test, at 130: the view's overlay has 130 lower dirs, which only fit
/// in the mount data because ids are short and the lower dirs are given relative to
/// `snapshots/`, as containerd's mount code does.
#[tokio::test(flavor = "multi_thread")]
async fn a_130_layer_chain_mounts() {
    let s = Server::start().await;
    let mut layers = vec![vec![
        file("/bottom", "way at the bottom\n", 0o777),
        file("/overwriteme", "FIRST!\n", 0o777),
        Op::Dir("/addhere", 0o755),
        Op::Dir("/onlyme", 0o755),
        file("/onlyme/bottom", "bye!\n", 0o777),
    ]];
    for i in 1..130 {
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        layers.push(vec![
            Op::File(
                "/overwriteme",
                format!("{i} WAS HERE!\n").into_bytes(),
                0o777,
            ),
            file(leak(format!("/addhere/file-{i}")), "same\n", 0o755),
            Op::RemoveAll("/onlyme"),
            Op::Dir("/onlyme", 0o755),
            file(leak(format!("/onlyme/file-{i}")), "only me!\n", 0o777),
        ]);
    }
    check_layers(&s, &layers).await;
    let mut c = s.client();
    let m = mounts(&mut c, "final-view").await.unwrap();
    let lower = m[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap();
    assert_eq!(lower.split(':').count(), 130);
    assert!(
        m[0].options.join(",").len() > 3584,
        "long enough to need compaction"
    );
}

/// Id-mapping labels over the wire: Prepare and View take them, Mounts repeats them as
/// `uidmap=`/`gidmap=` options (with `remap_ids`), and malformed ones are InvalidArgument,
/// leaving no snapshot behind.
#[tokio::test(flavor = "multi_thread")]
async fn idmapping_labels_over_grpc() {
    let cfg = SnapshotterConfig {
        remap_ids: true,
        ..Default::default()
    };
    let s = Server::start_with(
        cfg,
        Some(Features {
            index: true,
            userxattr: false,
            idmapped_mounts: true,
        }),
    )
    .await;
    let mut c = s.client();
    prepare(&mut c, "base-a", "").await.unwrap();
    commit(&mut c, "base", "base-a").await.unwrap();
    let mapped = |uid: &str, gid: &str| {
        let mut l = gc_root();
        l.insert(
            "containerd.io/snapshot/uidmapping".to_string(),
            uid.to_string(),
        );
        l.insert(
            "containerd.io/snapshot/gidmapping".to_string(),
            gid.to_string(),
        );
        l
    };
    let r = c
        .prepare(pb::PrepareSnapshotRequest {
            snapshotter: "strata".into(),
            key: "c".into(),
            parent: "base".into(),
            labels: mapped("0:100000:65536", "0:100000:65536"),
        })
        .await
        .unwrap();
    let m = from_proto(r.into_inner().mounts);
    assert_eq!(
        m[0].options[..2],
        ["uidmap=0:100000:65536", "gidmap=0:100000:65536"]
    );
    assert_eq!(mounts(&mut c, "c").await.unwrap(), m);
    let info = stat(&mut c, "c").await.unwrap();
    assert_eq!(
        info.labels
            .get("containerd.io/snapshot/uidmapping")
            .map(String::as_str),
        Some("0:100000:65536")
    );
    let md = std::fs::metadata(s.root().join("snapshots/2/fs")).unwrap();
    assert_eq!((md.uid(), md.gid()), (100000, 100000));

    for (uid, gid) in [("0:100000", "0:1:1"), ("1:100000:10", "0:1:1")] {
        let r = c
            .prepare(pb::PrepareSnapshotRequest {
                snapshotter: "strata".into(),
                key: "bad".into(),
                parent: "base".into(),
                labels: mapped(uid, gid),
            })
            .await;
        assert_code(r, tonic::Code::InvalidArgument, "malformed mapping");
        let r = c
            .view(pb::ViewSnapshotRequest {
                snapshotter: "strata".into(),
                key: "bad".into(),
                parent: "base".into(),
                labels: mapped(uid, gid),
            })
            .await;
        assert_code(r, tonic::Code::InvalidArgument, "malformed mapping");
    }
    assert_code(
        stat(&mut c, "bad").await,
        tonic::Code::NotFound,
        "nothing made",
    );
}
