//! The restore reader's reads of archive data: each group of blocks stored
//! back to back in one file is read by one of a few threads, with
//! `O_DIRECT` where the filesystem takes it, and its blocks are hashed
//! there; the reader takes the results in image order.
//!
//! Why: a single reader through the page cache spent a third of a cold
//! restore's CPU copying pages it had just had the kernel allocate (on
//! this project's virtual machines the first touch of each fresh page is
//! the slow part), and hashed on the same core. Direct reads land in a few
//! reused buffers, several at a time, and the hashing is spread over the
//! cores. Memory is bounded: [`DEPTH`] groups of at most 4 MiB.

use std::fs::File;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::Scope;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::reader::MAX_CHUNK;
use crate::archive::direct::{self, AlignedBuf};
use crate::chain::Chain;
use crate::checksum::{block_hash, Hash};
use crate::error::{Error, Result};

/// Threads reading: the queue depth the disk sees (1 to 12 made no
/// difference on this project's disk; the hashing wants the 2 cores).
const THREADS: usize = 3;
/// Groups read or being read ahead of the reader.
pub const DEPTH: usize = 6;

/// A group's bytes and the hash of each of its blocks, once read.
pub type Read = (AlignedBuf, Vec<Hash>);

/// Where one group's read lands.
pub struct Slot {
    got: Mutex<Option<Result<Read>>>,
    ready: Condvar,
}

struct Job {
    link: usize,
    offset: u64,
    /// the length of each block, in file order
    lens: Vec<u32>,
    buf: AlignedBuf,
    slot: Arc<Slot>,
}

/// The reading threads of one restore (or verify).
pub struct GroupReads {
    jobs: Sender<Job>,
    free: Receiver<AlignedBuf>,
    free_tx: Sender<AlignedBuf>,
    made: usize,
}

impl GroupReads {
    /// Starts the threads in `scope`; they end once this is dropped and
    /// the reads queued before are done.
    pub fn start<'scope, 'env>(scope: &'scope Scope<'scope, 'env>, chain: &'env Chain) -> Self {
        let (jobs, rx) = bounded::<Job>(DEPTH);
        let (free_tx, free) = bounded(DEPTH + 1);
        // per link, a descriptor for direct reads, opened on first use
        let files = Arc::new(
            (0..chain.links.len())
                .map(|_| OnceLock::new())
                .collect::<Vec<OnceLock<Option<File>>>>(),
        );
        for _ in 0..THREADS {
            let (rx, files) = (rx.clone(), files.clone());
            scope.spawn(move || {
                for job in rx {
                    let slot = job.slot.clone();
                    let got = read_group(chain, &files, job);
                    *slot.got.lock().unwrap_or_else(|p| p.into_inner()) = Some(got);
                    slot.ready.notify_all();
                }
            });
        }
        GroupReads {
            jobs,
            free,
            free_tx,
            made: 0,
        }
    }

    /// Queues the read of `lens` blocks stored back to back at `offset` of
    /// `link`'s file. The caller keeps fewer than [`DEPTH`] reads unclaimed
    /// (a buffer is then always free or makeable).
    pub fn submit(&mut self, link: usize, offset: u64, lens: Vec<u32>) -> Result<Arc<Slot>> {
        let buf = match self.free.try_recv() {
            Ok(b) => b,
            Err(_) => {
                self.made += 1;
                debug_assert!(self.made <= DEPTH + 1, "more reads than buffers");
                AlignedBuf::zeroed(MAX_CHUNK)
            }
        };
        let slot = Arc::new(Slot {
            got: Mutex::new(None),
            ready: Condvar::new(),
        });
        self.jobs
            .send(Job {
                link,
                offset,
                lens,
                buf,
                slot: slot.clone(),
            })
            .map_err(|_| Error::Invalid("the restore's reading threads stopped".into()))?;
        Ok(slot)
    }

    /// Waits for the read of `slot`.
    pub fn wait(&self, slot: &Slot) -> Result<Read> {
        let mut got = slot.got.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = got.take() {
                return r;
            }
            got = slot.ready.wait(got).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Hands a buffer back once its bytes are used.
    pub fn recycle(&self, buf: AlignedBuf) {
        let _ = self.free_tx.try_send(buf);
    }
}

/// Reads one group (directly where the file allows) and hashes its blocks.
fn read_group(chain: &Chain, direct: &[OnceLock<Option<File>>], job: Job) -> Result<Read> {
    let l = &chain.links[job.link];
    let len: usize = job.lens.iter().map(|&n| n as usize).sum();
    let mut buf = job.buf;
    let d = direct[job.link].get_or_init(|| {
        direct::reopen(&l.file, false)
            .inspect_err(|e| {
                tracing::debug!(
                    "{}: no direct reads ({e}); reading through the page cache",
                    l.path.display()
                )
            })
            .ok()
    });
    match d {
        Some(f) => direct::read_into(f, &l.path, &mut buf, job.offset, len)?,
        None => {
            buf.set_len(len);
            crate::archive::read::read_at(&l.file, &l.path, &mut buf, job.offset)?;
        }
    }
    let mut at = 0;
    let hashes = job
        .lens
        .iter()
        .map(|&n| {
            let h = block_hash(&buf[at..at + n as usize]);
            at += n as usize;
            h
        })
        .collect();
    Ok((buf, hashes))
}
