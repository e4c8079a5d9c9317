//! A small pool of data buffers shared by the stages of a pipeline.
//!
//! Backups and restores move multi-MiB buffers from a reading thread to a
//! writing one. Allocating each afresh costs page faults (the kernel zeroes
//! every page) and lets the allocator keep freed memory per thread; handing
//! buffers back instead keeps memory at the pipeline's depth and the pages
//! warm. The pool is bounded: buffers beyond its capacity are freed.
//! Its buffers are [`AlignedBuf`]s, so any of them can be written with
//! `O_DIRECT` as it is.

pub mod aligned;

pub use aligned::AlignedBuf;
use crossbeam_channel::{bounded, Receiver, Sender};

/// A clone is another handle to the same pool.
#[derive(Clone)]
pub struct BufferPool {
    tx: Sender<AlignedBuf>,
    rx: Receiver<AlignedBuf>,
}

impl BufferPool {
    /// A pool keeping at most `capacity` idle buffers.
    pub fn new(capacity: usize) -> BufferPool {
        let (tx, rx) = bounded(capacity.max(1));
        BufferPool { tx, rx }
    }

    /// An idle buffer, or a new one with room for `capacity` bytes.
    fn take(&self, capacity: usize) -> AlignedBuf {
        self.rx
            .try_recv()
            .unwrap_or_else(|_| AlignedBuf::with_capacity(capacity))
    }

    /// A zeroed buffer of `len` bytes, reused when one is idle.
    pub fn get(&self, len: usize) -> AlignedBuf {
        let mut v = self.take(len);
        v.clear();
        v.resize(len);
        v
    }

    /// A buffer of `len` bytes for a read that overwrites all of them
    /// (see [`AlignedBuf::resize_to_fill`]).
    pub fn get_to_fill(&self, len: usize) -> AlignedBuf {
        let mut v = self.take(len);
        v.resize_to_fill(len);
        v
    }

    /// An empty buffer with room for `capacity` bytes.
    pub fn get_empty(&self, capacity: usize) -> AlignedBuf {
        let mut v = self.take(capacity);
        v.clear();
        v.reserve(capacity);
        v
    }

    /// How many idle buffers it holds.
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.rx.len()
    }

    /// Returns a buffer for reuse (freed if the pool is full).
    pub fn put(&self, v: AlignedBuf) {
        let _ = self.tx.try_send(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_zeroed_and_bounded() {
        let pool = BufferPool::new(1);
        let mut a = pool.get(8);
        a[0] = 7;
        let ptr = a.as_ptr();
        pool.put(a);
        pool.put(AlignedBuf::from_slice(&[1; 8])); // pool full: freed
        let b = pool.get(4);
        assert_eq!(b.as_ptr(), ptr);
        assert_eq!(b, [0; 4][..]);
        assert_eq!(pool.get(3), [0; 3][..]);
    }
}
