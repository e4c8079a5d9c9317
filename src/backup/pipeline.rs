//! The backup data path: pipelined reads from the source, block hashing, and
//! sequential writes on a separate thread, with bounded memory.
//!
//! The source keeps up to `depth` reads in flight (librbd AIO); this thread
//! hashes each block as reads complete in order, and a writer thread stores
//! the blocks. A bounded channel between them caps memory at about
//! `(depth + QUEUE) × MAX_READ` bytes whatever the image size.

use crossbeam_channel::bounded;

use super::plan::MAX_READ;
use crate::buffers::{AlignedBuf, BufferPool};
use crate::checksum::{block_hash, is_zero, Hash, ZeroHashes};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::source::{Extent, SourceSnapshot};

/// Chunks queued between hashing and writing.
const QUEUE: usize = 4;

/// What the hashing stage learned about one block of a chunk.
#[derive(Debug, Clone, Copy)]
pub struct BlockInfo {
    pub block: u64,
    /// Offset of the block within the chunk's data.
    pub at: usize,
    pub len: usize,
    pub hash: Hash,
    pub zero: bool,
    /// Whether the block is to be stored (the checksum-compare fallback drops
    /// unchanged ones).
    pub keep: bool,
}

/// A read extent and its blocks.
pub struct Chunk {
    pub extent: Extent,
    pub data: AlignedBuf,
    pub blocks: Vec<BlockInfo>,
}

/// Where blocks go: a full file or a delta.
pub trait BlockWriter: Send {
    /// Takes `chunk`'s blocks; hands back its buffer, or another one the
    /// writer is done with, for the next read.
    fn put_chunk(&mut self, chunk: Chunk) -> Result<Option<AlignedBuf>>;
    /// Buffers the writer keeps past `put_chunk` go back to `pool` when
    /// it is done with them.
    fn recycle_into(&mut self, _pool: &BufferPool) {}
}

/// Byte counts of one copy.
#[derive(Debug, Default, Clone, Copy)]
pub struct CopyStats {
    pub bytes_read: u64,
}

/// Reads `reads` (block-aligned, each at most [`MAX_READ`]) and hands every
/// block to `writer`. `keep(block, hash, zero)` decides whether a block is
/// stored; it is called in block order.
pub fn copy_blocks(
    snap: &dyn SourceSnapshot,
    reads: &[Extent],
    depth: usize,
    block_size: u64,
    writer: &mut dyn BlockWriter,
    keep: &mut dyn FnMut(u64, &Hash, bool) -> Result<bool>,
    progress: &dyn Progress,
) -> Result<CopyStats> {
    let (tx, rx) = bounded::<Chunk>(QUEUE);
    let mut stats = CopyStats::default();
    let zeros = ZeroHashes::new(block_size);
    let pool = BufferPool::new(depth + QUEUE + 2);
    writer.recycle_into(&pool);
    std::thread::scope(|scope| {
        let pool = &pool;
        let writer_thread = scope.spawn(move || -> Result<()> {
            for chunk in rx {
                let done = writer.put_chunk(chunk)?;
                crate::fault::point("backup: chunk written");
                if let Some(buf) = done {
                    pool.put(buf);
                }
            }
            Ok(())
        });
        let read_result = snap.read_extents(reads, depth, pool, &mut |extent, data| {
            debug_assert!(extent.len <= MAX_READ);
            if data.len() as u64 != extent.len || extent.offset % block_size != 0 {
                return Err(Error::Invalid(format!(
                    "source returned {} bytes for {extent:?}",
                    data.len()
                )));
            }
            let mut blocks = Vec::with_capacity(data.len().div_ceil(block_size as usize));
            for (i, piece) in data.chunks(block_size as usize).enumerate() {
                let block = extent.offset / block_size + i as u64;
                // Zero blocks (unwritten parts of new objects, discards) are
                // common; their hash is known without hashing.
                let zero = is_zero(piece);
                let hash = if zero {
                    zeros.for_len(piece.len() as u64)
                } else {
                    block_hash(piece)
                };
                let kept = keep(block, &hash, zero)?;
                blocks.push(BlockInfo {
                    block,
                    at: i * block_size as usize,
                    len: piece.len(),
                    hash,
                    zero,
                    keep: kept,
                });
            }
            stats.bytes_read += extent.len;
            progress.advance(extent.len);
            tx.send(Chunk {
                extent,
                data,
                blocks,
            })
            .map_err(|_| Error::Invalid("backup writer stopped".into()))
        });
        drop(tx);
        let write_result = writer_thread.join().expect("writer thread panicked");
        // A writer error is the root cause when both failed.
        write_result.and(read_result)
    })?;
    Ok(stats)
}
