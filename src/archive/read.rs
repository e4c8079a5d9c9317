//! Reads of archive data (blocks of fulls and deltas) for restores,
//! verifies, mounts, merges and synthetic fulls all go through
//! [`read_at`], so an error names the file, and fault-injection tests can
//! make any of them fail with EIO ([`crate::fault::read_fault`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Fills `buf` from `file` (at `path`) at `offset`.
pub fn read_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    if let Some(e) = crate::fault::read_fault(path) {
        return Err(crate::error::Error::io(path, e));
    }
    file.read_exact_at(buf, offset).at(path)
}

/// How far ahead of a forward reader the kernel is asked to read.
const READAHEAD_WINDOW: u64 = 64 << 20;
/// The size of each request for it.
const READAHEAD_STEP: u64 = 4 << 20;

/// Keeps the kernel reading [`READAHEAD_WINDOW`] bytes ahead of a reader
/// that moves forward through a file (`POSIX_FADV_WILLNEED`, which queues
/// the reads without waiting for them). The kernel's own readahead keeps
/// about one request in flight; a virtual disk often serves several at
/// once far faster: a cold 2 GiB full read in 1.5 s instead of 3 to 5.6 s
/// on this project's machines.
///
/// A bulk reader that reads each byte once (restore, verify, export) also
/// drops what it left [`DROP_LAG`] behind from the cache
/// (`POSIX_FADV_DONTNEED`, [`Readahead::dropping_behind`]), so reading a
/// 2 GiB revision does not evict the backup host's working set.
#[derive(Debug, Default, Clone)]
pub struct Readahead {
    advised: u64,
    /// Where the last read ended (None before the first).
    last_end: Option<u64>,
    /// Whether pages behind the reader are dropped, and up to where.
    drop_behind: bool,
    /// How far behind the reader they are dropped.
    lag: u64,
    dropped: u64,
    /// The last data region the file system reported, `[start, end)`:
    /// asking again costs a round trip on FUSE (ceph-fuse: about 70 µs
    /// per `lseek`, and it reports no holes, so one answer covers the
    /// whole file).
    region: Option<(u64, u64)>,
}

/// How far behind a forward reader its pages are dropped: reads a little
/// out of order still find theirs.
const DROP_LAG: u64 = 16 << 20;

/// A read that starts within this distance of where the last one ended
/// counts as sequential (FUSE may reorder a few requests; a restore skips
/// zero blocks).
const SEQUENTIAL_SLACK: u64 = 8 << 20;

impl Readahead {
    /// For a reader that reads each byte once: also drops the pages it
    /// left behind.
    pub fn dropping_behind() -> Readahead {
        Readahead::dropping_behind_by(0)
    }

    /// The same for a caller that plans reads which others make up to
    /// `behind` bytes after it: their pages are dropped only once behind
    /// the slowest of them.
    pub fn dropping_behind_by(behind: u64) -> Readahead {
        Readahead {
            drop_behind: true,
            lag: DROP_LAG + behind,
            ..Readahead::default()
        }
    }

    /// Call before reading `[offset, offset + len)` of `file`. Only a
    /// reader that goes on from where it was gets the kernel reading
    /// ahead: scattered reads (random reads through a mount, an in-place
    /// restore's few blocks) would only make the disk read what nobody
    /// wants.
    pub fn before(&mut self, file: &File, offset: u64, len: u64) {
        let sequential = self
            .last_end
            .is_some_and(|end| offset.abs_diff(end) <= SEQUENTIAL_SLACK);
        self.last_end = Some(offset + len);
        if !sequential {
            self.advised = offset + len;
            return;
        }
        self.advised = self.advised.max(offset);
        let behind = offset.saturating_sub(self.lag);
        if self.drop_behind && behind >= self.dropped + READAHEAD_STEP {
            advise(file, self.dropped, behind, libc::POSIX_FADV_DONTNEED);
            self.dropped = behind;
        }
        let want = offset + len + READAHEAD_WINDOW;
        if want < self.advised + READAHEAD_STEP {
            return; // the window lacks less than a step: advice in steps
        }
        while self.advised < want {
            // Only the file's data: advice over a hole of a sparse full
            // makes the kernel allocate and zero pages nobody reads.
            // (a filesystem that cannot tell says all is data)
            let (data, hole) = match self.region_at(file, self.advised) {
                Some((d, h)) if d < want => (d.max(self.advised), h),
                _ => {
                    self.advised = want; // no data before `want`
                    break;
                }
            };
            let end = hole.min(data + READAHEAD_STEP).min(want.max(data + 1));
            advise(file, data, end, libc::POSIX_FADV_WILLNEED);
            self.advised = end;
        }
    }

    /// The data region at or after `pos`, from the last answer if it
    /// covers `pos`; a file system that cannot tell says all is data.
    fn region_at(&mut self, file: &File, pos: u64) -> Option<(u64, u64)> {
        if let Some((d, h)) = self.region {
            if d <= pos && pos < h {
                return Some((pos, h));
            }
        }
        let r = match crate::archive::sparse::next_data(file, pos, u64::MAX) {
            Ok(r) => r,
            Err(_) => Some((pos, u64::MAX)),
        };
        self.region = r;
        r
    }
}

/// Gives the kernel `advice` about `[from, to)` of `file`; failures ignored.
fn advise(file: &File, from: u64, to: u64, advice: libc::c_int) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: an open descriptor; advice only.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            from as libc::off_t,
            (to - from) as libc::off_t,
            advice,
        );
    }
}
