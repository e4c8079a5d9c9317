//! `rbdelta export-diff VOLUME [--from REV] [--revision REV] [-o FILE | -o -]`:
//! the changes between two revisions in Ceph's `rbd diff v1` format, for
//! `rbd import-diff` (an off-site chain in Ceph's own format). A file
//! appears only once complete; needs no cluster.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use rbdelta::export_diff::export_diff;
use rbdelta::restore::file_target::temp_beside;

use super::{human, open_volume, Ctx, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Volume name.
    volume: String,
    /// The revision the diff starts from (the image it applies to must
    /// have this revision's snapshot); without it, from an empty image.
    #[arg(long, value_name = "REV")]
    from: Option<String>,
    /// The revision it ends at: id, unique prefix, or `latest`.
    #[arg(long, default_value = "latest")]
    revision: String,
    /// Where to write: a file, or `-` for stdout.
    #[arg(short, long, value_name = "FILE", default_value = "-")]
    output: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let cfg = ctx.config()?;
    let vol = open_volume(&cfg, &a.volume)?;
    let to = vol.find_revision(&a.revision)?;
    let from = a
        .from
        .as_deref()
        .map(|f| vol.find_revision(f))
        .transpose()?;
    if let Some(f) = &from {
        if f.manifest.seq >= to.manifest.seq {
            return Err(Failure {
                code: 2,
                error: anyhow!(
                    "--from {} is not older than --revision {}",
                    f.short(),
                    to.short()
                ),
            });
        }
    }
    let progress = ctx.progress(&a.volume);
    let (report, shown) = if a.output.as_os_str() == "-" {
        let out = super::export::stdout_stream("a diff")?;
        let (_, r) = export_diff(&vol, from.as_ref(), &to, out, progress.as_ref())?;
        (r, "stdout".to_string())
    } else {
        super::restore::refuse_inside_archive(&a.output, &cfg.archive)?;
        (
            to_file(
                &vol,
                from.as_ref(),
                &to,
                &a.output,
                a.force,
                progress.as_ref(),
            )?,
            a.output.display().to_string(),
        )
    };
    eprintln!(
        "{}: diff {} → {} ({} written, {} zeroed, image {}) to {shown}",
        a.volume,
        from.as_ref()
            .map_or("empty".to_string(), |f| f.short().to_string()),
        to.short(),
        human(report.data),
        human(report.zeroed),
        human(to.manifest.size),
    );
    Ok(())
}

/// Writes the diff to a temp file beside `dest`, then renames it into place.
fn to_file(
    vol: &rbdelta::archive::VolumeDir,
    from: Option<&rbdelta::archive::Revision>,
    to: &rbdelta::archive::Revision,
    dest: &Path,
    force: bool,
    progress: &dyn rbdelta::progress::Progress,
) -> anyhow::Result<rbdelta::export_diff::DiffReport> {
    let tmp = temp_beside(dest, force)?;
    let out = std::io::BufWriter::with_capacity(1 << 20, &tmp.file);
    let (mut out, report) = export_diff(vol, from, to, out, progress)?;
    out.flush()?;
    drop(out);
    tmp.persist(dest)?;
    Ok(report)
}
