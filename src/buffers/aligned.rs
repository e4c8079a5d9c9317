//! The data buffer of every pipeline that moves image bytes: a byte vector
//! whose memory is aligned for `O_DIRECT`, so a buffer read from the
//! archive or from Ceph can go to a direct write as it is, with no copy
//! into an aligned one (a 2 GiB restore to a file spent a third of its
//! CPU on that copy).
//!
//! Buffers of [`MAP_MIN`] or more are mapped from the kernel directly
//! rather than taken from malloc: freed, they go back to the system at
//! once, so the process's memory is the buffers it holds. Through malloc,
//! 4 MiB buffers freed on one thread and allocated on another stayed in
//! its per-thread arenas: a full backup's peak RSS reached 273-281 MiB in
//! some runs, against 108-229 MiB with mapped buffers.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// The alignment of buffers, offsets and lengths for direct I/O: the
/// logical block size of any disk rbdelta expects to sit on.
pub const ALIGN: usize = 4096;

/// Buffers this large or larger are mapped, not taken from malloc.
pub const MAP_MIN: usize = 1 << 20;

/// A heap byte vector aligned to [`ALIGN`]; its capacity is a multiple of
/// it. Like a `Vec<u8>` it has a length and grows; unlike one, the bytes
/// between its length and its capacity are always initialised (zeroed when
/// allocated), which is what lets [`AlignedBuf::set_len`] be safe.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// Bytes allocated (0: nothing, `ptr` dangles).
    cap: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads through &[u8].
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// An empty buffer that allocates nothing.
    pub const fn new() -> AlignedBuf {
        AlignedBuf {
            // SAFETY: ALIGN is not zero; never dereferenced while cap is 0.
            ptr: unsafe { NonNull::new_unchecked(ALIGN as *mut u8) },
            len: 0,
            cap: 0,
        }
    }

    /// `len` zero bytes (the allocation is rounded up to [`ALIGN`]).
    pub fn zeroed(len: usize) -> AlignedBuf {
        let mut b = AlignedBuf::with_capacity(len.max(1));
        b.len = len;
        b
    }

    /// An empty buffer with room for `cap` bytes.
    pub fn with_capacity(cap: usize) -> AlignedBuf {
        if cap == 0 {
            return AlignedBuf::new();
        }
        let cap = cap.div_ceil(ALIGN) * ALIGN;
        let raw = if cap >= MAP_MIN {
            // SAFETY: a private anonymous mapping of `cap` bytes; the
            // kernel zeroes it and aligns it to a page (>= ALIGN).
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    cap,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                std::ptr::null_mut()
            } else {
                p.cast::<u8>()
            }
        } else {
            // SAFETY: a non-zero size with a valid alignment.
            unsafe { alloc_zeroed(layout(cap)) }
        };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout(cap)));
        AlignedBuf { ptr, len: 0, cap }
    }

    /// A copy of `data`.
    pub fn from_slice(data: &[u8]) -> AlignedBuf {
        let mut b = AlignedBuf::with_capacity(data.len());
        b.extend_from_slice(data);
        b
    }

    /// How many bytes it can hold without a new allocation.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Sets the length (at most the capacity); bytes keep what they held.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "AlignedBuf::set_len past capacity");
        self.len = len;
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Makes room for `additional` more bytes past the length.
    pub fn reserve(&mut self, additional: usize) {
        let need = self.len + additional;
        if need <= self.cap {
            return;
        }
        let mut grown = AlignedBuf::with_capacity(need.max(2 * self.cap));
        grown.len = self.len;
        grown.copy_from_slice(self);
        *self = grown;
    }

    /// Sets the length to `len`; bytes added are zeros, as with a `Vec`.
    pub fn resize(&mut self, len: usize) {
        if len > self.len {
            self.reserve(len - self.len);
            let old = self.len;
            self.len = len;
            self[old..].fill(0);
        } else {
            self.len = len;
        }
    }

    /// Sets the length to `len` for a read that overwrites every byte:
    /// bytes within the capacity keep whatever they held (no zeroing, the
    /// point of it: zeroing each 4 MiB buffer before a read was a sixth of
    /// a full backup's CPU), bytes past it are zeros.
    pub fn resize_to_fill(&mut self, len: usize) {
        if len <= self.cap {
            self.len = len;
        } else {
            self.resize(len);
        }
    }

    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.reserve(data.len());
        let old = self.len;
        self.len += data.len();
        self[old..].copy_from_slice(data);
    }
}

fn layout(cap: usize) -> Layout {
    Layout::from_size_align(cap, ALIGN).expect("a sane buffer size")
}

impl Default for AlignedBuf {
    fn default() -> AlignedBuf {
        AlignedBuf::new()
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> AlignedBuf {
        AlignedBuf::from_slice(self)
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

impl PartialEq for AlignedBuf {
    fn eq(&self, other: &AlignedBuf) -> bool {
        self[..] == other[..]
    }
}

impl PartialEq<[u8]> for AlignedBuf {
    fn eq(&self, other: &[u8]) -> bool {
        self[..] == *other
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid and initialised for cap >= len bytes (or
        // len is 0 and the dangling pointer is aligned and non-null).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.cap >= MAP_MIN {
            // SAFETY: mapped in `with_capacity` with this length.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.cap) };
        } else if self.cap > 0 {
            // SAFETY: allocated in `with_capacity` with this layout.
            unsafe { dealloc(self.ptr.as_ptr(), layout(self.cap)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_zeroed() {
        for len in [1, ALIGN - 1, ALIGN, 3 * ALIGN + 5, MAP_MIN, 4 * MAP_MIN + 1] {
            let mut b = AlignedBuf::zeroed(len);
            assert_eq!(b.as_ptr() as usize % ALIGN, 0);
            assert_eq!(b.len(), len);
            assert!(b.capacity() >= len && b.capacity() % ALIGN == 0);
            assert!(b.iter().all(|&x| x == 0));
            b.set_len(b.capacity());
            b[0] = 1;
        }
    }

    /// Growing keeps the bytes and the alignment; resizing zeroes what it
    /// adds, even over bytes an earlier, longer length held.
    #[test]
    fn grows_like_a_vec() {
        let mut b = AlignedBuf::new();
        assert!(b.is_empty() && b.capacity() == 0);
        let data: Vec<u8> = (0..3 * ALIGN + 7).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(1000) {
            b.extend_from_slice(piece);
        }
        assert_eq!(b, *data.as_slice());
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        b.truncate(10);
        b.resize(20);
        assert_eq!(&b[..10], &data[..10]);
        assert!(b[10..].iter().all(|&x| x == 0));
        b.resize_to_fill(12);
        assert_eq!(&b[..10], &data[..10], "kept, not zeroed");
        b.clear();
        assert!(b.is_empty());
        b.resize_to_fill(b.capacity() + 1);
        assert!(b.iter().all(|&x| x == 0), "grown: zeros");
        b.clear();
        assert_eq!(b.clone(), AlignedBuf::new());
    }
}
