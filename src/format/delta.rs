//! Delta files (`data/<id>.delta`): the blocks that changed since the base
//! revision, with their hashes.
//!
//! Layout: a 128-byte header, block data from offset 4096 on (written
//! sequentially, in block order), then the index (one 56-byte entry per block)
//! and a BLAKE3 trailer over header and index. The header is written last, at
//! offset 0, once the revision id is known. Block data is covered by the
//! per-block hashes in the index; the trailer covers the rest.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::index::{check_sorted, BlockEntry};
use super::*;
use crate::archive::direct_write::{self, DirectWriter};
use crate::checksum::{block_count, Hash};
use crate::error::{Error, IoContext, Result};

/// Header fields of a delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaHeader {
    pub block_size: u64,
    /// Image size at this revision.
    pub size: u64,
    pub revision: Hash,
    /// The revision whose content this delta applies to.
    pub base: Hash,
}

/// Writes a delta sequentially; blocks must be added in ascending order.
pub struct DeltaWriter {
    file: File,
    /// Direct writes of the block data, where the filesystem takes them.
    direct: Option<DirectWriter>,
    path: PathBuf,
    block_size: u64,
    pos: u64,
    buf: Vec<u8>,
    entries: Vec<BlockEntry>,
}

const WRITE_BUF: usize = 4 << 20;

impl DeltaWriter {
    pub fn new(file: File, path: PathBuf, block_size: u64) -> Self {
        DeltaWriter {
            direct: DirectWriter::or_cache(&file, &path),
            file,
            path,
            block_size,
            pos: DELTA_DATA_START,
            buf: Vec::with_capacity(WRITE_BUF),
            entries: Vec::new(),
        }
    }

    /// Adds a block with data (`data.len()` is the block's length).
    pub fn add(&mut self, block: u64, data: &[u8], hash: Hash) -> Result<()> {
        self.check_order(block)?;
        if data.is_empty() || data.len() as u64 > self.block_size {
            return Err(Error::Invalid(format!(
                "delta block {block} has {} bytes (block size {})",
                data.len(),
                self.block_size
            )));
        }
        let offset = self.pos + self.buf.len() as u64;
        self.entries.push(BlockEntry {
            block,
            offset,
            len: data.len() as u32,
            zero: false,
            hash,
        });
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE_BUF {
            self.flush_buf()?;
        }
        Ok(())
    }

    /// Adds an all-zero block of `len` bytes; no data is stored.
    pub fn add_zero(&mut self, block: u64, len: u64, hash: Hash) -> Result<()> {
        self.check_order(block)?;
        self.entries.push(BlockEntry {
            block,
            offset: 0,
            len: len as u32,
            zero: true,
            hash,
        });
        Ok(())
    }

    fn check_order(&self, block: u64) -> Result<()> {
        match self.entries.last() {
            Some(last) if last.block >= block => Err(Error::Invalid(format!(
                "delta blocks out of order: {} after {}",
                block, last.block
            ))),
            _ => Ok(()),
        }
    }

    fn flush_buf(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            direct_write::write_at(
                &mut self.direct,
                &self.file,
                &self.path,
                self.pos,
                &self.buf,
            )?;
            self.pos += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    pub fn entries(&self) -> &[BlockEntry] {
        &self.entries
    }

    /// Bytes of block data written so far.
    pub fn data_bytes(&self) -> u64 {
        self.pos + self.buf.len() as u64 - DELTA_DATA_START
    }

    /// Writes index, trailer and header, then fsyncs. Returns the file.
    pub fn finish(mut self, header: &DeltaHeader) -> Result<File> {
        self.flush_buf()?;
        if let Some(d) = self.direct.take() {
            d.finish()?; // its last block, padded with zeros, is cut below
        }
        let index_offset = self.pos;
        let mut head = vec![0u8; DELTA_HEADER_LEN];
        head[0..8].copy_from_slice(&DELTA_MAGIC);
        head[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        head[12..16].copy_from_slice(&(header.block_size as u32).to_le_bytes());
        head[16..24].copy_from_slice(&header.size.to_le_bytes());
        head[24..56].copy_from_slice(&header.revision);
        head[56..88].copy_from_slice(&header.base);
        head[88..96].copy_from_slice(&(self.entries.len() as u64).to_le_bytes());
        head[96..104].copy_from_slice(&index_offset.to_le_bytes());
        head[104..112].copy_from_slice(&(index_offset - DELTA_DATA_START).to_le_bytes());
        let index = encode_entries(&self.entries);
        let mut trailer = blake3::Hasher::new();
        trailer.update(&head);
        trailer.update(&index);
        let mut tail = index;
        tail.extend_from_slice(trailer.finalize().as_bytes());
        self.file.write_all_at(&tail, index_offset).at(&self.path)?;
        let end = index_offset + tail.len() as u64;
        self.file.set_len(end).at(&self.path)?;
        self.file.write_all_at(&head, 0).at(&self.path)?;
        self.file.flush().at(&self.path)?;
        self.file.sync_all().at(&self.path)?;
        Ok(self.file)
    }
}

fn encode_entries(entries: &[BlockEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * DELTA_ENTRY_LEN);
    for e in entries {
        out.extend_from_slice(&e.block.to_le_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
        out.extend_from_slice(&(if e.zero { FLAG_ZERO } else { 0 }).to_le_bytes());
        out.extend_from_slice(&e.hash);
    }
    out
}

fn parse_header(head: &[u8]) -> std::result::Result<DeltaHeader, String> {
    let block_size = check_prefix(head, &DELTA_MAGIC, "delta file")?;
    Ok(DeltaHeader {
        block_size,
        size: le_u64(head, 16),
        revision: hash_at(head, 24),
        base: hash_at(head, 56),
    })
}

/// Reads only a delta's header (no index, no trailer check): cheap, for
/// listings. Readers of data use [`DeltaFile::open`].
pub fn read_header(path: &Path) -> Result<DeltaHeader> {
    let file = File::open(path).at(path)?;
    let mut head = vec![0u8; DELTA_HEADER_LEN];
    file.read_exact_at(&mut head, 0).at(path)?;
    parse_header(&head).map_err(|m| Error::Corrupt(format!("{}: {m}", path.display())))
}

/// An open delta: header and index in memory, data read on demand.
pub struct DeltaFile {
    pub header: DeltaHeader,
    pub entries: Vec<BlockEntry>,
    pub file: File,
    pub path: PathBuf,
}

impl DeltaFile {
    pub fn open(path: &Path) -> Result<DeltaFile> {
        let file = File::open(path).at(path)?;
        let corrupt = |m: String| Error::Corrupt(format!("{}: {m}", path.display()));
        let len = file.metadata().at(path)?.len();
        if len < DELTA_DATA_START + TRAILER_LEN as u64 {
            return Err(corrupt("delta too short".into()));
        }
        let mut head = vec![0u8; DELTA_HEADER_LEN];
        file.read_exact_at(&mut head, 0).at(path)?;
        let header = parse_header(&head).map_err(corrupt)?;
        let count = le_u64(&head, 88);
        let index_offset = le_u64(&head, 96);
        let index_len = count.checked_mul(DELTA_ENTRY_LEN as u64);
        let expected_len = index_len
            .and_then(|l| l.checked_add(index_offset))
            .and_then(|l| l.checked_add(TRAILER_LEN as u64));
        if index_offset < DELTA_DATA_START || expected_len != Some(len) {
            return Err(corrupt(format!(
                "delta length {len} does not match its header ({count} entries at {index_offset})"
            )));
        }
        let mut tail = vec![0u8; (len - index_offset) as usize];
        file.read_exact_at(&mut tail, index_offset).at(path)?;
        let (index, trailer) = tail.split_at(tail.len() - TRAILER_LEN);
        let mut h = blake3::Hasher::new();
        h.update(&head);
        h.update(index);
        if h.finalize().as_bytes() != trailer {
            return Err(corrupt("delta header/index checksum mismatch".into()));
        }
        let block_size = header.block_size;
        let mut entries = Vec::with_capacity(count as usize);
        for c in index.chunks_exact(DELTA_ENTRY_LEN) {
            let e = BlockEntry {
                block: le_u64(c, 0),
                offset: le_u64(c, 8),
                len: le_u32(c, 16),
                zero: le_u32(c, 20) & FLAG_ZERO != 0,
                hash: hash_at(c, 24),
            };
            let in_range = e.zero
                || (e.offset >= DELTA_DATA_START
                    && e.offset
                        .checked_add(e.len as u64)
                        .is_some_and(|end| end <= index_offset));
            if !in_range || e.len as u64 > block_size || e.len == 0 {
                return Err(corrupt(format!("bad index entry for block {}", e.block)));
            }
            entries.push(e);
        }
        check_sorted(&entries, block_count(header.size, block_size)).map_err(corrupt)?;
        Ok(DeltaFile {
            header,
            entries,
            file,
            path: path.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::block_hash;

    fn write_sample(dir: &Path) -> PathBuf {
        let path = dir.join("x.delta");
        let file = File::create(&path).unwrap();
        let mut w = DeltaWriter::new(file, path.clone(), 4096);
        let data = vec![5u8; 4096];
        w.add(1, &data, block_hash(&data)).unwrap();
        w.add_zero(3, 4096, block_hash(&[0u8; 4096])).unwrap();
        assert!(w.add(2, &data, [0; 32]).is_err());
        w.add(4, &data[..100], block_hash(&data[..100])).unwrap();
        w.finish(&DeltaHeader {
            block_size: 4096,
            size: 4 * 4096 + 100,
            revision: [1; 32],
            base: [2; 32],
        })
        .unwrap();
        path
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_sample(dir.path());
        let d = DeltaFile::open(&path).unwrap();
        assert_eq!(d.entries.len(), 3);
        assert!(d.entries[1].zero);
        assert_eq!(d.entries[2].len, 100);
        let mut buf = vec![0u8; 100];
        d.file.read_exact_at(&mut buf, d.entries[2].offset).unwrap();
        assert_eq!(block_hash(&buf), d.entries[2].hash);
    }

    #[test]
    fn flipped_header_or_index_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_sample(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        let index_offset = le_u64(&bytes, 96) as usize;
        let positions = (0..DELTA_HEADER_LEN).chain(index_offset..bytes.len());
        for i in positions {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            std::fs::write(&path, &b).unwrap();
            assert!(DeltaFile::open(&path).is_err(), "flip at {i} not detected");
        }
    }

    #[test]
    fn a_resealed_entry_whose_data_wraps_past_the_end_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_sample(dir.path());
        let mut b = std::fs::read(&path).unwrap();
        let x = le_u64(&b, 96) as usize;
        // the first entry's data offset: near 2^64, so offset + len wraps
        b[x + 8..x + 16].copy_from_slice(&(u64::MAX - 10).to_le_bytes());
        let n = b.len() - TRAILER_LEN;
        let mut h = blake3::Hasher::new();
        h.update(&b[..DELTA_HEADER_LEN]);
        h.update(&b[x..n]);
        let sum = *h.finalize().as_bytes();
        b[n..].copy_from_slice(&sum);
        std::fs::write(&path, &b).unwrap();
        let e = DeltaFile::open(&path).err().expect("refused");
        assert!(e.to_string().contains("bad index entry"), "{e}");
    }
}
