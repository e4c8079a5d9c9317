//! An `rbd export-diff` file (rbd diff v1) applied over an archive
//! revision, as a block source: what `rbd import-diff` would make of that
//! revision, read without writing it anywhere. `rbdelta import` turns each
//! diff of a chain into a delta.
//!
//! [`DiffFile::scan`] reads the whole stream once and checks it (magic,
//! record order, records within the image, no truncation) before anything
//! is imported; it keeps only where each record's data lies in the file.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{Extent, SourceSnapshot};
use crate::buffers::{AlignedBuf, BufferPool};
use crate::error::{Error, IoContext, Result};
use crate::format::rbd_diff::{DiffHeader, DiffReader, Record};
use crate::mount::image::RevisionImage;

/// One data or zero record: image range and, for data, where its bytes
/// start in the file.
#[derive(Debug, Clone, Copy)]
struct Span {
    offset: u64,
    len: u64,
    data_at: Option<u64>,
}

/// A checked diff stream and its record map.
pub struct DiffFile {
    pub header: DiffHeader,
    path: PathBuf,
    file: File,
    spans: Vec<Span>,
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    at: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl DiffFile {
    /// Reads and checks all of `path`; a bad stream is an error naming it.
    pub fn scan(path: &Path) -> Result<DiffFile> {
        let file = File::open(path).at(path)?;
        let name = path.display().to_string();
        let input = Counting {
            inner: BufReader::with_capacity(1 << 20, file.try_clone().at(path)?),
            at: 0,
        };
        let (mut reader, mut next) = DiffReader::new(input, &name).map_err(Error::Invalid)?;
        let mut spans = Vec::new();
        while let Some(record) = next {
            spans.push(match record {
                Record::Zero { offset, len } => Span {
                    offset,
                    len,
                    data_at: None,
                },
                Record::Write { offset, data } => Span {
                    offset,
                    len: data.len() as u64,
                    data_at: Some(reader.input().at - data.len() as u64),
                },
            });
            next = reader.next_record().map_err(Error::Invalid)?;
        }
        Ok(DiffFile {
            header: reader.header.clone(),
            path: path.to_path_buf(),
            file,
            spans,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of data records.
    pub fn data_bytes(&self) -> u64 {
        self.spans
            .iter()
            .filter(|s| s.data_at.is_some())
            .map(|s| s.len)
            .sum()
    }
}

/// A diff applied over `base` (None: over an empty image).
pub struct DiffOverBase {
    pub diff: DiffFile,
    pub base: Option<RevisionImage>,
}

impl SourceSnapshot for DiffOverBase {
    fn name(&self) -> &str {
        &self.diff.header.to
    }

    fn size(&self) -> u64 {
        self.diff.header.size
    }

    fn changed_extents(&self, base: Option<&str>, _whole_object: bool) -> Result<Vec<Extent>> {
        if base != self.diff.header.from.as_deref() {
            return Err(Error::Invalid(format!(
                "{} applies to {}, not to {}",
                self.diff.path.display(),
                describe(self.diff.header.from.as_deref()),
                describe(base)
            )));
        }
        let mut out: Vec<Extent> = Vec::new();
        for s in self.diff.spans.iter().filter(|s| s.len > 0) {
            match out.last_mut() {
                Some(last) if last.end() == s.offset => last.len += s.len,
                _ => out.push(Extent::new(s.offset, s.len)),
            }
        }
        Ok(out)
    }

    fn read_extents(
        &self,
        extents: &[Extent],
        _depth: usize,
        pool: &BufferPool,
        sink: &mut dyn FnMut(Extent, AlignedBuf) -> Result<()>,
    ) -> Result<()> {
        let spans = &self.diff.spans;
        super::check_within(extents, self.size(), &self.diff.path.display())?;
        for &e in extents {
            let mut buf = pool.get(e.len as usize);
            // the base, cut to this image's size (past it: zeros)...
            let from_base = match &self.base {
                Some(b) => b.read_into(e.offset, &mut buf)?,
                None => 0,
            };
            buf[from_base..].fill(0);
            // ...under the diff's records
            let first = spans.partition_point(|s| s.offset + s.len <= e.offset);
            for s in spans[first..].iter().take_while(|s| s.offset < e.end()) {
                let (lo, hi) = (s.offset.max(e.offset), (s.offset + s.len).min(e.end()));
                let dst = &mut buf[(lo - e.offset) as usize..(hi - e.offset) as usize];
                match s.data_at {
                    None => dst.fill(0),
                    Some(at) => {
                        let pos = at + (lo - s.offset);
                        self.diff.file.read_exact_at(dst, pos).at(&self.diff.path)?;
                    }
                }
            }
            sink(e, buf)?;
        }
        Ok(())
    }
}

fn describe(snap: Option<&str>) -> String {
    match snap {
        Some(s) => format!("snapshot {s}"),
        None => "an empty image".into(),
    }
}
