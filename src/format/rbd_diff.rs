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
//! rbdelta writes v1 only (never v2, which adds per-record lengths), and
//! reads v1 with [`DiffReader`], strictly: metadata first, data records in
//! ascending, non-overlapping order inside the image, then `e` and nothing
//! after it. Anything else is an error naming the stream.

use std::io::{Read, Write};

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

/// What a stream says before its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffHeader {
    /// The snapshot the diff applies to (None: from an empty image).
    pub from: Option<String>,
    pub to: String,
    /// The image size at the end.
    pub size: u64,
}

/// One data record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Write { offset: u64, data: Vec<u8> },
    Zero { offset: u64, len: u64 },
}

/// Longest snapshot name accepted (rbd's own limit is far below).
const MAX_NAME: u32 = 4096;
/// Largest `w` record accepted in memory (rbd writes at most an object).
pub const MAX_WRITE: u64 = 64 << 20;

/// Reads one v1 stream, checking it as it goes.
pub struct DiffReader<R: Read> {
    input: R,
    name: String,
    pub header: DiffHeader,
    /// End of the last data record: the next must start at or after it.
    pos: u64,
    done: bool,
}

impl<R: Read> DiffReader<R> {
    /// Reads the magic and the metadata records; `name` names the stream
    /// in errors.
    pub fn new(mut input: R, name: &str) -> Result<(DiffReader<R>, Option<Record>), String> {
        let bad = |m: String| format!("{name}: {m}");
        let mut magic = [0u8; 12];
        read_exact(&mut input, &mut magic).map_err(|e| bad(format!("{e} (no rbd diff header)")))?;
        if magic != MAGIC_V1 {
            return Err(bad("not an rbd diff v1 stream (wrong magic)".into()));
        }
        let mut r = DiffReader {
            input,
            name: name.to_string(),
            header: DiffHeader {
                from: None,
                to: String::new(),
                size: 0,
            },
            pos: 0,
            done: false,
        };
        let (mut to, mut size) = (None, None);
        loop {
            let tag = r.u8()?;
            match tag {
                b'f' if r.header.from.is_none() && to.is_none() && size.is_none() => {
                    r.header.from = Some(r.name_field()?)
                }
                b't' if to.is_none() => to = Some(r.name_field()?),
                b's' if size.is_none() => size = Some(r.u64()?),
                b'w' | b'z' | b'e' => {
                    let (Some(t), Some(s)) = (to.take(), size) else {
                        return Err(r.bad("data before the end snapshot and the size"));
                    };
                    r.header.to = t;
                    r.header.size = s;
                    let first = r.record(tag)?;
                    return Ok((r, first));
                }
                b'f' | b't' | b's' => {
                    return Err(r.bad(&format!("a second or misplaced '{}' record", tag as char)))
                }
                _ => return Err(r.bad(&format!("unknown record tag 0x{tag:02x}"))),
            }
        }
    }

    /// The stream being read (positioned after the last record returned).
    pub fn input(&self) -> &R {
        &self.input
    }

    /// The next data record; None after `e`.
    pub fn next_record(&mut self) -> Result<Option<Record>, String> {
        if self.done {
            return Ok(None);
        }
        let tag = self.u8()?;
        self.record(tag)
    }

    fn record(&mut self, tag: u8) -> Result<Option<Record>, String> {
        match tag {
            b'e' => {
                let mut extra = [0u8; 1];
                if matches!(self.input.read(&mut extra), Ok(n) if n > 0) {
                    return Err(self.bad("bytes after the end record"));
                }
                self.done = true;
                Ok(None)
            }
            b'w' | b'z' => {
                let (offset, len) = (self.u64()?, self.u64()?);
                let end = offset
                    .checked_add(len)
                    .filter(|&e| e <= self.header.size)
                    .ok_or_else(|| {
                        self.bad(&format!(
                            "a record at {offset} of {len} bytes goes past the image end ({})",
                            self.header.size
                        ))
                    })?;
                if offset < self.pos {
                    return Err(self.bad(&format!(
                        "a record at {offset} overlaps or precedes the one before (ending at {})",
                        self.pos
                    )));
                }
                self.pos = end;
                if tag == b'z' {
                    return Ok(Some(Record::Zero { offset, len }));
                }
                if len > MAX_WRITE {
                    return Err(self.bad(&format!(
                        "a write record of {len} bytes (at most {MAX_WRITE})"
                    )));
                }
                // grown as the bytes come: a record that claims more than
                // the stream holds costs no more memory than the stream
                let mut data = Vec::with_capacity(len.min(64 << 10) as usize);
                (&mut self.input)
                    .take(len)
                    .read_to_end(&mut data)
                    .map_err(|e| self.bad(&e.to_string()))?;
                if (data.len() as u64) < len {
                    return Err(self.bad("the stream ends early (truncated)"));
                }
                Ok(Some(Record::Write { offset, data }))
            }
            b'f' | b't' | b's' => Err(self.bad(&format!(
                "a '{}' record among the data records",
                tag as char
            ))),
            _ => Err(self.bad(&format!("unknown record tag 0x{tag:02x}"))),
        }
    }

    fn bad(&self, m: &str) -> String {
        format!("{}: {m}", self.name)
    }

    fn u8(&mut self) -> Result<u8, String> {
        let mut b = [0u8; 1];
        read_exact(&mut self.input, &mut b).map_err(|e| self.bad(&e))?;
        Ok(b[0])
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        read_exact(&mut self.input, &mut b).map_err(|e| self.bad(&e))?;
        Ok(u64::from_le_bytes(b))
    }

    fn name_field(&mut self) -> Result<String, String> {
        let mut b = [0u8; 4];
        read_exact(&mut self.input, &mut b).map_err(|e| self.bad(&e))?;
        let len = u32::from_le_bytes(b);
        if len == 0 || len > MAX_NAME {
            return Err(self.bad(&format!("a snapshot name of {len} bytes")));
        }
        let mut name = vec![0u8; len as usize];
        read_exact(&mut self.input, &mut name).map_err(|e| self.bad(&e))?;
        String::from_utf8(name).map_err(|_| self.bad("a snapshot name that is not UTF-8"))
    }
}

/// `read_exact`, with a short stream called what it is.
fn read_exact(input: &mut impl Read, buf: &mut [u8]) -> Result<(), String> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "the stream ends early (truncated)".to_string(),
        _ => e.to_string(),
    })
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
        // and it reads back
        let (mut r, first) = DiffReader::new(&out[..], "t").unwrap();
        assert_eq!(
            r.header,
            DiffHeader {
                from: Some("a".into()),
                to: "bc".into(),
                size: 0x1000
            }
        );
        assert_eq!(
            first,
            Some(Record::Write {
                offset: 2,
                data: vec![9, 8]
            })
        );
        assert_eq!(
            r.next_record().unwrap(),
            Some(Record::Zero { offset: 4, len: 5 })
        );
        assert_eq!(r.next_record().unwrap(), None);
    }

    fn stream(records: impl FnOnce(&mut DiffWriter<Vec<u8>>)) -> Vec<u8> {
        let mut w = DiffWriter::new(Vec::new()).unwrap();
        w.to_snap("s").unwrap();
        w.size(100).unwrap();
        records(&mut w);
        w.end().unwrap()
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Record>, String> {
        let (mut r, first) = DiffReader::new(bytes, "x.diff")?;
        let mut out: Vec<Record> = first.into_iter().collect();
        while let Some(rec) = r.next_record()? {
            out.push(rec);
        }
        Ok(out)
    }

    #[test]
    fn bad_streams_are_refused_naming_the_stream() {
        let good = stream(|w| w.write(10, &[1; 10]).unwrap());
        assert_eq!(read_all(&good).unwrap().len(), 1);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 3].to_vec(), "truncated"),
            ([b"rbd diff v2\n", &good[12..]].concat(), "wrong magic"),
            (
                stream(|w| w.write(95, &[1; 10]).unwrap()),
                "past the image end",
            ),
            (
                stream(|w| w.zero(u64::MAX, 2).unwrap()),
                "past the image end",
            ),
            (
                stream(|w| {
                    w.write(50, &[1; 10]).unwrap();
                    w.zero(40, 5).unwrap()
                }),
                "precedes",
            ),
            ([&good[..], b"x"].concat(), "after the end"),
            (
                [&good[..good.len() - 1], b"q"].concat(),
                "unknown record tag",
            ),
        ];
        for (bytes, want) in cases {
            let e = read_all(&bytes).unwrap_err();
            assert!(e.starts_with("x.diff: ") && e.contains(want), "{want}: {e}");
        }
    }
}
