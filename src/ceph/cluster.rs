//! Connections to a cluster and to its pools.
//!
//! A [`Cluster`] is one librados client; an [`IoCtx`] is that client bound to
//! a pool, and is where images are created, listed, opened and removed. Both
//! are reference-counted so that nothing opened through them can outlive
//! them. Connecting always applies client timeouts: a dead or unreachable
//! cluster must produce an error, never a hung backup.

use super::{ceph_error, check, cstring, sys, Image};
use crate::error::{Error, Result};
use std::ffi::{c_char, CStr};
use std::path::PathBuf;
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

/// How to reach a cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CephOptions {
    /// ceph.conf to read; `None` reads librados' default search path.
    pub conf: Option<PathBuf>,
    /// Client id without the `client.` prefix, e.g. `admin`.
    pub id: String,
    /// Keyring file; `None` uses what the conf says.
    pub keyring: Option<PathBuf>,
    /// Applied to mount, mon and OSD operations (rounded up to seconds).
    pub timeout: Duration,
}

impl Default for CephOptions {
    fn default() -> Self {
        CephOptions {
            conf: None,
            id: "admin".into(),
            keyring: None,
            timeout: Duration::from_secs(60),
        }
    }
}

/// A connected librados client. Shut down when the last `Arc` goes away.
pub struct Cluster {
    handle: sys::rados_t,
}

// SAFETY: a librados client (`rados_t`) is documented as thread-safe: any
// thread may use it, and several at once. The handle is only shut down in
// `Drop`, when no `IoCtx` (which holds an `Arc<Cluster>`) is left.
unsafe impl Send for Cluster {}
unsafe impl Sync for Cluster {}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").finish_non_exhaustive()
    }
}

/// Warns about a keyring that users other than its owner and group may
/// read: the configured one, else the default ones in /etc/ceph.
fn warn_if_readable_by_others(opts: &CephOptions) {
    use std::os::unix::fs::MetadataExt;
    let candidates = match &opts.keyring {
        Some(k) => vec![k.clone()],
        None => vec![
            PathBuf::from(format!("/etc/ceph/ceph.client.{}.keyring", opts.id)),
            PathBuf::from("/etc/ceph/ceph.keyring"),
        ],
    };
    for k in candidates {
        if let Ok(m) = std::fs::metadata(&k) {
            if m.mode() & 0o004 != 0 {
                tracing::warn!(
                    "the keyring {} is readable by every user (mode {:o}): chmod o-r it",
                    k.display(),
                    m.mode() & 0o7777
                );
            }
        }
    }
}

impl Cluster {
    /// Creates a client, configures it and connects, failing after about
    /// `opts.timeout` when no monitor answers.
    pub fn connect(opts: &CephOptions) -> Result<Arc<Cluster>> {
        let id = cstring("client id", &opts.id)?;
        let mut handle: sys::rados_t = ptr::null_mut();
        // SAFETY: `handle` is a valid out-pointer; `id` outlives the call.
        let rc = unsafe { sys::rados_create(&mut handle, id.as_ptr()) };
        check(|| format!("rados_create (id {})", opts.id), rc)?;
        // From here on `Drop` shuts the handle down on every error path.
        let cluster = Cluster { handle };

        let conf = match &opts.conf {
            Some(p) => Some(cstring("conf path", path_str(p)?)?),
            None => None,
        };
        let conf_ptr = conf.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        // SAFETY: handle is a created, unconnected client; conf_ptr is NULL
        // (default search path) or a valid C string.
        let rc = unsafe { sys::rados_conf_read_file(cluster.handle, conf_ptr) };
        // Without an explicit conf, a missing default file is fine.
        if rc < 0 && (opts.conf.is_some() || rc != -libc::ENOENT) {
            let which = opts
                .conf
                .as_deref()
                .map_or("default ceph.conf".into(), |p| p.display().to_string());
            return Err(ceph_error(format!("reading {which}"), rc.into()));
        }
        if let Some(k) = &opts.keyring {
            cluster.conf_set("keyring", path_str(k)?)?;
        }
        warn_if_readable_by_others(opts);
        let secs = opts.timeout.as_secs() + u64::from(opts.timeout.subsec_nanos() > 0);
        let secs = secs.max(1).to_string();
        for key in [
            "rados_osd_op_timeout",
            "rados_mon_op_timeout",
            "client_mount_timeout",
        ] {
            cluster.conf_set(key, &secs)?;
        }
        // Backups read each byte once and restores write each byte once and
        // flush at the end: librbd's cache only adds copies and memory.
        cluster.conf_set("rbd_cache", "false")?;
        // (Tried: `rbd_disable_zero_copy_writes=false`, which spares librbd
        // a copy of each write buffer; a write past the end of the image
        // then never completed, and waiting for it hung. 2026-11-30. Measured
        // again: restore peak RSS 148 MiB instead of 224 MiB, the same time.
        // Measured a third time (2026-11-30, evening): from tmpfs into an
        // image 1.83-1.98 s against 2.04-2.15 s, but with a paused or killed
        // OSD a restore then hung past its retry limit (both restore tests
        // of cluster_faults failed; they pass without it): librbd holds the
        // completion until the messenger lets go of the buffer.)
        // SAFETY: configured, unconnected client.
        let rc = unsafe { sys::rados_connect(cluster.handle) };
        check(|| "rados_connect".into(), rc)?;
        Ok(Arc::new(cluster))
    }

    fn conf_set(&self, key: &str, value: &str) -> Result<()> {
        let (k, v) = (cstring("option", key)?, cstring("option value", value)?);
        // SAFETY: valid handle and C strings.
        let rc = unsafe { sys::rados_conf_set(self.handle, k.as_ptr(), v.as_ptr()) };
        check(|| format!("rados_conf_set {key}={value}"), rc).map(drop)
    }

    /// This client's name in the cluster (`client.<instance id>`), as
    /// image lock owners and watchers are named.
    pub fn client(&self) -> String {
        // SAFETY: a connected client handle; the call only reads it.
        let id = unsafe { sys::rados_get_instance_id(self.handle) };
        format!("client.{id}")
    }

    /// Opens pool `pool`.
    pub fn ioctx(self: &Arc<Self>, pool: &str) -> Result<IoCtx> {
        let name = cstring("pool name", pool)?;
        let mut io: sys::rados_ioctx_t = ptr::null_mut();
        // SAFETY: connected client, valid C string and out-pointer.
        let rc = unsafe { sys::rados_ioctx_create(self.handle, name.as_ptr(), &mut io) };
        check(|| format!("rados_ioctx_create (pool {pool})"), rc)?;
        Ok(IoCtx {
            inner: Arc::new(IoCtxInner {
                handle: io,
                pool: pool.to_string(),
                _cluster: Arc::clone(self),
            }),
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: created by rados_create; nothing else holds it any more.
        unsafe { sys::rados_shutdown(self.handle) }
    }
}

fn path_str(p: &std::path::Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| Error::Invalid(format!("path is not UTF-8: {}", p.display())))
}

/// A pool of a connected cluster. Cheap to clone; images opened from it keep
/// it (and the cluster) alive.
#[derive(Clone)]
pub struct IoCtx {
    inner: Arc<IoCtxInner>,
}

struct IoCtxInner {
    handle: sys::rados_ioctx_t,
    pool: String,
    _cluster: Arc<Cluster>,
}

// SAFETY: librados I/O contexts may be used from several threads as long as
// nobody changes their state (namespace, snapshot context, locator) while
// others use them. This wrapper never calls any state-changing ioctx
// function, so sharing the handle is sound. It is destroyed in `Drop`, when
// no `Image` (which holds a clone) is left.
unsafe impl Send for IoCtxInner {}
unsafe impl Sync for IoCtxInner {}

impl Drop for IoCtxInner {
    fn drop(&mut self) {
        // SAFETY: created by rados_ioctx_create; the cluster is still
        // connected because `_cluster` is dropped only after this runs.
        unsafe { sys::rados_ioctx_destroy(self.handle) }
    }
}

impl std::fmt::Debug for IoCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoCtx")
            .field("pool", &self.inner.pool)
            .finish()
    }
}

/// Frees an `rbd_image_options_t` on every path.
struct ImageOptions(sys::rbd_image_options_t);

impl ImageOptions {
    fn new() -> Self {
        let mut o: sys::rbd_image_options_t = ptr::null_mut();
        // SAFETY: valid out-pointer; the call cannot fail.
        unsafe { sys::rbd_image_options_create(&mut o) };
        ImageOptions(o)
    }
    fn set(&self, option: sys::_bindgen_ty_15, value: u64) -> Result<()> {
        // SAFETY: valid options handle.
        let rc = unsafe { sys::rbd_image_options_set_uint64(self.0, option as i32, value) };
        check(|| format!("rbd_image_options_set_uint64 ({option})"), rc).map(drop)
    }
}

impl Drop for ImageOptions {
    fn drop(&mut self) {
        // SAFETY: created by rbd_image_options_create, destroyed once.
        unsafe { sys::rbd_image_options_destroy(self.0) }
    }
}

impl IoCtx {
    pub(crate) fn raw(&self) -> sys::rados_ioctx_t {
        self.inner.handle
    }

    /// Blocklists the client at `addr` (as a watcher lists it) for
    /// `expire` seconds: the cluster drops its watches and refuses its
    /// writes. Only for a client known to be dead.
    pub fn blocklist(&self, addr: &str, expire: u32) -> Result<()> {
        let c = cstring("client address", addr)?;
        // SAFETY: a connected client handle and a C string librados only
        // reads (the binding's `*mut` is historical).
        let rc = unsafe {
            sys::rados_blocklist_add(
                self.inner._cluster.handle,
                c.as_ptr() as *mut c_char,
                expire,
            )
        };
        check(|| format!("rados_blocklist_add {addr}"), rc).map(drop)
    }

    /// This client's name in the cluster (`client.<instance id>`), as
    /// image lock owners and watchers are named.
    pub fn client(&self) -> String {
        self.inner._cluster.client()
    }

    /// The pool's name.
    pub fn pool(&self) -> &str {
        &self.inner.pool
    }

    /// Opens image `name` read-write at its head.
    pub fn open_image(&self, name: &str) -> Result<Image> {
        Image::open(self, name, None, false)
    }

    /// Opens image `name` read-only, at snapshot `snap` or at its head.
    pub fn open_image_read_only(&self, name: &str, snap: Option<&str>) -> Result<Image> {
        Image::open(self, name, snap, true)
    }

    /// Creates a format-2 image. `order` 0 and `features` 0 mean the cluster's
    /// defaults (4 MiB objects; layering, exclusive-lock, object-map,
    /// fast-diff, deep-flatten).
    pub fn create_image(&self, name: &str, size: u64, order: u8, features: u64) -> Result<()> {
        let c_name = cstring("image name", name)?;
        let opts = ImageOptions::new();
        if order != 0 {
            opts.set(sys::RBD_IMAGE_OPTION_ORDER, order.into())?;
        }
        if features != 0 {
            opts.set(sys::RBD_IMAGE_OPTION_FEATURES, features)?;
        }
        // SAFETY: valid ioctx, C string and options handle.
        let rc = unsafe { sys::rbd_create4(self.raw(), c_name.as_ptr(), size, opts.0) };
        check(|| format!("rbd_create4 {}/{name}", self.pool()), rc).map(drop)
    }

    /// Whether image `name` exists.
    pub fn image_exists(&self, name: &str) -> Result<bool> {
        match self.open_image_read_only(name, None) {
            Ok(_) => Ok(true),
            Err(Error::Ceph { errno, .. }) if errno == libc::ENOENT => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Names of all images in the pool, sorted.
    pub fn list_images(&self) -> Result<Vec<String>> {
        let mut max: usize = 64;
        loop {
            let mut specs = vec![
                sys::rbd_image_spec_t {
                    id: ptr::null_mut(),
                    name: ptr::null_mut(),
                };
                max
            ];
            // SAFETY: `specs` has room for `max` entries, as we tell librbd.
            let rc = unsafe { sys::rbd_list2(self.raw(), specs.as_mut_ptr(), &mut max) };
            if rc == -libc::ERANGE {
                continue; // `max` now holds the needed size
            }
            check(|| format!("rbd_list2 {}", self.pool()), rc)?;
            let mut names: Vec<String> = specs[..max]
                .iter()
                // SAFETY: librbd filled the first `max` entries with C strings.
                .map(|s| unsafe { CStr::from_ptr(s.name as *const c_char) })
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            // SAFETY: frees exactly the `max` entries librbd filled, once.
            unsafe { sys::rbd_image_spec_list_cleanup(specs.as_mut_ptr(), max) };
            names.sort();
            return Ok(names);
        }
    }

    /// Removes image `name` (which must have no snapshots).
    pub fn remove_image(&self, name: &str) -> Result<()> {
        let c_name = cstring("image name", name)?;
        // SAFETY: valid ioctx and C string.
        let rc = unsafe { sys::rbd_remove(self.raw(), c_name.as_ptr()) };
        check(|| format!("rbd_remove {}/{name}", self.pool()), rc).map(drop)
    }

    /// Renames image `from` to `to` (in this pool); fails with EEXIST when
    /// `to` exists.
    pub fn rename_image(&self, from: &str, to: &str) -> Result<()> {
        let (f, t) = (cstring("image name", from)?, cstring("image name", to)?);
        // SAFETY: valid ioctx and C strings.
        let rc = unsafe { sys::rbd_rename(self.raw(), f.as_ptr(), t.as_ptr()) };
        check(|| format!("rbd_rename {}/{from} to {to}", self.pool()), rc).map(drop)
    }

    /// Clones snapshot `parent@snap` (protected, for clone format 1) into a
    /// new image `child` of this pool, with the parent's features.
    pub fn clone_image(&self, parent: &str, snap: &str, child: &str) -> Result<()> {
        let (p, s, c) = (
            cstring("image name", parent)?,
            cstring("snapshot name", snap)?,
            cstring("image name", child)?,
        );
        let opts = ImageOptions::new();
        // SAFETY: valid ioctxs (the same pool), C strings and options.
        let rc = unsafe {
            sys::rbd_clone3(
                self.raw(),
                p.as_ptr(),
                s.as_ptr(),
                self.raw(),
                c.as_ptr(),
                opts.0,
            )
        };
        check(|| format!("rbd_clone3 {parent}@{snap} -> {child}"), rc).map(drop)
    }
}
