//! An open RBD image: metadata, snapshots, synchronous I/O and diffs.
//!
//! [`Image`] owns an `rbd_image_t` and keeps its pool open. It is `Send` but
//! not `Sync`: one thread at a time drives it, which is all a backup or a
//! restore needs. Pipelined I/O lives in [`super::aio`].

use super::{ceph_error, check, cstring, sys, IoCtx};
use crate::error::{Error, Result};
use std::any::Any;
use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::time::{Duration, Instant};

/// `rbd_stat` facts about an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageStat {
    pub size: u64,
    pub obj_size: u64,
    pub num_objs: u64,
    /// log2 of `obj_size`.
    pub order: u8,
}

/// How long after its last call an image is left before it is closed.
///
/// librbd 16.2 finishes an open or a refresh of the image's state by
/// waking the caller and only then taking the state's lock again
/// (`ImageState::complete_action_unlock`). A caller that closes the image
/// at once frees that lock while the waking thread may not have reached
/// it: the thread then locks freed memory and the process aborts (seen
/// here as `__pthread_mutex_lock_full: Assertion 'e != ESRCH || !robust'`
/// in about one backup worker of a few hundred on a loaded 2-core host,
/// the core showing librbd's `ImageState` lock inside a freed heap block).
/// No API waits for that thread, so a close waits this long after the
/// image's last call instead: a thread that was just woken runs well
/// within it on any host that still gets work done.
const CLOSE_GRACE: Duration = Duration::from_millis(50);

/// An image's handle lent for one librbd call ([`Image::raw`]).
pub(crate) struct Lent<'a>(pub sys::rbd_image_t, &'a Image);

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        self.1.touch();
    }
}

/// An open image (at its head, or read-only at a snapshot).
pub struct Image {
    handle: sys::rbd_image_t,
    /// When the image was last handed to librbd (see [`CLOSE_GRACE`]).
    last_call: Cell<Instant>,
    name: String,
    /// Closed after `handle` (fields drop after `Drop::drop`).
    ioctx: IoCtx,
}

// SAFETY: librbd image handles are internally locked and may be used from
// any thread; moving one between threads is sound. `Image` is deliberately
// not `Sync`, so a handle is driven by one thread at a time. The handle is
// closed in `Drop`, before the `IoCtx` it was opened from is released.
unsafe impl Send for Image {}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image").field("name", &self.name).finish()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let settled = self.last_call.get() + CLOSE_GRACE;
        if let Some(wait) = settled.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // SAFETY: opened by rbd_open*, closed exactly once. Every AIO
        // completion borrows the image, so none is in flight here.
        unsafe { sys::rbd_close(self.handle) };
    }
}

impl Image {
    pub(crate) fn open(io: &IoCtx, name: &str, snap: Option<&str>, ro: bool) -> Result<Image> {
        let c_name = cstring("image name", name)?;
        let c_snap = snap.map(|s| cstring("snapshot name", s)).transpose()?;
        let snap_ptr = c_snap.as_ref().map_or(ptr::null(), |s| s.as_ptr());
        let mut handle: sys::rbd_image_t = ptr::null_mut();
        // SAFETY: valid ioctx, C strings (or NULL snap) and out-pointer.
        let rc = unsafe {
            if ro {
                sys::rbd_open_read_only(io.raw(), c_name.as_ptr(), &mut handle, snap_ptr)
            } else {
                sys::rbd_open(io.raw(), c_name.as_ptr(), &mut handle, snap_ptr)
            }
        };
        let what = match snap {
            Some(s) => format!("{}/{name}@{s}", io.pool()),
            None => format!("{}/{name}", io.pool()),
        };
        let op = if ro { "rbd_open_read_only" } else { "rbd_open" };
        check(|| format!("{op} {what}"), rc)?;
        Ok(Image {
            handle,
            last_call: Cell::new(Instant::now()),
            name: what,
            ioctx: io.clone(),
        })
    }

    /// The handle, lent for one call into librbd: `self.raw().0` in the
    /// call's statement, whose end (after the call returns) starts
    /// [`CLOSE_GRACE`] anew.
    pub(crate) fn raw(&self) -> Lent<'_> {
        Lent(self.handle, self)
    }

    /// Starts [`CLOSE_GRACE`] anew: librbd just returned from, or
    /// completed, a call on this image.
    pub(crate) fn touch(&self) {
        self.last_call.set(Instant::now());
    }

    /// `pool/image[@snap]`, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn op(&self, op: &str) -> String {
        format!("{op} {}", self.name)
    }

    /// Size in bytes (of the snapshot, when opened at one).
    pub fn size(&self) -> Result<u64> {
        let mut size = 0u64;
        // SAFETY: open handle, valid out-pointer.
        let rc = unsafe { sys::rbd_get_size(self.raw().0, &mut size) };
        check(|| self.op("rbd_get_size"), rc)?;
        Ok(size)
    }

    pub fn stat(&self) -> Result<ImageStat> {
        // SAFETY: rbd_image_info_t is plain old data; all-zero is valid.
        let mut info: sys::rbd_image_info_t = unsafe { std::mem::zeroed() };
        let len = std::mem::size_of::<sys::rbd_image_info_t>();
        // SAFETY: open handle; `info` is as large as we say.
        let rc = unsafe { sys::rbd_stat(self.raw().0, &mut info, len) };
        check(|| self.op("rbd_stat"), rc)?;
        Ok(ImageStat {
            size: info.size,
            obj_size: info.obj_size,
            num_objs: info.num_objs,
            order: u8::try_from(info.order).unwrap_or(0),
        })
    }

    /// librbd feature bits (see [`super::features`]).
    pub fn features(&self) -> Result<u64> {
        let mut f = 0u64;
        // SAFETY: open handle, valid out-pointer.
        let rc = unsafe { sys::rbd_get_features(self.raw().0, &mut f) };
        check(|| self.op("rbd_get_features"), rc)?;
        Ok(f)
    }

    fn snap_call(
        &self,
        op: &str,
        snap: &str,
        f: unsafe extern "C" fn(sys::rbd_image_t, *const std::ffi::c_char) -> c_int,
    ) -> Result<()> {
        let c = cstring("snapshot name", snap)?;
        // SAFETY: open handle and valid C string; `f` is one of librbd's
        // (image, snapname) calls.
        let rc = unsafe { f(self.raw().0, c.as_ptr()) };
        check(|| format!("{op} {}@{snap}", self.name), rc).map(drop)
    }

    /// The clients watching the image: (address, instance id).
    pub fn watchers(&self) -> Result<Vec<(String, i64)>> {
        let mut max: usize = 16;
        loop {
            let mut w = vec![
                sys::rbd_image_watcher_t {
                    addr: ptr::null_mut(),
                    id: 0,
                    cookie: 0
                };
                max
            ];
            // SAFETY: valid handle; `w` has room for `max` entries.
            let rc = unsafe { sys::rbd_watchers_list(self.raw().0, w.as_mut_ptr(), &mut max) };
            if rc == -libc::ERANGE {
                continue; // `max` now holds the needed count
            }
            check(|| format!("rbd_watchers_list {}", self.name), rc)?;
            let out = w[..max]
                .iter()
                // SAFETY: librbd filled the first `max` entries.
                .map(|x| {
                    (
                        unsafe { CStr::from_ptr(x.addr) }
                            .to_string_lossy()
                            .into_owned(),
                        x.id,
                    )
                })
                .collect();
            // SAFETY: frees exactly the `max` entries librbd filled, once.
            unsafe { sys::rbd_watchers_list_cleanup(w.as_mut_ptr(), max) };
            return Ok(out);
        }
    }

    /// The owners of the image's exclusive lock, by address
    /// (`ip:port/nonce`, as its watch shows it), if any (none on an image
    /// without the exclusive-lock feature).
    pub fn lock_owners(&self) -> Result<Vec<String>> {
        let mut mode: sys::rbd_lock_mode_t = 0;
        let mut owners = [ptr::null_mut::<c_char>(); 8];
        let mut n = owners.len();
        // SAFETY: valid handle; `owners` has room for `n` pointers.
        let rc = unsafe {
            sys::rbd_lock_get_owners(self.raw().0, &mut mode, owners.as_mut_ptr(), &mut n)
        };
        if rc == -libc::ENOENT {
            return Ok(Vec::new()); // no lock
        }
        // librbd's answer for an image without the feature
        if rc == -libc::EINVAL && self.features()? & super::features::EXCLUSIVE_LOCK == 0 {
            return Ok(Vec::new());
        }
        check(|| format!("rbd_lock_get_owners {}", self.name), rc)?;
        let names = owners[..n]
            .iter()
            // SAFETY: librbd filled the first `n` entries with C strings.
            .map(|&p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
            .collect();
        // SAFETY: frees exactly the `n` strings librbd allocated, once.
        unsafe { sys::rbd_lock_get_owners_cleanup(owners.as_mut_ptr(), n) };
        Ok(names)
    }

    /// Breaks `owner`'s exclusive lock (librbd blocklists that client, so a
    /// process that is not dead after all cannot write on).
    pub fn break_lock(&self, owner: &str) -> Result<()> {
        let c = cstring("lock owner", owner)?;
        // SAFETY: valid handle and C string.
        let rc = unsafe {
            sys::rbd_lock_break(
                self.raw().0,
                sys::rbd_lock_mode_t_RBD_LOCK_MODE_EXCLUSIVE,
                c.as_ptr(),
            )
        };
        check(|| format!("rbd_lock_break {} ({owner})", self.name), rc).map(drop)
    }

    /// Takes the image's exclusive lock and keeps it until
    /// [`Image::lock_release`] or close: librbd then refuses other clients'
    /// requests for it, so nobody else writes meanwhile. Fails (EROFS or
    /// EBUSY) when another client holds it and will not give it up, and
    /// with EINVAL when the image has no exclusive-lock feature.
    pub fn lock_acquire(&self) -> Result<()> {
        // SAFETY: open handle.
        let rc = unsafe {
            sys::rbd_lock_acquire(self.raw().0, sys::rbd_lock_mode_t_RBD_LOCK_MODE_EXCLUSIVE)
        };
        check(|| format!("rbd_lock_acquire {}", self.name), rc).map(drop)
    }

    /// Releases a lock taken with [`Image::lock_acquire`].
    pub fn lock_release(&self) -> Result<()> {
        // SAFETY: open handle.
        let rc = unsafe { sys::rbd_lock_release(self.raw().0) };
        check(|| format!("rbd_lock_release {}", self.name), rc).map(drop)
    }

    /// Cuts `client` (`client.<id>`, a dead process's connection) off the
    /// image: blocklists its watch (else every header change waits about
    /// 30 s for its acknowledgement) and breaks its lock. True if it had
    /// either.
    pub fn evict(&self, client: &str) -> Result<bool> {
        let id = client
            .strip_prefix("client.")
            .and_then(|i| i.parse::<i64>().ok());
        let mut evicted = false;
        let watchers = self.watchers()?;
        tracing::debug!("evict {client}: watchers {watchers:?}");
        let addrs: Vec<&String> = watchers
            .iter()
            .filter(|w| Some(w.1) == id)
            .map(|w| &w.0)
            .collect();
        for addr in &addrs {
            // an hour, as librbd blocklists a lock owner it breaks
            self.ioctx.blocklist(addr, 3600)?;
            evicted = true;
        }
        // librbd names a lock owner by its address
        for owner in self.lock_owners()? {
            if owner == client || addrs.contains(&&owner) {
                self.break_lock(&owner)?;
                evicted = true;
            }
        }
        Ok(evicted)
    }

    pub fn snap_create(&self, snap: &str) -> Result<()> {
        self.snap_call("rbd_snap_create", snap, sys::rbd_snap_create)
    }

    pub fn snap_remove(&self, snap: &str) -> Result<()> {
        self.snap_call("rbd_snap_remove", snap, sys::rbd_snap_remove)
    }

    /// Protects a snapshot so it can be cloned (clone format 1).
    pub fn snap_protect(&self, snap: &str) -> Result<()> {
        self.snap_call("rbd_snap_protect", snap, sys::rbd_snap_protect)
    }

    pub fn snap_unprotect(&self, snap: &str) -> Result<()> {
        self.snap_call("rbd_snap_unprotect", snap, sys::rbd_snap_unprotect)
    }

    pub fn snap_exists(&self, snap: &str) -> Result<bool> {
        let c = cstring("snapshot name", snap)?;
        let mut exists = false;
        // SAFETY: open handle, C string and out-pointer.
        let rc = unsafe { sys::rbd_snap_exists(self.raw().0, c.as_ptr(), &mut exists) };
        check(|| format!("rbd_snap_exists {}@{snap}", self.name), rc)?;
        Ok(exists)
    }

    /// Snapshots as `(name, id, size)`, oldest first.
    pub fn snap_list(&self) -> Result<Vec<(String, u64, u64)>> {
        let empty = sys::rbd_snap_info_t {
            id: 0,
            size: 0,
            name: ptr::null(),
        };
        let mut max: c_int = 16;
        loop {
            let mut snaps = vec![empty; max as usize];
            // SAFETY: `snaps` has room for `max` entries, as we tell librbd.
            let rc = unsafe { sys::rbd_snap_list(self.raw().0, snaps.as_mut_ptr(), &mut max) };
            if rc == -libc::ERANGE {
                continue; // `max` now holds the needed size (+1 terminator)
            }
            let n = check(|| self.op("rbd_snap_list"), rc)? as usize;
            let out = snaps[..n]
                .iter()
                .map(|s| {
                    // SAFETY: librbd filled `n` entries with C strings.
                    let name = unsafe { CStr::from_ptr(s.name) };
                    (name.to_string_lossy().into_owned(), s.id, s.size)
                })
                .collect();
            // SAFETY: frees the names librbd allocated (up to its NULL
            // terminator at index n), once.
            unsafe { sys::rbd_snap_list_end(snaps.as_mut_ptr()) };
            return Ok(out);
        }
    }

    pub fn resize(&self, size: u64) -> Result<()> {
        // SAFETY: open handle.
        let rc = unsafe { sys::rbd_resize(self.raw().0, size) };
        check(|| format!("rbd_resize {} to {size}", self.name), rc).map(drop)
    }

    /// Writes all of `data` at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        // SAFETY: open handle; `data` is valid for reads of its length.
        let rc = unsafe { sys::rbd_write(self.raw().0, offset, data.len(), data.as_ptr().cast()) };
        if rc < 0 {
            return Err(ceph_error(self.op("rbd_write"), rc as i64));
        }
        if rc as usize != data.len() {
            return Err(short_io(self.op("rbd_write"), rc as usize, data.len()));
        }
        Ok(())
    }

    /// Deallocates `[offset, offset + len)`; it reads back as zeros.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        // SAFETY: open handle.
        let rc = unsafe { sys::rbd_discard(self.raw().0, offset, len) };
        check(|| self.op("rbd_discard"), rc).map(drop)
    }

    /// Makes `[offset, offset + len)` read as zeros, whatever its
    /// alignment (unlike `discard`, which may leave partial objects alone).
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        // One call per 1 GiB: the length is a `size_t` and the result an
        // `ssize_t` of bytes.
        const STEP: u64 = 1 << 30;
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(STEP);
            // SAFETY: open handle.
            let rc = unsafe { sys::rbd_write_zeroes(self.raw().0, at, n as usize, 0, 0) };
            if rc < 0 {
                return Err(ceph_error(self.op("rbd_write_zeroes"), rc as i64));
            }
            at += n;
        }
        Ok(())
    }

    /// Reads into `buf`, returning the byte count (short only at the end).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        // SAFETY: open handle; `buf` is valid for writes of its length.
        let rc = unsafe { sys::rbd_read(self.raw().0, offset, buf.len(), buf.as_mut_ptr().cast()) };
        if rc < 0 {
            return Err(ceph_error(self.op("rbd_read"), rc as i64));
        }
        Ok(rc as usize)
    }

    pub fn flush(&self) -> Result<()> {
        // SAFETY: open handle.
        let rc = unsafe { sys::rbd_flush(self.raw().0) };
        check(|| self.op("rbd_flush"), rc).map(drop)
    }

    /// Calls `cb(offset, len, exists)` for each extent of `[ofs, ofs+len)`
    /// that differs from `from_snap` (or, with `None`, is allocated).
    /// `exists == false` means the extent was discarded (reads as zeros).
    /// An error or panic in `cb` stops the iteration and is returned.
    pub fn diff_iterate2<F>(
        &self,
        from_snap: Option<&str>,
        ofs: u64,
        len: u64,
        include_parent: bool,
        whole_object: bool,
        mut cb: F,
    ) -> Result<()>
    where
        F: FnMut(u64, u64, bool) -> Result<()>,
    {
        let c_snap = from_snap.map(|s| cstring("snapshot name", s)).transpose()?;
        let snap_ptr = c_snap.as_ref().map_or(ptr::null(), |s| s.as_ptr());
        let mut state = DiffState {
            cb: &mut cb,
            failure: None,
        };
        // SAFETY: open handle; `state` outlives the call, and librbd calls
        // the trampoline only during it, from one thread at a time.
        let rc = unsafe {
            sys::rbd_diff_iterate2(
                self.raw().0,
                snap_ptr,
                ofs,
                len,
                include_parent.into(),
                whole_object.into(),
                Some(diff_trampoline),
                (&mut state as *mut DiffState<'_>).cast(),
            )
        };
        match state.failure {
            Some(Failure::Error(e)) => Err(e),
            Some(Failure::Panic(p)) => Err(Error::Invalid(format!(
                "diff_iterate2 callback panicked: {}",
                panic_text(&*p)
            ))),
            None => {
                let from = from_snap.unwrap_or("(none)");
                check(
                    || format!("rbd_diff_iterate2 {} from {from}", self.name),
                    rc,
                )
                .map(drop)
            }
        }
    }
}

enum Failure {
    Error(Error),
    Panic(Box<dyn Any + Send>),
}

struct DiffState<'a> {
    cb: &'a mut dyn FnMut(u64, u64, bool) -> Result<()>,
    failure: Option<Failure>,
}

/// Called by librbd for each extent; never lets a panic cross into C.
unsafe extern "C" fn diff_trampoline(
    off: u64,
    len: usize,
    exists: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: `arg` is the `DiffState` passed by `diff_iterate2`, alive and
    // not otherwise borrowed while librbd runs.
    let state = unsafe { &mut *arg.cast::<DiffState<'_>>() };
    if state.failure.is_some() {
        return -libc::ECANCELED;
    }
    match catch_unwind(AssertUnwindSafe(|| {
        (state.cb)(off, len as u64, exists != 0)
    })) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            state.failure = Some(Failure::Error(e));
            -libc::ECANCELED
        }
        Err(p) => {
            state.failure = Some(Failure::Panic(p));
            -libc::ECANCELED
        }
    }
}

fn panic_text(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic)".into()
    }
}

/// A read or write that moved fewer bytes than asked.
pub(crate) fn short_io(op: String, got: usize, want: usize) -> Error {
    Error::Ceph {
        op,
        errno: libc::EIO,
        msg: format!("short transfer: {got} of {want} bytes"),
    }
}
