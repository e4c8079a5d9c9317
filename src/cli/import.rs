//! `rbdelta import VOLUME [--raw FILE [--raw-snapshot NAME]] [--diff FILE...]`:
//! adopting backups another tool made. Every stream is read and checked,
//! and the chain's snapshot names matched up, before the first revision is
//! written: a bad, truncated or out-of-order stream, or a diff that does
//! not apply to the one before, commits nothing.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context};
use rbdelta::archive::VolumeDir;
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
    /// Volume name from the config; its archive must hold no revision yet.
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
    let vol = VolumeDir::open_or_create(&cfg.archive, &a.volume, DEFAULT_BLOCK_SIZE)?;
    if let Some(r) = vol.revisions()?.last() {
        return Err(anyhow!(
            "volume {} already has revisions (newest {}): import starts a volume's history, so it needs an empty one",
            a.volume,
            r.short()
        )
        .into());
    }
    let progress = ctx.progress(&a.volume);
    let mut opts = BackupOptions {
        source_name: listed.source_name(),
        ..Default::default()
    };
    let mut files: Vec<&Path> = a.raw.iter().map(PathBuf::as_path).collect();
    files.extend(a.diff.iter().map(PathBuf::as_path));
    let mut diffs = diffs.into_iter();
    let mut last_time = None;
    for (i, path) in files.iter().enumerate() {
        opts.created = Some(created(path, &mut last_time)?);
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
                    "importing {what} ({} of {} committed before it; they stay)",
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
