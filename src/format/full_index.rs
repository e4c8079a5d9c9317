//! The block index beside a full (`data/<id>.fidx`).
//!
//! A full is a raw sparse image file so that it stays directly copyable and
//! loop-mountable; its block hashes therefore live in this sidecar. Only
//! non-zero blocks are listed: a block missing from the index must read as
//! zeros, so the index grows with the data, not with the image size.
//!
//! Fulls can be large (a dense 1 TiB image has 16 Mi blocks), so the index
//! is never held in memory: it is written as a stream and read as a stream
//! (or probed with binary search for random access).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::index::BlockEntry;
use super::*;
use crate::checksum::{block_count, block_len, Hash};
use crate::error::{Error, IoContext, Result};

/// Header fields of a full index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullIndexHeader {
    pub block_size: u64,
    pub size: u64,
    pub revision: Hash,
    pub count: u64,
}

impl FullIndexHeader {
    fn encode(&self) -> [u8; FULL_INDEX_HEADER_LEN] {
        let mut h = [0u8; FULL_INDEX_HEADER_LEN];
        h[0..8].copy_from_slice(&FULL_INDEX_MAGIC);
        h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(self.block_size as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.size.to_le_bytes());
        h[24..56].copy_from_slice(&self.revision);
        h[56..64].copy_from_slice(&self.count.to_le_bytes());
        h
    }

    fn decode(h: &[u8]) -> std::result::Result<FullIndexHeader, String> {
        let block_size = check_prefix(h, &FULL_INDEX_MAGIC, "full index")?;
        Ok(FullIndexHeader {
            block_size,
            size: le_u64(h, 16),
            revision: hash_at(h, 24),
            count: le_u64(h, 56),
        })
    }

    fn file_len(&self) -> Option<u64> {
        self.count
            .checked_mul(FULL_ENTRY_LEN as u64)?
            .checked_add((FULL_INDEX_HEADER_LEN + TRAILER_LEN) as u64)
    }
}

/// Streams entries into an index file; the header is written last.
pub struct FullIndexWriter {
    out: BufWriter<File>,
    path: PathBuf,
    count: u64,
    last: Option<u64>,
}

impl FullIndexWriter {
    /// Starts an index in `file` (empty, opened read-write).
    pub fn new(file: File, path: PathBuf) -> Result<FullIndexWriter> {
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0u8; FULL_INDEX_HEADER_LEN]).at(&path)?;
        Ok(FullIndexWriter {
            out,
            path,
            count: 0,
            last: None,
        })
    }

    /// Appends a non-zero block; blocks must ascend.
    pub fn push(&mut self, block: u64, hash: &Hash) -> Result<()> {
        if self.last.is_some_and(|l| l >= block) {
            return Err(Error::Invalid(format!(
                "full index: block {block} out of order"
            )));
        }
        self.last = Some(block);
        self.out.write_all(&block.to_le_bytes()).at(&self.path)?;
        self.out.write_all(hash).at(&self.path)?;
        self.count += 1;
        Ok(())
    }

    /// Writes the header, appends the trailer (BLAKE3 of everything before
    /// it, read back from the file) and fsyncs.
    pub fn finish(self, block_size: u64, size: u64, revision: Hash) -> Result<()> {
        let path = self.path;
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
        let header = FullIndexHeader {
            block_size,
            size,
            revision,
            count: self.count,
        };
        file.write_all_at(&header.encode(), 0).at(&path)?;
        let body_len = header.file_len().expect("fits") - TRAILER_LEN as u64;
        let trailer = hash_range(&file, &path, body_len)?;
        file.write_all_at(&trailer, body_len).at(&path)?;
        file.sync_all().at(&path)
    }
}

fn hash_range(file: &File, path: &Path, len: u64) -> Result<Hash> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], pos).at(path)?;
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(*hasher.finalize().as_bytes())
}

/// An opened, checked full index.
pub struct FullIndexReader {
    pub header: FullIndexHeader,
    file: File,
    path: PathBuf,
    /// Where the last [`FullIndexReader::find`] hit, plus one: readers go
    /// through an image in order, so the next block is usually there, and
    /// one read replaces a binary search.
    next: std::sync::atomic::AtomicU64,
}

impl FullIndexReader {
    /// Opens an index and checks magic, version, length and trailer (one
    /// sequential read of the file).
    pub fn open(path: &Path) -> Result<FullIndexReader> {
        let corrupt = |m: String| Error::Corrupt(format!("{}: {m}", path.display()));
        let file = File::open(path).at(path)?;
        let len = file.metadata().at(path)?.len();
        if len < (FULL_INDEX_HEADER_LEN + TRAILER_LEN) as u64 {
            return Err(corrupt("full index too short".into()));
        }
        let mut h = [0u8; FULL_INDEX_HEADER_LEN];
        file.read_exact_at(&mut h, 0).at(path)?;
        let header = FullIndexHeader::decode(&h).map_err(corrupt)?;
        if header.file_len() != Some(len) {
            return Err(corrupt(format!(
                "full index length does not match its {} entries",
                header.count
            )));
        }
        let body = len - TRAILER_LEN as u64;
        let mut trailer = [0u8; TRAILER_LEN];
        file.read_exact_at(&mut trailer, body).at(path)?;
        if hash_range(&file, path, body)? != trailer {
            return Err(corrupt("full index checksum mismatch".into()));
        }
        Ok(FullIndexReader {
            header,
            file,
            path: path.to_path_buf(),
            next: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn entry(&self, raw: &[u8]) -> BlockEntry {
        let block = le_u64(raw, 0);
        BlockEntry {
            block,
            offset: block * self.header.block_size,
            len: block_len(block, self.header.size, self.header.block_size) as u32,
            zero: false,
            hash: hash_at(raw, 8),
        }
    }

    /// Entries in ascending order, read sequentially. Yields an error (and
    /// stops) when the index is not strictly ascending or names a block
    /// beyond the image.
    pub fn entries(&self) -> Result<Entries<'_>> {
        let mut file = self.file.try_clone().at(&self.path)?;
        file.seek(SeekFrom::Start(FULL_INDEX_HEADER_LEN as u64))
            .at(&self.path)?;
        Ok(Entries {
            reader: self,
            input: BufReader::with_capacity(1 << 20, file),
            left: self.header.count,
            last: None,
        })
    }

    /// The first entry at or after `block`, by binary search over the file.
    pub fn next_at_or_after(&self, block: u64) -> Result<Option<BlockEntry>> {
        let (mut lo, mut hi) = (0u64, self.header.count);
        let mut raw = [0u8; FULL_ENTRY_LEN];
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = FULL_INDEX_HEADER_LEN as u64 + mid * FULL_ENTRY_LEN as u64;
            self.file.read_exact_at(&mut raw, at).at(&self.path)?;
            if le_u64(&raw, 0) < block {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == self.header.count {
            return Ok(None);
        }
        let at = FULL_INDEX_HEADER_LEN as u64 + lo * FULL_ENTRY_LEN as u64;
        self.file.read_exact_at(&mut raw, at).at(&self.path)?;
        Ok(Some(self.entry(&raw)))
    }

    /// The entry of `block`: where the last hit left off, else by binary
    /// search over the file.
    pub fn find(&self, block: u64) -> Result<Option<BlockEntry>> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut raw = [0u8; FULL_ENTRY_LEN];
        let hint = self.next.load(Relaxed);
        if hint < self.header.count {
            let at = FULL_INDEX_HEADER_LEN as u64 + hint * FULL_ENTRY_LEN as u64;
            self.file.read_exact_at(&mut raw, at).at(&self.path)?;
            if le_u64(&raw, 0) == block {
                self.next.store(hint + 1, Relaxed);
                return Ok(Some(self.entry(&raw)));
            }
        }
        let (mut lo, mut hi) = (0u64, self.header.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = FULL_INDEX_HEADER_LEN as u64 + mid * FULL_ENTRY_LEN as u64;
            self.file.read_exact_at(&mut raw, at).at(&self.path)?;
            let b = le_u64(&raw, 0);
            match b.cmp(&block) {
                std::cmp::Ordering::Equal => {
                    self.next.store(mid + 1, Relaxed);
                    return Ok(Some(self.entry(&raw)));
                }
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }
}

/// Sequential iterator over a full index's entries.
pub struct Entries<'a> {
    reader: &'a FullIndexReader,
    input: BufReader<File>,
    left: u64,
    last: Option<u64>,
}

impl Iterator for Entries<'_> {
    type Item = Result<BlockEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut raw = [0u8; FULL_ENTRY_LEN];
        if let Err(e) = self.input.read_exact(&mut raw) {
            self.left = 0;
            return Some(Err(Error::io(&self.reader.path, e)));
        }
        let e = self.reader.entry(&raw);
        let h = &self.reader.header;
        if self.last.is_some_and(|l| l >= e.block) || e.block >= block_count(h.size, h.block_size) {
            self.left = 0;
            return Some(Err(Error::Corrupt(format!(
                "{}: index entry for block {} is out of order or beyond the image",
                self.reader.path.display(),
                e.block
            ))));
        }
        self.last = Some(e.block);
        Some(Ok(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, blocks: &[(u64, u8)]) {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap();
        let mut w = FullIndexWriter::new(file, path.to_path_buf()).unwrap();
        for &(b, h) in blocks {
            w.push(b, &[h; 32]).unwrap();
        }
        assert!(w.push(0, &[0; 32]).is_err() || blocks.is_empty());
        w.finish(4096, 10_000, [7; 32]).unwrap();
    }

    #[test]
    fn round_trip_stream_and_find() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("i");
        write(&p, &[(0, 1), (2, 2)]);
        let r = FullIndexReader::open(&p).unwrap();
        assert_eq!(r.header.count, 2);
        assert_eq!(r.header.revision, [7; 32]);
        let all: Vec<BlockEntry> = r.entries().unwrap().map(|e| e.unwrap()).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].len, 10_000 - 8192);
        assert_eq!(all[1].offset, 8192);
        assert_eq!(r.find(2).unwrap().unwrap().hash, [2; 32]);
        assert_eq!(r.find(1).unwrap(), None);
        assert_eq!(r.find(9).unwrap(), None);
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("i");
        write(&p, &[(0, 1), (2, 2)]);
        let bytes = std::fs::read(&p).unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            std::fs::write(&p, &b).unwrap();
            assert!(
                FullIndexReader::open(&p).is_err(),
                "flip at {i} not detected"
            );
        }
    }
}
