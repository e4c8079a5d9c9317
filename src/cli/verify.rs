//! `rbdelta verify [VOLUME...|--all] [--revision REV] [--subset n/m]
//! [--deep] [--source]`.

use rbdelta::archive::state::VolumeState;
use rbdelta::archive::VolumeDir;
use rbdelta::source::rbd::RbdImage;
use rbdelta::source::SourceImage;
use rbdelta::text::prefix;
use rbdelta::verify::source::verify_source;
use rbdelta::verify::{verify_with, Subset, VerifyOptions, VerifyReport};

use super::{human, open_volume, Ctx, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Volumes to verify.
    volumes: Vec<String>,
    /// Every volume in the archive.
    #[arg(long, conflicts_with = "volumes")]
    all: bool,
    /// Only this revision (id, unique prefix or `latest`) and what it needs.
    #[arg(long)]
    revision: Option<String>,
    /// Only slice n of m of the stored blocks (a nightly `--subset $((day % m + 1))/m`
    /// covers everything every m nights).
    #[arg(long, value_name = "N/M")]
    subset: Option<Subset>,
    /// Also read every revision as a restore would and recompute its image checksum.
    #[arg(long)]
    deep: bool,
    /// Compare revisions with the Ceph snapshots they were read from, where
    /// those still exist (needs the cluster).
    #[arg(long, conflicts_with_all = ["subset", "deep"])]
    source: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let cfg = ctx.config()?;
    let names: Vec<String> = if a.all {
        rbdelta::archive::list_volumes(&cfg.archive)
    } else if a.volumes.is_empty() {
        return Err(Failure::usage("name at least one volume, or use --all"));
    } else {
        a.volumes.clone()
    };
    let cluster = if a.source {
        Some(ctx.connect(&cfg)?)
    } else {
        None
    };
    let mut damaged = 0;
    for name in &names {
        let vol = open_volume(&cfg, name)?;
        let only = a
            .revision
            .as_deref()
            .map(|r| vol.find_revision(r))
            .transpose()?;
        let progress = ctx.progress(name);
        let report = match &cluster {
            None => {
                let opts = VerifyOptions {
                    only,
                    subset: a.subset,
                    deep: a.deep,
                    cancel: None,
                };
                verify_with(&vol, &opts, progress.as_ref())?
            }
            Some(c) => against_source(c, &vol, only, progress.as_ref())?,
        };
        if !print(name, &report, a.subset) {
            damaged += 1;
        }
    }
    if damaged > 0 {
        return Err(Failure {
            code: 3,
            error: anyhow::anyhow!(
                "verify found damage in {damaged} of {} volume(s)",
                names.len()
            ),
        });
    }
    Ok(())
}

/// Prints the result; false when something is damaged.
fn print(name: &str, r: &VerifyReport, subset: Option<Subset>) -> bool {
    let scope = subset.map_or(String::new(), |s| {
        format!(" (subset {s}: {} blocks)", r.blocks_checked)
    });
    if r.problems.is_empty() {
        println!(
            "{name}: {} revision(s) verified{scope}, {} read, no problems",
            r.revisions,
            human(r.bytes_read)
        );
        return true;
    }
    for p in &r.problems {
        println!("{name}: DAMAGED: {p}");
    }
    for id in &r.distrusted {
        println!("{name}: revision {} is now distrusted", prefix(id, 12));
    }
    false
}

/// `--source`: the chosen revision, or every revision whose snapshot rbdelta
/// still keeps.
fn against_source(
    cluster: &std::sync::Arc<rbdelta::ceph::Cluster>,
    vol: &VolumeDir,
    only: Option<rbdelta::archive::Revision>,
    progress: &dyn rbdelta::progress::Progress,
) -> anyhow::Result<VerifyReport> {
    let state = VolumeState::load(&vol.state_path())?;
    let revs = match only {
        Some(r) => vec![r],
        None => vol
            .revisions()?
            .into_iter()
            .filter(|r| state.get(&r.id).snapshot.is_some())
            .collect(),
    };
    let mut total = VerifyReport::default();
    for rev in revs {
        let (pool, image) = rev.manifest.source.split_once('/').unwrap_or(("", ""));
        let img = RbdImage::open(&cluster.ioctx(pool)?, image)?;
        let Some(snap) = img.open_snapshot(&rev.manifest.snapshot)? else {
            println!(
                "{}: revision {}: snapshot {} no longer exists; skipped",
                vol.name,
                rev.short(),
                rev.manifest.snapshot
            );
            continue;
        };
        let r = verify_source(vol, &rev, snap.as_ref(), progress)?;
        total.revisions += r.revisions;
        total.bytes_read += r.bytes_read;
        total.blocks_checked += r.blocks_checked;
        total.problems.extend(r.problems);
        total.distrusted.extend(r.distrusted);
        total.verified.extend(r.verified);
    }
    Ok(total)
}
