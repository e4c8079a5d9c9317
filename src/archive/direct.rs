//! What `O_DIRECT` I/O needs: buffers, offsets and lengths aligned to
//! [`ALIGN`], and a second descriptor of an open file that bypasses the
//! page cache.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::ptr::NonNull;

/// The alignment of buffers, offsets and lengths for direct reads: the
/// logical block size of any disk rbdelta expects to sit on.
pub const ALIGN: usize = 4096;

/// A second descriptor of `file` (the same inode, even if its name has
/// since been unlinked) that writes with `O_DIRECT`; or the filesystem's
/// refusal.
pub fn reopen(file: &File) -> std::io::Result<File> {
    if crate::fault::direct_refused() {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// A zero-initialised heap buffer aligned to [`ALIGN`], for direct I/O.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads through &[u8].
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` zero bytes (the allocation is rounded up to [`ALIGN`]).
    pub fn zeroed(len: usize) -> AlignedBuf {
        let cap = len.div_ceil(ALIGN).max(1) * ALIGN;
        let layout = Layout::from_size_align(cap, ALIGN).expect("a sane buffer size");
        // SAFETY: a non-zero size with a valid alignment.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len, layout }
    }

    /// How many bytes it can hold without a new allocation.
    pub fn capacity(&self) -> usize {
        self.layout.size()
    }

    /// Sets the length (at most the capacity); bytes keep what they held.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity(), "AlignedBuf::set_len past capacity");
        self.len = len;
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid and initialised for capacity >= len bytes.
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
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_zeroed() {
        for len in [1, ALIGN - 1, ALIGN, 3 * ALIGN + 5] {
            let mut b = AlignedBuf::zeroed(len);
            assert_eq!(b.as_ptr() as usize % ALIGN, 0);
            assert_eq!(b.len(), len);
            assert!(b.capacity() >= len && b.capacity() % ALIGN == 0);
            assert!(b.iter().all(|&x| x == 0));
            b.set_len(b.capacity());
            b[0] = 1;
        }
    }
}
