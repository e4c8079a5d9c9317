//! The block index beside a full (`data/<id>.fidx`).
//!
//! A full is a raw sparse image file so that it stays directly copyable and
//! loop-mountable; its block hashes therefore live in this sidecar. Only
//! non-zero blocks are listed: a block missing from the index must read as
//! zeros, so the index grows with the data, not with the image size.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use super::index::{check_sorted, BlockEntry};
use super::*;
use crate::checksum::{block_count, block_len, Hash};
use crate::error::{Error, IoContext, Result};

/// A parsed full index.
#[derive(Debug, Clone)]
pub struct FullIndex {
    pub block_size: u64,
    pub size: u64,
    pub revision: Hash,
    /// Non-zero blocks, ascending; `offset` is `block * block_size`.
    pub entries: Vec<BlockEntry>,
}

impl FullIndex {
    /// Encodes the index file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(FULL_INDEX_HEADER_LEN + self.entries.len() * FULL_ENTRY_LEN + 32);
        out.extend_from_slice(&FULL_INDEX_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.block_size as u32).to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.revision);
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        debug_assert_eq!(out.len(), FULL_INDEX_HEADER_LEN);
        for e in &self.entries {
            out.extend_from_slice(&e.block.to_le_bytes());
            out.extend_from_slice(&e.hash);
        }
        let trailer = blake3::hash(&out);
        out.extend_from_slice(trailer.as_bytes());
        out
    }

    /// Writes the index to `file` (the caller handles temp names and fsync).
    pub fn write_to(&self, file: &mut File, path: &Path) -> Result<()> {
        file.write_all(&self.encode()).at(path)
    }

    /// Reads and validates an index file.
    pub fn read(path: &Path) -> Result<FullIndex> {
        let mut buf = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .at(path)?;
        Self::decode(&buf).map_err(|m| Error::Corrupt(format!("{}: {m}", path.display())))
    }

    pub fn decode(buf: &[u8]) -> std::result::Result<FullIndex, String> {
        if buf.len() < FULL_INDEX_HEADER_LEN + TRAILER_LEN {
            return Err("full index too short".into());
        }
        if buf[0..8] != FULL_INDEX_MAGIC {
            return Err("not a full index (bad magic)".into());
        }
        let version = le_u32(buf, 8);
        if version != FORMAT_VERSION {
            return Err(format!("unsupported full index version {version}"));
        }
        let body = &buf[..buf.len() - TRAILER_LEN];
        if blake3::hash(body).as_bytes() != &buf[buf.len() - TRAILER_LEN..] {
            return Err("full index checksum mismatch".into());
        }
        let block_size = le_u32(buf, 12) as u64;
        if !valid_block_size(block_size) {
            return Err(format!("invalid block size {block_size}"));
        }
        let size = le_u64(buf, 16);
        let revision = hash_at(buf, 24);
        let count = le_u64(buf, 56);
        let expected =
            (FULL_INDEX_HEADER_LEN as u64).checked_add(count.saturating_mul(FULL_ENTRY_LEN as u64));
        if expected != Some(body.len() as u64) {
            return Err(format!(
                "full index length does not match its {count} entries"
            ));
        }
        let entries: Vec<BlockEntry> = body[FULL_INDEX_HEADER_LEN..]
            .chunks_exact(FULL_ENTRY_LEN)
            .map(|c| {
                let block = le_u64(c, 0);
                BlockEntry {
                    block,
                    offset: block * block_size,
                    len: block_len(block, size, block_size) as u32,
                    zero: false,
                    hash: hash_at(c, 8),
                }
            })
            .collect();
        check_sorted(&entries, block_count(size, block_size))?;
        Ok(FullIndex {
            block_size,
            size,
            revision,
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FullIndex {
        FullIndex {
            block_size: 4096,
            size: 10000,
            revision: [7; 32],
            entries: vec![
                BlockEntry {
                    block: 0,
                    offset: 0,
                    len: 4096,
                    zero: false,
                    hash: [1; 32],
                },
                BlockEntry {
                    block: 2,
                    offset: 8192,
                    len: 1808,
                    zero: false,
                    hash: [2; 32],
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let idx = sample();
        let back = FullIndex::decode(&idx.encode()).unwrap();
        assert_eq!(back.entries, idx.entries);
        assert_eq!(back.size, 10000);
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(FullIndex::decode(&b).is_err(), "flip at {i} not detected");
        }
    }
}
