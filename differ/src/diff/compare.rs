//! Diff: two mount sets to a layer in the content store (containerd's walking differ's
//! `Compare`, plus its overlay fast path made exact).
//!
//! ```text
//! mounts -> changes (overlay upperdir walk, or both trees walked)       (blocking thread)
//!        -> tar (layer) -> sha256 = diffID -> compress (gzip/zstd on every core)
//!        -> 1 MiB WRITEs -> content service -> COMMIT (+ containerd.io/uncompressed)
//! ```
//! Changes stream into the tar as they are found: memory holds the hard-link groups and the
//! directories written so far (as containerd's ChangeWriter does) and a handful of 1 MiB
//! buffers in flight, whatever the layer's size.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};
use strata_common::error::{Error, ErrorKind, Result};
use strata_common::namespace::RequestContext;
use strata_proto::diff::DiffRequest;
use strata_proto::types::{Descriptor, Mount};
use tracing::{info, warn};

use crate::apply::fetch::Fetcher;
use crate::apply::target::{self, TempMount};
use crate::diff::blob_file::BlobFile;
use crate::diff::changes::{self, Emit, OverlayError};
use crate::diff::compress::{self, Compressor, Levels};
use crate::diff::layer::{LayerOptions, LayerStats, LayerWriter, Restart};
use crate::diff::upload::{BlobSink, Committed, UNCOMPRESSED_LABEL, Uploader};
use crate::media::{self, Compression};
use crate::whiteout;

/// The media type containerd's walking differ writes when the request names none.
pub const DEFAULT_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The compression of a Diff's output media type; Unimplemented (containerd then tries its
/// next differ) for anything but OCI's plain, gzip and zstd layers, as walking answers.
pub fn output_compression(media_type: &str) -> Result<Compression> {
    match media_type {
        "" | DEFAULT_MEDIA_TYPE => Ok(Compression::Gzip),
        media::OCI_LAYER_TAR => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+zstd" => Ok(Compression::Zstd),
        other => Err(Error::unimplemented(format!(
            "unsupported diff media type: {other}"
        ))),
    }
}

/// How the changes were found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Only the overlay upperdir was read.
    OverlayUpper,
    /// Both trees were walked.
    DoubleWalk,
}

/// A layer made by [`Comparer::compare`].
#[derive(Clone, Debug)]
pub struct Compared {
    pub descriptor: Descriptor,
    pub diff_id: String,
    pub method: Method,
    pub stats: LayerStats,
}

/// The Diff half of strata-differ.
#[derive(Clone, Debug)]
pub struct Comparer {
    fetcher: Fetcher,
    uploader: Uploader,
    scratch: PathBuf,
    levels: Levels,
    blob_root: Option<PathBuf>,
}

impl Comparer {
    /// `fetcher` finds the namespace when the request has none; `uploader` writes the
    /// result; `scratch` holds temporary mount points.
    pub fn new(fetcher: Fetcher, uploader: Uploader, scratch: impl Into<PathBuf>) -> Comparer {
        Comparer {
            fetcher,
            uploader,
            scratch: scratch.into(),
            levels: Levels::default(),
            blob_root: None,
        }
    }

    /// Writes layers straight into the store directory `root` (holding `blobs/`) of the
    /// store behind the content service; see [`crate::diff::blob_file`].
    pub fn with_blob_root(mut self, root: Option<PathBuf>) -> Comparer {
        self.blob_root = root;
        self
    }

    /// Compresses at `levels` instead of the defaults.
    pub fn with_levels(mut self, levels: Levels) -> Result<Comparer> {
        self.levels = levels
            .validate()
            .map_err(|e| Error::invalid_argument(e.to_string()))?;
        Ok(self)
    }

    pub async fn compare(&self, ctx: &RequestContext, req: DiffRequest) -> Result<Compared> {
        let compression = output_compression(&req.media_type)?;
        let media_type = if req.media_type.is_empty() {
            DEFAULT_MEDIA_TYPE.to_string()
        } else {
            req.media_type.clone()
        };
        if req.right.is_empty() {
            return Err(Error::invalid_argument(
                "diff needs the upper (right) mounts",
            ));
        }
        let opts = LayerOptions {
            mtime_upper_bound: req
                .source_date_epoch
                .map(|t| (t.seconds, u32::try_from(t.nanos).unwrap_or(0))),
        };
        let start = Instant::now();
        let ctx = self.fetcher.namespace_for_write(ctx).await?;
        let ctx = self.uploader.leased(&ctx).await?;
        let generated = req.r#ref.is_empty();
        let r#ref = if generated {
            crate::diff::unique_id("strata-diff")
        } else {
            req.r#ref.clone()
        };
        let job = Job {
            lower: req.left,
            upper: req.right,
            scratch: self.scratch.clone(),
            compression,
            levels: self.levels,
            opts,
            labels: req.labels,
        };
        let outcome = match &self.blob_root {
            Some(root) => match BlobFile::create(root) {
                Ok(file) => self.produce_in_store(&ctx, &r#ref, root, file, job).await,
                Err(e) => {
                    // A content_root that cannot be written (read-only, missing) still
                    // serves Apply's reads; the layer goes through the service instead.
                    warn!(
                        root = %root.display(),
                        error = %e,
                        "cannot write into content_root; sending the layer through the content service"
                    );
                    self.produce_through_service(&ctx, &r#ref, job).await
                }
            },
            None => self.produce_through_service(&ctx, &r#ref, job).await,
        };
        let produced = match outcome {
            Ok(p) => p,
            Err(e) => {
                if generated
                    && let Err(a) = self.uploader.abort(&ctx, &r#ref).await
                    // A layer made in the store's directory opens no ingest before its end.
                    && !a.is(ErrorKind::NotFound)
                {
                    warn!(r#ref = %r#ref, error = %a, "abort the failed diff's ingest");
                }
                return Err(e);
            }
        };

        let info = self.uploader.info(&ctx, &produced.committed.digest).await?;
        if compression != Compression::None && !info.labels.contains_key(UNCOMPRESSED_LABEL) {
            // The blob was there already, without its diffID.
            let label = HashMap::from([(UNCOMPRESSED_LABEL.to_string(), produced.diff_id.clone())]);
            self.uploader.set_labels(&ctx, &info.digest, &label).await?;
        }
        info!(
            namespace = ctx.namespace.as_deref().unwrap_or(""),
            digest = %info.digest,
            diff_id = %produced.diff_id,
            media_type = %media_type,
            size = info.size,
            entries = produced.stats.entries,
            method = ?produced.method,
            bytes_sent = produced.sent,
            elapsed_ms = start.elapsed().as_millis() as u64,
            "strata-differ made a layer"
        );
        Ok(Compared {
            descriptor: Descriptor {
                media_type,
                digest: info.digest,
                size: info.size,
                annotations: Default::default(),
            },
            diff_id: produced.diff_id,
            method: produced.method,
            stats: produced.stats,
        })
    }

    /// Streams the layer through the content service as it is made.
    async fn produce_through_service(
        &self,
        ctx: &RequestContext,
        r#ref: &str,
        job: Job,
    ) -> Result<Produced> {
        let (sink, pending) = self.uploader.open(ctx, r#ref).await?;
        let producer = tokio::task::spawn_blocking(move || job.produce_into(sink));
        let replied = pending.committed().await;
        let produced = producer
            .await
            .map_err(|e| Error::internal(format!("diff task: {e}")));
        match (produced, replied) {
            (Ok(Ok(p)), Ok(_)) => Ok(p),
            (Ok(Ok(p)), Err(e)) if e.is(ErrorKind::AlreadyExists) => Ok(p),
            // The producer's error is the cause of whatever the stream saw.
            (Ok(Err(e)), _) | (Err(e), _) => Err(e),
            (Ok(Ok(_)), Err(e)) => Err(e),
        }
    }

    /// Writes the layer into `file`, started in the store's directory at `root`, then has
    /// the content service record it (sending its bytes only if the service cannot see it
    /// there).
    async fn produce_in_store(
        &self,
        ctx: &RequestContext,
        r#ref: &str,
        root: &Path,
        mut file: BlobFile,
        mut job: Job,
    ) -> Result<Produced> {
        let root = root.to_path_buf();
        let labels = std::mem::take(&mut job.labels);
        let made = tokio::task::spawn_blocking(move || {
            let (diff_id, stats, method) = job.write_into(&mut file)?;
            let placed = file
                .place()
                .map_err(|e| Error::io(format!("put the layer into {}", root.display()), e))?;
            Ok::<_, Error>((placed, diff_id, stats, method))
        })
        .await
        .map_err(|e| Error::internal(format!("diff task: {e}")))?;
        let (placed, diff_id, stats, method) = made?;
        let labels = with_diff_id(labels, diff_id.as_deref());
        let (committed, sent) = self
            .uploader
            .commit_present(ctx, r#ref, placed, labels)
            .await?;
        let sent = if sent { committed.size } else { 0 };
        Ok(Produced::new(committed, diff_id, method, stats, sent))
    }
}

struct Produced {
    committed: Committed,
    diff_id: String,
    method: Method,
    stats: LayerStats,
    /// Bytes of the layer sent through the content service.
    sent: u64,
}

impl Produced {
    /// `diff_id` is `None` for an uncompressed layer: its digest.
    fn new(
        committed: Committed,
        diff_id: Option<String>,
        method: Method,
        stats: LayerStats,
        sent: u64,
    ) -> Produced {
        let diff_id = diff_id.unwrap_or_else(|| committed.digest.clone());
        Produced {
            committed,
            diff_id,
            method,
            stats,
            sent,
        }
    }
}

/// What a Diff request asks to be made.
struct Job {
    lower: Vec<Mount>,
    upper: Vec<Mount>,
    scratch: PathBuf,
    compression: Compression,
    levels: Levels,
    opts: LayerOptions,
    labels: HashMap<String, String>,
}

impl Job {
    /// Blocking: mounts, finds the changes and writes the layer into `out`.
    fn write_into<W: Write + Restart>(
        &self,
        out: &mut W,
    ) -> Result<(Option<String>, LayerStats, Method)> {
        write_diff(
            &self.lower,
            &self.upper,
            &self.scratch,
            &self.opts,
            self.compression,
            self.levels,
            out,
        )
    }

    /// Blocking: writes the layer into `sink` and commits it.
    fn produce_into(mut self, mut sink: BlobSink) -> Result<Produced> {
        let (diff_id, stats, method) = self.write_into(&mut sink)?;
        let labels = with_diff_id(std::mem::take(&mut self.labels), diff_id.as_deref());
        let committed = sink
            .commit(labels)
            .map_err(|e| Error::io("commit the layer", e))?;
        let sent = committed.size;
        Ok(Produced::new(committed, diff_id, method, stats, sent))
    }
}

/// `labels` plus the compressed layer's diffID (`None` for an uncompressed one: its digest).
fn with_diff_id(
    mut labels: HashMap<String, String>,
    diff_id: Option<&str>,
) -> HashMap<String, String> {
    if let Some(d) = diff_id {
        labels.insert(UNCOMPRESSED_LABEL.to_string(), d.to_string());
    }
    labels
}

/// Writes the layer from `lower` to `upper` into `out`, compressed, as the changes are found
/// (the overlay upperdir alone when it can, both trees otherwise): its diffID (`None` when
/// uncompressed: it is the blob's digest, which `out` computes anyway, and hashing 1 GiB twice
/// costs half a second), its stats and how the changes were found.
pub fn write_diff<W: Write + Restart>(
    lower: &[Mount],
    upper: &[Mount],
    scratch: &Path,
    opts: &LayerOptions,
    compression: Compression,
    levels: Levels,
    out: &mut W,
) -> Result<(Option<String>, LayerStats, Method)> {
    // Unmounted (each TempMount on drop) once the layer is written.
    let mut mounted = Vec::new();
    let lower_root = root_of(lower, scratch, &mut mounted)?;
    if let Some((upperdir, opaque)) = overlay_fast_path(lower, upper) {
        let written = layer_of(&upperdir, opts, compression, levels, &mut *out, |emit| {
            changes::overlay_upper_into(lower_root.as_deref(), &upperdir, opaque, emit)
        });
        match written {
            Ok((diff_id, stats)) => return Ok((diff_id, stats, Method::OverlayUpper)),
            Err(OverlayError::Unsupported(why)) => {
                info!(%why, "overlay upperdir not readable on its own; walking both trees");
                out.restart()
                    .map_err(|e| Error::io("start the layer over", e))?;
            }
            Err(OverlayError::Io(e)) => {
                return Err(Error::io(
                    format!("write the layer of {}", upperdir.display()),
                    e,
                ));
            }
        }
    }
    let upper_root = root_of(upper, scratch, &mut mounted)?
        .ok_or_else(|| Error::invalid_argument("diff needs the upper (right) mounts"))?;
    let (diff_id, stats) = layer_of(&upper_root, opts, compression, levels, out, |emit| {
        changes::double_walk_into(lower_root.as_deref(), &upper_root, emit)
    })
    .map_err(|e| Error::io("write the layer", e))?;
    Ok((diff_id, stats, Method::DoubleWalk))
}

/// A directory showing `mounts` read-only: a bind mount's source as it is, anything else
/// mounted on a temporary directory; `None` for no mounts (an empty tree).
fn root_of(
    mounts: &[Mount],
    scratch: &Path,
    mounted: &mut Vec<TempMount>,
) -> Result<Option<PathBuf>> {
    match mounts {
        [] => Ok(None),
        [m] if m.r#type == "bind" => Ok(Some(PathBuf::from(&m.source))),
        _ => {
            let tm = TempMount::mount(&target::readonly(mounts), scratch)?;
            let dir = tm.dir().to_path_buf();
            mounted.push(tm);
            Ok(Some(dir))
        }
    }
}

/// The upperdir to read alone, when `upper` is one overlay whose lowerdirs are exactly the
/// layers `lower` shows, and the opaque xattr it uses.
pub fn overlay_fast_path(lower: &[Mount], upper: &[Mount]) -> Option<(PathBuf, &'static str)> {
    let [u] = upper else { return None };
    if u.r#type != "overlay" {
        return None;
    }
    let option = |m: &Mount, key: &str| {
        m.options
            .iter()
            .find_map(|o| o.strip_prefix(key).map(str::to_string))
    };
    let upperdir = option(u, "upperdir=")?;
    let upper_lowers = option(u, "lowerdir=")?;
    let lower_layers = match lower {
        [l] if l.r#type == "bind" => l.source.clone(),
        [l] if l.r#type == "overlay" && option(l, "upperdir=").is_none() => option(l, "lowerdir=")?,
        _ => return None,
    };
    if upper_lowers != lower_layers {
        return None;
    }
    let opaque = if u.options.iter().any(|o| o == "userxattr") {
        whiteout::USER_OPAQUE
    } else {
        whiteout::TRUSTED_OPAQUE
    };
    Some((PathBuf::from(upperdir), opaque))
}

/// A writer that hashes what passes through it (when it has a hasher).
struct Hashing<W> {
    inner: W,
    hasher: Option<Sha256>,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The layer of the changes `walk` emits, reading upper files under `root`, written through
/// `compression` into `out`: its diffID (when compressed) and stats.
fn layer_of<W: Write, E: From<io::Error>>(
    root: &Path,
    opts: &LayerOptions,
    compression: Compression,
    levels: Levels,
    out: &mut W,
    walk: impl FnOnce(&mut Emit<'_>) -> std::result::Result<(), E>,
) -> std::result::Result<(Option<String>, LayerStats), E> {
    let compressor = Compressor::new(out, compression, levels, compress::workers())?;
    let mut tar = Hashing {
        inner: io::BufWriter::with_capacity(256 << 10, compressor),
        hasher: (compression != Compression::None).then(Sha256::new),
    };
    let stats = {
        let mut lw = LayerWriter::new(&mut tar, root, opts);
        walk(&mut |c| lw.change(&c))?;
        lw.finish()?
    };
    let diff_id = tar
        .hasher
        .map(|h| format!("sha256:{}", hex::encode(h.finalize())));
    let compressor = tar.inner.into_inner().map_err(|e| e.into_error())?;
    compressor.finish()?;
    Ok((diff_id, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(t: &str, source: &str, options: &[&str]) -> Mount {
        Mount::new(t, source, options)
    }

    #[test]
    fn media_types() {
        assert_eq!(output_compression("").unwrap(), Compression::Gzip);
        assert_eq!(
            output_compression(media::OCI_LAYER_TAR).unwrap(),
            Compression::None
        );
        assert_eq!(
            output_compression("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(),
            Compression::Zstd
        );
        for other in [
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
        ] {
            assert_eq!(
                output_compression(other).unwrap_err().kind(),
                ErrorKind::Unimplemented
            );
        }
    }

    #[test]
    fn fast_path_only_when_the_lowers_match() {
        let upper = m(
            "overlay",
            "overlay",
            &["workdir=/w", "upperdir=/u", "lowerdir=/a:/b"],
        );
        let lower = m("overlay", "overlay", &["lowerdir=/a:/b"]);
        assert_eq!(
            overlay_fast_path(std::slice::from_ref(&lower), std::slice::from_ref(&upper)),
            Some((PathBuf::from("/u"), whiteout::TRUSTED_OPAQUE))
        );
        let one = m(
            "overlay",
            "overlay",
            &["workdir=/w", "upperdir=/u", "lowerdir=/a", "userxattr"],
        );
        assert_eq!(
            overlay_fast_path(
                &[m("bind", "/a", &["ro", "rbind"])],
                std::slice::from_ref(&one)
            ),
            Some((PathBuf::from("/u"), whiteout::USER_OPAQUE))
        );
        let other = m("overlay", "overlay", &["lowerdir=/a:/c"]);
        assert_eq!(
            overlay_fast_path(&[other], std::slice::from_ref(&upper)),
            None
        );
        assert_eq!(overlay_fast_path(&[], std::slice::from_ref(&upper)), None);
        assert_eq!(
            overlay_fast_path(&[lower], &[m("bind", "/x", &["rw"])]),
            None
        );
    }
}
