//! `rbdelta fsck`: the extended scrub. Where `verify` proves the archive
//! holds the bytes Ceph gave it, fsck asks whether those bytes are a sound
//! disk: it finds the partition table and the filesystems of a revision
//! ([`layout`]) and runs each one's own checker ([`check`]) the way a real
//! recovery would, replaying journals first.
//!
//! What it promises the archive: it reads a revision through its chain
//! (hash-checked, no lock, like any reader) and never writes it. Journal
//! replays write into a copy-on-write [`overlay`] (a FUSE file whose writes
//! land in a sparse temporary file) that is discarded afterwards. The only
//! archive write is its record in the volume's operation log. Killed half
//! way, it may leave a loop device, a FUSE mount and a temporary directory
//! under the system's temp dir (`rbdelta-fsck-*`), never a changed archive.

pub mod check;
pub mod layout;
pub mod overlay;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::archive::oplog::Operation;
use crate::archive::{Revision, VolumeDir};
use crate::error::{Error, IoContext, Result};
use crate::mount::image::RevisionImage;
pub use check::Verdict;
pub use layout::{Content, Part};

/// One filesystem (or partition) and what checking it found.
#[derive(Debug, Clone)]
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

    /// `3 ok, 1 with errors, 1 skipped`.
    pub fn summary(&self) -> String {
        let count = |f: fn(&Verdict) -> bool| self.results.iter().filter(|r| f(&r.verdict)).count();
        format!(
            "{} ok, {} with errors, {} skipped",
            count(|v| *v == Verdict::Ok),
            count(|v| matches!(v, Verdict::Errors(_))),
            count(|v| matches!(v, Verdict::Skipped(_)))
        )
    }
}

/// A private scratch directory under the temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "rbdelta-fsck-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&p).at(&p)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).at(&p)?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Checks every filesystem of revision `rev`, and records the result in
/// the volume's operation log (`op: "fsck"`).
pub fn fsck(vol: &VolumeDir, rev: &Revision) -> Result<FsckReport> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::Invalid(
            "fsck needs root: it attaches the revision's filesystems to loop devices".into(),
        ));
    }
    let op = Operation::start(vol.log_path(), "fsck", Some(rev.id.clone()), None)?;
    op.end(fsck_unlogged(vol, rev), |r, rec| {
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

fn fsck_unlogged(vol: &VolumeDir, rev: &Revision) -> Result<FsckReport> {
    let image = RevisionImage::open(vol, rev)?;
    let parts = layout::partitions(&|at, len| image.read(at, len), image.size())?;
    let scratch = Scratch::new()?;
    let overlay = overlay::Overlay::mount(image, &scratch.0)?;
    let mut results = Vec::new();
    for part in parts {
        let verdict = check::check(&overlay.disk(), &part, &scratch.0)?;
        results.push(FsResult { part, verdict });
    }
    drop(overlay);
    Ok(FsckReport {
        revision: rev.clone(),
        results,
    })
}

/// `partition 2 (xfs)` or `whole disk (ext2/3/4)`.
pub fn part_name(p: &Part) -> String {
    match p.number {
        0 => format!("whole disk ({})", p.content.as_str()),
        n => format!("partition {n} ({})", p.content.as_str()),
    }
}
