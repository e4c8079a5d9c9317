//! Restoring a revision into a new image or file.
//!
//! A reader thread resolves and verifies blocks ([`reader`]); this thread
//! writes them to the target. Memory is bounded by the queue between them.
//! The image checksum of what was written is compared with the manifest's;
//! a mismatch fails the restore (unless the caller allowed known-bad
//! blocks, which then get reported instead).

pub mod block_set;
mod claim;
pub mod coalescer;
pub mod file_target;
pub mod in_place;
mod lanes;
pub mod partial;
mod plan;
pub mod rbd_target;
pub mod reader;
pub mod stream_target;
pub mod verify_target;

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::bounded;

use crate::archive::oplog::Operation;
use crate::archive::{Revision, VolumeDir};
use crate::buffers::{AlignedBuf, BufferPool};
use crate::chain::Chain;
use crate::error::{Error, Result};
use crate::progress::Progress;
use reader::{read_blocks, Piece};

/// Where a restore writes.
pub trait RestoreTarget {
    /// True when the target reads as zeros before any write (a new image or
    /// file); otherwise zero ranges are sent too.
    fn is_fresh(&self) -> bool;
    /// Writes `data` at `offset`. May hand back a buffer it is done with
    /// (this one or an earlier one) for reuse.
    fn write(&mut self, offset: u64, data: AlignedBuf) -> Result<Option<AlignedBuf>>;
    /// Buffers the target keeps past `write` go back to `pool` when it is
    /// done with them.
    fn recycle_into(&mut self, _pool: &BufferPool) {}
    /// How many read lanes feed it: fewer beside a target that holds many
    /// buffers of its own.
    fn read_lanes(&self) -> usize {
        reader::LANES
    }
    /// Makes `[offset, offset + len)` read as zeros.
    fn zero(&mut self, offset: u64, len: u64) -> Result<()>;
    /// Completes the target durably.
    fn finish(self: Box<Self>) -> Result<()>;
    /// Removes what a failed restore created (or keeps it, if asked);
    /// returns what the user must know about the target then.
    fn abort(self: Box<Self>) -> Option<String>;
    /// Human-readable name for logs.
    fn describe(&self) -> String;
}

/// How a restore treats its target.
#[derive(Debug, Clone, Default)]
pub struct TargetOptions {
    /// Overwrite an existing target.
    pub force: bool,
    /// Write into an existing image without the exclusive-lock feature,
    /// which nothing then protects from another client's writes.
    pub force_unlocked: bool,
    /// On failure, keep what was written under a partial name.
    pub keep_partial: bool,
    /// How long a write into an image may keep failing with a transient
    /// error (the cluster did not answer) before the restore fails.
    pub retry_for: std::time::Duration,
}

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore despite corrupt blocks, writing zeros there.
    pub allow_inconsistent: bool,
    /// Set (by a signal) to stop: the restore fails as interrupted and its
    /// target is removed (or kept, as the target was told).
    pub cancel: Arc<AtomicBool>,
    /// Write only these blocks: the target holds the others already (an
    /// in-place restore proved it, [`in_place`]).
    pub only: Option<Arc<block_set::BlockSet>>,
}

/// Fails with `e`, after aborting `target` (whose note, if any, joins the
/// message).
fn fail<T>(target: Box<dyn RestoreTarget>, e: Error) -> Result<T> {
    match target.abort() {
        Some(note) => Err(match e {
            Error::Cancelled(m) => Error::Cancelled(format!("{m}; {note}")),
            e => Error::Invalid(format!("{e}; {note}")),
        }),
        None => Err(e),
    }
}

#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub revision: Revision,
    pub size: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Ranges written as zeros because their data was corrupt.
    pub bad: Vec<Range<u64>>,
    pub duration: std::time::Duration,
}

const QUEUE: usize = 4;

/// Restores `rev` of `vol` into `target`. Takes no lock: the chain is
/// opened as one snapshot ([`Chain::open`]) and reads as it was, whatever a
/// backup, prune or merge of the volume does meanwhile.
pub fn restore(
    vol: &VolumeDir,
    rev: &Revision,
    target: Box<dyn RestoreTarget>,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let started = Instant::now();
    let op = Operation::start(
        vol.log_path(),
        "restore",
        Some(rev.id.clone()),
        Some(target.describe()),
    )?;
    op.end(run(vol, rev, target, opts, progress, started), |r, rec| {
        if !r.bad.is_empty() {
            rec.outcome = Some("inconsistent".into());
        }
        rec.bytes_read = Some(r.bytes_read);
        rec.bytes_written = Some(r.bytes_written);
    })
}

fn run(
    vol: &VolumeDir,
    rev: &Revision,
    mut target: Box<dyn RestoreTarget>,
    opts: &RestoreOptions,
    progress: &dyn Progress,
    started: Instant,
) -> Result<RestoreReport> {
    crate::fault::point("restore: started");
    let chain = match Chain::open(vol, rev) {
        Ok(c) => c,
        Err(e) => return fail(target, e),
    };
    crate::fault::pause("restore: chain open");
    let send_zeros = !target.is_fresh();
    let (tx, rx) = bounded::<Piece>(QUEUE);
    progress.begin("restore", chain.size());
    let mut written = 0u64;
    let lanes = target.read_lanes();
    let pool = BufferPool::new(QUEUE + 4 + reader::buffers(lanes));
    target.recycle_into(&pool);
    let (read, write) = std::thread::scope(|scope| {
        let (chain, pool) = (&chain, &pool);
        let reader = scope.spawn(move || {
            let only = opts.only.as_deref();
            read_blocks(
                chain,
                opts.allow_inconsistent,
                send_zeros,
                only,
                lanes,
                pool,
                &mut |p| {
                    tx.send(p)
                        .map_err(|_| Error::Invalid("restore writer stopped".into()))
                },
            )
        });
        let mut write = Ok(());
        let mut done = 0u64;
        for piece in rx.iter() {
            if opts.cancel.load(Ordering::Relaxed) {
                write = Err(Error::Cancelled("restore interrupted".into()));
                break;
            }
            crate::fault::point("restore: piece");
            let (end, r) = match piece {
                Piece::Data { offset, data } => {
                    let end = offset + data.len() as u64;
                    written += data.len() as u64;
                    let r = target.write(offset, data).map(|done| {
                        if let Some(buf) = done {
                            pool.put(buf);
                        }
                    });
                    (end, r)
                }
                Piece::Zero { offset, len } => (offset + len, target.zero(offset, len)),
            };
            if let Err(e) = r {
                write = Err(e);
                break;
            }
            progress.advance(end.saturating_sub(done));
            done = done.max(end);
        }
        drop(rx);
        (reader.join().expect("restore reader panicked"), write)
    });
    progress.end();
    let outcome = match (write, read) {
        (Err(e), _) | (Ok(()), Err(e)) => return fail(target, e),
        (Ok(()), Ok(o)) => o,
    };
    if outcome.bad.is_empty() && outcome.checksum != rev.manifest.checksum_bytes() {
        let e = Error::Corrupt(format!(
            "revision {}: restored content has checksum {} but the manifest says {}",
            rev.id,
            crate::checksum::to_hex(&outcome.checksum),
            rev.manifest.checksum
        ));
        return fail(target, e);
    }
    if opts.cancel.load(Ordering::Relaxed) {
        return fail(target, Error::Cancelled("restore interrupted".into()));
    }
    target.finish()?;
    crate::fault::point("restore: target complete");
    Ok(RestoreReport {
        revision: rev.clone(),
        size: chain.size(),
        bytes_read: outcome.bytes_read,
        bytes_written: written,
        bad: outcome.bad,
        duration: started.elapsed(),
    })
}
