//! The block index beside a full (`data/<id>.fidx`).
//!
//! A full is a raw sparse image file so that it stays directly copyable and
//! loop-mountable; its block hashes therefore live in this sidecar. Only
//! non-zero blocks are listed: a block missing from the index must read as
//! zeros, so the index grows with the data, not with the image size.
//!
//! Fulls can be large (a dense 1 TiB image has 16 Mi blocks), so the index
//! is never held in memory: it is written as a stream and read as a stream,
//! or by page for random access ([`super::index_pages`]).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::index::BlockEntry;
use super::index_pages::{Pages, PAGE_BYTES};
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
        let trailer = hash_range(&file, &path, body_len, |_, _| {})?;
        file.write_all_at(&trailer, body_len).at(&path)?;
        file.sync_all().at(&path)
    }
}

/// Checks that entries, seen chunk by chunk, name strictly ascending
/// blocks below the image's block count.
struct Ascending {
    blocks: u64,
    last: Option<u64>,
    /// The first block that broke the rule.
    bad: Option<u64>,
}

impl Ascending {
    fn below(blocks: u64) -> Ascending {
        Ascending {
            blocks,
            last: None,
            bad: None,
        }
    }

    /// `chunk` holds whole entries (index pages start at entry boundaries).
    fn scan(&mut self, chunk: &[u8]) {
        for raw in chunk.chunks_exact(FULL_ENTRY_LEN) {
            let block = le_u64(raw, 0);
            if self.bad.is_none() && (self.last.is_some_and(|l| l >= block) || block >= self.blocks)
            {
                self.bad = Some(block);
            }
            self.last = Some(block);
        }
    }
}

/// BLAKE3 of the file's first `len` bytes, read in chunks that `each`
/// also sees: the header, then whole index pages (see [`Pages::scan`]).
fn hash_range(
    file: &File,
    path: &Path,
    len: u64,
    mut each: impl FnMut(&[u8], u64),
) -> Result<Hash> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 25 * PAGE_BYTES];
    let mut pos = 0;
    while pos < len {
        let chunk = if pos == 0 {
            FULL_INDEX_HEADER_LEN
        } else {
            buf.len()
        };
        let n = (len - pos).min(chunk as u64) as usize;
        file.read_exact_at(&mut buf[..n], pos).at(path)?;
        hasher.update(&buf[..n]);
        each(&buf[..n], pos);
        pos += n as u64;
    }
    Ok(*hasher.finalize().as_bytes())
}

/// An opened, checked full index.
pub struct FullIndexReader {
    pub header: FullIndexHeader,
    file: File,
    path: PathBuf,
    /// Random access by block (see [`Pages`]).
    pages: Pages,
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
        let mut pages = Pages::new(header.count);
        let mut order = Ascending::below(block_count(header.size, header.block_size));
        let sum = hash_range(&file, path, body, |chunk, pos| {
            pages.scan(chunk, pos);
            if pos > 0 {
                order.scan(chunk);
            }
        })?;
        if sum != trailer {
            return Err(corrupt("full index checksum mismatch".into()));
        }
        // A checksum proves the file is as written, not that its writer
        // was sound: lookups binary-search the entries, so a file out of
        // order would answer "not stored" (zeros) for a stored block.
        if let Some(block) = order.bad {
            return Err(corrupt(format!(
                "index entry for block {block} is out of order or beyond the image"
            )));
        }
        debug_assert!(pages.complete());
        Ok(FullIndexReader {
            header,
            file,
            path: path.to_path_buf(),
            pages,
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

    /// The first entry at or after `block`.
    pub fn next_at_or_after(&self, block: u64) -> Result<Option<BlockEntry>> {
        let raw = self.pages.next_at_or_after(&self.file, &self.path, block)?;
        Ok(raw.map(|r| self.entry(&r)))
    }

    /// The entry of `block`, if the full stores it.
    pub fn find(&self, block: u64) -> Result<Option<BlockEntry>> {
        let raw = self.pages.find(&self.file, &self.path, block)?;
        Ok(raw.map(|r| self.entry(&r)))
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
    fn lookups_across_pages_match_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("i");
        // 3 pages and a bit, with gaps, so page starts are not multiples
        let blocks: Vec<u64> = (0..3 * 1024 + 77).map(|i| i * 3 + i / 500).collect();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        let mut w = FullIndexWriter::new(file, p.clone()).unwrap();
        for &b in &blocks {
            w.push(b, &[(b % 251) as u8; 32]).unwrap();
        }
        let last = *blocks.last().unwrap();
        w.finish(4096, (last + 1) * 4096, [7; 32]).unwrap();
        let r = FullIndexReader::open(&p).unwrap();
        // backwards, so each lookup lands on another page than the last
        for b in (0..last + 3).rev() {
            let listed = blocks.binary_search(&b).is_ok();
            let found = r.find(b).unwrap();
            assert_eq!(found.map(|e| e.block), listed.then_some(b), "find {b}");
            if let Some(e) = found {
                assert_eq!(e.hash, [(b % 251) as u8; 32]);
            }
            let next = blocks[blocks.partition_point(|&x| x < b)..]
                .first()
                .copied();
            assert_eq!(
                r.next_at_or_after(b).unwrap().map(|e| e.block),
                next,
                "next {b}"
            );
        }
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

    #[test]
    fn a_resealed_index_out_of_order_or_past_the_image_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("i");
        write(&p, &[(0, 1), (1, 2), (2, 3)]);
        let good = std::fs::read(&p).unwrap();
        let entry = |k: usize| FULL_INDEX_HEADER_LEN + k * FULL_ENTRY_LEN;
        // swap the first two block numbers; then a block past the image
        for (k, block) in [(0usize, 1u64), (2, 3)] {
            let mut b = good.clone();
            b[entry(k)..entry(k) + 8].copy_from_slice(&block.to_le_bytes());
            let n = b.len() - TRAILER_LEN;
            let sum = *blake3::hash(&b[..n]).as_bytes();
            b[n..].copy_from_slice(&sum);
            std::fs::write(&p, &b).unwrap();
            let e = FullIndexReader::open(&p).err().expect("refused");
            assert!(e.to_string().contains("out of order or beyond"), "{e}");
        }
    }
}
