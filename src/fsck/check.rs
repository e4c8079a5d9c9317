//! Running the right checker on one filesystem of the overlay, inside the
//! [`sandbox`](super::sandbox), on the filesystem's overlay file (writable,
//! since journal replays write, but only ever into the throwaway overlay).
//! ext2/3/4: `e2fsck -p -E journal_only` (replay, in user space), then
//! `e2fsck -fn`; xfs: `xfs_repair -n` (a dirty log is reported as not
//! checked, unless the operator opted into a kernel mount to replay it);
//! btrfs: `btrfs check --readonly`; vfat: `fsck.vfat -n`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use super::layout::{Content, Part};
use super::sandbox::{Ended, Sandbox, DISK};
use crate::error::{Error, IoContext, Result};
use crate::text::printable;

/// What checking one filesystem found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    /// The checker's summary lines.
    Errors(Vec<String>),
    /// Why it was not checked: nothing to check there (swap, no
    /// filesystem).
    Skipped(String),
    /// Why a filesystem that is there was not checked (a dirty XFS log, a
    /// checker over its limits): a warning, neither ok nor an error.
    NotChecked(String),
}

/// A loop device over a byte range of a file; detached on drop.
struct Loop(String);

impl Loop {
    fn attach(file: &Path, start: u64, len: u64) -> Result<Loop> {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--offset"])
            .arg(start.to_string())
            .arg("--sizelimit")
            .arg(len.to_string())
            .arg(file)
            .output()
            .map_err(|e| Error::io("losetup", e))?;
        if !out.status.success() {
            return Err(Error::Invalid(format!(
                "losetup: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(Loop(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// The package that brings `program`.
pub fn package_of(program: &str) -> &'static str {
    match program {
        "e2fsck" => "e2fsprogs",
        "xfs_repair" => "xfsprogs",
        "btrfs" => "btrfs-progs",
        "fsck.vfat" => "dosfstools",
        "bwrap" => "bubblewrap",
        _ => "",
    }
}

/// The last few lines of a checker's output, its version banner aside,
/// escaped and cut: its summary.
fn summary(lines: Vec<String>) -> Vec<String> {
    let lines: Vec<String> = lines
        .into_iter()
        .filter(|l| !(l.starts_with("e2fsck ") && l.ends_with(')')))
        .collect();
    let skip = lines.len().saturating_sub(8);
    lines
        .into_iter()
        .skip(skip)
        .map(|l| printable(&l, 300))
        .collect()
}

/// How checking one filesystem is done.
pub struct How<'a> {
    pub sandbox: &'a Sandbox,
    /// Replay an XFS log through a kernel mount first (root only).
    pub kernel_replay: bool,
    pub cancel: &'a AtomicBool,
    /// A private directory for mount points.
    pub scratch: &'a Path,
}

/// What xfs_repair -n says of a log it did not replay.
const XFS_DIRTY_LOG: &str = "metadata changes in a log";

/// Checks the filesystem of `part`, whose overlay file is `file`.
pub fn check(file: &Path, part: &Part, how: &How<'_>) -> Result<Verdict> {
    let skip = |why: &str| Ok(Verdict::Skipped(why.to_string()));
    match part.content {
        Content::Swap => return skip("swap space: nothing to check"),
        Content::Lvm => {
            return skip("LVM physical volume: not checked (its logical volumes are not activated)")
        }
        Content::Extended => return skip("extended partition: a container of logical partitions"),
        Content::Unknown => return skip("no filesystem recognised"),
        Content::Ext | Content::Xfs | Content::Btrfs | Content::Vfat => {}
    }
    let disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .at(file)?;
    let run = |program: &str, args: &[&str]| how.sandbox.run(program, args, &disk, how.cancel);
    let mut replayed = false;
    let out = match part.content {
        Content::Ext => {
            // Replay the journal (a crash-consistent snapshot has a dirty
            // one) in user space; 0 and 1 mean done. Then the full check.
            let out = run("e2fsck", &["-p", "-E", "journal_only", DISK])?;
            match out.ended {
                Ended::Exited(0 | 1) => run("e2fsck", &["-f", "-n", DISK])?,
                _ => out,
            }
        }
        Content::Xfs => {
            if how.kernel_replay {
                replay_by_mount(file, "xfs", &["-o", "nouuid"], how.scratch)?;
                replayed = true;
            }
            run("xfs_repair", &["-n", "-f", DISK])?
        }
        Content::Btrfs => run("btrfs", &["check", "--readonly", DISK])?,
        _ => run("fsck.vfat", &["-n", DISK])?,
    };
    let program = match part.content {
        Content::Ext => "e2fsck",
        Content::Xfs => "xfs_repair",
        Content::Btrfs => "btrfs check",
        _ => "fsck.vfat",
    };
    Ok(match out.ended {
        Ended::Exited(0) => Verdict::Ok,
        _ if part.content == Content::Xfs
            && !replayed
            && out.lines.iter().any(|l| l.contains(XFS_DIRTY_LOG)) =>
        {
            Verdict::NotChecked(
                "dirty log: not checked (only a kernel mount replays an XFS log; \
                 fsck.kernel-replay in the config allows it)"
                    .into(),
            )
        }
        Ended::Exited(_) => Verdict::Errors(summary(out.lines)),
        Ended::Killed(sig) => Verdict::NotChecked(format!(
            "{program} was killed by signal {sig} (over its CPU or memory limit, or it crashed)"
        )),
        Ended::TimedOut => {
            Verdict::NotChecked(format!("{program} ran past its time limit and was killed"))
        }
    })
}

/// Mounts and unmounts the filesystem in `file` (through a loop device)
/// so the kernel replays its log, into the overlay. Only with
/// `fsck.kernel-replay` (root): it runs kernel filesystem code over guest
/// bytes. A mount that fails is left to the checker to judge.
fn replay_by_mount(file: &Path, fstype: &str, opts: &[&str], scratch: &Path) -> Result<()> {
    let len = std::fs::metadata(file).at(file)?.len();
    let dev = Loop::attach(file, 0, len)?;
    let at: PathBuf = scratch.join("replay");
    std::fs::create_dir_all(&at).map_err(|e| Error::io(&at, e))?;
    let ok = Command::new("mount")
        .args(["-t", fstype])
        .args(opts)
        .arg(&dev.0)
        .arg(&at)
        .output()
        .map_err(|e| Error::io("mount", e))?
        .status
        .success();
    if ok {
        let _ = Command::new("umount").arg(&at).status();
    }
    let _ = std::fs::remove_dir(&at);
    Ok(())
}
