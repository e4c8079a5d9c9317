//! `rbdelta restore VOLUME [--revision REV] (--to-image POOL/IMAGE | --to-file PATH)`.
//!
//! The safety belt lives here: an existing target is refused unless
//! `--force`; the volume's own source image is refused unless `--force`; a
//! file inside the archive root is refused always.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use rbdelta::restore::file_target::FileTarget;
use rbdelta::restore::rbd_target::RbdTarget;
use rbdelta::restore::{restore, RestoreOptions, RestoreTarget, TargetOptions};
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
        keep_partial: a.keep_partial,
        retry_for: std::time::Duration::from_secs(a.retry_for),
    };
    let cluster;
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
        cluster = ctx.connect(&cfg)?;
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
        Box::new(RbdTarget::create(&ioctx, image, size, layout, &topts)?)
    } else {
        let path = a.to_file.clone().expect("clap requires one target");
        refuse_inside_archive(&path, &cfg.archive)?;
        Box::new(FileTarget::create(&path, size, &topts)?)
    };
    let progress = ctx.progress(&a.volume);
    let opts = RestoreOptions {
        allow_inconsistent: a.allow_inconsistent,
        cancel,
    };
    let report = restore(&vol, &rev, target, &opts, progress.as_ref())?;
    warn_zeroed(&rev, &report, "restored");
    println!(
        "{}: restored revision {} (image {}, {} of data written) in {:.1}s, checksum {}",
        a.volume,
        rev.short(),
        human(report.size),
        human(report.bytes_written),
        report.duration.as_secs_f64(),
        if report.bad.is_empty() {
            "verified"
        } else {
            ZEROED
        }
    );
    Ok(())
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
