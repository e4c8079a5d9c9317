//! Sparse files: finding data regions (`SEEK_DATA`/`SEEK_HOLE`) and
//! punching holes. Fulls are sparse images; verify, synthetic fulls and
//! repair all walk or mend them through here.

use std::fs::File;
use std::os::unix::io::AsRawFd;

/// The next data region at or after `pos` (SEEK_DATA / SEEK_HOLE).
pub fn next_data(file: &File, pos: u64, size: u64) -> std::io::Result<Option<(u64, u64)>> {
    let fd = file.as_raw_fd();
    // SAFETY: lseek on a valid descriptor; offsets are in range.
    let start = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
    if start < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
    if end < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some((start as u64, (end as u64).min(size))))
}

/// Makes `[offset, offset + len)` of `f` read as zeros, freeing the space
/// where the file system can punch holes (writing zeros where it cannot).
pub fn punch_hole(f: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    // SAFETY: fallocate on a valid descriptor with in-range values.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        return f.write_all_at(&vec![0u8; len as usize], offset);
    }
    Err(e)
}
