//! Layer blobs read through a content gRPC service (containerd's own, normally), and the
//! namespace to read them in.
//!
//! One `Read` call streams the whole blob (containerd's content service answers in 1 MiB
//! messages), unlike containerd's proxy `ReaderAt`, which opens a stream per 32 KiB.
//!
//! containerd 1.7 calls a proxy differ without a `containerd-namespace` header (2.x's transfer
//! service sends it), and containerd's content service refuses un-namespaced calls. The
//! namespace is then found by listing containerd's namespaces and asking each whether it has
//! the digest; a configured fallback namespace is used when the content service cannot list
//! namespaces (e.g. strata-content).

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use strata_common::error::{Error, ErrorKind, Result};
use strata_common::namespace::RequestContext;
use strata_proto::content::content_client::ContentClient;
use strata_proto::content::{InfoRequest, ReadContentRequest, ReadContentResponse};
use tonic::Streaming;
use tonic::transport::Channel;
use tracing::{debug, info};

/// Largest message accepted from the content service (containerd sends 1 MiB).
const MAX_MESSAGE: usize = 16 << 20;

/// containerd's namespaces API, declared by hand: strata's protos don't carry it and only
/// `List` is needed.
mod namespaces {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListNamespacesRequest {
        #[prost(string, tag = "1")]
        pub filter: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Namespace {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(map = "string, string", tag = "2")]
        pub labels: std::collections::HashMap<String, String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListNamespacesResponse {
        #[prost(message, repeated, tag = "1")]
        pub namespaces: Vec<Namespace>,
    }

    pub const LIST_PATH: &str = "/containerd.services.namespaces.v1.Namespaces/List";
}

/// A digest strata can verify: `sha256:<64 hex>`.
pub fn parse_digest(digest: &str) -> Result<[u8; 32]> {
    let Some(hex_part) = digest.strip_prefix("sha256:") else {
        return Err(if digest.contains(':') {
            Error::unimplemented(format!("digest algorithm of {digest:?} is not supported"))
        } else {
            Error::invalid_argument(format!("invalid digest {digest:?}"))
        });
    };
    let mut out = [0u8; 32];
    if hex_part.len() != 64 || hex::decode_to_slice(hex_part, &mut out).is_err() {
        return Err(Error::invalid_argument(format!(
            "invalid digest {digest:?}"
        )));
    }
    Ok(out)
}

/// Reads layer blobs from a content service.
#[derive(Clone, Debug)]
pub struct Fetcher {
    channel: Channel,
    fallback_namespace: Option<String>,
    /// The namespace the last un-namespaced request's blob was found in: an unpack's next
    /// layer is almost always there too, so it is asked first (one Info instead of a List and
    /// an Info per namespace).
    last_found: Arc<Mutex<Option<String>>>,
    /// The store's directory (`blobs/sha256/<hex>` inside), when the differ may read blobs
    /// from disk instead of through the content service.
    content_root: Option<PathBuf>,
}

impl Fetcher {
    pub fn new(channel: Channel, fallback_namespace: Option<String>) -> Fetcher {
        Fetcher {
            channel,
            fallback_namespace,
            last_found: Arc::default(),
            content_root: None,
        }
    }

    /// Reads blobs from `root/blobs/sha256/<hex>` when they are there (containerd's
    /// `<root>/io.containerd.content.v1.content`, or strata-content's root): a layer then
    /// costs a file read instead of a trip through the content service, whose copy of every
    /// byte over gRPC was most of what a big uncompressed Apply spent. The digest is verified
    /// as it always is.
    pub fn with_content_root(mut self, root: Option<PathBuf>) -> Fetcher {
        self.content_root = root;
        self
    }

    /// The blob `digest` (already checked by [`parse_digest`]) as a file under the content
    /// root, if there is one and it has the blob.
    pub fn local_blob(&self, digest: &str) -> Option<File> {
        let root = self.content_root.as_ref()?;
        let hex_part = digest.strip_prefix("sha256:")?;
        if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let path = root.join("blobs").join("sha256").join(hex_part);
        match File::open(&path) {
            Ok(f) => Some(f),
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    debug!(path = %path.display(), error = %e, "blob file unreadable; using the content service");
                }
                None
            }
        }
    }

    fn client(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// The context to read `digest` in: the caller's when it names a namespace, else the
    /// first of containerd's namespaces holding the digest, else the fallback namespace.
    pub async fn context_for(&self, ctx: &RequestContext, digest: &str) -> Result<RequestContext> {
        if ctx.namespace.is_some() {
            return Ok(ctx.clone());
        }
        let last = self.last_found.lock().ok().and_then(|l| l.clone());
        if let Some(ns) = last
            && let Some(found) = self.probe(ctx, &ns, digest).await?
        {
            return Ok(found);
        }
        let listed = self.list_namespaces().await;
        match listed {
            Ok(names) => {
                for ns in &names {
                    if let Some(found) = self.probe(ctx, ns, digest).await? {
                        debug!(namespace = %ns, %digest, "found the layer's namespace");
                        if let Ok(mut l) = self.last_found.lock() {
                            *l = Some(ns.clone());
                        }
                        return Ok(found);
                    }
                }
                Err(Error::not_found(format!(
                    "content {digest} in any of the namespaces {names:?} (the request named none)"
                )))
            }
            Err(e) => match &self.fallback_namespace {
                Some(ns) => Ok(RequestContext {
                    namespace: Some(ns.clone()),
                    lease: ctx.lease.clone(),
                }),
                // A content service without namespaces (strata-content read directly) may
                // not need one at all.
                None if e.is(ErrorKind::Unimplemented) => Ok(ctx.clone()),
                None => Err(e),
            },
        }
    }

    /// `ctx` in namespace `ns` if the content service has `digest` there.
    async fn probe(
        &self,
        ctx: &RequestContext,
        ns: &str,
        digest: &str,
    ) -> Result<Option<RequestContext>> {
        let probe = RequestContext {
            namespace: Some(ns.to_string()),
            lease: ctx.lease.clone(),
        };
        let req = probe.request(InfoRequest {
            digest: digest.to_string(),
        })?;
        match self.client().info(req).await {
            Ok(_) => Ok(Some(probe)),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(Error::from_status(&s)),
        }
    }

    /// The context to write a Diff result in: the caller's when it names a namespace, else
    /// the configured fallback, else containerd's only namespace. With several and no
    /// fallback there is no telling whose diff this is: Unimplemented, so containerd's next
    /// differ (walking, which does know) makes it.
    pub async fn namespace_for_write(&self, ctx: &RequestContext) -> Result<RequestContext> {
        if ctx.namespace.is_some() {
            return Ok(ctx.clone());
        }
        let with = |ns: &str| RequestContext {
            namespace: Some(ns.to_string()),
            lease: ctx.lease.clone(),
        };
        if let Some(ns) = &self.fallback_namespace {
            return Ok(with(ns));
        }
        match self.list_namespaces().await {
            Ok(names) if names.len() == 1 => {
                info!(namespace = %names[0], "no namespace in the diff request; using containerd's only one");
                Ok(with(&names[0]))
            }
            Ok(names) => Err(Error::unimplemented(format!(
                "the diff request names no namespace and containerd has {} ({names:?}); \
                 set the differ's fallback_namespace to make such diffs here",
                names.len()
            ))),
            // A content service without namespaces (strata-content) needs none.
            Err(e) if e.is(ErrorKind::Unimplemented) => Ok(ctx.clone()),
            Err(e) => Err(e),
        }
    }

    async fn list_namespaces(&self) -> Result<Vec<String>> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| Error::unavailable(format!("content service: {e}")))?;
        let path = http::uri::PathAndQuery::from_static(namespaces::LIST_PATH);
        let codec = tonic_prost::ProstCodec::<
            namespaces::ListNamespacesRequest,
            namespaces::ListNamespacesResponse,
        >::default();
        let resp = grpc
            .unary(
                tonic::Request::new(namespaces::ListNamespacesRequest::default()),
                path,
                codec,
            )
            .await
            .map_err(|s| Error::from_status(&s))?;
        Ok(resp
            .into_inner()
            .namespaces
            .into_iter()
            .map(|n| n.name)
            .collect())
    }

    /// Opens the blob as one stream.
    pub async fn open(
        &self,
        ctx: &RequestContext,
        digest: &str,
    ) -> Result<Streaming<ReadContentResponse>> {
        let req = ctx.request(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        })?;
        let resp = self
            .client()
            .read(req)
            .await
            .map_err(|s| Error::from_status(&s))?;
        Ok(resp.into_inner())
    }
}

/// The blob stream as a blocking reader, polled on `handle`'s runtime.
pub struct BlobReader {
    handle: tokio::runtime::Handle,
    stream: Streaming<ReadContentResponse>,
    current: Vec<u8>,
    pos: usize,
    done: bool,
}

impl BlobReader {
    pub fn new(
        handle: tokio::runtime::Handle,
        stream: Streaming<ReadContentResponse>,
    ) -> BlobReader {
        BlobReader {
            handle,
            stream,
            current: Vec::new(),
            pos: 0,
            done: false,
        }
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.pos >= self.current.len() {
            if self.done {
                return Ok(0);
            }
            match self.handle.block_on(self.stream.message()) {
                Ok(Some(msg)) => {
                    self.current = msg.data;
                    self.pos = 0;
                }
                Ok(None) => self.done = true,
                Err(status) => return Err(io::Error::other(status)),
            }
        }
        let rest = &self.current[self.pos..];
        let n = buf.len().min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

/// A reader that checks, at its end, that it delivered exactly `size` bytes hashing to
/// `digest` (containerd's verifier), failing the read that would have been the last.
pub struct Verified<R> {
    inner: R,
    hasher: Sha256,
    expected: [u8; 32],
    digest: String,
    size: u64,
    read: u64,
}

impl<R: Read> Verified<R> {
    pub fn new(inner: R, digest: &str, size: u64) -> Result<Verified<R>> {
        Ok(Verified {
            inner,
            hasher: Sha256::new(),
            expected: parse_digest(digest)?,
            digest: digest.to_string(),
            size,
            read: 0,
        })
    }

    /// The digest the blob is checked against.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    fn mismatch(&self, message: String) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, Mismatch(message))
    }
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.size {
            return Err(self.mismatch(format!(
                "blob {} is larger than its descriptor's {} bytes",
                self.digest, self.size
            )));
        }
        if n > 0 {
            self.hasher.update(&buf[..n]);
            return Ok(n);
        }
        if self.read != self.size {
            return Err(self.mismatch(format!(
                "blob {} has {} bytes, its descriptor says {}",
                self.digest, self.read, self.size
            )));
        }
        let got: [u8; 32] = self.hasher.clone().finalize().into();
        if got != self.expected {
            return Err(self.mismatch(format!(
                "digest mismatch: blob read as {} hashes to sha256:{}",
                self.digest,
                hex::encode(got)
            )));
        }
        Ok(0)
    }
}

/// The error a verification failure surfaces as; [`verify_error`] turns it back into ours.
#[derive(Debug)]
struct Mismatch(String);

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Mismatch {}

/// The digest or size mismatch (or content service error) inside an I/O error from a reader
/// stacked on a [`Verified`] [`BlobReader`], if that is what it is.
pub fn verify_error(e: &io::Error) -> Option<Error> {
    let inner = e.get_ref()?;
    if let Some(m) = inner.downcast_ref::<Mismatch>() {
        return Some(Error::failed_precondition(m.0.clone()));
    }
    inner
        .downcast_ref::<tonic::Status>()
        .map(Error::from_status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let d = strata_testkit::sha256_digest(b"x");
        assert!(parse_digest(&d).is_ok());
        assert_eq!(
            parse_digest("sha512:abcd").unwrap_err().kind(),
            ErrorKind::Unimplemented
        );
        for bad in ["sha256:xyz", "nope", "sha256:", &d[..70]] {
            assert_eq!(
                parse_digest(bad).unwrap_err().kind(),
                ErrorKind::InvalidArgument,
                "{bad}"
            );
        }
    }
}
