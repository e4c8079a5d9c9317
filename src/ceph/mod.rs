//! A small, safe wrapper over librados and librbd: just what rbdelta needs.
//!
//! Backups must talk to a live cluster without ever hanging or corrupting
//! memory, so this module owns every raw handle and every unsafe call.
//! Ownership is by `Arc`: an [`Image`] keeps its [`IoCtx`] alive, an `IoCtx`
//! keeps its [`Cluster`] alive, and `Drop` closes them in that order, so a
//! use-after-free cannot be written from safe code. Every negative return
//! becomes [`Error::Ceph`] with the operation, the errno and its text.
//!
//! Out of scope: anything the backup and restore paths and the fleet's
//! leases do not use (mirroring, namespaces, striping). Nothing outside
//! this module touches [`sys`].

mod aio;
mod cluster;
mod image;
pub mod lease;
pub(crate) mod sys;

pub use aio::AioWriter;
pub use cluster::{CephOptions, Cluster, IoCtx};
pub use image::{Image, ImageStat};
pub use lease::{Holder, LeaseKind};

use crate::error::{Error, Result};
use std::ffi::{c_char, CString};

/// Feature bits of librbd images (`RBD_FEATURE_*`), as `u64`.
pub mod features {
    use super::sys;
    pub const LAYERING: u64 = sys::RBD_FEATURE_LAYERING as u64;
    pub const EXCLUSIVE_LOCK: u64 = sys::RBD_FEATURE_EXCLUSIVE_LOCK as u64;
    pub const OBJECT_MAP: u64 = sys::RBD_FEATURE_OBJECT_MAP as u64;
    pub const FAST_DIFF: u64 = sys::RBD_FEATURE_FAST_DIFF as u64;
    pub const DEEP_FLATTEN: u64 = sys::RBD_FEATURE_DEEP_FLATTEN as u64;
}

/// The text of an errno value, as `strerror` gives it.
pub(crate) fn strerror(errno: i32) -> String {
    let mut buf = [0 as c_char; 256];
    // SAFETY: the buffer is valid for its length; the XSI strerror_r (which
    // the libc crate binds on Linux) NUL-terminates on success.
    let rc = unsafe { libc::strerror_r(errno, buf.as_mut_ptr(), buf.len()) };
    if rc != 0 {
        return format!("unknown error {errno}");
    }
    // SAFETY: NUL-terminated by strerror_r above.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// The error for a negative librados/librbd return value `ret` (= -errno).
pub(crate) fn ceph_error(op: impl Into<String>, ret: i64) -> Error {
    let errno = i32::try_from(-ret).unwrap_or(libc::EIO);
    let msg = match errno {
        // every client timeout is ceph.timeout (see Cluster::connect)
        libc::ETIMEDOUT => "the cluster did not answer within ceph.timeout".to_string(),
        // librados' answer to an op the client's caps do not allow
        libc::EPERM | libc::EACCES => format!(
            "{}: the Ceph user's caps do not allow this (docs/CONFIG.md, \"A Ceph user for \
             rbdelta\", lists the caps it needs)",
            strerror(errno)
        ),
        _ => strerror(errno),
    };
    Error::Ceph {
        op: op.into(),
        errno,
        msg,
    }
}

/// Passes non-negative returns through; negative ones become errors.
pub(crate) fn check(op: impl FnOnce() -> String, ret: i32) -> Result<i32> {
    if ret < 0 {
        Err(ceph_error(op(), ret.into()))
    } else {
        Ok(ret)
    }
}

/// A C string for `s`, refusing interior NULs with a clear error.
pub(crate) fn cstring(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Invalid(format!("{what} contains a NUL byte: {s:?}")))
}
