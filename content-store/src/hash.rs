//! The running sha256 of an ingest. containerd forwards a Write stream one message at a time,
//! waiting for each answer, so hashing a large message inline puts sha256 on that critical
//! path; once a writer sends large messages, hashing moves to a thread of its own and runs
//! while the next message is on its way. Small writes (manifests, configs) stay inline. The
//! same thread asks for early writeback of the written data ([`Writeback`]), also off the
//! answer's path.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use strata_common::{Error, Result};

use strata_common::writeback::Writeback;

/// Messages at least this large move hashing off the writing thread.
pub const BACKGROUND_MIN: usize = 256 << 10;
/// Messages queued for the hashing thread before the writer waits: bounds memory per ingest.
const QUEUE: usize = 4;

enum Msg {
    Data(Bytes),
    Snapshot(SyncSender<Sha256>),
}

enum State {
    Inline(Sha256, Option<Writeback>),
    Background {
        tx: SyncSender<Msg>,
        /// Bytes handed to the thread.
        sent: u64,
        /// The thread's hash after each message, with the bytes it covers.
        latest: Latest,
    },
}

/// Published by the hashing thread so a caught-up hash is read without a round trip to it.
type Latest = Arc<Mutex<(u64, Sha256)>>;

fn lock(latest: &Latest) -> MutexGuard<'_, (u64, Sha256)> {
    // Plain data, replaced whole: a panicking holder cannot leave it half-written.
    latest.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct RunningHash {
    state: State,
}

fn run(mut hash: Sha256, mut writeback: Option<Writeback>, latest: Latest, rx: Receiver<Msg>) {
    let mut hashed = 0u64;
    for msg in rx {
        match msg {
            Msg::Data(b) => {
                // The bytes are in the file already: start the disk before hashing them.
                if let Some(wb) = writeback.as_mut() {
                    wb.advance(b.len() as u64);
                }
                hash.update(&b);
                hashed += b.len() as u64;
                *lock(&latest) = (hashed, hash.clone());
            }
            Msg::Snapshot(reply) => {
                let _ = reply.send(hash.clone());
            }
        }
    }
}

fn gone() -> Error {
    Error::internal("ingest hashing thread stopped")
}

impl RunningHash {
    /// Continues `hash`; `writeback`, when given, follows the file the hashed data is
    /// written to (each [`RunningHash::update`] comes after its bytes are written).
    pub fn new(hash: Sha256, writeback: Option<Writeback>) -> RunningHash {
        RunningHash {
            state: State::Inline(hash, writeback),
        }
    }

    /// Whether hashing runs on its own thread (then [`RunningHash::snapshot`] waits for it).
    pub fn in_background(&self) -> bool {
        matches!(self.state, State::Background { .. })
    }

    pub fn update(&mut self, data: Bytes) -> Result<()> {
        match &mut self.state {
            State::Inline(h, wb) if data.len() < BACKGROUND_MIN => {
                if let Some(wb) = wb.as_mut() {
                    wb.advance(data.len() as u64);
                }
                h.update(&data);
                Ok(())
            }
            State::Inline(h, wb) => {
                let (tx, rx) = mpsc::sync_channel(QUEUE);
                let (start, writeback) = (h.clone(), wb.take());
                let latest = Arc::new(Mutex::new((0, start.clone())));
                let published = latest.clone();
                let spawned = std::thread::Builder::new()
                    .name("strata-hash".into())
                    .spawn(move || run(start, writeback, published, rx));
                if spawned.is_err() {
                    // No thread to be had: hashing inline is slower, not wrong (and writeback
                    // only a hint, gone with the closure).
                    h.update(&data);
                    return Ok(());
                }
                self.state = State::Background {
                    tx,
                    sent: 0,
                    latest,
                };
                self.update(data)
            }
            State::Background { tx, sent, .. } => {
                let n = data.len() as u64;
                tx.send(Msg::Data(data)).map_err(|_| gone())?;
                *sent += n;
                Ok(())
            }
        }
    }

    /// The hash of everything so far if it is at hand without waiting for the hashing thread
    /// (always when hashing inline).
    pub fn snapshot_if_ready(&self) -> Option<Sha256> {
        match &self.state {
            State::Inline(h, _) => Some(h.clone()),
            State::Background { sent, latest, .. } => {
                let latest = lock(latest);
                (latest.0 == *sent).then(|| latest.1.clone())
            }
        }
    }

    /// The hash of everything so far.
    pub fn snapshot(&self) -> Result<Sha256> {
        match &self.state {
            State::Inline(h, _) => Ok(h.clone()),
            State::Background { tx, .. } => {
                let (reply, rx) = mpsc::sync_channel(1);
                tx.send(Msg::Snapshot(reply)).map_err(|_| gone())?;
                rx.recv().map_err(|_| gone())
            }
        }
    }

    /// Starts over, following the file from offset 0 with `writeback` (the thread, if any,
    /// ends when its queue is dropped).
    pub fn reset(&mut self, writeback: Option<Writeback>) {
        self.state = State::Inline(Sha256::new(), writeback);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_and_inline_agree() {
        let data: Vec<u8> = (0..3 * BACKGROUND_MIN + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut h = RunningHash::new(Sha256::new(), None);
        h.update(Bytes::copy_from_slice(&data[..10])).unwrap();
        assert!(!h.in_background());
        for piece in data[10..].chunks(BACKGROUND_MIN) {
            h.update(Bytes::copy_from_slice(piece)).unwrap();
        }
        assert!(h.in_background());
        let mid = h.snapshot().unwrap();
        assert_eq!(mid.finalize()[..], Sha256::digest(&data)[..]);
        // Once the thread has answered a snapshot it is caught up.
        let ready = h.snapshot_if_ready().expect("caught up");
        assert_eq!(ready.finalize()[..], Sha256::digest(&data)[..]);
        h.update(Bytes::from_static(b"more")).unwrap();
        let mut all = data.clone();
        all.extend_from_slice(b"more");
        assert_eq!(
            h.snapshot().unwrap().finalize()[..],
            Sha256::digest(&all)[..]
        );
        h.reset(None);
        assert!(!h.in_background());
        assert_eq!(
            h.snapshot().unwrap().finalize()[..],
            Sha256::digest(b"")[..]
        );
    }
}
