//! `rbdelta restore VOLUME [--revision REV] (--to-image POOL/IMAGE
//! [--in-place] [--verify-target] | --to-file PATH)`.
//!
//! The safety belt lives here: an existing target is refused unless
//! `--force` (or `--in-place`, which wants one); the volume's own source
//! image is refused unless `--force`; a file inside the archive root is
//! refused always. An existing image in use is refused (see
//! `rbdelta::restore`'s claim), and so is one without the exclusive-lock
//! feature unless `--force-unlocked`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use rbdelta::restore::file_target::FileTarget;
use rbdelta::restore::rbd_target::RbdTarget;
use rbdelta::restore::verify_target::verify_image;
use rbdelta::restore::{in_place, restore, RestoreOptions, RestoreTarget, TargetOptions};
use rbdelta::source::rbd::RbdImage;
use rbdelta::source::{ImageLayout, SourceImage};

use super::{human, open_volume, Ctx, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Volume name from the config.
    volume: String,
    /// Revision id, unique prefix, or `latest`.
    #[arg(long, default_value = "latest")]
    revision: String,
    /// Restore into a new RBD image POOL/IMAGE.
    #[arg(
        long,
        value_name = "POOL/IMAGE",
        conflicts_with = "to_file",
        required_unless_present = "to_file"
    )]
    to_image: Option<String>,
    /// Restore into a sparse raw file.
    #[arg(long, value_name = "PATH")]
    to_file: Option<PathBuf>,
    /// Overwrite an existing target (or the volume's own source image).
    #[arg(long)]
    force: bool,
    /// Roll the existing image back, writing only the blocks that differ
    /// (found from a snapshot of an earlier backup that the image still
    /// has, else by reading and hashing the image). Refused while another
    /// client uses the image.
    #[arg(long, requires = "to_image", conflicts_with = "keep_partial")]
    in_place: bool,
    /// With --in-place: ignore the image's snapshots and read and hash
    /// every block to find the ones that differ.
    #[arg(long, requires = "in_place")]
    no_snapshot: bool,
    /// Write into an existing image without the exclusive-lock feature
    /// (--in-place, or --force over it), which nothing then protects from
    /// a VM that starts during the restore. (Not --force: rolling back the
    /// volume's own source image already needs that.)
    #[arg(long, requires = "to_image")]
    force_unlocked: bool,
    /// Afterwards, read the whole image back and compare it with the
    /// revision, block by block.
    #[arg(long, requires = "to_image")]
    verify_target: bool,
    /// Restore despite corrupt blocks, writing zeros there.
    #[arg(long)]
    allow_inconsistent: bool,
    /// If the restore fails or is interrupted, keep what it wrote (as
    /// IMAGE.rbdelta-partial or PATH.partial) instead of removing it.
    #[arg(long)]
    keep_partial: bool,
    /// How long a write into the image may keep failing because the
    /// cluster does not answer (retried with pauses of 1, 2, 4 … 30 s)
    /// before the restore fails.
    #[arg(long, value_name = "SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    retry_for: u64,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    // Before any connection: librados' threads must inherit the signal mask.
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    super::signals::stop_on_terminate(
        cancel.clone(),
        Some(if a.keep_partial {
            "the restore ends and keeps what it wrote"
        } else {
            "the restore ends and removes what it wrote"
        }),
    );
    let cfg = ctx.config()?;
    let vol = open_volume(&cfg, &a.volume)?;
    let rev = vol.find_revision(&a.revision)?;
    let state = rbdelta::archive::state::VolumeState::load(&vol.state_path())?;
    if let rbdelta::archive::state::Trust::Distrusted { reason } = state.get(&rev.id).trust {
        eprintln!(
            "rbdelta: warning: revision {} is distrusted ({reason}); every block is checked while restoring, but compare the result with care",
            rev.short()
        );
    }
    // The image the revision came from, as recorded, even if the config no
    // longer lists the volume.
    let (src_pool, src_image) = rev.manifest.source.split_once('/').unwrap_or(("", ""));
    let size = rev.manifest.size;
    let topts = TargetOptions {
        force: a.force,
        force_unlocked: a.force_unlocked,
        keep_partial: a.keep_partial,
        retry_for: std::time::Duration::from_secs(a.retry_for),
    };
    let progress = ctx.progress(&a.volume);
    // The image restored into (for --verify-target) and an in-place plan.
    let (mut target_io, mut plan) = (None, None);
    let target: Box<dyn RestoreTarget> = if let Some(spec) = &a.to_image {
        let (pool, image) = spec
            .split_once('/')
            .filter(|(p, i)| !p.is_empty() && !i.is_empty() && !i.contains('/'))
            .ok_or_else(|| Failure {
                code: 2,
                error: anyhow!("--to-image wants POOL/IMAGE, got {spec:?}"),
            })?;
        if pool == src_pool && image == src_image && !a.force {
            return Err(anyhow!(
                "refusing to restore over {spec}, the volume's own source image (use --force if you mean it)"
            )
            .into());
        }
        let cluster = ctx.connect(&cfg)?;
        let ioctx = cluster
            .ioctx(pool)
            .with_context(|| format!("pool {pool}"))?;
        // Reproduce the source's object size and features: as recorded at
        // backup time, else from the source image if it still exists.
        let recorded = ImageLayout {
            order: rev.manifest.order,
            features: rev.manifest.features,
        };
        let layout = if recorded.order != 0 {
            recorded
        } else {
            cluster
                .ioctx(src_pool)
                .ok()
                .and_then(|io| RbdImage::open(&io, src_image).ok())
                .and_then(|img| img.layout().ok())
                .unwrap_or_default()
        };
        target_io = Some((ioctx.clone(), image.to_string()));
        if a.in_place {
            let (target, p) = in_place::prepare(
                &vol,
                &rev,
                &ioctx,
                image,
                !a.no_snapshot,
                &topts,
                progress.as_ref(),
            )?;
            plan = Some(p);
            Box::new(target)
        } else {
            Box::new(RbdTarget::create(&ioctx, image, size, layout, &topts)?)
        }
    } else {
        let path = a.to_file.clone().expect("clap requires one target");
        refuse_inside_archive(&path, &cfg.archive)?;
        Box::new(FileTarget::create(&path, size, &topts)?)
    };
    let opts = RestoreOptions {
        allow_inconsistent: a.allow_inconsistent,
        cancel,
        only: plan.as_ref().map(|p: &in_place::Plan| p.write.clone()),
    };
    let report = restore(&vol, &rev, target, &opts, progress.as_ref())?;
    warn_zeroed(&rev, &report, "restored");
    if let Some(p) = &plan {
        println!(
            "{}: rolled {} back to revision {} in place: {} of {} blocks written ({}), {} of data in {:.1}s, checksum {}",
            a.volume,
            a.to_image.as_deref().unwrap_or_default(),
            rev.short(),
            p.write.len(),
            p.blocks,
            basis(&p.basis),
            human(report.bytes_written),
            report.duration.as_secs_f64(),
            verdict(&report)
        );
    } else {
        println!(
            "{}: restored revision {} (image {}, {} of data written) in {:.1}s, checksum {}",
            a.volume,
            rev.short(),
            human(report.size),
            human(report.bytes_written),
            report.duration.as_secs_f64(),
            verdict(&report)
        );
    }
    if let Some((ioctx, image)) = target_io.filter(|_| a.verify_target) {
        let read = verify_image(&vol, &rev, &ioctx, &image, progress.as_ref())?;
        println!(
            "{}: {}/{image} read back ({} of data) and matches revision {} block by block",
            a.volume,
            ioctx.pool(),
            human(read),
            rev.short()
        );
    }
    Ok(())
}

/// How an in-place restore found its blocks, for the summary.
fn basis(b: &in_place::Basis) -> String {
    match b {
        in_place::Basis::Snapshot { snapshot, revision } => format!(
            "found from snapshot {snapshot} of revision {}",
            &revision[..revision.len().min(12)]
        ),
        in_place::Basis::Hashed { bytes_read } => {
            format!(
                "found by reading and hashing {} of the image",
                human(*bytes_read)
            )
        }
    }
}

fn verdict(report: &rbdelta::restore::RestoreReport) -> &'static str {
    if report.bad.is_empty() {
        "verified"
    } else {
        ZEROED
    }
}

/// The verdict of a restore or export that wrote zeros for corrupt blocks.
pub(super) const ZEROED: &str = "NOT verified (corrupt ranges zeroed)";

/// Warns about each range a restore or export (`how`) wrote as zeros
/// because its blocks were corrupt (`--allow-inconsistent`).
pub(super) fn warn_zeroed(
    rev: &rbdelta::archive::Revision,
    report: &rbdelta::restore::RestoreReport,
    how: &str,
) {
    for r in &report.bad {
        eprintln!(
            "rbdelta: warning: revision {}: bytes {}..{} were corrupt and {how} as zeros",
            rev.id, r.start, r.end
        );
    }
}

pub(super) fn refuse_inside_archive(path: &Path, archive: &Path) -> anyhow::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = parent
        .canonicalize()
        .with_context(|| format!("target directory {}", parent.display()))?;
    if let Ok(root) = archive.canonicalize() {
        if parent.starts_with(&root) {
            bail!(
                "refusing to restore into {}: it is inside the archive root {}",
                path.display(),
                root.display()
            );
        }
    }
    Ok(())
}
