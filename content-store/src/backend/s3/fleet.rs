//! Garbage collection across nodes sharing a bucket (the design is in content-store/README.md,
//! "Garbage collection across nodes"). Each node keeps a marker `refs/<digest>/<node>` for
//! every blob it holds; a blob's object is deleted only when no marker is left, after a grace
//! period, and through a `deleting` flag that a node taking a new reference checks after
//! writing its marker, so that a reference racing the deletion is never lost:
//!
//! - a node committing the blob (it has the bytes): write marker, then read the flag
//!   (`candidate`: delete it; `deleting`: wait until it is gone, then upload if the object
//!   went);
//! - a node only taking a reference (Info): write marker, then read the flag; any flag means
//!   no node holds the blob any more, so the marker goes again and the blob is absent;
//! - the sweeper: flag `candidate` older than the grace period, then write `deleting`, list
//!   markers again, delete the blob only if there is still none, then the flag.
//!
//! Whichever of "marker written" and "markers listed again" comes first, either the sweeper
//! sees the marker and stops, or the referencing node sees `deleting`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use strata_common::Result;
use tracing::{debug, info};

use super::remote::Remote;
use crate::digest::Digest;

pub const CANDIDATE: &[u8] = b"candidate";
pub const DELETING: &[u8] = b"deleting";

/// The state of a blob's gc flag after this node wrote its marker.
#[derive(Debug, PartialEq, Eq)]
pub enum Flag {
    /// No deletion under way (a `candidate` flag was withdrawn).
    Clear,
    /// Another node is deleting the blob; `stale` once that took far too long to be alive.
    Deleting { stale: bool },
}

pub struct Fleet<'a> {
    pub remote: &'a Remote,
    pub node: &'a str,
    /// A `deleting` flag older than this belongs to a sweeper that died.
    pub stale_after: Duration,
}

fn age(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}

impl Fleet<'_> {
    /// Writes this node's marker for `d` and reads the blob's flag.
    pub fn add_ref(&self, d: &Digest) -> Result<Flag> {
        let r = self.remote;
        r.put_small(&r.ref_key(d, self.node), Bytes::new())?;
        self.check_flag(d)
    }

    /// Writes this node's marker for `d` only if no node has released it for deletion (no
    /// flag, before and after the marker is written): a blob nobody holds is absent to a node
    /// that does not have its bytes. False (and no marker) otherwise.
    pub fn add_ref_if_live(&self, d: &Digest) -> Result<bool> {
        let r = self.remote;
        let flag = r.gc_key(d);
        if r.head(&flag)?.is_some() {
            return Ok(false);
        }
        let marker = r.ref_key(d, self.node);
        r.put_small(&marker, Bytes::new())?;
        if r.head(&flag)?.is_some() {
            r.delete(&marker)?;
            return Ok(false);
        }
        Ok(true)
    }

    /// The blob's flag, withdrawing a `candidate` (this node's marker is written).
    pub fn check_flag(&self, d: &Digest) -> Result<Flag> {
        let r = self.remote;
        let key = r.gc_key(d);
        let Some(head) = r.head(&key)? else {
            return Ok(Flag::Clear);
        };
        match r.get(&key)? {
            Some(body) if &body[..] == DELETING => Ok(Flag::Deleting {
                stale: age(head.modified) > self.stale_after,
            }),
            Some(_) => {
                r.delete(&key)?;
                Ok(Flag::Clear)
            }
            None => Ok(Flag::Clear),
        }
    }

    /// Waits while another node deletes `d` (its flag says `deleting`), at most until that
    /// flag is stale.
    pub fn wait_deleting(&self, d: &Digest) -> Result<()> {
        loop {
            match self.check_flag(d)? {
                Flag::Clear | Flag::Deleting { stale: true } => return Ok(()),
                Flag::Deleting { stale: false } => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Removes this node's marker for `d`; when no marker is left, flags the blob as a
    /// candidate for deletion.
    pub fn drop_ref(&self, d: &Digest) -> Result<()> {
        let r = self.remote;
        r.delete(&r.ref_key(d, self.node))?;
        if r.list(&r.refs_dir(d))?.is_empty() {
            r.put_small(&r.gc_key(d), Bytes::from_static(CANDIDATE))?;
        }
        Ok(())
    }

    /// One pass over the bucket: this node's markers without a held blob go, unreferenced
    /// blobs are flagged, and flagged blobs past `grace` are deleted.
    pub fn sweep(&self, grace: Duration, held: &dyn Fn(&Digest) -> bool) -> Result<Sweep> {
        let r = self.remote;
        let mut report = Sweep::default();
        let blobs: HashSet<Digest> = r
            .list(&r.area("blobs"))?
            .iter()
            .filter_map(|o| r.parse_key("blobs", &o.key).map(|(d, _)| d))
            .collect();
        let mut refs: HashMap<Digest, Vec<String>> = HashMap::new();
        for o in r.list(&r.area("refs"))? {
            if let Some((d, node)) = r.parse_key("refs", &o.key) {
                refs.entry(d).or_default().push(node.to_string());
            }
        }
        let flags: HashMap<Digest, SystemTime> = r
            .list(&r.area("gc"))?
            .into_iter()
            .filter_map(|o| r.parse_key("gc", &o.key).map(|(d, _)| (d, o.modified)))
            .collect();

        // Markers a crash left behind (written, but the held row never was or is gone).
        for (d, nodes) in refs.iter_mut() {
            if nodes.iter().any(|n| n == self.node) && !held(d) {
                self.drop_ref(d)?;
                nodes.retain(|n| n != self.node);
                report.ghost_refs += 1;
            }
        }
        refs.retain(|_, nodes| !nodes.is_empty());

        // Blobs nobody references and nobody flagged yet (a crash between upload and marker,
        // or between removing the last marker and flagging).
        for d in blobs.iter().filter(|d| !refs.contains_key(*d)) {
            if !flags.contains_key(d) {
                r.put_small(&r.gc_key(d), Bytes::from_static(CANDIDATE))?;
                report.flagged += 1;
            }
        }

        for (d, modified) in &flags {
            let key = r.gc_key(d);
            let Some(body) = r.get(&key)? else {
                continue;
            };
            let deleting = &body[..] == DELETING;
            if refs.contains_key(d) || !blobs.contains(d) {
                // Referenced again (or nothing left to delete): the flag is over, unless a
                // live sweeper is still at it.
                if !deleting || age(*modified) > self.stale_after {
                    r.delete(&key)?;
                }
                continue;
            }
            let due = if deleting {
                age(*modified) > self.stale_after
            } else {
                age(*modified) >= grace
            };
            if !due {
                continue;
            }
            r.put_small(&key, Bytes::from_static(DELETING))?;
            if r.list(&r.refs_dir(d))?.is_empty() {
                r.delete(&r.blob_key(d))?;
                report.deleted.push(d.clone());
                info!(digest = %d, "deleted blob no node holds");
            } else {
                debug!(digest = %d, "blob referenced again during deletion; kept");
            }
            r.delete(&key)?;
        }
        Ok(report)
    }
}

/// What one sweep did.
#[derive(Debug, Default)]
pub struct Sweep {
    pub ghost_refs: usize,
    pub flagged: usize,
    pub deleted: Vec<Digest>,
}
