//! `rbdelta fsck VOLUME [--revision REV | --all]`: the filesystems inside
//! revisions, checked by their own checkers, each in a sandbox, in a
//! throwaway overlay; and the hidden `fsck-worker` that does it in a child
//! process.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rbdelta::fsck::{fsck, part_name, Runner, Verdict};
use rbdelta::text::{prefix, printable};

use super::{open_volume, signals, Ctx, Failure};

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
    let cfg = ctx.config()?;
    // SAFETY: geteuid cannot fail.
    if cfg.fsck.kernel_replay && unsafe { libc::geteuid() } != 0 {
        return Err(Failure::usage(
            "fsck.kernel-replay needs root: it mounts the guest's XFS to replay its log",
        ));
    }
    let vol = open_volume(&cfg, &a.volume).map_err(Failure::usage)?;
    let revisions = if a.all {
        vol.revisions()?
    } else {
        vec![vol
            .find_revision(a.revision.as_deref().unwrap_or("latest"))
            .map_err(Failure::usage)?]
    };
    let cancel = Arc::new(AtomicBool::new(false));
    signals::stop_on_terminate(cancel.clone(), Some("stopping the checker"));
    let verbose: Vec<String> = (0..ctx.verbose.min(2)).map(|_| "-v".to_string()).collect();
    let runner = Runner::this_binary(verbose, cfg.fsck);
    let (mut bad, mut unchecked) = (0, 0);
    for rev in &revisions {
        let r = fsck(&vol, rev, &runner, &cancel)?;
        let id = prefix(&rev.id, 12);
        let at = format!("{}: revision {id}", a.volume);
        for f in &r.results {
            let name = part_name(&f.part);
            match &f.verdict {
                Verdict::Ok => println!("{at}: {name}: ok"),
                Verdict::Skipped(why) => println!("{at}: {name}: skipped: {why}"),
                Verdict::NotChecked(why) => println!("{at}: {name}: NOT CHECKED: {why}"),
                Verdict::Errors(lines) => {
                    println!("{at}: {name}: ERRORS");
                    for l in lines {
                        // escaped by the checker's summary; again, to be sure
                        println!("    {}", printable(l, 300));
                    }
                }
            }
        }
        bad += usize::from(r.has_errors());
        unchecked += usize::from(r.has_unchecked());
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
    if unchecked > 0 {
        eprintln!(
            "rbdelta: warning: {unchecked} of {} revision(s) have filesystems that were not checked",
            revisions.len()
        );
    }
    Ok(())
}

/// The child's side: one fsck from stdin, its report on stdout.
pub fn worker() -> Result<(), Failure> {
    let cancel = Arc::new(AtomicBool::new(false));
    signals::stop_on_terminate(cancel.clone(), None);
    rbdelta::fsck::worker::serve(std::io::stdin().lock(), std::io::stdout(), &cancel)?;
    Ok(())
}
