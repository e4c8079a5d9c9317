//! Ceph's `rbd diff v1` stream, as `rbd export-diff` writes and
//! `rbd import-diff` reads it: the line `rbd diff v1\n`, then tagged
//! records, integers little-endian:
//!
//! | tag | body | meaning |
//! |---|---|---|
//! | `f` | u32 length, name | the snapshot the diff starts from |
//! | `t` | u32 length, name | the snapshot it ends at |
//! | `s` | u64 | the image size at the end |
//! | `w` | u64 offset, u64 length, data | bytes to write |
//! | `z` | u64 offset, u64 length | a range that reads as zeros |
//! | `e` | — | the end |
//!
//! rbdelta writes v1 only (never v2, which adds per-record lengths).

use std::io::Write;

/// The first bytes of every v1 stream.
pub const MAGIC_V1: &[u8] = b"rbd diff v1\n";

/// Writes one v1 stream: [`DiffWriter::new`] writes the magic, then the
/// metadata records, the data records in any order rbd accepts (rbdelta
/// writes them in ascending offset order), and [`DiffWriter::end`].
pub struct DiffWriter<W: Write> {
    out: W,
}

impl<W: Write> DiffWriter<W> {
    pub fn new(mut out: W) -> std::io::Result<DiffWriter<W>> {
        out.write_all(MAGIC_V1)?;
        Ok(DiffWriter { out })
    }

    fn name(&mut self, tag: u8, name: &str) -> std::io::Result<()> {
        let len = u32::try_from(name.len())
            .map_err(|_| std::io::Error::other("snapshot name too long"))?;
        self.out.write_all(&[tag])?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(name.as_bytes())
    }

    /// `f`: the snapshot the target image must have for the diff to apply.
    pub fn from_snap(&mut self, name: &str) -> std::io::Result<()> {
        self.name(b'f', name)
    }

    /// `t`: the snapshot `rbd import-diff` creates once it has applied it.
    pub fn to_snap(&mut self, name: &str) -> std::io::Result<()> {
        self.name(b't', name)
    }

    /// `s`: the image size at the end (the target is resized to it).
    pub fn size(&mut self, size: u64) -> std::io::Result<()> {
        self.out.write_all(b"s")?;
        self.out.write_all(&size.to_le_bytes())
    }

    /// `w`: `data` at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.out.write_all(b"w")?;
        self.out.write_all(&offset.to_le_bytes())?;
        self.out.write_all(&(data.len() as u64).to_le_bytes())?;
        self.out.write_all(data)
    }

    /// `z`: `[offset, offset + len)` reads as zeros.
    pub fn zero(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.out.write_all(b"z")?;
        self.out.write_all(&offset.to_le_bytes())?;
        self.out.write_all(&len.to_le_bytes())
    }

    /// `e`, and the writer back.
    pub fn end(mut self) -> std::io::Result<W> {
        self.out.write_all(b"e")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_laid_out_as_rbd_writes_them() {
        let mut w = DiffWriter::new(Vec::new()).unwrap();
        w.from_snap("a").unwrap();
        w.to_snap("bc").unwrap();
        w.size(0x1000).unwrap();
        w.write(2, &[9, 8]).unwrap();
        w.zero(4, 5).unwrap();
        let out = w.end().unwrap();
        let mut want = b"rbd diff v1\n".to_vec();
        want.extend([b'f', 1, 0, 0, 0, b'a']);
        want.extend([b't', 2, 0, 0, 0, b'b', b'c']);
        want.extend([b's', 0, 0x10, 0, 0, 0, 0, 0, 0]);
        want.extend([b'w', 2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9, 8]);
        want.extend([b'z', 4, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
        want.push(b'e');
        assert_eq!(out, want);
    }
}
