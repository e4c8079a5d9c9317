//! Running the right checker on one filesystem of the overlay disk, through
//! a loop device over its byte range (writable, since journal replays
//! write, but only ever into the throwaway overlay). ext2/3/4:
//! `e2fsck -p -E journal_only` (replay), then `e2fsck -fn`; xfs: a mount
//! and unmount (log replay), then `xfs_repair -n`; btrfs: `btrfs check
//! --readonly`; vfat: `fsck.vfat -n`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::layout::{Content, Part};
use crate::error::{Error, Result};

/// What checking one filesystem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// The checker's summary lines.
    Errors(Vec<String>),
    /// Why it was not checked.
    Skipped(String),
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

/// Runs a checker: exit code and its output lines (stdout then stderr).
fn run(program: &str, args: &[&str]) -> Result<(i32, Vec<String>)> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Invalid(format!("{program} is not installed"))
        } else {
            Error::io(program, e)
        }
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    Ok((out.status.code().unwrap_or(-1), lines))
}

/// The last few lines of a checker's output, its version banner aside:
/// its summary.
fn summary(lines: Vec<String>) -> Vec<String> {
    let lines: Vec<String> = lines
        .into_iter()
        .filter(|l| !(l.starts_with("e2fsck ") && l.ends_with(')')))
        .collect();
    let skip = lines.len().saturating_sub(8);
    lines.into_iter().skip(skip).collect()
}

/// The package that brings a filesystem's checker.
fn package(c: Content) -> &'static str {
    match c {
        Content::Ext => "e2fsprogs",
        Content::Xfs => "xfsprogs",
        Content::Btrfs => "btrfs-progs",
        Content::Vfat => "dosfstools",
        _ => "",
    }
}

/// Checks the filesystem of `part` on `disk` (the overlay); `scratch` is
/// a private directory for mount points.
pub fn check(disk: &Path, part: &Part, scratch: &Path) -> Result<Verdict> {
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
    let dev = Loop::attach(disk, part.start, part.len)?;
    let d = dev.0.as_str();
    let checked = (|| -> Result<(bool, Vec<String>)> {
        Ok(match part.content {
            Content::Ext => {
                // Replay the journal (a crash-consistent snapshot has a
                // dirty one); 0 and 1 mean done. Then the full check.
                let (code, lines) = run("e2fsck", &["-p", "-E", "journal_only", d])?;
                if code > 1 {
                    return Ok((false, lines));
                }
                let (code, lines) = run("e2fsck", &["-f", "-n", d])?;
                (code == 0, lines)
            }
            Content::Xfs => {
                replay_by_mount(d, "xfs", &["-o", "nouuid"], scratch)?;
                let (code, lines) = run("xfs_repair", &["-n", d])?;
                (code == 0, lines)
            }
            Content::Btrfs => {
                let (code, lines) = run("btrfs", &["check", "--readonly", d])?;
                (code == 0, lines)
            }
            _ => {
                let (code, lines) = run("fsck.vfat", &["-n", d])?;
                (code == 0, lines)
            }
        })
    })();
    match checked {
        Ok((true, _)) => Ok(Verdict::Ok),
        Ok((false, lines)) => Ok(Verdict::Errors(summary(lines))),
        Err(Error::Invalid(m)) if m.ends_with("not installed") => {
            skip(&format!("{m} (package {})", package(part.content)))
        }
        Err(e) => Err(e),
    }
}

/// Mounts and unmounts a filesystem so the kernel replays its log (on the
/// overlay). A mount that fails is left to the checker to judge.
fn replay_by_mount(dev: &str, fstype: &str, opts: &[&str], scratch: &Path) -> Result<()> {
    let at: PathBuf = scratch.join("replay");
    std::fs::create_dir_all(&at).map_err(|e| Error::io(&at, e))?;
    let ok = Command::new("mount")
        .args(["-t", fstype])
        .args(opts)
        .arg(dev)
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
