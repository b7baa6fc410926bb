//! gRPC clients over unix sockets, dialled lazily so a plugin can start before its peer (e.g.
//! the differ before containerd) exists.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// A channel to the gRPC server on the unix socket `path`. Nothing is dialled until the first
/// call, and a broken connection is re-dialled on the next call.
pub fn unix_channel(path: impl AsRef<Path>) -> Channel {
    let path: PathBuf = path.as_ref().to_path_buf();
    // The URI is required by the builder but ignored: the connector below decides where to go.
    Endpoint::from_static("http://[::]:50051").connect_with_connector_lazy(tower::service_fn(
        move |_| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        },
    ))
}
