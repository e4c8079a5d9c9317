//! `rbdelta prune [VOLUME...|--all] [--dry-run]`: apply the retention
//! rules; `rbdelta merge VOLUME FROM TO`: fold the revisions from FROM up
//! to (not including) TO into TO.

use rbdelta::archive::state::VolumeState;
use rbdelta::archive::VolumeDir;
use rbdelta::history::{prune_plan, remove_revisions, IfTagged, PRUNE};
use rbdelta::retention::Retention;
use rbdelta::text::prefix;

use super::{open_volume, table, Ctx, Failure};

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Volumes to prune.
    volumes: Vec<String>,
    /// Every volume in the archive that the config has retention rules for.
    #[arg(long, conflicts_with = "volumes")]
    all: bool,
    /// Show what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
}

pub fn prune(ctx: &Ctx, a: PruneArgs) -> Result<(), Failure> {
    let cfg = ctx.config()?;
    let names = if a.all {
        rbdelta::archive::list_volumes(&cfg.archive)
    } else if a.volumes.is_empty() {
        return Err(Failure::usage("name at least one volume, or use --all"));
    } else {
        a.volumes.clone()
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for name in &names {
        let vol = open_volume(&cfg, name)?;
        let revisions = vol.revisions()?;
        let source = revisions.last().map(|r| r.manifest.source.clone());
        let rules = cfg
            .settings_for(name, source.as_deref())
            .map(|s| s.retention.clone())
            .unwrap_or_default();
        if rules.is_empty() {
            println!("{name}: no retention rules; nothing removed");
            continue;
        }
        let remove = plan(&vol, &rules, now, a.dry_run)?;
        if remove.is_empty() || a.dry_run {
            continue;
        }
        let n = remove_revisions(&vol, &remove, PRUNE, IfTagged::Spare)?;
        println!("{name}: {n} revision(s) removed");
    }
    Ok(())
}

/// Prints the decisions; returns the ids to remove.
fn plan(
    vol: &VolumeDir,
    rules: &Retention,
    now: i64,
    dry_run: bool,
) -> anyhow::Result<Vec<String>> {
    let revisions = vol.revisions()?;
    let decisions = prune_plan(vol, &revisions, rules, now)?;
    let mut rows = vec![["ID", "CREATED", "ACTION", "WHY"]
        .map(String::from)
        .to_vec()];
    for d in decisions.iter().rev() {
        let r = revisions
            .iter()
            .find(|r| r.id == d.id)
            .expect("decided on these");
        rows.push(vec![
            r.short().to_string(),
            prefix(&r.manifest.created, 19).to_string(),
            match (d.keep, dry_run) {
                (true, _) => "keep".into(),
                (false, true) => "would remove".into(),
                (false, false) => "remove".into(),
            },
            d.reasons.join(", "),
        ]);
    }
    println!("{}:", vol.name);
    print!("{}", table::render(&rows));
    Ok(decisions
        .into_iter()
        .filter(|d| !d.keep)
        .map(|d| d.id)
        .collect())
}

#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    volume: String,
    /// The oldest revision to fold in (id, unique prefix).
    from: String,
    /// The revision that absorbs them (kept).
    to: String,
    /// Also remove tagged revisions in the range.
    #[arg(long)]
    force: bool,
}

pub fn merge(ctx: &Ctx, a: MergeArgs) -> Result<(), Failure> {
    let cfg = ctx.config()?;
    let vol = open_volume(&cfg, &a.volume)?;
    // A merge killed half-way is finished by the next writer; when that is
    // this rerun of the same merge, say so instead of "no revision FROM".
    let finished = rbdelta::history::finish_interrupted(&vol)?;
    let to = vol.find_revision(&a.to)?;
    let from = match vol.find_revision(&a.from) {
        Ok(r) => r,
        Err(e) => {
            let same = finished
                .as_deref()
                .and_then(|ed| ed.strip_prefix("merge "))
                .and_then(|ed| ed.split_once(' '))
                .is_some_and(|(f, t)| f.starts_with(&a.from) && *t == to.id);
            if same {
                println!(
                    "{}: finished the interrupted merge into {}",
                    a.volume,
                    to.short()
                );
                return Ok(());
            }
            return Err(e.into());
        }
    };
    if from.manifest.seq >= to.manifest.seq {
        return Err(Failure::usage(format!(
            "{} is not older than {}",
            from.short(),
            to.short()
        )));
    }
    let state = VolumeState::load(&vol.state_path())?;
    let range: Vec<_> = vol
        .revisions()?
        .into_iter()
        .filter(|r| r.manifest.seq >= from.manifest.seq && r.manifest.seq < to.manifest.seq)
        .collect();
    let tagged: Vec<String> = range
        .iter()
        .filter(|r| !state.get(&r.id).tags.is_empty())
        .map(|r| r.short().to_string())
        .collect();
    if !tagged.is_empty() && !a.force {
        return Err(Failure::usage(format!(
            "tagged revisions in the range: {} (untag them or use --force)",
            tagged.join(", ")
        )));
    }
    let ids: Vec<String> = range.iter().map(|r| r.id.clone()).collect();
    // The tags are checked again under the state lock as the merge begins:
    // one added meanwhile stops it, unless --force.
    let if_tagged = if a.force {
        IfTagged::Remove
    } else {
        IfTagged::Refuse
    };
    let edit = format!("merge {} {}", from.id, to.id);
    let n = remove_revisions(&vol, &ids, &edit, if_tagged)?;
    println!("{}: {n} revision(s) merged into {}", a.volume, to.short());
    Ok(())
}
