//! `rbdelta fsck VOLUME [--revision REV | --all]`: the filesystems inside
//! revisions, checked by their own checkers in a throwaway overlay.

use rbdelta::fsck::{fsck, part_name, Verdict};
use rbdelta::text::prefix;

use super::{open_volume, Ctx, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    volume: String,
    /// Revision id, unique prefix or `latest` [default: latest].
    #[arg(long, conflicts_with = "all")]
    revision: Option<String>,
    /// Every revision, oldest first.
    #[arg(long)]
    all: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    // Said first: nothing else can help an unprivileged run.
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Failure::usage(
            "fsck needs root: it attaches the revision's filesystems to loop devices",
        ));
    }
    let cfg = ctx.config()?;
    let vol = open_volume(&cfg, &a.volume).map_err(Failure::usage)?;
    let revisions = if a.all {
        vol.revisions()?
    } else {
        vec![vol
            .find_revision(a.revision.as_deref().unwrap_or("latest"))
            .map_err(Failure::usage)?]
    };
    let mut bad = 0;
    for rev in &revisions {
        let r = fsck(&vol, rev)?;
        let id = prefix(&rev.id, 12);
        for f in &r.results {
            let name = part_name(&f.part);
            match &f.verdict {
                Verdict::Ok => println!("{}: revision {id}: {name}: ok", a.volume),
                Verdict::Skipped(why) => {
                    println!("{}: revision {id}: {name}: skipped: {why}", a.volume)
                }
                Verdict::Errors(lines) => {
                    println!("{}: revision {id}: {name}: ERRORS", a.volume);
                    for l in lines {
                        println!("    {l}");
                    }
                }
            }
        }
        if r.has_errors() {
            bad += 1;
        }
    }
    if bad > 0 {
        return Err(Failure {
            code: 1,
            error: anyhow::anyhow!(
                "fsck found errors in {bad} of {} revision(s)",
                revisions.len()
            ),
        });
    }
    Ok(())
}
