//! `rbdelta backup [VOLUME...] [--all] [--full] [--jobs N]`.

use rbdelta::config::Unresolved;
use rbdelta::fleet::{backup_isolated, run_parallel_with, Fleet, Outcome};
use serde_json::json;

use super::view::json_line;
use super::{human, table, Ctx, Failure, ProgressMode};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Volumes to back up (names from the config, including volumes of
    /// pool selections).
    volumes: Vec<String>,
    /// Back up every volume of the config.
    #[arg(long, conflicts_with = "volumes")]
    all: bool,
    /// Write a full backup even when a delta is possible.
    #[arg(long)]
    full: bool,
    /// Tag the new revisions (tagged revisions are never pruned); repeatable.
    #[arg(long = "tag", value_name = "NAME")]
    tags: Vec<String>,
    /// Volumes backed up at once [default: defaults.parallel of the config].
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: Option<u16>,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let cfg = ctx.config()?;
    if let Some(bad) = a.tags.iter().find(|t| !super::tag::valid_tag(t)) {
        return Err(Failure::usage(format!(
            "{bad:?} is not a tag name (letters, digits, - _ . : @ +)"
        )));
    }
    if !a.all && a.volumes.is_empty() {
        return Err(Failure::usage("name at least one volume, or use --all"));
    }
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Before any connection: librados' threads must inherit the signal mask.
    super::signals::stop_on_terminate(cancel.clone(), Some("running backups end cleanly"));
    let mut fleet = Fleet::new(&cfg);
    fleet.cancel = cancel;
    fleet.workers = Some(super::worker_spawner(ctx.verbose));
    let all_listed = a.volumes.iter().all(|n| cfg.listed().any(|v| v.name == *n));
    let resolved = if a.all || !all_listed {
        fleet.resolve(&cfg)
    } else {
        cfg.resolve_listed()
    };
    let (volumes, broken): (Vec<_>, Vec<Unresolved>) = if a.all {
        (resolved.volumes, resolved.unresolved)
    } else {
        let mut vols = Vec::new();
        let mut broken = Vec::new();
        for n in &a.volumes {
            if let Some(v) = resolved.get(n) {
                vols.push(v.clone());
            } else if let Some(u) = resolved.unresolved.iter().find(|u| u.name == *n) {
                broken.push(u.clone());
            } else {
                return Err(Failure::usage(format!(
                    "no volume named {n:?} in the config{}",
                    if cfg.has_selections() {
                        " or its pool selections"
                    } else {
                        ""
                    }
                )));
            }
        }
        (vols, broken)
    };
    let jobs = a.jobs.map_or(cfg.fleet.parallel, usize::from);
    fleet.parallel = jobs.min(volumes.len()).max(1);
    let observer = ctx.observer(volumes.len() + broken.len());
    let mut outcomes: Vec<Outcome> = broken
        .iter()
        .map(|u| fleet.unresolved(u, observer.as_ref()))
        .collect();
    // A worker process per parallel slot, kept for the slot's next job.
    outcomes.extend(run_parallel_with(
        &volumes,
        jobs,
        || None,
        |worker, v| backup_isolated(&fleet, worker, v, a.full, &a.tags, observer.as_ref()),
    ));
    drop(observer);
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    if ctx.mode == ProgressMode::Json {
        json_line(&json!({
            "event": "summary", "volumes": outcomes.len(), "failed": failed,
            "bytes_read": outcomes.iter().map(|o| o.bytes_read).sum::<u64>(),
            "bytes_written": outcomes.iter().map(|o| o.bytes_written).sum::<u64>(),
        }));
    } else if outcomes.len() > 1 {
        print!("{}", summary(&outcomes));
    }
    if failed > 0 {
        return Err(Failure {
            code: 1,
            error: anyhow::anyhow!("{failed} of {} backups failed", outcomes.len()),
        });
    }
    Ok(())
}

/// The end-of-run table: one row per volume, then totals.
fn summary(outcomes: &[Outcome]) -> String {
    let mut rows = vec![["VOLUME", "OUTCOME", "KIND", "READ", "WRITTEN", "DURATION"]
        .map(String::from)
        .to_vec()];
    for o in outcomes {
        rows.push(vec![
            o.volume.clone(),
            if o.ok { "ok".into() } else { "FAILED".into() },
            o.kind.clone().unwrap_or_else(|| "-".into()),
            human(o.bytes_read),
            human(o.bytes_written),
            format!("{:.1}s", o.duration.as_secs_f64()),
        ]);
    }
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    format!(
        "\n{}{} volumes: {} ok, {failed} failed; read {}, stored {}\n",
        table::render(&rows),
        outcomes.len(),
        outcomes.len() - failed,
        human(outcomes.iter().map(|o| o.bytes_read).sum()),
        human(outcomes.iter().map(|o| o.bytes_written).sum()),
    )
}
