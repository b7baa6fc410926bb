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
