//! A set of block numbers kept as a bitmap: an in-place restore's "blocks
//! to write". Its size is fixed by the image (2 MiB per TiB of 64 KiB
//! blocks), never by how scattered the changes are.

use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSet {
    words: Vec<u64>,
    blocks: u64,
    len: u64,
}

impl BlockSet {
    /// An empty set over blocks `0..blocks`.
    pub fn new(blocks: u64) -> BlockSet {
        BlockSet {
            words: vec![0; blocks.div_ceil(64) as usize],
            blocks,
            len: 0,
        }
    }

    /// Adds `block`; blocks past the end are ignored.
    pub fn insert(&mut self, block: u64) {
        if block >= self.blocks {
            return;
        }
        let (w, bit) = ((block / 64) as usize, 1u64 << (block % 64));
        if self.words[w] & bit == 0 {
            self.words[w] |= bit;
            self.len += 1;
        }
    }

    /// Adds every block of `range` (clipped to the set's end).
    pub fn insert_range(&mut self, range: Range<u64>) {
        for b in range.start..range.end.min(self.blocks) {
            self.insert(b);
        }
    }

    pub fn contains(&self, block: u64) -> bool {
        block < self.blocks && self.words[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    /// How many blocks are in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_count_once_and_clip_at_the_end() {
        let mut s = BlockSet::new(130);
        s.insert(0);
        s.insert(0);
        s.insert(64);
        s.insert_range(120..200);
        s.insert(130);
        assert_eq!(s.len(), 12);
        assert!(s.contains(0) && s.contains(64) && s.contains(129));
        assert!(!s.contains(1) && !s.contains(63) && !s.contains(119) && !s.contains(130));
    }
}
