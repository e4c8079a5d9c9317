//! `rbdelta backup [VOLUME...] [--all] [--full]`.

use anyhow::Context;
use rbdelta::archive::VolumeDir;
use rbdelta::backup::{backup, BackupOptions, Mode};
use rbdelta::format::DEFAULT_BLOCK_SIZE;
use rbdelta::source::rbd::RbdImage;

use super::{human, Ctx, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Volumes to back up (names from the config).
    volumes: Vec<String>,
    /// Back up every volume in the config, one after the other.
    #[arg(long, conflicts_with = "volumes")]
    all: bool,
    /// Write a full backup even when a delta is possible.
    #[arg(long)]
    full: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let cfg = ctx.config()?;
    let volumes = if a.all {
        cfg.volumes()
    } else if a.volumes.is_empty() {
        return Err(Failure {
            code: 2,
            error: anyhow::anyhow!("name at least one volume, or use --all"),
        });
    } else {
        a.volumes
            .iter()
            .map(|n| cfg.volume(n))
            .collect::<Result<Vec<_>, _>>()?
    };
    let cluster = ctx.connect(&cfg)?;
    let mut failed = 0;
    for v in &volumes {
        let outcome = (|| -> anyhow::Result<_> {
            let ioctx = cluster
                .ioctx(&v.pool)
                .with_context(|| format!("pool {}", v.pool))?;
            let image = RbdImage::open(&ioctx, &v.image)
                .with_context(|| format!("image {}", v.source_name()))?;
            let vol = VolumeDir::open_or_create(&cfg.archive, &v.name, DEFAULT_BLOCK_SIZE)?;
            let opts = BackupOptions {
                full: a.full,
                whole_object: v.whole_object,
                source_name: v.source_name(),
                ..Default::default()
            };
            let progress = ctx.progress(&v.name);
            Ok(backup(&vol, &image, &opts, progress.as_ref())?)
        })();
        match outcome {
            Ok(r) => {
                let how = match &r.mode {
                    Mode::Full => "full",
                    Mode::Diff { .. } => "delta",
                    Mode::Compare { .. } => "delta (checksum compare)",
                };
                println!(
                    "{}: {how} {}, image {}, read {}, stored {}, {:.1}s",
                    v.name,
                    r.revision.short(),
                    human(r.revision.manifest.size),
                    human(r.bytes_read),
                    human(r.bytes_written),
                    r.duration.as_secs_f64()
                );
            }
            Err(e) => {
                failed += 1;
                eprintln!("rbdelta: error: {}: backup failed: {e:#}", v.name);
            }
        }
    }
    if failed > 0 {
        return Err(Failure {
            code: 1,
            error: anyhow::anyhow!("{failed} of {} backups failed", volumes.len()),
        });
    }
    Ok(())
}
