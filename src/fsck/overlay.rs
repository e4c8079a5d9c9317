//! A throwaway copy-on-write disk over a revision, for checkers that must
//! write (an ext4 journal replay, an XFS log replay by mount): one FUSE
//! file per partition, `part-N.img` (`part-0.img` for a disk without a
//! table), each reading its byte range of the revision (hash-checked,
//! through its chain) except where something wrote, writes going to one
//! sparse temporary file. There is no device-mapper on these hosts, so the
//! overlay lives in the FUSE layer. The archive is never written; the
//! temporary file goes with the [`Overlay`].
//!
//! The files belong to the sandbox's user (mode 0600, the kernel checking
//! modes), so a checker that dropped to `nobody` can open the one it is
//! handed; the mount point sits in the operator's private scratch
//! directory, so no other local user can reach it.

use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, ReplyWrite, Request,
    WriteFlags,
};

use super::layout::Part;
use crate::error::{Error, IoContext, Result};
use crate::mount::image::RevisionImage;

/// Pages of the overlay's written-page map.
const PAGE: u64 = 4096;
const TTL: Duration = Duration::from_secs(3600);
/// The inode of the first partition's file; the others follow.
const FIRST: u64 = 2;

/// A file of the overlay: a byte range of the disk.
#[derive(Debug, Clone)]
struct Window {
    name: String,
    start: u64,
    len: u64,
}

struct Cow {
    image: RevisionImage,
    upper: std::fs::File,
    upper_path: PathBuf,
    /// One bit per written page.
    written: Mutex<Vec<u64>>,
    files: Vec<Window>,
    uid: u32,
    gid: u32,
}

impl Cow {
    fn is_written(map: &[u64], page: u64) -> bool {
        map[(page / 64) as usize] & (1 << (page % 64)) != 0
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut out = self.image.read(offset, len)?;
        let map = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let end = offset + out.len() as u64;
        let mut page = offset / PAGE;
        while page * PAGE < end {
            if Self::is_written(&map, page) {
                let from = (page * PAGE).max(offset);
                let to = ((page + 1) * PAGE).min(end);
                let dst = &mut out[(from - offset) as usize..(to - offset) as usize];
                self.upper.read_exact_at(dst, from).at(&self.upper_path)?;
            }
            page += 1;
        }
        Ok(out)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<usize> {
        let size = self.image.size();
        if offset >= size {
            return Err(Error::Invalid("write past the end of the disk".into()));
        }
        let data = &data[..data.len().min((size - offset) as usize)];
        let end = offset + data.len() as u64;
        let mut map = self.written.lock().unwrap_or_else(|p| p.into_inner());
        // Pages written only in part get the rest of their bytes first.
        for page in [offset / PAGE, (end - 1) / PAGE] {
            if !Self::is_written(&map, page) {
                let base = self.image.read(page * PAGE, PAGE as usize)?;
                self.upper
                    .write_all_at(&base, page * PAGE)
                    .at(&self.upper_path)?;
                map[(page / 64) as usize] |= 1 << (page % 64);
            }
        }
        self.upper.write_all_at(data, offset).at(&self.upper_path)?;
        let mut page = offset / PAGE;
        while page * PAGE < end {
            map[(page / 64) as usize] |= 1 << (page % 64);
            page += 1;
        }
        Ok(data.len())
    }

    fn file(&self, ino: INodeNo) -> Option<&Window> {
        self.files
            .get(usize::try_from(ino.0.checked_sub(FIRST)?).ok()?)
    }

    fn attr(&self, ino: INodeNo) -> FileAttr {
        let dir = ino == INodeNo::ROOT;
        let size = self.file(ino).map_or(0, |w| w.len);
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if dir { 0o700 } else { 0o600 },
            nlink: if dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: PAGE as u32,
        }
    }
}

impl Filesystem for Cow {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self.files.iter().position(|w| name == w.name.as_str());
        match found {
            Some(i) if parent == INodeNo::ROOT => {
                let ino = INodeNo(FIRST + i as u64);
                reply.entry(&TTL, &self.attr(ino), Generation(0))
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT || self.file(ino).is_some() {
            reply.attr(&TTL, &self.attr(ino))
        } else {
            reply.error(Errno::ENOENT)
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let mut all = vec![
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
        ];
        for (i, w) in self.files.iter().enumerate() {
            all.push((INodeNo(FIRST + i as u64), FileType::RegularFile, &w.name));
        }
        crate::mount::fill_dir(reply, all, offset);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.file(ino).is_some() {
            reply.opened(FileHandle(0), FopenFlags::empty());
        } else {
            reply.error(Errno::EISDIR);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(w) = self.file(ino) else {
            return reply.error(Errno::EBADF);
        };
        let len = (size as u64).min(w.len.saturating_sub(offset)) as usize;
        match self.read(w.start + offset.min(w.len), len) {
            Ok(d) => reply.data(&d),
            Err(e) => {
                tracing::error!("fsck overlay: read of {} at {offset}: {e}", w.name);
                reply.error(Errno::EIO)
            }
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(w) = self.file(ino) else {
            return reply.error(Errno::EBADF);
        };
        if offset >= w.len {
            return reply.error(Errno::ENOSPC);
        }
        let data = &data[..data.len().min((w.len - offset) as usize)];
        match self.write(w.start + offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => {
                tracing::error!("fsck overlay: write of {} at {offset}: {e}", w.name);
                reply.error(Errno::EIO)
            }
        }
    }

    /// Checkers ask files for block-device ioctls (BLKGETSIZE and the
    /// like); a plain file has none, and says so without a log line.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    crate::mount::plain_file_answers!();
}

fn file_name(p: &Part) -> String {
    format!("part-{}.img", p.number)
}

/// A mounted overlay; unmounted and its temporary file removed on drop.
pub struct Overlay {
    session: Option<fuser::BackgroundSession>,
    dir: PathBuf,
}

impl Overlay {
    /// Serves each of `parts` of `image` as `<dir>/mnt/part-N.img`, owned
    /// by `owner` (uid, gid), writes going to `<dir>/upper` (sparse).
    /// `dir` must be a fresh private directory.
    pub fn mount(
        image: RevisionImage,
        parts: &[Part],
        owner: (u32, u32),
        dir: &Path,
    ) -> Result<Overlay> {
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).at(&mnt)?;
        let upper_path = dir.join("upper");
        let upper = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&upper_path)
            .at(&upper_path)?;
        upper.set_len(image.size()).at(&upper_path)?;
        let pages = image.size().div_ceil(PAGE);
        let (uid, gid) = owner;
        let files = parts
            .iter()
            .map(|p| Window {
                name: file_name(p),
                start: p.start,
                len: p.len,
            })
            .collect();
        let fs = Cow {
            files,
            image,
            upper,
            upper_path,
            written: Mutex::new(vec![0; pages.div_ceil(64) as usize]),
            uid,
            gid,
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("rbdelta-fsck".into()),
            fuser::MountOption::NoDev,
            fuser::MountOption::NoSuid,
            fuser::MountOption::NoExec,
            fuser::MountOption::DefaultPermissions,
        ];
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 && uid != 0 {
            // root mounts; the sandbox's user opens (modes still apply)
            config.acl = fuser::SessionACL::All;
        }
        config.n_threads = Some(4);
        let session = fuser::spawn_mount(fs, &mnt, &config).map_err(|e| Error::io(&mnt, e))?;
        Ok(Overlay {
            session: Some(session),
            dir: dir.to_path_buf(),
        })
    }

    /// The file of partition `p`.
    pub fn file(&self, p: &Part) -> PathBuf {
        self.dir.join("mnt").join(file_name(p))
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = s.umount_and_join() {
                tracing::warn!("fsck overlay: unmount of {}: {e}", self.dir.display());
            }
        }
        let _ = std::fs::remove_file(self.dir.join("upper"));
        let _ = std::fs::remove_dir(self.dir.join("mnt"));
    }
}
