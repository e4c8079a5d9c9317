//! Taking a mount down, and saying truthfully whether that worked.
//!
//! What it promises: [`unmount`] succeeds only when the kernel's mount table
//! (`/proc/self/mountinfo`) no longer shows the mount point. Anything else
//! (busy because a loop device holds one of its files, refused, or gone
//! from the table for a reason it cannot see) is [`Error::StillMounted`],
//! one line naming the loop devices to detach and the command that clears
//! the mount point.
//!
//! It does the unmount itself rather than through fuser 0.18: fuser decides
//! whether the filesystem is still mounted by polling /dev/fuse and reads a
//! closed connection (POLLERR) as mounted, so after anyone else unmounted it
//! fuser calls umount(2) on a path that is no longer a mount point (EINVAL:
//! the "Unmount failed: Invalid argument" line) or on whatever is mounted
//! there now; and while requests are queued it reads the device as not
//! mounted and skips the unmount, reporting success.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Unmounts the FUSE mount at `at` (absolute, canonical). Ok only when the
/// mount table no longer shows it.
pub fn unmount(at: &Path) -> Result<()> {
    if !mounted(at)? {
        return Ok(());
    }
    let why = umount(at).err();
    if !mounted(at)? {
        return Ok(());
    }
    Err(still_mounted(at, why))
}

/// umount(2), else (not root) the setuid helper `fusermount3 -u`.
fn umount(at: &Path) -> std::io::Result<()> {
    let c = CString::new(at.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a valid C string; no flags.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EPERM) {
        return Err(e);
    }
    let out = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("--")
        .arg(at)
        .output()?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    Err(std::io::Error::other(
        said.lines()
            .last()
            .unwrap_or("fusermount3 -u failed")
            .trim()
            .to_string(),
    ))
}

/// The one-line failure: why, what holds it, how to clear it.
fn still_mounted(at: &Path, why: Option<std::io::Error>) -> Error {
    let shown = at.display();
    let why = match why {
        Some(e) if e.raw_os_error() == Some(libc::EBUSY) => "it is busy".to_string(),
        Some(e) => format!("unmount failed: {e}"),
        None => "it is still in the mount table".to_string(),
    };
    let loops = loop_devices_over(at);
    let detach = match loops.is_empty() {
        true => "stop what uses its files (fuser -vm on it lists them; detach loop devices over them with losetup -d)".to_string(),
        false => format!("detach the loop devices over its files: losetup -d {}", loops.join(" ")),
    };
    Error::StillMounted(format!(
        "{shown} is still mounted ({why}); {detach}, then clear it with: fusermount3 -u {shown} (or umount -l {shown})"
    ))
}

/// Whether `at` is a mount point in this process's mount namespace.
pub fn mounted(at: &Path) -> Result<bool> {
    const TABLE: &str = "/proc/self/mountinfo";
    let table = std::fs::read(TABLE).map_err(|e| Error::io(TABLE, e))?;
    let want = at.as_os_str().as_bytes();
    Ok(table.split(|&b| b == b'\n').any(|line| {
        line.split(|&b| b == b' ')
            .nth(4)
            .is_some_and(|p| unescape(p) == want)
    }))
}

/// A mountinfo path: space, tab, newline and backslash are written as
/// `\` and three octal digits.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let oct = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// The loop devices whose backing file lies under `at`.
fn loop_devices_over(at: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut found: Vec<String> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let backing = std::fs::read(e.path().join("loop/backing_file")).ok()?;
            let backing = backing.strip_suffix(b"\n").unwrap_or(&backing);
            Path::new(std::ffi::OsStr::from_bytes(backing))
                .starts_with(at)
                .then(|| format!("/dev/{name}"))
        })
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape(br"/mnt/a\040b\134c"), b"/mnt/a b\\c");
        assert_eq!(unescape(br"/plain"), b"/plain");
        assert_eq!(unescape(br"/odd\04"), br"/odd\04");
    }

    #[test]
    fn the_root_is_mounted_and_a_plain_directory_is_not() {
        assert!(mounted(Path::new("/")).unwrap());
        let d = tempfile::tempdir().unwrap();
        assert!(!mounted(&d.path().canonicalize().unwrap()).unwrap());
        // nothing mounted: nothing to do
        unmount(&d.path().canonicalize().unwrap()).unwrap();
    }
}
