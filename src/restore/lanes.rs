//! What each of a restore's read lanes does with a group: reads it with
//! `O_DIRECT` where the file system allows and the group is aligned
//! (through the page cache otherwise) and hashes its blocks.

use std::fs::File;

use super::plan::Group;
use super::reader::MAX_CHUNK;
use crate::archive::direct::ALIGN;
use crate::buffers::{AlignedBuf, BufferPool};
use crate::chain::Chain;
use crate::checksum::{block_hash, Hash};
use crate::error::Result;
use crate::format::index::BlockEntry;

/// The chain's files as the lanes read them.
pub(super) struct Files {
    /// Per link: an `O_DIRECT` descriptor, if the file system allows one.
    direct: Vec<Option<File>>,
}

impl Files {
    pub fn open(chain: &Chain) -> Files {
        let direct = chain
            .links
            .iter()
            .map(
                |l| match crate::archive::direct::reopen_for_reading(&l.file) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        tracing::debug!(
                            "buffered reads of {}: O_DIRECT refused ({e})",
                            l.path.display()
                        );
                        None
                    }
                },
            )
            .collect();
        Files { direct }
    }

    /// The `O_DIRECT` descriptor that reads `span` of link `link`, if the
    /// file system allows one and the span is aligned (a full's last block
    /// of an odd-sized image is not); else it is read through the cache.
    pub fn direct(&self, link: usize, span: &BlockEntry) -> Option<&File> {
        let aligned = span.offset % ALIGN as u64 == 0 && span.len as usize % ALIGN == 0;
        self.direct[link].as_ref().filter(|_| aligned)
    }

    /// Reads group `g` into a buffer from `pool` and hashes its blocks.
    pub fn read(
        &self,
        chain: &Chain,
        pool: &BufferPool,
        g: Group,
    ) -> Result<(Group, AlignedBuf, Vec<Hash>)> {
        let span = g.span();
        let link = &chain.links[g.link];
        let file = self.direct(g.link, &span).unwrap_or(&link.file);
        let mut buf = pool.get_empty(MAX_CHUNK);
        // not zeroed first: the read overwrites every byte
        buf.resize_to_fill(span.len as usize);
        crate::archive::read::read_at(file, &link.path, &mut buf, span.offset)?;
        let mut at = 0usize;
        let hashes = g
            .blocks
            .iter()
            .map(|r| {
                let len = super::plan::stored(r).expect("stored").1.len as usize;
                at += len;
                block_hash(&buf[at - len..at])
            })
            .collect();
        Ok((g, buf, hashes))
    }
}
