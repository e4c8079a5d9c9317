//! `rbdelta import VOLUME [--raw FILE [--raw-snapshot NAME]] [--diff FILE...]`:
//! adopting backups another tool made. Every stream is read and checked,
//! and the chain's snapshot names matched up, before the first revision is
//! written: a bad, truncated or out-of-order stream, or a diff that does
//! not apply to the one before, commits nothing.
//!
//! An import that stops half-way (killed, a disk error, a file changed
//! under it) is not a dead end: run again with the same chain (or one
//! extended with later diffs), it skips the steps the volume already
//! holds and goes on from the first one missing. The volume's revisions
//! must then be exactly the chain's first steps: imported ones (`order`
//! and `features` 0), with each step's end snapshot and size, in order.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context};
use rbdelta::archive::{Revision, VolumeDir};
use rbdelta::backup::import::import_revision;
use rbdelta::backup::BackupOptions;
use rbdelta::format::DEFAULT_BLOCK_SIZE;
use rbdelta::mount::image::RevisionImage;
use rbdelta::source::diff_file::{DiffFile, DiffOverBase};
use rbdelta::source::raw::RawFile;
use rbdelta::source::SourceSnapshot;

use super::{human, Ctx, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Volume name from the config; its archive must hold no revision yet,
    /// or only those an earlier import of this chain committed (then the
    /// import resumes after them).
    volume: String,
    /// A raw image file (`rbd export`, `qemu-img convert -O raw`, another
    /// tool's restore): the first revision, a full.
    #[arg(long, value_name = "FILE", required_unless_present = "diff")]
    raw: Option<PathBuf>,
    /// The snapshot the raw image was exported from (default: the one the
    /// first --diff applies to).
    #[arg(long, value_name = "NAME", requires = "raw")]
    raw_snapshot: Option<String>,
    /// `rbd export-diff` files, oldest first, each applying to the one
    /// before (the first to --raw, or to an empty image): each becomes a
    /// delta named by its end snapshot.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    diff: Vec<PathBuf>,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let cfg = ctx.config()?;
    let listed = cfg
        .listed()
        .find(|v| v.name == a.volume)
        .ok_or_else(|| anyhow!("no volume named {:?} in the config", a.volume))?;
    let diffs: Vec<DiffFile> = a
        .diff
        .iter()
        .map(|p| DiffFile::scan(p))
        .collect::<Result<_, _>>()?;
    let raw_name = match (&a.raw, &a.raw_snapshot, diffs.first()) {
        (None, _, _) => None,
        (Some(_), Some(n), _) => Some(n.clone()),
        (Some(_), None, Some(d)) => d.header.from.clone(),
        (Some(p), None, None) => Some(format!("import-{}", file_name(p))),
    };
    let mut raw = match (&a.raw, &raw_name) {
        (Some(p), Some(n)) => Some(RawFile::open(p, n)?),
        _ => None,
    };
    check_chain(raw_name.as_deref(), a.raw.as_deref(), &diffs)?;
    let mut files: Vec<&Path> = a.raw.iter().map(PathBuf::as_path).collect();
    files.extend(a.diff.iter().map(PathBuf::as_path));
    let mut steps: Vec<Step> = Vec::new();
    if let (Some(r), Some(p)) = (&raw, &a.raw) {
        steps.push(Step {
            file: p,
            snapshot: r.name(),
            size: r.size(),
        });
    }
    steps.extend(diffs.iter().map(|d| Step {
        file: d.path(),
        snapshot: &d.header.to,
        size: d.header.size,
    }));
    let vol = VolumeDir::open_or_create(&cfg.archive, &a.volume, DEFAULT_BLOCK_SIZE)?;
    let done = imported_prefix(&a.volume, &vol.revisions()?, &steps)?;
    drop(steps);
    let progress = ctx.progress(&a.volume);
    let mut opts = BackupOptions {
        source_name: listed.source_name(),
        ..Default::default()
    };
    let mut diffs = diffs.into_iter();
    let mut last_time = None;
    for (i, path) in files.iter().enumerate() {
        opts.created = Some(created(path, &mut last_time)?);
        if let Some(r) = done.get(i) {
            // committed by an earlier run of this import
            let snapshot = match raw.take() {
                Some(r) => r.name().to_string(),
                None => diffs.next().expect("one diff per file").header.to,
            };
            println!(
                "{}: {} already imported as revision {} (snapshot {snapshot}), skipped",
                a.volume,
                path.display(),
                r.short()
            );
            continue;
        }
        let step: Box<dyn SourceSnapshot> = match raw.take() {
            Some(r) => Box::new(r),
            None => {
                let base = match vol.revisions()?.pop() {
                    Some(r) => Some(RevisionImage::open(&vol, &r)?),
                    None => None,
                };
                Box::new(DiffOverBase {
                    diff: diffs.next().expect("one diff per file"),
                    base,
                })
            }
        };
        let what = path.display().to_string();
        let report = import_revision(&vol, step.as_ref(), &what, &opts, progress.as_ref())
            .with_context(|| {
                format!(
                    "importing {what} ({} of {} committed before it; they stay, \
                     and the same import run again goes on from here)",
                    i,
                    files.len()
                )
            })?;
        println!(
            "{}: imported {what} as revision {} ({}, snapshot {}, {} stored)",
            a.volume,
            report.revision.short(),
            report.kind(),
            step.name(),
            human(report.bytes_written)
        );
    }
    Ok(())
}

/// One file of the chain: the snapshot it ends at and the image's size there.
struct Step<'a> {
    file: &'a Path,
    snapshot: &'a str,
    size: u64,
}

/// The revisions of the volume that an earlier run of this import
/// committed: all of them, which must be the chain's first steps in
/// order. Anything else there is refused, and nothing is written.
fn imported_prefix(
    volume: &str,
    revisions: &[Revision],
    steps: &[Step],
) -> anyhow::Result<Vec<Revision>> {
    let refuse = |why: String| {
        anyhow!(
            "volume {volume} already has revisions, and {why}: import starts a volume's \
             history, or resumes one that an import of the same chain started"
        )
    };
    if revisions.len() > steps.len() {
        return Err(refuse(format!(
            "more of them ({}, newest {}) than the chain has steps ({})",
            revisions.len(),
            revisions.last().map(Revision::short).unwrap_or_default(),
            steps.len()
        )));
    }
    for (i, (r, s)) in revisions.iter().zip(steps).enumerate() {
        let m = &r.manifest;
        let imported = m.order == 0 && m.features == 0;
        if !imported || m.snapshot != s.snapshot || m.size != s.size {
            return Err(refuse(format!(
                "revision {} ({}, snapshot {}, {} bytes) is not step {} of the chain \
                 ({}: snapshot {}, {} bytes)",
                r.short(),
                if imported { "imported" } else { "a backup" },
                m.snapshot,
                m.size,
                i + 1,
                s.file.display(),
                s.snapshot,
                s.size
            )));
        }
    }
    Ok(revisions.to_vec())
}

/// Each diff must apply to the snapshot the step before ends at.
fn check_chain(
    raw_name: Option<&str>,
    raw: Option<&Path>,
    diffs: &[DiffFile],
) -> anyhow::Result<()> {
    let mut at = raw_name.map(str::to_string);
    let mut what = raw.map(|p| p.display().to_string());
    for d in diffs {
        let from = d.header.from.as_deref();
        if from != at.as_deref() {
            let wants = match from {
                Some(s) => format!("applies to snapshot {s}"),
                None => "applies to an empty image".into(),
            };
            let have = match (&what, &at) {
                (Some(w), Some(s)) => format!("{w} ends at snapshot {s}"),
                (Some(w), None) => format!("{w} ends at an empty image"),
                (None, _) => "it is first (give the raw image it applies to with --raw)".into(),
            };
            bail!("{} {wants}, but {have}: not a chain", d.path().display());
        }
        at = Some(d.header.to.clone());
        what = Some(d.path().display().to_string());
    }
    Ok(())
}

/// A file's modification time as the revision's time, never earlier than
/// the step before.
fn created(path: &Path, last: &mut Option<SystemTime>) -> anyhow::Result<String> {
    let t = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .with_context(|| format!("{}", path.display()))?;
    let t = last.map_or(t, |l| t.max(l));
    *last = Some(t);
    Ok(time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formats"))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "raw".into())
}
