//! Restoring into a sparse raw file: written under a temporary name in the
//! destination directory and renamed into place only once complete and
//! fsynced, so a failed restore never leaves a half file under the real name
//! (see [`super::partial`] for what a killed one leaves).

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::{partial, RestoreTarget, TargetOptions};
use crate::archive::atomic::TempFile;
use crate::archive::direct_write::{self, DirectWriter};
use crate::buffers::{AlignedBuf, BufferPool};
use crate::error::{Error, IoContext, Result};

pub struct FileTarget {
    tmp: TempFile,
    dest: PathBuf,
    size: u64,
    keep_partial: bool,
    /// Direct writes, where the filesystem takes them; else the page cache.
    direct: Option<DirectWriter>,
    /// Writeback started up to here, and waited for up to here.
    started: u64,
    waited: u64,
}

/// Writeback is started every this many bytes written, so the final fsync
/// finds little left to do and dirty pages stay bounded.
const WRITEBACK_STEP: u64 = 32 << 20;

impl FileTarget {
    /// Prepares a restore of `size` bytes into `dest`. Refuses an existing
    /// `dest` unless `opts.force`. With `opts.keep_partial`, a failed
    /// restore keeps what it wrote as `<dest>.partial`.
    pub fn create(dest: &Path, size: u64, opts: &TargetOptions) -> Result<FileTarget> {
        let tmp = temp_beside(dest, opts.force)?;
        let direct = DirectWriter::or_cache(&tmp.file, &tmp.path);
        Ok(FileTarget {
            tmp,
            dest: dest.to_path_buf(),
            size,
            keep_partial: opts.keep_partial,
            direct,
            started: 0,
            waited: 0,
        })
    }
}

/// A temp file beside `dest`, to be renamed over it once complete. Refuses
/// an existing `dest` unless `force`, and first removes the temp files
/// dead processes left for the same `dest`.
pub fn temp_beside(dest: &Path, force: bool) -> Result<TempFile> {
    if dest.exists() && !force {
        return Err(Error::Invalid(format!(
            "{} already exists (use --force to replace it)",
            dest.display()
        )));
    }
    if dest.is_dir() {
        return Err(Error::Invalid(format!("{} is a directory", dest.display())));
    }
    let dir = crate::archive::atomic::dir_of(dest);
    let stem = dest
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("restore");
    partial::clear_files(dir, stem);
    TempFile::new_in(dir, stem)
}

impl FileTarget {
    /// Starts writing back what lies before `end` (restores write in
    /// ascending order), and waits for the step started before: the disk
    /// works while the restore reads, as `dd conv=fsync` cannot. Errors
    /// are left to the final fsync, which reports them.
    fn writeback(&mut self, end: u64) {
        if end < self.started + WRITEBACK_STEP {
            return;
        }
        let fd = self.tmp.file.as_raw_fd();
        // SAFETY: an open descriptor; the calls only schedule and wait
        // for writeback of the given range.
        unsafe {
            libc::sync_file_range(
                fd,
                self.started as i64,
                (end - self.started) as i64,
                libc::SYNC_FILE_RANGE_WRITE,
            );
            if self.waited < self.started {
                libc::sync_file_range(
                    fd,
                    self.waited as i64,
                    (self.started - self.waited) as i64,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
            }
        }
        self.waited = self.started;
        self.started = end;
    }
}

impl RestoreTarget for FileTarget {
    fn is_fresh(&self) -> bool {
        true
    }

    fn write(&mut self, offset: u64, data: AlignedBuf) -> Result<Option<AlignedBuf>> {
        let cached = !self.direct.as_ref().is_some_and(|d| d.takes(offset));
        let end = offset + data.len() as u64;
        let back = direct_write::write_owned_at(
            &mut self.direct,
            &self.tmp.file,
            &self.tmp.path,
            offset,
            data,
        )?;
        if cached {
            self.writeback(end);
        }
        Ok(back)
    }

    fn recycle_into(&mut self, pool: &BufferPool) {
        if let Some(d) = &self.direct {
            d.recycle_into(pool);
        }
    }

    fn zero(&mut self, _offset: u64, _len: u64) -> Result<()> {
        Ok(()) // a new file reads as zeros
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let mut this = *self;
        if let Some(d) = this.direct.take() {
            d.finish()?;
        }
        // (also cuts the zeros a direct write padded its last block with)
        this.tmp.file.set_len(this.size).at(&this.tmp.path)?;
        this.tmp.persist(&this.dest)
    }

    fn abort(mut self: Box<Self>) -> Option<String> {
        if let Some(d) = self.direct.take() {
            let _ = d.finish(); // what was queued is written, or failed
        }
        if !self.keep_partial {
            return None; // dropping the TempFile removes it
        }
        let kept = partial::kept_file(&self.dest);
        Some(match self.tmp.persist(&kept) {
            Ok(()) => format!(
                "the partial file was kept as {} (--keep-partial)",
                kept.display()
            ),
            Err(e) => format!("the partial file could not be kept: {e}"),
        })
    }

    fn describe(&self) -> String {
        format!("file {}", self.dest.display())
    }
}
