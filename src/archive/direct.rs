//! What `O_DIRECT` I/O needs: buffers, offsets and lengths aligned to
//! [`ALIGN`] ([`AlignedBuf`]), and a second descriptor of an open file
//! that bypasses the page cache.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;

pub use crate::buffers::aligned::{AlignedBuf, ALIGN};

/// A second descriptor of `file` (the same inode, even if its name has
/// since been unlinked) that writes with `O_DIRECT`; or the filesystem's
/// refusal.
pub fn reopen(file: &File) -> std::io::Result<File> {
    reopen_as(file, OpenOptions::new().write(true))
}

/// The same for reading with `O_DIRECT`.
pub fn reopen_for_reading(file: &File) -> std::io::Result<File> {
    reopen_as(file, OpenOptions::new().read(true))
}

fn reopen_as(file: &File, opts: &mut OpenOptions) -> std::io::Result<File> {
    if crate::fault::direct_refused() {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    opts.custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
}
