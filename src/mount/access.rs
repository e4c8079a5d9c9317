//! Who may read a mount. The archive is the mounting user's alone (0700
//! directories, 0600 files); a mount must not quietly widen that, so every
//! wider audience is named: root, or the members of one group.
//!
//! What it promises: without a choice only the mounting user gets in (FUSE's
//! default; the kernel refuses everyone else). `Root` adds root and nobody
//! else. `Group` lets the kernel in for everyone (`allow_other`) and has it
//! check the modes (`default_permissions`): directories 0550 and files 0440
//! of that group, so only its members (and the owner) read, and nobody
//! writes (the mount is read-only: EROFS).

use crate::error::{Error, Result};

/// Who may read the mount besides the mounting user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Access {
    /// Nobody else (FUSE's default).
    #[default]
    Owner,
    /// Root as well (`allow_root`).
    Root,
    /// The members of this group (by id).
    Group(u32),
}

impl Access {
    /// The session ACL fuser enforces and the mount option it passes.
    pub(super) fn acl(self) -> fuser::SessionACL {
        match self {
            Access::Owner => fuser::SessionACL::Owner,
            // allow_other in the kernel; fuser refuses other users itself
            Access::Root => fuser::SessionACL::RootAndOwner,
            // allow_other; default_permissions checks the modes below
            Access::Group(_) => fuser::SessionACL::All,
        }
    }

    /// The group owning every node (`mounter`: the mounting user's).
    pub(super) fn gid(self, mounter: u32) -> u32 {
        match self {
            Access::Group(g) => g,
            Access::Owner | Access::Root => mounter,
        }
    }

    /// Permission bits of directories.
    pub(super) fn dir_mode(self) -> u16 {
        match self {
            Access::Group(_) => 0o550,
            Access::Owner | Access::Root => 0o500,
        }
    }

    /// Permission bits of image files.
    pub(super) fn file_mode(self) -> u16 {
        match self {
            Access::Group(_) => 0o440,
            Access::Owner | Access::Root => 0o400,
        }
    }
}

/// The id of group `spec`: a name from the group database, or a number.
pub fn group_id(spec: &str) -> Result<u32> {
    if let Ok(gid) = spec.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(spec)
        .map_err(|_| Error::Invalid(format!("group {spec:?} holds a NUL byte")))?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: all-zero is a valid `group` to be filled in.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: valid C string, out-struct and buffer of the given length.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(Error::io(
                "/etc/group",
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        if found.is_null() {
            return Err(Error::Invalid(format!("no group named {spec:?}")));
        }
        return Ok(grp.gr_gid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_resolve_by_name_or_number_and_unknown_ones_are_named() {
        assert_eq!(group_id("root").unwrap(), 0);
        assert_eq!(group_id("4242").unwrap(), 4242);
        let e = group_id("no-such-group-rbdelta").unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{e}");
        assert!(e.to_string().contains("no-such-group-rbdelta"), "{e}");
    }
}
