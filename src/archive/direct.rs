//! What `O_DIRECT` I/O needs: buffers, offsets and lengths aligned to
//! [`ALIGN`], and a second descriptor of an open file that bypasses the
//! page cache.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;

use crate::error::{Error, Result};

/// The alignment of buffers, offsets and lengths for direct reads: the
/// logical block size of any disk rbdelta expects to sit on.
pub const ALIGN: usize = 4096;

/// A second descriptor of `file` (the same inode, even if its name has
/// since been unlinked) that reads, or with `write` writes, with
/// `O_DIRECT`; or the filesystem's refusal.
pub fn reopen(file: &File, write: bool) -> std::io::Result<File> {
    if crate::fault::direct_refused() {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Reads `len` bytes at `offset` of `file` (a direct descriptor from
/// [`reopen`], at `path`) into `buf`, which ends up `len` long. From an
/// aligned offset they go straight in, whatever `len` (the read is rounded
/// up into the buffer's capacity and may end at the end of the file).
pub fn read_into(
    file: &File,
    path: &Path,
    buf: &mut AlignedBuf,
    offset: u64,
    len: usize,
) -> Result<()> {
    let rounded = len.div_ceil(ALIGN) * ALIGN;
    if offset % ALIGN as u64 != 0 || rounded > buf.capacity() {
        buf.set_len(len.min(buf.capacity()));
        if buf.len() < len {
            *buf = AlignedBuf::zeroed(len);
        }
        return read_at(file, path, buf, offset);
    }
    if let Some(e) = crate::fault::read_fault(path) {
        return Err(Error::io(path, e));
    }
    buf.set_len(rounded);
    fill(file, path, buf, offset, len)?;
    buf.set_len(len);
    Ok(())
}

/// Fills `buf` from `file` (a descriptor from [`reopen`], at `path`) at
/// `offset`. An aligned request goes straight into `buf`; any other
/// bounces through an aligned copy of the enclosing aligned range.
pub fn read_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    if let Some(e) = crate::fault::read_fault(path) {
        return Err(Error::io(path, e));
    }
    let a = ALIGN as u64;
    if (buf.as_ptr() as usize) % ALIGN == 0 && offset % a == 0 && buf.len() % ALIGN == 0 {
        return fill(file, path, buf, offset, buf.len());
    }
    let lo = offset / a * a;
    let hi = (offset + buf.len() as u64).div_ceil(a) * a;
    let mut bounce = AlignedBuf::zeroed((hi - lo) as usize);
    let skip = (offset - lo) as usize;
    // the aligned range may run past the end of the file: only the
    // requested part must be there
    fill(file, path, &mut bounce, lo, skip + buf.len())?;
    buf.copy_from_slice(&bounce[skip..skip + buf.len()]);
    Ok(())
}

/// Reads into `buf` at `offset` until at least `need` bytes are in (the
/// rest may lie past the end of the file).
fn fill(file: &File, path: &Path, buf: &mut [u8], offset: u64, need: usize) -> Result<()> {
    let mut got = 0;
    while got < need {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => {
                return Err(Error::io(
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("the file ends before byte {}", offset + need as u64),
                    ),
                ))
            }
            // a short direct read ends at the end of the file; asking
            // again at an unaligned offset would be refused
            Ok(n) if n % ALIGN != 0 && got + n < need => {
                return Err(Error::io(
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("the file ends before byte {}", offset + need as u64),
                    ),
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Ok(())
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

    /// Aligned and unaligned reads, and ones that end at an unaligned end
    /// of the file, return the file's bytes; one past the end is an error.
    #[test]
    fn direct_reads_return_the_files_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3 * ALIGN + 123).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let Ok(direct) = reopen(&file, false) else {
            return; // refused here: callers read through the cache
        };
        let mut b = AlignedBuf::zeroed(4 * ALIGN);
        for (off, len) in [
            (ALIGN, 2 * ALIGN),
            (0, 3 * ALIGN + 123),
            (2 * ALIGN, ALIGN + 100),
            (5, 300),
        ] {
            read_into(&direct, &path, &mut b, off as u64, len).unwrap();
            assert_eq!(&b[..], &data[off..off + len], "at {off}+{len}");
        }
        for (off, len) in [
            (1, 10),
            (ALIGN - 3, 9),
            (3 * ALIGN, 123),
            (100, 3 * ALIGN + 23),
        ] {
            let mut buf = vec![0u8; len];
            read_at(&direct, &path, &mut buf, off as u64).unwrap();
            assert_eq!(buf, data[off..off + len], "at {off}+{len}");
        }
        assert!(read_into(&direct, &path, &mut b, 3 * ALIGN as u64, 200).is_err());
        let mut buf = vec![0u8; 200];
        assert!(read_at(&direct, &path, &mut buf, 3 * ALIGN as u64).is_err());
    }
}
