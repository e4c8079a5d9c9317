//! Editing history: removing revisions (prune, merge) without changing
//! what any kept revision reads, and synthetic fulls.
//!
//! Removing revision R: a successor S whose delta is based on R is first
//! rewritten so it no longer needs R, as a merged delta when R is a delta
//! ([`merge`]) or as a synthetic full when R is a full ([`synthetic`]);
//! then R's manifest, data and state go. S keeps its id, manifest and
//! checksum. The steps run under an intent record ([`intent`]), so a crash
//! at any point is finished by the next writer. The newest revision (the
//! next backup's base, holding the Ceph snapshot) is never removed.

pub mod intent;
pub mod merge;
pub mod synthetic;

use crate::archive::oplog::Operation;
use crate::archive::{Revision, StorageKind, VolumeDir};
use crate::checksum::to_hex;
use crate::error::{Error, Result};
use intent::{Intent, Staged};

/// Finishes an interrupted history edit, if any, with every removal it
/// still had to do; returns what the edit was (`Intent::edit`). Callers
/// hold the exclusive volume lock.
pub fn recover(vol: &VolumeDir) -> Result<Option<String>> {
    let Some(i) = intent::read(vol)? else {
        return Ok(None);
    };
    let edit = i.edit.clone().unwrap_or_else(|| "remove".into());
    tracing::warn!(volume = %vol.name, "finishing the interrupted {edit} (removing revision {})", crate::text::prefix(&i.remove, 12));
    if intent::apply(vol, &i)? == intent::Applied::Done && !i.then.is_empty() {
        remove_locked(vol, &i.then, &edit, IfTagged::finishing(&edit))?;
    }
    Ok(Some(edit))
}

/// Takes the exclusive lock and finishes an interrupted history edit, if
/// any (see [`recover`]); what a killed writer left in `tmp/` goes too.
pub fn finish_interrupted(vol: &VolumeDir) -> Result<Option<String>> {
    let _lock = vol.lock()?;
    let edit = recover(vol)?;
    vol.clear_tmp()?;
    Ok(edit)
}

/// The revisions whose delta is based on `id`.
fn children(vol: &VolumeDir, revisions: &[Revision], id: &str) -> Result<Vec<Revision>> {
    let mut out = Vec::new();
    for r in revisions {
        if vol.storage_kind(&r.id)? == StorageKind::Delta {
            let base = crate::format::delta::read_header(&vol.delta_path(&r.id))?.base;
            if to_hex(&base) == id {
                out.push(r.clone());
            }
        }
    }
    Ok(out)
}

/// Removes the revisions `ids` (oldest first), keeping every other
/// revision's content. Ids no longer present count as removed (a rerun of
/// an interrupted removal). Takes the exclusive volume lock.
///
/// `edit` names the whole edit in its intent records (`prune`, `merge FROM
/// TO`, ...): once the first record is written, a crash anywhere is
/// finished by the next writer, every removal of the edit included.
pub fn remove_revisions(
    vol: &VolumeDir,
    ids: &[String],
    edit: &str,
    if_tagged: IfTagged,
) -> Result<usize> {
    let _lock = vol.lock()?;
    recover(vol)?;
    vol.clear_tmp()?;
    let op = Operation::start(
        vol.log_path(),
        "remove",
        None,
        Some(format!("{edit}: {} revision(s)", ids.len())),
    )?;
    op.end(remove_locked(vol, ids, edit, if_tagged), |n, rec| {
        rec.detail = Some(format!("{edit}: {n} revision(s) removed"))
    })
}

fn remove_locked(
    vol: &VolumeDir,
    ids: &[String],
    edit: &str,
    if_tagged: IfTagged,
) -> Result<usize> {
    let mut done = 0;
    let mut revisions = vol.revisions()?;
    let newest = revisions.last().map(|r| r.id.clone());
    let mut order: Vec<String> = ids.to_vec();
    order.sort_by_key(|id| revisions.iter().position(|r| r.id == *id));
    // Checked for the whole edit before its first record: once a record
    // exists, every later writer finishes the edit.
    if let Some(id) = order.iter().find(|id| Some(*id) == newest.as_ref()) {
        return Err(Error::Invalid(format!(
            "revision {} is the newest and is never removed",
            crate::text::prefix(id, 12)
        )));
    }
    let result = (|| {
        for (k, id) in order.iter().enumerate() {
            // Already gone: an interrupted run of the same removal, finished
            // by the recovery above.
            let Some(r) = revisions.iter().find(|r| r.id == *id).cloned() else {
                if vol.manifest_path(id).exists() {
                    return Err(Error::Invalid(format!(
                        "no revision {id} in volume {}",
                        vol.name
                    )));
                }
                done += 1;
                continue;
            };
            let rest = &order[k + 1..];
            if remove_one(vol, &revisions, &r, rest, edit, if_tagged)? {
                revisions.retain(|x| x.id != r.id);
                done += 1;
            }
        }
        Ok(done)
    })();
    // The last record of an edit of several removals stays until here.
    if result.is_ok() {
        intent::clear(vol)?;
    }
    result
}

/// The edit name of a prune (`Intent::edit`).
pub const PRUNE: &str = "prune";

/// What a removal does with a revision that is tagged when its record is
/// about to be written (under the state lock, where tag commands meet it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfTagged {
    /// Keep it and go on (a prune: tags say what retention must keep).
    Spare,
    /// Stop before the edit's first record if any revision it removes is
    /// tagged (a merge without `--force`).
    Refuse,
    /// Remove it anyway (`merge --force`, `remove`).
    Remove,
}

impl IfTagged {
    /// How an interrupted edit named `edit` is finished: a prune still
    /// spares; any other edit removes the rest of what it committed to,
    /// whose tags could no longer change once its first record existed.
    pub fn finishing(edit: &str) -> IfTagged {
        if edit == PRUNE {
            IfTagged::Spare
        } else {
            IfTagged::Remove
        }
    }
}

/// Removes `r`; false if it was spared (tagged since the prune planned it).
fn remove_one(
    vol: &VolumeDir,
    revisions: &[Revision],
    r: &Revision,
    rest: &[String],
    edit: &str,
    if_tagged: IfTagged,
) -> Result<bool> {
    let kids = children(vol, revisions, &r.id)?;
    if kids.len() > 1 {
        return Err(Error::Corrupt(format!(
            "revision {} is the base of {} deltas; rbdelta never writes that",
            r.short(),
            kids.len()
        )));
    }
    let child = kids.into_iter().next();
    let name = |p: std::path::PathBuf| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let staged = match &child {
        None => Staged::None,
        Some(s) => match vol.storage_kind(&r.id)? {
            StorageKind::Delta => Staged::Delta {
                tmp: name(merge::stage(vol, r, s)?),
            },
            StorageKind::Full => {
                let (full, fidx) = synthetic::stage(vol, s)?;
                Staged::Full {
                    full: name(full),
                    fidx: name(fidx),
                }
            }
        },
    };
    crate::fault::point("remove: staged");
    crate::fault::pause("remove: staged");
    let i = Intent {
        op: "remove".into(),
        remove: r.id.clone(),
        child: child.map(|c| c.id),
        staged,
        then: rest.to_vec(),
        edit: Some(edit.to_string()),
    };
    // The tags are read, and the record written, under the state lock: a
    // tag command that comes first is seen here, one that comes later sees
    // the record and refuses.
    let spared = crate::archive::state::locked(&vol.path, |state| {
        let tags = state.get(&r.id).tags;
        match if_tagged {
            IfTagged::Spare if !tags.is_empty() => return Ok(Some(tags)),
            IfTagged::Refuse => {
                let ids = std::iter::once(&r.id).chain(rest);
                if let Some(t) = ids.into_iter().find(|id| !state.get(id).tags.is_empty()) {
                    let what = edit.split(' ').next().unwrap_or(edit);
                    return Err(Error::Invalid(format!(
                        "revision {} was tagged after the {what} began: stopped (untag it or use --force)",
                        crate::text::prefix(t, 12),
                    )));
                }
            }
            _ => {}
        }
        intent::write(vol, &i)?;
        Ok(None)
    })
    .inspect_err(|_| intent::discard_staged(vol, &i.staged))?;
    if let Some(tags) = spared {
        tracing::info!(
            volume = %vol.name,
            "kept revision {}: tagged {} since the prune was planned",
            r.short(),
            tags.join(",")
        );
        intent::discard_staged(vol, &i.staged);
        return Ok(false);
    }
    crate::fault::point("remove: intent written");
    crate::fault::pause("remove: intent written");
    intent::apply(vol, &i).map(|_| true)
}

/// Changes revision `id`'s tags with `change` (under the state lock) and
/// returns them, sorted. Refused when the revision is gone, or when its
/// removal is under way: a removal writes its record under the same lock
/// after it last saw the revision untagged (a prune spares one tagged
/// before that).
pub fn edit_tags(
    vol: &VolumeDir,
    id: &str,
    change: impl FnOnce(&mut Vec<String>),
) -> Result<Vec<String>> {
    crate::archive::state::update(&vol.path, |s| {
        let short = crate::text::prefix(id, 12);
        // A prune spares what is tagged before its turn; any other edit
        // removes every revision it named once its first record exists.
        let committed = |i: &Intent| {
            i.remove == id || (i.edit.as_deref() != Some(PRUNE) && i.then.iter().any(|t| t == id))
        };
        if let Some(i) = intent::read(vol)?.filter(committed) {
            let edit = i.edit.as_deref().unwrap_or("remove");
            let edit = edit.split(' ').next().unwrap_or(edit);
            return Err(Error::Invalid(format!(
                "revision {short} is being removed (a {edit} that is under way): its tags can no longer change"
            )));
        }
        if !vol.manifest_path(id).exists() {
            return Err(Error::Invalid(format!(
                "revision {short} of volume {} is gone (removed meanwhile)",
                vol.name
            )));
        }
        let entry = s.revisions.entry(id.to_string()).or_default();
        change(&mut entry.tags);
        entry.tags.sort();
        entry.tags.dedup();
        Ok(entry.tags.clone())
    })?
}

/// What `rules` decide at time `now` for `revisions` (one listing of
/// `vol`'s: a backup may add one at any moment, so callers that show the
/// plan must use the same listing), newest first.
pub fn prune_plan(
    vol: &VolumeDir,
    revisions: &[Revision],
    rules: &crate::retention::Retention,
    now: i64,
) -> Result<Vec<crate::retention::Decision>> {
    let state = crate::archive::state::VolumeState::load(&vol.state_path())?;
    // (manifests are refused at read unless `created` parses; a time that
    // still does not is damage, and prunes nothing rather than take the
    // revision for one made in 1970)
    let candidates: Vec<crate::retention::Candidate> = revisions
        .iter()
        .map(|r| {
            Ok(crate::retention::Candidate {
                id: r.id.clone(),
                time: crate::status::unix_of(&r.manifest.created).ok_or_else(|| {
                    Error::Corrupt(format!(
                        "revision {}: unreadable time {:?}",
                        r.id, r.manifest.created
                    ))
                })?,
                seq: r.manifest.seq,
                tags: state.get(&r.id).tags,
            })
        })
        .collect::<Result<_>>()?;
    Ok(crate::retention::decide(&candidates, rules, now))
}

/// Applies `rules` to `vol`: removes what they do not keep. Returns how
/// many revisions went.
pub fn prune(vol: &VolumeDir, rules: &crate::retention::Retention, now: i64) -> Result<usize> {
    if rules.is_empty() {
        return Ok(0);
    }
    let remove: Vec<String> = prune_plan(vol, &vol.revisions()?, rules, now)?
        .into_iter()
        .filter(|d| !d.keep)
        .map(|d| d.id)
        .collect();
    if remove.is_empty() {
        return Ok(0);
    }
    remove_revisions(vol, &remove, PRUNE, IfTagged::Spare)
}

/// Gives revision `id` (a delta) its own synthetic full, so later deltas no
/// longer depend on the older chain. Takes the exclusive volume lock.
pub fn make_full(vol: &VolumeDir, id: &str) -> Result<()> {
    let _lock = vol.lock()?;
    recover(vol)?;
    vol.clear_tmp()?;
    make_full_locked(vol, id)
}

/// [`make_full`] for a caller that holds the exclusive lock.
pub fn make_full_locked(vol: &VolumeDir, id: &str) -> Result<()> {
    let rev = vol.read_revision(id)?;
    if vol.storage_kind(id)? == StorageKind::Full {
        // A run killed between the full's rename and the delta's removal
        // left the delta behind the full, which wins; finish the job.
        return remove_shadowed_delta(vol, id);
    }
    let op = Operation::start(vol.log_path(), "synthetic-full", Some(id.to_string()), None)?;
    op.end(
        (|| {
            let (full, fidx) = synthetic::stage(vol, &rev)?;
            crate::fault::point("synthetic: staged");
            // The index first: a full without its index does not count.
            std::fs::rename(&fidx, vol.full_index_path(id)).map_err(|e| Error::io(&fidx, e))?;
            crate::fault::point("synthetic: index in place");
            std::fs::rename(&full, vol.full_path(id)).map_err(|e| Error::io(&full, e))?;
            crate::archive::atomic::fsync_dir(&vol.data_dir())?;
            crate::fault::point("synthetic: full in place");
            // The full wins over the delta from here on; the delta goes.
            remove_shadowed_delta(vol, id)
        })(),
        |_, _| {},
    )
}

/// Removes revision `id`'s delta once a full of it is in place.
fn remove_shadowed_delta(vol: &VolumeDir, id: &str) -> Result<()> {
    let delta = vol.delta_path(id);
    match std::fs::remove_file(&delta) {
        Ok(()) => crate::archive::atomic::fsync_dir(&vol.data_dir()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(&delta, e)),
    }
}
