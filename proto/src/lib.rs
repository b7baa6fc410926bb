//! containerd's gRPC APIs for snapshots, content and diff, wire-identical to containerd v2.x.
//!
//! The module tree mirrors the proto packages (generated code refers to sibling packages with
//! `super::`), and short aliases sit at the top: [`types`], [`snapshots`], [`content`], [`diff`].

pub mod containerd {
    #![allow(clippy::all, missing_docs)]

    pub mod types {
        tonic::include_proto!("containerd.types");
    }

    pub mod services {
        pub mod snapshots {
            pub mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
        pub mod content {
            pub mod v1 {
                tonic::include_proto!("containerd.services.content.v1");
            }
        }
        pub mod diff {
            pub mod v1 {
                tonic::include_proto!("containerd.services.diff.v1");
            }
        }
    }
}

pub use containerd::services::content::v1 as content;
pub use containerd::services::diff::v1 as diff;
pub use containerd::services::snapshots::v1 as snapshots;
pub use containerd::types;

pub use prost::Message;
pub use prost_types;

impl types::Mount {
    /// A mount of `kind` from `source` with `options`, no target (containerd fills that in).
    pub fn new(kind: &str, source: &str, options: &[&str]) -> types::Mount {
        types::Mount {
            r#type: kind.into(),
            source: source.into(),
            target: String::new(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    /// A recursive bind mount of `source` as containerd hands them out (`rbind`, and `ro` or
    /// `rw`).
    pub fn bind(source: &std::path::Path, readonly: bool) -> types::Mount {
        types::Mount {
            r#type: "bind".into(),
            source: source.display().to_string(),
            target: String::new(),
            options: vec!["rbind".into(), if readonly { "ro" } else { "rw" }.into()],
        }
    }

    /// An overlay as containerd's overlayfs snapshotter hands one out: `lowers` highest
    /// first; with `upper` (upperdir, workdir) writable, else a read-only view of the lowers.
    pub fn overlay(
        upper: Option<(&std::path::Path, &std::path::Path)>,
        lowers: &[&std::path::Path],
    ) -> types::Mount {
        let mut options = Vec::new();
        if let Some((upper, work)) = upper {
            options.push("index=off".to_string());
            options.push(format!("workdir={}", work.display()));
            options.push(format!("upperdir={}", upper.display()));
        }
        if !lowers.is_empty() {
            let l: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
            options.push(format!("lowerdir={}", l.join(":")));
        }
        types::Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options,
        }
    }
}

#[cfg(test)]
mod wire_tests {
    //! Field numbers and names checked against the bytes containerd's Go structs produce, so a
    //! renumbered field fails here rather than as silent data loss between containerd and us.
    use super::*;
    use prost::Message;

    fn bytes(m: &impl Message) -> Vec<u8> {
        m.encode_to_vec()
    }

    #[test]
    fn newer_fields_have_containerds_numbers() {
        let commit = snapshots::CommitSnapshotRequest {
            parent: "p".into(),
            ..Default::default()
        };
        assert_eq!(bytes(&commit), [5 << 3 | 2, 1, b'p']);

        let apply = diff::ApplyRequest {
            sync_fs: true,
            ..Default::default()
        };
        assert_eq!(bytes(&apply), [4 << 3, 1]);

        let diff_req = diff::DiffRequest {
            source_date_epoch: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert_eq!(bytes(&diff_req), [6 << 3 | 2, 2, 1 << 3, 1]);
    }

    #[test]
    fn message_layouts_match_containerd() {
        let resp = diff::DiffResponse {
            diff: Some(types::Descriptor {
                media_type: "m".into(),
                digest: "d".into(),
                size: 3,
                annotations: [("k".to_string(), "v".to_string())].into(),
            }),
        };
        let desc = [
            1 << 3 | 2,
            1,
            b'm',
            2 << 3 | 2,
            1,
            b'd',
            3 << 3,
            3,
            5 << 3 | 2,
            6,
            1 << 3 | 2,
            1,
            b'k',
            2 << 3 | 2,
            1,
            b'v',
        ];
        let mut want = vec![3 << 3 | 2, desc.len() as u8];
        want.extend_from_slice(&desc);
        assert_eq!(bytes(&resp), want);

        let mount = types::Mount {
            r#type: "overlay".into(),
            source: "s".into(),
            target: "t".into(),
            options: vec!["ro".into()],
        };
        let mut want = vec![1 << 3 | 2, 7];
        want.extend_from_slice(b"overlay");
        want.extend_from_slice(&[2 << 3 | 2, 1, b's', 3 << 3 | 2, 1, b't', 4 << 3 | 2, 2]);
        want.extend_from_slice(b"ro");
        assert_eq!(bytes(&mount), want);

        let write = content::WriteContentRequest {
            action: content::WriteAction::Commit as i32,
            offset: 9,
            labels: [("a".to_string(), "b".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(
            bytes(&write),
            [
                1 << 3,
                2,
                5 << 3,
                9,
                7 << 3 | 2,
                6,
                1 << 3 | 2,
                1,
                b'a',
                2 << 3 | 2,
                1,
                b'b'
            ]
        );

        let info = snapshots::Info {
            kind: snapshots::Kind::Committed as i32,
            ..Default::default()
        };
        assert_eq!(bytes(&info), [3 << 3, 3]);
        assert_eq!(snapshots::Kind::View as i32, 1);
        assert_eq!(snapshots::Kind::Active as i32, 2);

        let status = content::ListStatusesResponse {
            statuses: vec![content::Status {
                r#ref: "r".into(),
                offset: 1,
                total: 2,
                ..Default::default()
            }],
        };
        assert_eq!(
            bytes(&status),
            [1 << 3 | 2, 7, 3 << 3 | 2, 1, b'r', 4 << 3, 1, 5 << 3, 2]
        );

        let usage = snapshots::UsageResponse { size: 1, inodes: 2 };
        assert_eq!(bytes(&usage), [1 << 3, 1, 2 << 3, 2]);
    }

    #[test]
    fn services_have_containerds_names() {
        assert_eq!(
            snapshots::snapshots_server::SERVICE_NAME,
            "containerd.services.snapshots.v1.Snapshots"
        );
        assert_eq!(
            content::content_server::SERVICE_NAME,
            "containerd.services.content.v1.Content"
        );
        assert_eq!(
            diff::diff_server::SERVICE_NAME,
            "containerd.services.diff.v1.Diff"
        );
    }
}
