//! Reads a revision's blocks from the archive in image order, verifying each
//! block's hash, and turns them into write pieces for a restore target.
//!
//! Contiguous blocks stored contiguously in the same file are read with one
//! `pread` (up to 4 MiB); each byte is read once; zero blocks are never read.

use std::ops::Range;

use super::block_set::BlockSet;
use crate::archive::read::Readahead;
use crate::buffers::{AlignedBuf, BufferPool};
use crate::chain::{Chain, Resolved, Source};
use crate::checksum::{block_hash, Hash, ImageChecksum};
use crate::error::{Error, Result};
use crate::format::index::BlockEntry;

/// Largest read from an archive file and largest write piece.
pub const MAX_CHUNK: usize = 4 << 20;

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
    pool: &BufferPool,
    emit: &mut dyn FnMut(Piece) -> Result<()>,
) -> Result<ReadOutcome> {
    let mut w = Coalescer::new(emit, pool, send_zeros);
    let mut rd = Reader {
        chain,
        allow_bad,
        sum: ImageChecksum::new(chain.size(), chain.block_size),
        bad: Vec::new(),
        bytes_read: 0,
        buf: AlignedBuf::new(),
        group: Vec::new(),
        ahead: vec![Readahead::dropping_behind(); chain.links.len()],
    };
    for r in chain.blocks()? {
        let r = r?;
        if only.is_some_and(|set| !set.contains(r.block)) {
            rd.flush_group(&mut w)?;
            rd.sum.push(r.block, &chain.hash_of(&r)?);
            continue;
        }
        match stored(&r) {
            Some((link, e)) => {
                if !rd.joins(link, &e) {
                    rd.flush_group(&mut w)?;
                }
                rd.group.push(r);
            }
            None => {
                rd.flush_group(&mut w)?;
                rd.zero_block(&mut w, &r)?;
            }
        }
    }
    rd.flush_group(&mut w)?;
    w.flush()?;
    Ok(ReadOutcome {
        checksum: rd.sum.finish(),
        bad: rd.bad,
        bytes_read: rd.bytes_read,
    })
}

/// The stored, non-zero entry behind a resolved block.
fn stored(r: &Resolved) -> Option<(usize, BlockEntry)> {
    match r.source {
        Source::Stored { link, entry } if !entry.zero => Some((link, entry)),
        _ => None,
    }
}

struct Reader<'c> {
    chain: &'c Chain,
    allow_bad: bool,
    sum: ImageChecksum,
    bad: Vec<Range<u64>>,
    bytes_read: u64,
    buf: AlignedBuf,
    /// Blocks stored back to back in one file, read together.
    group: Vec<Resolved>,
    /// Per link: the kernel reads ahead of us.
    ahead: Vec<Readahead>,
}

impl Reader<'_> {
    fn joins(&self, link: usize, e: &BlockEntry) -> bool {
        let (Some(first), Some(last)) = (self.group.first(), self.group.last()) else {
            return false;
        };
        let (fl, fe) = stored(first).expect("groups hold stored blocks");
        let (_, le) = stored(last).expect("groups hold stored blocks");
        fl == link
            && le.offset + le.len as u64 == e.offset
            && e.offset + e.len as u64 - fe.offset <= MAX_CHUNK as u64
    }

    fn flush_group(&mut self, w: &mut Coalescer) -> Result<()> {
        let Some(first) = self.group.first() else {
            return Ok(());
        };
        let (link, fe) = stored(first).expect("stored");
        let (_, le) = stored(self.group.last().unwrap()).expect("stored");
        let span = BlockEntry {
            len: (le.offset + le.len as u64 - fe.offset) as u32,
            ..fe
        };
        let mut buf = std::mem::take(&mut self.buf);
        let file = &self.chain.links[link].file;
        self.ahead[link].before(file, span.offset, span.len.into());
        self.chain.read_entry(link, &span, &mut buf)?;
        self.bytes_read += span.len as u64;
        let group = std::mem::take(&mut self.group);
        // Hash every block; when all are good and back to back in the
        // image too (always so in a full), the read buffer itself is the
        // piece: no copy.
        let (mut at, mut whole) = (0usize, true);
        let mut hashes = Vec::with_capacity(group.len());
        for (i, r) in group.iter().enumerate() {
            let (_, e) = stored(r).expect("stored");
            let h = block_hash(&buf[at..at + e.len as usize]);
            at += e.len as usize;
            whole &=
                h == e.hash && u64::from(e.len) == r.len && r.block == group[0].block + i as u64;
            hashes.push(h);
        }
        if whole {
            for (r, h) in group.iter().zip(&hashes) {
                self.sum.push(r.block, h);
            }
            w.data_owned(group[0].block * self.chain.block_size, buf)?;
            buf = w.spare();
        } else {
            let mut at = 0usize;
            for (r, h) in group.iter().zip(&hashes) {
                let (_, e) = stored(r).expect("stored");
                let d = &buf[at..at + e.len as usize];
                at += e.len as usize;
                self.data_block(w, r, link, &e, d, h)?;
            }
        }
        self.group = group;
        self.group.clear();
        self.buf = buf;
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

/// Merges adjacent data (and zero) ranges into pieces of up to [`MAX_CHUNK`]
/// (data buffers from `pool`), handed to `emit` in order.
pub struct Coalescer<'e> {
    emit: &'e mut dyn FnMut(Piece) -> Result<()>,
    pool: &'e BufferPool,
    send_zeros: bool,
    data: Option<(u64, AlignedBuf)>,
    zeros: Option<(u64, u64)>,
}

impl<'e> Coalescer<'e> {
    /// Zero ranges are dropped unless `send_zeros`.
    pub fn new(
        emit: &'e mut dyn FnMut(Piece) -> Result<()>,
        pool: &'e BufferPool,
        send_zeros: bool,
    ) -> Coalescer<'e> {
        Coalescer {
            emit,
            pool,
            send_zeros,
            data: None,
            zeros: None,
        }
    }

    pub fn data(&mut self, offset: u64, d: &[u8]) -> Result<()> {
        self.flush_zeros()?;
        if let Some((start, v)) = &mut self.data {
            if *start + v.len() as u64 == offset && v.len() + d.len() <= MAX_CHUNK {
                v.extend_from_slice(d);
                return Ok(());
            }
        }
        self.flush_data()?;
        let mut v = self.pool.get_empty(MAX_CHUNK);
        v.extend_from_slice(d);
        self.data = Some((offset, v));
        Ok(())
    }

    /// Emits `data` at `offset` as it is (a buffer the caller filled);
    /// what was gathered before goes first.
    pub fn data_owned(&mut self, offset: u64, data: AlignedBuf) -> Result<()> {
        self.flush()?;
        (self.emit)(Piece::Data { offset, data })
    }

    /// A buffer from the pool for the caller's next read (which sets its
    /// length without zeroing, [`AlignedBuf::resize_to_fill`]).
    pub fn spare(&self) -> AlignedBuf {
        self.pool.get_empty(MAX_CHUNK)
    }

    pub fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        self.flush_data()?;
        if !self.send_zeros {
            return Ok(());
        }
        match &mut self.zeros {
            Some((start, l)) if *start + *l == offset => *l += len,
            _ => {
                self.flush_zeros()?;
                self.zeros = Some((offset, len));
            }
        }
        Ok(())
    }

    fn flush_data(&mut self) -> Result<()> {
        match self.data.take() {
            Some((offset, data)) => (self.emit)(Piece::Data { offset, data }),
            None => Ok(()),
        }
    }

    fn flush_zeros(&mut self) -> Result<()> {
        match self.zeros.take() {
            Some((offset, len)) => (self.emit)(Piece::Zero { offset, len }),
            None => Ok(()),
        }
    }

    /// Emits what is still gathered; call at the end.
    pub fn flush(&mut self) -> Result<()> {
        self.flush_data()?;
        self.flush_zeros()
    }
}
