//! Restoring into a byte stream (`rbdelta export -`, piped into
//! `rbd import -` or `qemu-img convert`): the raw image front to back,
//! holes written out as zeros, since a pipe cannot seek.
//!
//! Every block is verified before it is written, but a stream cannot be
//! taken back: a restore that fails half-way (a bad block, a full pipe
//! reader gone) leaves its reader with a short stream and exits non-zero,
//! so pipelines must check the exit status (`set -o pipefail`).

use std::io::Write;

use super::RestoreTarget;
use crate::buffers::AlignedBuf;
use crate::error::{Error, Result};

/// Zeros written per call while filling a hole.
const ZEROS: usize = 1 << 20;

pub struct StreamTarget<W: Write> {
    out: W,
    /// Where the next byte goes: everything before it is written.
    pos: u64,
    size: u64,
    name: String,
}

impl<W: Write> StreamTarget<W> {
    /// A stream of an image of `size` bytes into `out`, called `name` in
    /// messages.
    pub fn new(out: W, size: u64, name: &str) -> StreamTarget<W> {
        StreamTarget {
            out,
            pos: 0,
            size,
            name: name.to_string(),
        }
    }

    /// Writes zeros up to `to`.
    fn fill(&mut self, to: u64) -> Result<()> {
        static ZERO: [u8; ZEROS] = [0; ZEROS];
        while self.pos < to {
            let n = (to - self.pos).min(ZEROS as u64) as usize;
            self.put(&ZERO[..n])?;
        }
        Ok(())
    }

    fn put(&mut self, data: &[u8]) -> Result<()> {
        self.out
            .write_all(data)
            .map_err(|e| Error::Invalid(format!("writing {}: {e}", self.name)))?;
        self.pos += data.len() as u64;
        Ok(())
    }
}

impl<W: Write> RestoreTarget for StreamTarget<W> {
    fn is_fresh(&self) -> bool {
        true // holes are filled here, in order
    }

    fn write(&mut self, offset: u64, data: AlignedBuf) -> Result<Option<AlignedBuf>> {
        if offset < self.pos {
            return Err(Error::Invalid(format!(
                "{}: a write at {offset} after byte {} (a stream only goes forward)",
                self.name, self.pos
            )));
        }
        self.fill(offset)?;
        self.put(&data)?;
        Ok(Some(data))
    }

    fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        self.fill(offset.max(self.pos))?;
        self.fill(offset + len)
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let size = self.size;
        self.fill(size)?;
        self.out
            .flush()
            .map_err(|e| Error::Invalid(format!("writing {}: {e}", self.name)))
    }

    fn abort(self: Box<Self>) -> Option<String> {
        Some(format!(
            "{} is incomplete ({} of {} bytes written)",
            self.name, self.pos, self.size
        ))
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_become_zeros_and_the_stream_ends_at_the_size() {
        let mut t = Box::new(StreamTarget::new(Vec::new(), 10, "test"));
        t.write(2, AlignedBuf::from_slice(&[1, 2])).unwrap();
        t.zero(4, 2).unwrap();
        t.write(7, AlignedBuf::from_slice(&[3])).unwrap();
        assert!(
            t.write(5, AlignedBuf::from_slice(&[9])).is_err(),
            "backwards"
        );
        let out = {
            let mut t = t;
            t.fill(10).unwrap();
            t.out
        };
        assert_eq!(out, [0, 0, 1, 2, 0, 0, 0, 3, 0, 0]);
        let t = Box::new(StreamTarget::new(Vec::new(), 3 << 20, "test"));
        t.finish().unwrap();
    }
}
