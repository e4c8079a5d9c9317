//! `rbdelta mount`: every revision of the chosen volumes as a read-only
//! image file under a FUSE mount, for file-level restores (loop-mount a
//! partition of `latest.img`) and tools like `qemu-img convert`.
//!
//! What it promises the archive: it reads manifests, `state.json` and the
//! data files of the chains it opens, takes no lock and writes nothing, so
//! backups, prunes and merges run as usual while it is mounted (an open
//! revision keeps reading as it was; see docs/FORMAT.md, "Readers and
//! writers"). Every block it returns was checked against its hash; a bad
//! one is EIO and a log line, never wrong bytes. Killed half-way, it leaves
//! at most a stale mount point, which the next mount detects and names the
//! command that clears. It reads the archive with the mounting user's
//! rights and shows it to nobody else unless told whom ([`Access`]). It
//! says "unmounted" only when the mount table agrees ([`unmount`]).

mod access;
mod fs;
pub mod image;
mod unmount;

pub use access::{group_id, Access};

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// The `Filesystem` methods of read-only image files with nothing to
/// flush or sync and no extended attributes: plain answers instead of
/// ENOSYS (and fuser's warning) for the calls tools make.
macro_rules! plain_file_answers {
    () => {
        fn flush(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            _lock_owner: fuser::LockOwner,
            reply: fuser::ReplyEmpty,
        ) {
            reply.ok();
        }

        fn fsync(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            _datasync: bool,
            reply: fuser::ReplyEmpty,
        ) {
            reply.ok();
        }

        fn getxattr(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _name: &std::ffi::OsStr,
            _size: u32,
            reply: fuser::ReplyXattr,
        ) {
            reply.error(fuser::Errno::ENODATA);
        }

        fn listxattr(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            size: u32,
            reply: fuser::ReplyXattr,
        ) {
            if size == 0 {
                reply.size(0);
            } else {
                reply.data(&[]);
            }
        }
    };
}
pub(crate) use plain_file_answers;

/// Answers a `readdir` from the whole listing (`.` and `..` included),
/// starting after the `offset`-th entry.
pub(crate) fn fill_dir<N: AsRef<std::ffi::OsStr>>(
    mut reply: fuser::ReplyDirectory,
    entries: impl IntoIterator<Item = (fuser::INodeNo, fuser::FileType, N)>,
    offset: u64,
) {
    for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
        if reply.add(ino, i as u64 + 1, kind, name) {
            break;
        }
    }
    reply.ok();
}

/// How to mount.
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    /// Who may read the mount besides the mounting user.
    pub access: Access,
}

/// Checks that `mountpoint` can take a mount: an empty directory, not a
/// stale FUSE mount, with FUSE available.
pub fn check_mountpoint(mountpoint: &Path) -> Result<()> {
    let shown = mountpoint.display();
    match std::fs::metadata(mountpoint) {
        Ok(m) if !m.is_dir() => {
            return Err(Error::Invalid(format!("mount point {shown} is not a directory")))
        }
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(Error::Invalid(format!(
                "{shown} is a stale FUSE mount (its rbdelta mount was killed); clear it with: fusermount3 -u {shown}"
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Invalid(format!("mount point {shown} does not exist")))
        }
        Err(e) => return Err(Error::io(mountpoint, e)),
    }
    let mut entries = std::fs::read_dir(mountpoint).map_err(|e| Error::io(mountpoint, e))?;
    if entries.next().is_some() {
        return Err(Error::Invalid(format!("mount point {shown} is not empty")));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(Error::Invalid(
            "FUSE is unavailable: /dev/fuse does not exist (load the module: modprobe fuse; \
             in a container, pass /dev/fuse in)"
                .into(),
        ));
    }
    Ok(())
}

/// Mounts `volumes` of the archive at `mountpoint` and serves until SIGINT
/// or SIGTERM (then unmounts cleanly) or until someone else unmounts it.
/// `ready` runs once the mount is up.
pub fn run(
    archive: &Path,
    volumes: Vec<String>,
    mountpoint: &Path,
    opts: &MountOptions,
    ready: impl FnOnce(),
) -> Result<()> {
    check_mountpoint(mountpoint)?;
    // fuser mounts at the canonical path; the mount table shows that one
    let mountpoint = &mountpoint
        .canonicalize()
        .map_err(|e| Error::io(mountpoint, e))?;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName(format!("rbdelta:{}", archive.display())),
        fuser::MountOption::Subtype("rbdelta".into()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        // the kernel checks the modes (which say who reads: see Access);
        // no access() round trips
        fuser::MountOption::DefaultPermissions,
    ];
    config.acl = opts.access.acl();
    config.n_threads = Some(4);
    // The serving threads must not take SIGINT/SIGTERM: block them here,
    // before the threads start (they inherit the mask), and wait for them.
    let signals = SignalSet::block(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
    let fs = fs::ArchiveFs::new(PathBuf::from(archive), volumes, opts.access);
    let session = fuser::spawn_mount(fs, mountpoint, &config).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            // not root: the mount goes through the setuid helper
            Error::Invalid(
                "FUSE is unavailable: fusermount3 not found (install the fuse3 package)".into(),
            )
        } else {
            Error::io(mountpoint, e)
        }
    })?;
    widen_readahead(mountpoint);
    ready();
    loop {
        if let Some(sig) = signals.wait(Duration::from_millis(500)) {
            tracing::info!("signal {sig}: unmounting {}", mountpoint.display());
            let unmounted = unmount::unmount(mountpoint);
            if unmounted.is_ok() {
                // the serving threads see the connection end and stop
                wait_finished(&session);
            }
            // Not fuser's unmount on drop: see `unmount` for why.
            std::mem::forget(session);
            return unmounted;
        }
        if session.guard.is_finished() {
            tracing::info!("{} was unmounted", mountpoint.display());
            std::mem::forget(session);
            return match unmount::mounted(mountpoint)? {
                // the connection ended (aborted), the mount point did not
                true => unmount::unmount(mountpoint),
                false => Ok(()),
            };
        }
    }
}

/// Waits (at most 10 s) for the serving threads of an unmounted session.
fn wait_finished(session: &fuser::BackgroundSession) {
    let t = std::time::Instant::now();
    while !session.guard.is_finished() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How far the kernel reads ahead in the mount (KiB).
const READAHEAD_KIB: u32 = 4096;

/// Raises the mount's readahead from the kernel's 128 KiB for FUSE: a
/// sequential reader (dd, cp, qemu-img) then sends 1 MiB requests, several
/// at a time, which the serving threads verify in parallel (measured in
/// bench/mount.sh: warm reads of a 2 GiB revision about 1.4× faster). Needs
/// root (sysfs); best effort.
fn widen_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(dev) = std::fs::metadata(mountpoint).map(|m| m.dev()) else {
        return;
    };
    let bdi = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    if let Err(e) = std::fs::write(&bdi, READAHEAD_KIB.to_string()) {
        tracing::debug!("mount: could not widen the readahead ({bdi}: {e})");
    }
}

/// A set of blocked signals, received synchronously.
struct SignalSet(libc::sigset_t);

impl SignalSet {
    fn block(sigs: &[i32]) -> SignalSet {
        // SAFETY: sigset manipulation on a local set; pthread_sigmask on the
        // calling thread.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &s in sigs {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            SignalSet(set)
        }
    }

    /// A pending signal of the set, waiting at most `limit`.
    fn wait(&self, limit: Duration) -> Option<i32> {
        let ts = libc::timespec {
            tv_sec: limit.as_secs() as libc::time_t,
            tv_nsec: limit.subsec_nanos() as libc::c_long,
        };
        // SAFETY: waits on a valid set with a valid timeout.
        let sig = unsafe { libc::sigtimedwait(&self.0, std::ptr::null_mut(), &ts) };
        (sig > 0).then_some(sig)
    }
}
