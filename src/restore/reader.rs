//! Reads a revision's blocks from the archive in image order, verifying each
//! block's hash, and turns them into write pieces for a restore target.
//!
//! Contiguous blocks stored contiguously in the same file are read with one
//! `pread` (up to 4 MiB); each byte is read once; zero blocks are never read.
//! A planner thread gathers those groups, a few lanes ([`LANES`]) read and hash
//! them at once ([`crate::ordered`]), with `O_DIRECT` where the file system
//! allows and the group is aligned, and this thread checks the hashes and
//! hands the blocks on in image order.

use std::ops::Range;

use super::block_set::BlockSet;
pub use super::coalescer::Coalescer;
use super::lanes::Files;
use super::plan::{plan, stored, Done, Group, Job, Pass};
use crate::archive::read::Readahead;
use crate::buffers::{AlignedBuf, BufferPool};
use crate::chain::{Chain, Resolved};
use crate::checksum::{Hash, ImageChecksum};
use crate::error::{Error, Result};
use crate::format::index::BlockEntry;

/// Largest read from an archive file and largest write piece.
pub const MAX_CHUNK: usize = 4 << 20;

/// Groups read at once. Direct reads of 4 MiB one at a time are slower
/// than the kernel's readahead on a virtual disk that serves several
/// requests at once, and hashing in these threads spreads it over the
/// cores. A restore to a file on the disk it reads from took 3.10–3.18 s
/// for 2 GiB with eight, 3.27–3.34 s with six, 3.34–3.46 s with four,
/// and 3.20–3.39 s with buffered reads (2026-11-30).
pub const LANES: usize = 8;

/// Lanes beside a target that holds many buffers of its own (a restore
/// into an image: 16 writes in flight, each copied by librbd). Four keep
/// its peak RSS at 220–228 MiB; six took it to 234–250 MiB.
pub const FEW_LANES: usize = 4;

/// Read buffers the reader holds at most with `lanes` lanes: per lane one
/// read and one waiting, and one being checked.
pub fn buffers(lanes: usize) -> usize {
    2 * lanes + 1
}

/// What the target receives.
#[derive(Debug)]
pub enum Piece {
    /// Non-zero data at an image offset.
    Data { offset: u64, data: AlignedBuf },
    /// A zero range (sent only to targets that are not freshly zeroed).
    Zero { offset: u64, len: u64 },
}

/// Outcome of reading all blocks.
#[derive(Debug)]
pub struct ReadOutcome {
    /// Image checksum over the bytes handed out.
    pub checksum: Hash,
    /// Image byte ranges whose stored data failed its hash (written as zeros).
    pub bad: Vec<Range<u64>>,
    /// Bytes read from archive files.
    pub bytes_read: u64,
}

/// Streams `chain`'s target through `emit`. A bad block is an error naming
/// revision and range unless `allow_bad`, then it is written as zeros.
/// With `only`, blocks outside it are neither read nor emitted: the caller
/// has proven the target holds them already, so their hashes from the
/// index go into the checksum.
pub fn read_blocks(
    chain: &Chain,
    allow_bad: bool,
    send_zeros: bool,
    only: Option<&BlockSet>,
    lanes: usize,
    pool: &BufferPool,
    emit: &mut dyn FnMut(Piece) -> Result<()>,
) -> Result<ReadOutcome> {
    let files = Files::open(chain);
    let mut rd = Reader {
        chain,
        allow_bad,
        sum: ImageChecksum::new(chain.size(), chain.block_size),
        bad: Vec::new(),
        bytes_read: 0,
    };
    let mut w = Coalescer::new(emit, pool, send_zeros);
    std::thread::scope(|scope| {
        let files = &files;
        let (mut feed, results) = crate::ordered::start(scope, lanes, move |job| match job {
            Job::Read(g) => files.read(chain, pool, g).map(Done::Read),
            Job::Pass(items) => Ok(Done::Pass(items)),
        });
        let planner = scope.spawn(move || {
            // Buffered reads get the kernel reading ahead of the planner,
            // and their pages dropped behind the slowest lane: reads lag
            // the planner by a group waiting for each lane, one in its
            // hands and one done.
            let lag = (3 * lanes * MAX_CHUNK) as u64;
            let mut ahead = vec![Readahead::dropping_behind_by(lag); chain.links.len()];
            plan(chain, only, &mut |job| {
                if let Job::Read(g) = &job {
                    let span = g.span();
                    if files.direct(g.link, &span).is_none() {
                        let file = &chain.links[g.link].file;
                        ahead[g.link].before(file, span.offset, span.len.into());
                    }
                }
                feed.send(job)
            })
        });
        let checked = (|| {
            for done in results {
                rd.check(&mut w, done?)?;
            }
            w.flush()
        })();
        let planned = planner.join().expect("restore planner panicked");
        checked.and(planned)
    })?;
    Ok(ReadOutcome {
        checksum: rd.sum.finish(),
        bad: rd.bad,
        bytes_read: rd.bytes_read,
    })
}

struct Reader<'c> {
    chain: &'c Chain,
    allow_bad: bool,
    sum: ImageChecksum,
    bad: Vec<Range<u64>>,
    bytes_read: u64,
}

impl Reader<'_> {
    /// Checks what a lane did and hands it on to `w`, in image order.
    fn check(&mut self, w: &mut Coalescer, done: Done) -> Result<()> {
        match done {
            Done::Pass(items) => {
                for p in items {
                    match p {
                        Pass::Zero(r) => self.zero_block(w, &r)?,
                        Pass::Known(r) => self.sum.push(r.block, &self.chain.hash_of(&r)?),
                    }
                }
                Ok(())
            }
            Done::Read((g, buf, hashes)) => self.check_group(w, g, buf, hashes),
        }
    }

    fn check_group(
        &mut self,
        w: &mut Coalescer,
        g: Group,
        buf: AlignedBuf,
        hashes: Vec<Hash>,
    ) -> Result<()> {
        self.bytes_read += buf.len() as u64;
        let first = g.blocks[0].block;
        // When all are good and back to back in the image too (always so
        // in a full), the read buffer itself is the piece: no copy.
        let whole = g.blocks.iter().zip(&hashes).enumerate().all(|(i, (r, h))| {
            let (_, e) = stored(r).expect("stored");
            *h == e.hash && u64::from(e.len) == r.len && r.block == first + i as u64
        });
        if whole {
            for (r, h) in g.blocks.iter().zip(&hashes) {
                self.sum.push(r.block, h);
            }
            return w.data_owned(first * self.chain.block_size, buf);
        }
        let mut at = 0usize;
        for (r, h) in g.blocks.iter().zip(&hashes) {
            let (_, e) = stored(r).expect("stored");
            let d = &buf[at..at + e.len as usize];
            at += e.len as usize;
            self.data_block(w, r, g.link, &e, d, h)?;
        }
        w.recycle(buf);
        Ok(())
    }

    fn data_block(
        &mut self,
        w: &mut Coalescer,
        r: &Resolved,
        link: usize,
        e: &BlockEntry,
        d: &[u8],
        got: &Hash,
    ) -> Result<()> {
        let offset = r.block * self.chain.block_size;
        if *got == e.hash && d.len() as u64 == r.len {
            self.sum.push(r.block, got);
            return w.data(offset, d);
        }
        let l = &self.chain.links[link];
        if !self.allow_bad {
            return Err(Error::Corrupt(format!(
                "revision {}: bytes {offset}..{} (block {}) fail their checksum in {}",
                l.revision.id,
                offset + r.len,
                r.block,
                l.path.display()
            )));
        }
        self.bad.push(offset..offset + r.len);
        self.zero_block(w, r)
    }

    fn zero_block(&mut self, w: &mut Coalescer, r: &Resolved) -> Result<()> {
        self.sum
            .push(r.block, &self.chain.zero_hashes().for_len(r.len));
        w.zero(r.block * self.chain.block_size, r.len)
    }
}
