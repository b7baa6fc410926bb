//! Apply: a layer blob onto mounts, as a four-thread pipeline.
//!
//! ```text
//! blob (content Read stream or file) -> sha256 + size check at its end   (fetch thread)
//!      -> decompress                                                    (decoder thread)
//!      -> sha256 of the tar (the diffID; skipped for a verified plain blob) (diffid thread)
//!      -> tar entries -> resolve inside the root -> files, metadata, whiteouts (caller's thread)
//! ```
//! Bounded channels of 1 MiB chunks join the stages, so memory stays at a few MiB whatever
//! the layer's size, and each CPU-heavy step (two hashes, inflate, file writes) gets a thread:
//! on two cores any two of them run at once.

pub mod copy_up;
pub mod fetch;
pub mod inflate;
pub mod target;
pub mod unpack;

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
pub(crate) mod tests;

use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Instant;

use sha2::{Digest, Sha256};
use strata_common::error::{Error, ErrorKind, Result};
use strata_common::namespace::RequestContext;
use strata_proto::types::{Descriptor, Mount};
use tracing::info;

use crate::apply::fetch::{BlobReader, Fetcher, Verified};
use crate::apply::target::Target;
use crate::apply::unpack::{Stats, Unpacker};
use crate::media::{self, Compression};
use crate::metrics::{BlobSource, DifferMetrics};
use crate::read_full::read_full;
use crate::resolve::Root;

const CHUNK: usize = 1 << 20;
const CHANNEL_DEPTH: usize = 4;

/// What was applied: the uncompressed layer (its diffID and size).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub stats: Stats,
}

impl Applied {
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size as i64,
            annotations: Default::default(),
        }
    }
}

/// The Apply half of strata-differ.
#[derive(Clone, Debug)]
pub struct Applier {
    fetcher: Fetcher,
    scratch: PathBuf,
    metrics: Arc<DifferMetrics>,
}

impl Applier {
    /// `scratch` holds the temporary mount points of targets that must be mounted.
    pub fn new(fetcher: Fetcher, scratch: impl Into<PathBuf>) -> Applier {
        Applier {
            fetcher,
            scratch: scratch.into(),
            metrics: Arc::default(),
        }
    }

    /// Counts applied layers in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<DifferMetrics>) -> Applier {
        self.metrics = metrics;
        self
    }

    /// Applies the layer `desc` onto `mounts`. Unimplemented (so containerd tries its next
    /// differ) for media types and digests strata does not handle, before anything is read.
    pub async fn apply(
        &self,
        ctx: &RequestContext,
        desc: &Descriptor,
        mounts: &[Mount],
        sync_fs: bool,
    ) -> Result<Applied> {
        let compression = media::compression_of(&desc.media_type)?;
        fetch::parse_digest(&desc.digest)?;
        let size = u64::try_from(desc.size)
            .map_err(|_| Error::invalid_argument(format!("negative size {}", desc.size)))?;
        let start = Instant::now();
        let (blob, source, namespace): (Box<dyn Read + Send>, _, _) =
            match self.fetcher.local_blob(&desc.digest) {
                Some(file) => (Box::new(file), BlobSource::File, None),
                None => {
                    let rctx = self.fetcher.context_for(ctx, &desc.digest).await?;
                    let stream = self.fetcher.open(&rctx, &desc.digest).await?;
                    let reader = BlobReader::new(tokio::runtime::Handle::current(), stream);
                    (Box::new(reader), BlobSource::ContentService, rctx.namespace)
                }
            };
        let blob = Verified::new(blob, &desc.digest, size)?;
        let mounts = mounts.to_vec();
        let scratch = self.scratch.clone();
        let applied = tokio::task::spawn_blocking(move || {
            apply_verified(blob, compression, &mounts, &scratch, sync_fs)
        })
        .await
        .map_err(|e| Error::internal(format!("apply task: {e}")))??;
        info!(
            digest = %desc.digest,
            media_type = %desc.media_type,
            namespace = namespace.as_deref().unwrap_or(""),
            source = source.label(),
            diff_id = %applied.digest,
            entries = applied.stats.entries,
            bytes = applied.size,
            elapsed_ms = start.elapsed().as_millis() as u64,
            "strata-differ applied layer"
        );
        self.metrics.applied(&desc.media_type, source, size);
        Ok(applied)
    }
}

/// Applies the (compressed) layer read from `blob` onto `mounts`, blocking. A `blob` that
/// fails verification at its end ([`Verified`]) fails the apply, whatever was written.
pub fn apply_reader<R: Read + Send + 'static>(
    blob: R,
    compression: Compression,
    mounts: &[Mount],
    scratch: &Path,
    sync_fs: bool,
) -> Result<Applied> {
    apply_with(blob, compression, mounts, scratch, sync_fs, None)
}

/// [`apply_reader`] for a blob checked against its descriptor: an uncompressed layer's
/// diffID is then its verified digest, so its bytes are hashed once, not twice (sha256 is most
/// of the CPU an apply of a big plain layer costs).
fn apply_verified<R: Read + Send + 'static>(
    blob: Verified<R>,
    compression: Compression,
    mounts: &[Mount],
    scratch: &Path,
    sync_fs: bool,
) -> Result<Applied> {
    let digest = blob.digest().to_string();
    apply_with(blob, compression, mounts, scratch, sync_fs, Some(digest))
}

fn apply_with<R: Read + Send + 'static>(
    blob: R,
    compression: Compression,
    mounts: &[Mount],
    scratch: &Path,
    sync_fs: bool,
    verified_digest: Option<String>,
) -> Result<Applied> {
    let target = Target::prepare(mounts, scratch)?;
    let result = apply_to(blob, compression, &target, sync_fs, verified_digest);
    let finished = target.finish();
    let applied = result?;
    finished?;
    Ok(applied)
}

fn apply_to<R: Read + Send + 'static>(
    blob: R,
    compression: Compression,
    target: &Target,
    sync_fs: bool,
    verified_digest: Option<String>,
) -> Result<Applied> {
    let root = Root::open(&target.root)
        .map_err(|e| Error::io(format!("open {}", target.root.display()), e))?;
    let mut lowers = Vec::with_capacity(target.lowers.len());
    for l in &target.lowers {
        lowers.push(
            Root::open(l).map_err(|e| Error::io(format!("open lowerdir {}", l.display()), e))?,
        );
    }
    let unpacker = Unpacker::new(root, target.whiteouts, lowers);

    // The compressed stream is read (and its digest checked) on a thread of its own: hashing
    // it and decompressing one after the other on one thread made that thread the bottleneck.
    let blob = ReadAhead::spawn(blob)?;
    // The diffID is hashed on a thread of its own too: inflating and hashing 1 GiB one after
    // the other kept the decoder busy twice as long as either.
    let (tx, rx) = sync_channel::<Msg>(CHANNEL_DEPTH);
    let (tx_hashed, rx_hashed) = sync_channel::<Msg>(CHANNEL_DEPTH);
    let decoder = std::thread::Builder::new()
        .name("strata-decode".into())
        .spawn(move || decode(blob, compression, tx, verified_digest))
        .map_err(|e| Error::io("start the decoder thread", e))?;
    let hasher = std::thread::Builder::new()
        .name("strata-diffid".into())
        .spawn(move || hash_forward(&rx, &tx_hashed))
        .map_err(|e| Error::io("start the hashing thread", e))?;
    let unpacked = unpacker.unpack(ChannelReader {
        rx: rx_hashed,
        current: Vec::new(),
        pos: 0,
        ended: false,
    });
    let decoded = decoder
        .join()
        .map_err(|_| Error::internal("the decoder thread panicked"))?;
    let hashed = hasher
        .join()
        .map_err(|_| Error::internal("the hashing thread panicked"))?;
    let ((known, size), stats, hashed) = match (decoded, unpacked, hashed) {
        // The decoder's error (digest mismatch, corrupt compression) is the cause of whatever
        // the unpacker saw, unless the decoder only stopped because the unpacker did.
        (Err(e), _, _) if !e.is(ErrorKind::Aborted) => return Err(e),
        (_, Err(e), _) => return Err(e),
        (Err(e), Ok(_), _) => return Err(e),
        (Ok(_), Ok(_), Err(e)) => return Err(e),
        (Ok(d), Ok(stats), Ok(h)) => (d, stats, h),
    };
    let digest = known
        .or(hashed)
        .ok_or_else(|| Error::internal("no diffID: neither known nor hashed"))?;
    if sync_fs {
        syncfs(&target.root)?;
    }
    Ok(Applied {
        digest,
        size,
        media_type: media::OCI_LAYER_TAR.to_string(),
        stats,
    })
}

fn syncfs(path: &Path) -> Result<()> {
    let f =
        std::fs::File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    // SAFETY: plain syscall on an fd we own.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(Error::io(
            format!("syncfs {}", path.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A reader whose data is read ahead by another thread, in [`CHUNK`]s, at most
/// [`CHANNEL_DEPTH`] of them buffered. Errors (a digest mismatch included) arrive in order.
struct ReadAhead {
    rx: Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    done: bool,
}

impl ReadAhead {
    fn spawn<R: Read + Send + 'static>(mut inner: R) -> Result<ReadAhead> {
        let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(CHANNEL_DEPTH);
        std::thread::Builder::new()
            .name("strata-fetch".into())
            .spawn(move || {
                loop {
                    let mut buf = vec![0u8; CHUNK];
                    match read_full(&mut inner, &mut buf) {
                        Ok(n) => {
                            buf.truncate(n);
                            let end = n == 0;
                            if tx.send(Ok(buf)).is_err() || end {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
            })
            .map_err(|e| Error::io("start the fetch thread", e))?;
        Ok(ReadAhead {
            rx,
            current: Vec::new(),
            pos: 0,
            done: false,
        })
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.current.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(d)) if d.is_empty() => self.done = true,
                Ok(Ok(d)) => {
                    self.current = d;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the fetch thread stopped",
                    ));
                }
            }
        }
        let rest = &self.current[self.pos..];
        let n = buf.len().min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

enum Msg {
    /// The stream's digest is known already (a verified plain blob): not hashed again.
    SkipHash,
    Data(Vec<u8>),
    /// The whole stream was decoded and verified.
    End,
}

/// The unpacker's end of the channel. A channel closed without [`Msg::End`] is an error, so a
/// failed decoder can never look like a complete (shorter) tar.
struct ChannelReader {
    rx: Receiver<Msg>,
    current: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.current.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Msg::Data(d)) => {
                    self.current = d;
                    self.pos = 0;
                }
                Ok(Msg::End) => self.ended = true,
                Ok(Msg::SkipHash) => {}
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "layer stream ended early",
                    ));
                }
            }
        }
        let rest = &self.current[self.pos..];
        let n = buf.len().min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

fn read_error(e: io::Error, what: &str) -> Error {
    fetch::verify_error(&e).unwrap_or_else(|| Error::invalid_argument(format!("{what}: {e}")))
}

/// Sends the uncompressed stream of `r` down `tx` (to [`hash_forward`]). On a read error,
/// `raw` (the compressed input under `r`) is read to its end so a digest mismatch, the real
/// cause of corrupt data, is what gets reported.
///
/// `known` is the stream's digest when the stream itself is verified as it is read (a plain
/// layer read through [`Verified`]): the hashing thread is told not to hash it again, and it
/// is returned.
fn pump<R: Read, B: Read>(
    r: &mut R,
    raw: impl FnOnce(&mut R) -> &mut B,
    tx: &SyncSender<Msg>,
    known: Option<&str>,
) -> Result<(Option<String>, u64)> {
    let stopped = || Error::new(ErrorKind::Aborted, "the unpacker stopped");
    if known.is_some() {
        tx.send(Msg::SkipHash).map_err(|_| stopped())?;
    }
    let mut total = 0u64;
    loop {
        let mut buf = vec![0u8; CHUNK];
        let n = match read_full(r, &mut buf) {
            Ok(n) => n,
            Err(e) => {
                if fetch::verify_error(&e).is_none()
                    && let Err(e2) = io::copy(raw(r), &mut io::sink())
                    && let Some(v) = fetch::verify_error(&e2)
                {
                    return Err(v);
                }
                return Err(read_error(e, "decompressing the layer"));
            }
        };
        if n == 0 {
            break;
        }
        buf.truncate(n);
        total += n as u64;
        tx.send(Msg::Data(buf)).map_err(|_| stopped())?;
    }
    Ok((known.map(str::to_string), total))
}

/// Between the decoder and the unpacker: hashes the uncompressed stream (the diffID) unless
/// told it is known, and passes it on. Forwards the end only if the decoder sent it.
fn hash_forward(rx: &Receiver<Msg>, tx: &SyncSender<Msg>) -> Result<Option<String>> {
    let mut hasher = Some(Sha256::new());
    loop {
        match rx.recv() {
            Ok(Msg::SkipHash) => hasher = None,
            Ok(Msg::Data(d)) => {
                if let Some(h) = &mut hasher {
                    h.update(&d);
                }
                if tx.send(Msg::Data(d)).is_err() {
                    return Err(Error::new(ErrorKind::Aborted, "the unpacker stopped"));
                }
            }
            Ok(Msg::End) => {
                let _ = tx.send(Msg::End);
                return Ok(hasher.map(|h| format!("sha256:{}", hex::encode(h.finalize()))));
            }
            // Dropping `tx` without an end tells the unpacker the stream broke.
            Err(_) => return Err(Error::new(ErrorKind::Aborted, "the decoder stopped")),
        }
    }
}

fn drain<B: Read>(b: &mut B) -> Result<()> {
    io::copy(b, &mut io::sink())
        .map(drop)
        .map_err(|e| read_error(e, "reading the layer blob"))
}

fn decode<R: Read>(
    blob: R,
    c: Compression,
    tx: SyncSender<Msg>,
    verified_digest: Option<String>,
) -> Result<(Option<String>, u64)> {
    let mut input = BufReader::with_capacity(CHUNK, blob);
    let c = match c {
        Compression::Detect => {
            let head = input
                .fill_buf()
                .map_err(|e| read_error(e, "reading the layer blob"))?;
            media::detect(head)
        }
        c => c,
    };
    let out = match c {
        Compression::None | Compression::Detect => {
            let mut r = input;
            let out = pump(&mut r, |r| r, &tx, verified_digest.as_deref())?;
            drain(&mut r)?;
            out
        }
        Compression::Gzip => {
            let mut r = crate::apply::inflate::GzDecoder::new(input);
            let out = pump(&mut r, |r| r.get_mut(), &tx, None)?;
            drain(r.get_mut())?;
            out
        }
        Compression::Zstd => {
            let mut r = zstd::stream::read::Decoder::with_buffer(input)
                .map_err(|e| Error::io("start the zstd decoder", e))?;
            let out = pump(&mut r, |r| r.get_mut(), &tx, None)?;
            drain(r.get_mut())?;
            out
        }
    };
    // Only now, with every byte verified, may the unpacker call the layer complete.
    let _ = tx.send(Msg::End);
    Ok(out)
}
