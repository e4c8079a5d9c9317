//! `rbdelta fsck`: the extended scrub. Where `verify` proves the archive
//! holds the bytes Ceph gave it, fsck asks whether those bytes are a sound
//! disk: it finds the partition table and the filesystems of a revision
//! ([`layout`]) and runs each one's own checker ([`check`]) the way a real
//! recovery would, replaying journals first.
//!
//! Guest bytes are hostile, so fsck gives them as little as it can: the
//! partition table parser is bounded and fuzzed; the whole check runs in a
//! child process ([`worker`]); every checker runs unprivileged in a
//! [`sandbox`] with no network and hard limits, and sees only its own
//! filesystem; no guest filesystem is mounted by the kernel unless the
//! operator opts in (`fsck.kernel-replay`, root only); what checkers print
//! is escaped before anyone sees it.
//!
//! What it promises the archive: it reads a revision through its chain
//! (hash-checked, no lock, like any reader) and never writes it. Journal
//! replays write into a copy-on-write [`overlay`] (FUSE files whose writes
//! land in a sparse temporary file) that is discarded afterwards. The only
//! archive write is its record in the volume's operation log. Killed half
//! way, the worker leaves a FUSE mount and a temporary directory under the
//! system's temp dir (`rbdelta-fsck-*`), which its parent clears; never a
//! changed archive.

pub mod check;
pub mod layout;
pub mod overlay;
pub mod sandbox;
pub mod worker;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use crate::archive::oplog::Operation;
use crate::archive::{Revision, VolumeDir};
use crate::config::FsckSettings;
use crate::error::{Error, Result};
use crate::mount::image::RevisionImage;
pub use check::Verdict;
pub use layout::{Content, Part};

/// The most filesystems of one disk that are checked; a table may claim
/// up to [`layout::MAX_GPT_ENTRIES`], each a checker run.
pub const MAX_CHECKED: usize = 128;

/// One filesystem (or partition) and what checking it found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FsResult {
    pub part: Part,
    pub verdict: Verdict,
}

/// The fsck of one revision.
#[derive(Debug, Clone)]
pub struct FsckReport {
    pub revision: Revision,
    pub results: Vec<FsResult>,
}

impl FsckReport {
    /// Whether any filesystem has errors.
    pub fn has_errors(&self) -> bool {
        self.results
            .iter()
            .any(|r| matches!(r.verdict, Verdict::Errors(_)))
    }

    /// Whether any filesystem that is there was not checked.
    pub fn has_unchecked(&self) -> bool {
        self.results
            .iter()
            .any(|r| matches!(r.verdict, Verdict::NotChecked(_)))
    }

    /// `3 ok, 1 with errors, 1 not checked, 1 skipped`.
    pub fn summary(&self) -> String {
        let count = |f: fn(&Verdict) -> bool| self.results.iter().filter(|r| f(&r.verdict)).count();
        format!(
            "{} ok, {} with errors, {} not checked, {} skipped",
            count(|v| *v == Verdict::Ok),
            count(|v| matches!(v, Verdict::Errors(_))),
            count(|v| matches!(v, Verdict::NotChecked(_))),
            count(|v| matches!(v, Verdict::Skipped(_)))
        )
    }
}

/// How fsck starts its worker: this binary's hidden `fsck-worker`.
#[derive(Debug, Clone)]
pub struct Runner {
    pub program: std::path::PathBuf,
    pub args: Vec<String>,
    pub settings: FsckSettings,
}

impl Runner {
    /// This very executable, with `args` before `fsck-worker`.
    pub fn this_binary(mut args: Vec<String>, settings: FsckSettings) -> Runner {
        args.push("fsck-worker".into());
        Runner {
            program: "/proc/self/exe".into(),
            args,
            settings,
        }
    }
}

/// Checks every filesystem of revision `rev` in a worker process, and
/// records the result in the volume's operation log (`op: "fsck"`).
/// `cancel` stops it (the worker is told, then killed).
pub fn fsck(
    vol: &VolumeDir,
    rev: &Revision,
    runner: &Runner,
    cancel: &AtomicBool,
) -> Result<FsckReport> {
    // SAFETY: geteuid cannot fail.
    if runner.settings.kernel_replay && unsafe { libc::geteuid() } != 0 {
        return Err(Error::Invalid(
            "fsck.kernel-replay needs root: it mounts the guest's XFS to replay its log".into(),
        ));
    }
    let op = Operation::start(vol.log_path(), "fsck", Some(rev.id.clone()), None)?;
    let report = worker::isolated(
        &runner.program,
        &runner.args,
        vol,
        &rev.id,
        &runner.settings,
        cancel,
    )
    .map(|results| FsckReport {
        revision: rev.clone(),
        results,
    });
    op.end(report, |r, rec| {
        rec.detail = Some(r.summary());
        if r.has_errors() {
            rec.outcome = Some("errors".into());
            rec.error = r.results.iter().find_map(|x| match &x.verdict {
                Verdict::Errors(lines) => Some(format!(
                    "{}: {}",
                    part_name(&x.part),
                    lines.last().cloned().unwrap_or_default()
                )),
                _ => None,
            });
        }
    })
}

/// The worker's work: the partitions of `rev`, its overlay mounted in
/// `scratch`, and each filesystem checked in the sandbox. `checking` is
/// told each partition before its checker starts.
pub(crate) fn check_revision(
    vol: &VolumeDir,
    rev: &Revision,
    settings: &FsckSettings,
    scratch: &Path,
    cancel: &AtomicBool,
    checking: &mut dyn FnMut(u32),
) -> Result<Vec<FsResult>> {
    let image = RevisionImage::open(vol, rev)?;
    let parts = layout::partitions(&|at, len| image.read(at, len), image.size())?;
    let sandbox = sandbox::Sandbox::new(sandbox::Limits {
        cpu: settings.cpu_time,
        memory: settings.memory,
        wall: settings.timeout,
    });
    let overlay = overlay::Overlay::mount(image, &parts, sandbox.owner(), scratch)?;
    crate::fault::pause("fsck: checking");
    let how = check::How {
        sandbox: &sandbox,
        kernel_replay: settings.kernel_replay,
        cancel,
        scratch,
    };
    let mut results = Vec::new();
    for (i, part) in parts.into_iter().enumerate() {
        let verdict = if i >= MAX_CHECKED {
            Verdict::NotChecked(format!("more than {MAX_CHECKED} partitions: not checked"))
        } else {
            checking(part.number);
            check::check(&overlay.file(&part), &part, &how)?
        };
        results.push(FsResult { part, verdict });
    }
    drop(overlay);
    Ok(results)
}

/// `partition 2 (xfs)` or `whole disk (ext2/3/4)`.
pub fn part_name(p: &Part) -> String {
    match p.number {
        0 => format!("whole disk ({})", p.content.as_str()),
        n => format!("partition {n} ({})", p.content.as_str()),
    }
}
