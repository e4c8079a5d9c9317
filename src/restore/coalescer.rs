//! Merges a restore's adjacent data (and zero) ranges into write pieces.

use super::reader::{Piece, MAX_CHUNK};
use crate::buffers::{AlignedBuf, BufferPool};
use crate::error::Result;

/// Merges adjacent data (and zero) ranges into pieces of up to [`MAX_CHUNK`]
/// (data buffers from `pool`), handed to `emit` in order.
pub struct Coalescer<'e> {
    emit: &'e mut dyn FnMut(Piece) -> Result<()>,
    pool: &'e BufferPool,
    send_zeros: bool,
    data: Option<(u64, AlignedBuf)>,
    zeros: Option<(u64, u64)>,
}

impl<'e> Coalescer<'e> {
    /// Zero ranges are dropped unless `send_zeros`.
    pub fn new(
        emit: &'e mut dyn FnMut(Piece) -> Result<()>,
        pool: &'e BufferPool,
        send_zeros: bool,
    ) -> Coalescer<'e> {
        Coalescer {
            emit,
            pool,
            send_zeros,
            data: None,
            zeros: None,
        }
    }

    pub fn data(&mut self, offset: u64, d: &[u8]) -> Result<()> {
        self.flush_zeros()?;
        if let Some((start, v)) = &mut self.data {
            if *start + v.len() as u64 == offset && v.len() + d.len() <= MAX_CHUNK {
                v.extend_from_slice(d);
                return Ok(());
            }
        }
        self.flush_data()?;
        let mut v = self.pool.get_empty(MAX_CHUNK);
        v.extend_from_slice(d);
        self.data = Some((offset, v));
        Ok(())
    }

    /// Emits `data` at `offset` as it is (a buffer the caller filled);
    /// what was gathered before goes first.
    pub fn data_owned(&mut self, offset: u64, data: AlignedBuf) -> Result<()> {
        self.flush()?;
        (self.emit)(Piece::Data { offset, data })
    }

    /// Gives a read buffer whose bytes were copied on back to the pool.
    pub fn recycle(&self, buf: AlignedBuf) {
        self.pool.put(buf);
    }

    pub fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        self.flush_data()?;
        if !self.send_zeros {
            return Ok(());
        }
        match &mut self.zeros {
            Some((start, l)) if *start + *l == offset => *l += len,
            _ => {
                self.flush_zeros()?;
                self.zeros = Some((offset, len));
            }
        }
        Ok(())
    }

    fn flush_data(&mut self) -> Result<()> {
        match self.data.take() {
            Some((offset, data)) => (self.emit)(Piece::Data { offset, data }),
            None => Ok(()),
        }
    }

    fn flush_zeros(&mut self) -> Result<()> {
        match self.zeros.take() {
            Some((offset, len)) => (self.emit)(Piece::Zero { offset, len }),
            None => Ok(()),
        }
    }

    /// Emits what is still gathered; call at the end.
    pub fn flush(&mut self) -> Result<()> {
        self.flush_data()?;
        self.flush_zeros()
    }
}
