//! Block index entries: where a block of a revision is stored and what its
//! hash is. Fulls and deltas share this in-memory form; their files encode it
//! differently (see `full_index` and `delta`).

use crate::checksum::Hash;

/// One stored block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockEntry {
    /// Block number (offset / block size).
    pub block: u64,
    /// Byte offset of the block's data in its file (0 for zero blocks).
    pub offset: u64,
    /// Length of the block at its revision (the last block may be short).
    pub len: u32,
    /// True when the block is all zeros and no data is stored.
    pub zero: bool,
    /// BLAKE3 of the block's `len` bytes.
    pub hash: Hash,
}

/// Checks that entries are strictly ascending by block and lie below
/// `block_count`; returns a description of the first problem.
pub fn check_sorted(entries: &[BlockEntry], block_count: u64) -> Result<(), String> {
    for pair in entries.windows(2) {
        if pair[0].block >= pair[1].block {
            return Err(format!(
                "index not strictly ascending at block {}",
                pair[1].block
            ));
        }
    }
    if let Some(last) = entries.last() {
        if last.block >= block_count {
            return Err(format!(
                "index names block {} beyond the image's {} blocks",
                last.block, block_count
            ));
        }
    }
    Ok(())
}

/// Finds the entry for `block` in an ascending index.
pub fn find(entries: &[BlockEntry], block: u64) -> Option<&BlockEntry> {
    entries
        .binary_search_by_key(&block, |e| e.block)
        .ok()
        .map(|i| &entries[i])
}
