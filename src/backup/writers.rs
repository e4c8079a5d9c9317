//! The two block writers of a backup: a sparse full image file, and a delta.

use std::path::Path;

use super::pipeline::{BlockWriter, Chunk};
use crate::archive::atomic::TempFile;
use crate::archive::direct_write::{self, DirectWriter};
use crate::buffers::{AlignedBuf, BufferPool};
use crate::checksum::{block_count, block_len, Hash, ImageChecksum, ZeroHashes};
use crate::error::{IoContext, Result};
use crate::format::delta::DeltaWriter;
use crate::format::full_index::FullIndexWriter;

/// Writes non-zero blocks of a full at their image offsets; zero blocks stay
/// holes, so the file is as sparse as the image. The block index is streamed
/// to its own temp file and the image checksum computed on the way, so
/// memory does not grow with the image.
pub struct FullWriter {
    data: TempFile,
    /// Direct writes to `data`, where the filesystem takes them.
    direct: Option<DirectWriter>,
    index_tmp: TempFile,
    index: FullIndexWriter,
    sum: ImageChecksum,
    zeros: ZeroHashes,
    size: u64,
    block_size: u64,
    /// Next block whose hash the checksum needs.
    next_block: u64,
    pub bytes_written: u64,
}

impl FullWriter {
    pub fn new(tmp_dir: &Path, size: u64, block_size: u64) -> Result<FullWriter> {
        let data = TempFile::new_in(tmp_dir, "full")?;
        let direct = DirectWriter::or_cache(&data.file, &data.path);
        let index_tmp = TempFile::new_in(tmp_dir, "fidx")?;
        let file = index_tmp.file.try_clone().at(&index_tmp.path)?;
        let index = FullIndexWriter::new(file, index_tmp.path.clone())?;
        Ok(FullWriter {
            data,
            direct,
            index_tmp,
            index,
            sum: ImageChecksum::new(size, block_size),
            zeros: ZeroHashes::new(block_size),
            size,
            block_size,
            next_block: 0,
            bytes_written: 0,
        })
    }

    /// Counts blocks before `block` that were never stored as zeros.
    fn zeros_until(&mut self, block: u64) {
        while self.next_block < block {
            let len = block_len(self.next_block, self.size, self.block_size);
            self.sum.push(self.next_block, &self.zeros.for_len(len));
            self.next_block += 1;
        }
    }

    fn add(&mut self, block: u64, hash: &Hash) -> Result<()> {
        self.zeros_until(block);
        self.sum.push(block, hash);
        self.next_block = block + 1;
        self.index.push(block, hash)
    }

    /// The image checksum of everything written (the rest is zeros).
    pub fn checksum(&mut self) -> Hash {
        self.zeros_until(block_count(self.size, self.block_size));
        self.sum.finish()
    }

    /// Completes both files for `revision` and renames them into place.
    pub fn persist(mut self, revision: Hash, full: &Path, index: &Path) -> Result<()> {
        if let Some(d) = self.direct.take() {
            d.finish()?;
        }
        // (also cuts the zeros a direct write padded the last block with)
        self.data.file.set_len(self.size).at(&self.data.path)?;
        self.index.finish(self.block_size, self.size, revision)?;
        self.data.persist(full)?;
        self.index_tmp.persist(index)
    }
}

impl BlockWriter for FullWriter {
    fn put_chunk(&mut self, chunk: Chunk) -> Result<Option<AlignedBuf>> {
        let blocks = &chunk.blocks;
        let whole = self
            .direct
            .as_ref()
            .is_some_and(|d| d.takes(chunk.extent.offset))
            && blocks.iter().all(|b| !b.zero && b.keep);
        if whole {
            // all data (the common case in a written region): the read
            // buffer is written as it is
            for b in blocks {
                self.add(b.block, &b.hash)?;
            }
            self.bytes_written += chunk.data.len() as u64;
            let d = self.direct.as_mut().expect("checked above");
            return d.write_owned(chunk.extent.offset, chunk.data);
        }
        let mut i = 0;
        while i < blocks.len() {
            if blocks[i].zero || !blocks[i].keep {
                i += 1;
                continue;
            }
            let start = i;
            while i < blocks.len() && !blocks[i].zero && blocks[i].keep {
                self.add(blocks[i].block, &blocks[i].hash)?;
                i += 1;
            }
            let from = blocks[start].at;
            let to = blocks[i - 1].at + blocks[i - 1].len;
            let offset = chunk.extent.offset + from as u64;
            let data = &chunk.data[from..to];
            direct_write::write_at(
                &mut self.direct,
                &self.data.file,
                &self.data.path,
                offset,
                data,
            )?;
            self.bytes_written += (to - from) as u64;
        }
        Ok(Some(chunk.data))
    }

    fn recycle_into(&mut self, pool: &BufferPool) {
        if let Some(d) = &self.direct {
            d.recycle_into(pool);
        }
    }
}

impl BlockWriter for DeltaWriter {
    fn put_chunk(&mut self, chunk: Chunk) -> Result<Option<AlignedBuf>> {
        for b in chunk.blocks.iter().filter(|b| b.keep) {
            if b.zero {
                self.add_zero(b.block, b.len as u64, b.hash)?;
            } else {
                self.add(b.block, &chunk.data[b.at..b.at + b.len], b.hash)?;
            }
        }
        Ok(Some(chunk.data))
    }
}
