//! The two block writers of a backup: a sparse full image file, and a delta.

use std::os::unix::fs::FileExt;

use super::pipeline::{BlockWriter, Chunk};
use crate::archive::atomic::TempFile;
use crate::error::{IoContext, Result};
use crate::format::delta::DeltaWriter;
use crate::format::index::BlockEntry;

/// Writes non-zero blocks of a full at their image offsets; zero blocks stay
/// holes, so the file is as sparse as the image.
pub struct FullWriter {
    pub tmp: TempFile,
    pub block_size: u64,
    pub entries: Vec<BlockEntry>,
    pub bytes_written: u64,
}

impl BlockWriter for FullWriter {
    fn put_chunk(&mut self, chunk: &Chunk) -> Result<()> {
        let mut i = 0;
        let blocks = &chunk.blocks;
        while i < blocks.len() {
            if blocks[i].zero || !blocks[i].keep {
                i += 1;
                continue;
            }
            let start = i;
            while i < blocks.len() && !blocks[i].zero && blocks[i].keep {
                let b = &blocks[i];
                self.entries.push(BlockEntry {
                    block: b.block,
                    offset: b.block * self.block_size,
                    len: b.len as u32,
                    zero: false,
                    hash: b.hash,
                });
                i += 1;
            }
            let from = blocks[start].at;
            let to = blocks[i - 1].at + blocks[i - 1].len;
            let offset = chunk.extent.offset + from as u64;
            self.tmp
                .file
                .write_all_at(&chunk.data[from..to], offset)
                .at(&self.tmp.path)?;
            self.bytes_written += (to - from) as u64;
        }
        Ok(())
    }
}

impl BlockWriter for DeltaWriter {
    fn put_chunk(&mut self, chunk: &Chunk) -> Result<()> {
        for b in chunk.blocks.iter().filter(|b| b.keep) {
            if b.zero {
                self.add_zero(b.block, b.len as u64, b.hash)?;
            } else {
                self.add(b.block, &chunk.data[b.at..b.at + b.len], b.hash)?;
            }
        }
        Ok(())
    }
}
