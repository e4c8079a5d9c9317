//! What an interrupted restore leaves behind never looks complete, and the
//! next restore into the same target clears what a dead one left.
//!
//! A new RBD image is written as
//! `<name>.rbdelta-restoring-<host>-<pid>-<client id>` and renamed to
//! `<name>` only once complete; a file as a hidden
//! `.<name>.tmp-<pid>-<n>` beside it (see [`crate::archive::atomic`]).
//! A `kill -9` cannot remove them, so a restore first removes those of
//! its target whose process is gone (same host, pid not running; its dead
//! client, which Ceph would keep as a watcher for 30 s, is cut off first)
//! and refuses while one is still running. `--keep-partial` keeps a failed
//! restore's image as `<name>.rbdelta-partial` (a file as `<name>.partial`),
//! which nothing removes.

use std::path::{Path, PathBuf};

use crate::archive::atomic::TempFile;
use crate::ceph::IoCtx;
use crate::error::{Error, Result};
use crate::host::{alive, host, owner, Owner};

/// The tag between a target's name and the host and pid of its restore.
const RESTORING: &str = ".rbdelta-restoring-";

/// The name this process, connected through `ioctx`, restores image
/// `name` under.
pub fn restoring_image(ioctx: &IoCtx, name: &str) -> String {
    let client = ioctx.client();
    let id = client.strip_prefix("client.").unwrap_or(&client);
    format!("{name}{RESTORING}{}-{}-{id}", host(), std::process::id())
}

/// The name a failed restore's image is kept under (`--keep-partial`).
pub fn kept_image(name: &str) -> String {
    format!("{name}.rbdelta-partial")
}

/// The name a failed restore's file is kept under (`--keep-partial`).
pub fn kept_file(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// Removes the images that dead restores into `name` left in `ioctx`'s
/// pool; errors if a restore into `name` still runs (here or elsewhere).
pub fn clear_images(ioctx: &IoCtx, name: &str) -> Result<()> {
    let prefix = format!("{name}{RESTORING}");
    for image in ioctx.list_images()? {
        let Some((h, pid, client)) = image.strip_prefix(&prefix).and_then(|rest| {
            let mut it = rest.rsplitn(3, '-');
            let (id, pid, h) = (it.next()?, it.next()?, it.next()?);
            Some((h, pid.parse::<u32>().ok()?, id.parse::<i64>().ok()?))
        }) else {
            continue;
        };
        let what = format!("{}/{image}", ioctx.pool());
        match owner(h, pid) {
            Owner::Elsewhere => {
                return Err(Error::Invalid(format!(
                    "{what} exists: a restore into {}/{name} runs on host {h} or was \
                     interrupted there (remove it with `rbd rm {what}` if none runs)",
                    ioctx.pool()
                )))
            }
            Owner::Running => {
                return Err(Error::Invalid(format!(
                    "a restore into {}/{name} is already running (process {pid}, writing {what})",
                    ioctx.pool()
                )))
            }
            Owner::Gone => {}
        }
        // its dead client's watch would hold the removal off for 30 s
        ioctx
            .open_image(&image)?
            .evict(&format!("client.{client}"))?;
        ioctx.remove_image(&image)?;
        tracing::warn!("removed {what}, left by an interrupted restore (process {pid})");
    }
    Ok(())
}

/// Removes the temporary files that dead restores into `dir/stem` left.
pub fn clear_files(dir: &Path, stem: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| TempFile::owner_pid(n, stem)) else {
            continue;
        };
        if !alive(pid) && std::fs::remove_file(e.path()).is_ok() {
            tracing::warn!(
                "removed {}, left by an interrupted restore (process {pid})",
                e.path().display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_names() {
        assert_eq!(
            kept_file(Path::new("/x/y.img")),
            PathBuf::from("/x/y.img.partial")
        );
    }

    #[test]
    fn dead_restores_files_go_and_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        // pid 4194303 is above the usual pid_max range in use here
        let dead = dir.path().join(".vm.img.tmp-4194303-0");
        let live = dir
            .path()
            .join(format!(".vm.img.tmp-{}-0", std::process::id()));
        let other = dir.path().join(".other.img.tmp-4194303-0");
        for p in [&dead, &live, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        clear_files(dir.path(), "vm.img");
        assert!(!dead.exists() && live.exists() && other.exists());
    }
}
