//! `rbdelta repair VOLUME [--offline]`: replace bad blocks with good copies
//! from the archive or the Ceph snapshots, then verify and record trust.

use rbdelta::repair::repair;
use rbdelta::source::rbd::RbdImage;
use rbdelta::source::SourceImage;
use rbdelta::text::prefix;

use super::{open_volume, Ctx, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    volume: String,
    /// Do not contact the cluster (copies from the archive only).
    #[arg(long)]
    offline: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let cfg = ctx.config()?;
    let vol = open_volume(&cfg, &a.volume)?;
    // The image of the newest revision, for blocks only its snapshots hold.
    let source = vol.revisions()?.last().map(|r| r.manifest.source.clone());
    let cluster = match (a.offline, &source) {
        (false, Some(_)) => match ctx.connect(&cfg) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("rbdelta: warning: {e:#}; repairing from the archive only");
                None
            }
        },
        _ => None,
    };
    let image = match (&cluster, source.as_deref().and_then(|s| s.split_once('/'))) {
        (Some(c), Some((pool, name))) => {
            c.ioctx(pool).and_then(|io| RbdImage::open(&io, name)).ok()
        }
        _ => None,
    };
    let progress = ctx.progress(&a.volume);
    let r = repair(
        &vol,
        image.as_ref().map(|i| i as &dyn SourceImage),
        progress.as_ref(),
    )?;
    for f in &r.fixed {
        println!(
            "{}: revision {}: block {} repaired from {}",
            a.volume,
            prefix(&f.revision, 12),
            f.block,
            f.from
        );
    }
    for u in &r.unfixed {
        println!(
            "{}: revision {}: block {} could not be repaired (no good copy)",
            a.volume,
            prefix(&u.revision, 12),
            u.block
        );
    }
    for id in &r.verify.distrusted {
        println!("{}: revision {} stays distrusted", a.volume, prefix(id, 12));
    }
    if r.verify.problems.is_empty() {
        println!(
            "{}: {} block(s) repaired; every revision verifies",
            a.volume,
            r.fixed.len()
        );
        return Ok(());
    }
    Err(Failure {
        code: 3,
        error: anyhow::anyhow!(
            "{}: {} problem(s) remain after repair",
            a.volume,
            r.verify.problems.len()
        ),
    })
}
