//! What an interrupted restore leaves behind never looks complete, and the
//! next restore into the same target clears what a dead one left.
//!
//! A new RBD image is written as
//! `<name>.rbdelta-restoring-<host>-<pid>-<client id>` and renamed to
//! `<name>` only once complete; a file as a hidden
//! `.<name>.tmp-<host>-<pid>-<n>` beside it (see [`crate::archive::atomic`]),
//! `<host>` being the node name when the process has one, else the host
//! name. A `kill -9` cannot remove them, so a restore first removes those
//! of its target whose process is gone (this host, pid not running; its
//! dead client, which Ceph would keep as a watcher for 30 s, is cut off
//! first) and refuses while an image one is still running. What another
//! host left, on a shared pool or CephFS, is never removed from here: its
//! pid means nothing on this host. Neither is a temp file of an older
//! build, whose name has no host. `--keep-partial` keeps a failed
//! restore's image as `<name>.rbdelta-partial` (a file as `<name>.partial`),
//! which nothing removes.

use std::path::{Path, PathBuf};

use crate::archive::atomic::TempFile;
use crate::ceph::IoCtx;
use crate::error::{Error, Result};
use crate::host::{here, owner, Owner};

/// The tag between a target's name and the host and pid of its restore.
const RESTORING: &str = ".rbdelta-restoring-";

/// The name this process, connected through `ioctx`, restores image
/// `name` under.
pub fn restoring_image(ioctx: &IoCtx, name: &str) -> String {
    let client = ioctx.client();
    let id = client.strip_prefix("client.").unwrap_or(&client);
    format!("{name}{RESTORING}{}-{}-{id}", here(), std::process::id())
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

/// Removes the temporary files that dead restores of this host into
/// `dir/stem` left. Those of other hosts, and those whose name has no
/// host (an older build's), stay: their pid tells nothing here.
pub fn clear_files(dir: &Path, stem: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some((h, pid)) = name.to_str().and_then(|n| TempFile::owner(n, stem)) else {
            continue;
        };
        let Some(h) = h else {
            tracing::warn!(
                "left {} alone: its name does not say which host wrote it \
                 (an older rbdelta); remove it if no restore into {} runs anywhere",
                e.path().display(),
                dir.join(stem).display()
            );
            continue;
        };
        if owner(h, pid) == Owner::Gone && std::fs::remove_file(e.path()).is_ok() {
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
        let me = here();
        // pid 4194303 is above the usual pid_max range in use here
        let dead = dir.path().join(format!(".vm.img.tmp-{me}-4194303-0"));
        let live = dir
            .path()
            .join(format!(".vm.img.tmp-{me}-{}-999999", std::process::id()));
        let other = dir.path().join(format!(".other.img.tmp-{me}-4194303-0"));
        // another node's, on a shared archive: its pid means nothing here
        let theirs = dir.path().join(".vm.img.tmp-other-node-4194303-0");
        assert_ne!(me, "other-node");
        // an older build's name: no host, so nobody can tell
        let old = dir.path().join(".vm.img.tmp-4194303-0");
        for p in [&dead, &live, &other, &theirs, &old] {
            std::fs::write(p, b"x").unwrap();
        }
        clear_files(dir.path(), "vm.img");
        assert!(!dead.exists(), "this host's dead restore's file stays");
        assert!(live.exists() && other.exists());
        assert!(theirs.exists(), "another node's file was removed");
        assert!(old.exists(), "a file of unknown host was removed");
        // a temp file made here is named for this host and cleared as one
        let t = TempFile::new_in(dir.path(), "vm.img").unwrap();
        let name = t.path.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(
            TempFile::owner(&name, "vm.img"),
            Some((Some(me.as_str()), std::process::id()))
        );
        t.keep().unwrap();
    }

    #[test]
    fn names_are_parsed_with_their_host() {
        for (name, want) in [
            (
                ".v.tmp-node-a.example-17-3",
                Some((Some("node-a.example"), 17)),
            ),
            (".v.tmp-n_1-17-3", Some((Some("n_1"), 17))),
            (".v.tmp-17-3", Some((None, 17))),
            (".v.tmp--17-3", None),
            (".v.tmp-a-x-3", None),
            (".v.tmp-a-17-x", None),
            (".v.tmp-17", None),
            (".w.tmp-a-17-3", None),
        ] {
            assert_eq!(TempFile::owner(name, "v"), want, "{name}");
        }
    }
}
