//! The archive is used only when this user owns it and nobody else may
//! write it: whoever can write the archive decides what a restore writes
//! into a customer's disk, and what a verify reports as sound.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Errors unless `dir` (if it exists) is owned by this process's user and
/// not writable by group or others.
pub fn check(dir: &Path) -> Result<()> {
    let m = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me {
        return Err(Error::Invalid(format!(
            "refusing the archive directory {}: it is owned by uid {}, not by this user (uid {me})",
            dir.display(),
            m.uid()
        )));
    }
    if m.mode() & 0o022 != 0 {
        return Err(Error::Invalid(format!(
            "refusing the archive directory {}: group or others may write it (mode {:o}; chmod go-w it)",
            dir.display(),
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writable_by_others_is_refused_and_private_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        assert!(check(&p).is_ok(), "a missing directory is not refused");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        check(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o775)).unwrap();
        let e = check(&p).unwrap_err().to_string();
        assert!(e.contains("group or others may write it (mode 775"), "{e}");
    }
}
