//! One backup of one volume: snapshot, find what changed, store it as a full
//! or a delta, and commit a new revision crash-safely.
//!
//! Commit order (docs/FORMAT.md, "Writing a revision"): `pending.json` names
//! the snapshot before it is created; data files are written in `tmp/`,
//! fsynced and renamed into `data/`; the manifest is written last and is the
//! commit point; then the state file records the new snapshot, the previous
//! snapshot is removed and `pending.json` goes. A backup that dies anywhere
//! leaves older revisions untouched, and the next backup finishes or undoes
//! the interrupted one ([`recover`]).

mod commit;
pub mod import;
pub mod pipeline;
pub mod plan;
pub mod policy;
mod writers;

use std::time::Instant;

use crate::archive::oplog::Operation;
use crate::archive::state::{Trust, VolumeState};
use crate::archive::{now_rfc3339, Pending, Revision, VolumeDir};
use crate::chain::Chain;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::source::SourceImage;

pub use commit::{evict, recover};

#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Force a full even when a delta is possible.
    pub full: bool,
    /// Ask the source for whole-object diffs (faster, coarser).
    pub whole_object: bool,
    /// Reads in flight.
    pub depth: usize,
    /// `pool/image`, recorded in the manifest.
    pub source_name: String,
    /// When to start a new chain with a full (`full-every:`).
    pub full_every: Option<crate::config::FullEvery>,
    /// Tags for the new revision (`backup --tag`).
    pub tags: Vec<String>,
    /// When `full_every` says a full is due, store a delta and then build a
    /// synthetic full from the archive instead of reading the whole image.
    pub synthetic_fulls: bool,
    /// Leave `pending.json` after a successful backup: the caller removes
    /// it with [`release_intent`] once it has closed the image. Until then
    /// the record names this process and its Ceph client, so if it dies
    /// with the image still open (its watch and lock held), the next backup
    /// cuts that client off instead of waiting about 30 s for Ceph to time
    /// it out. A record left behind is finished like any interrupted backup.
    pub leave_intent: bool,
    /// The revision's time, when it is not now (an imported backup's).
    pub created: Option<String>,
    /// Ceph clients of processes known to be gone that may still watch or
    /// lock the image: a backup worker that died on this very job, perhaps
    /// before its intent record could name it. They are cut off first,
    /// even when another process holds the volume.
    pub dead_clients: Vec<String>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            full: false,
            whole_object: false,
            depth: 8,
            source_name: String::new(),
            full_every: None,
            tags: Vec::new(),
            synthetic_fulls: false,
            leave_intent: false,
            created: None,
            dead_clients: Vec::new(),
        }
    }
}

/// Removes the intent record a backup with [`BackupOptions::leave_intent`]
/// left, once its image is closed. Only the record of `revision`, and only
/// under the volume lock: a backup that started since owns the record now
/// (it finished ours in its recovery), and then this does nothing.
pub fn release_intent(vol: &VolumeDir, revision: &Revision) -> Result<()> {
    let Ok(_lock) = vol.lock() else {
        return Ok(());
    };
    match vol.read_pending()? {
        Some(p) if p.snapshot == revision.manifest.snapshot => vol.clear_pending(),
        _ => Ok(()),
    }
}

/// How the backup found its blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// First backup, `--full`, or no usable parent.
    Full,
    /// Diff against the parent's snapshot.
    Diff { base_snapshot: String },
    /// The parent's snapshot is gone: read everything, store blocks whose
    /// checksum differs from the parent.
    Compare { reason: String },
}

#[derive(Debug, Clone)]
pub struct BackupReport {
    pub revision: Revision,
    pub mode: Mode,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub duration: std::time::Duration,
    /// The new revision got a synthetic full after its delta.
    pub synthetic_full: bool,
}

impl BackupReport {
    pub fn kind(&self) -> &'static str {
        match self.mode {
            Mode::Full => "full",
            _ => "delta",
        }
    }
}

/// Whose connection [`BackupOptions::dead_clients`] are, in the log line
/// that says one was cut off.
pub const DEAD_WORKER: &str = "a backup worker that died on this job";

/// Backs up `image` into `vol`. Takes the volume lock exclusively.
pub fn backup(
    vol: &VolumeDir,
    image: &dyn SourceImage,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupReport> {
    // Before the volume lock: a process known to be dead is cut off
    // whoever holds the volume (a prune, a merge), since its connection may
    // hold the image's exclusive lock and stall the VM's writes meanwhile.
    for client in &opts.dead_clients {
        evict(&vol.name, image, client, DEAD_WORKER);
    }
    let _lock = vol.lock()?;
    let op = Operation::start(
        vol.log_path(),
        "backup",
        None,
        Some(opts.source_name.clone()),
    )?;
    op.end(backup_locked(vol, image, opts, progress), BackupReport::log)
}

impl BackupReport {
    /// Fills the volume log's end record of the operation that made it.
    fn log(&self, rec: &mut crate::archive::oplog::LogRecord) {
        rec.revision = Some(self.revision.id.clone());
        rec.kind = Some(self.kind().into());
        rec.bytes_read = Some(self.bytes_read);
        rec.bytes_written = Some(self.bytes_written);
        if let Mode::Compare { reason } = &self.mode {
            rec.detail = Some(reason.clone());
        }
    }
}

fn backup_locked(
    vol: &VolumeDir,
    image: &dyn SourceImage,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupReport> {
    let started = Instant::now();
    // A history edit first: its staged files live in tmp/, which the
    // backup's own recovery empties.
    crate::history::recover(vol)?;
    recover(vol, image)?;
    let revisions = vol.revisions()?;
    let state = VolumeState::load(&vol.state_path())?;
    let parent = revisions.last().cloned();
    // Why `full-every` wants a full now, if it does (judged once).
    let due = match (opts.full_every, revisions.is_empty() || opts.full) {
        (Some(policy), false) => policy::full_due(
            vol,
            &revisions,
            policy,
            time::OffsetDateTime::now_utc().unix_timestamp(),
        )?,
        _ => None,
    };
    let mut mode = choose_mode(image, vol, &revisions, &state, opts, due.as_deref())?;
    let synthesize = due.filter(|_| opts.synthetic_fulls && mode != Mode::Full);
    // A delta needs its parent's chain; an unreadable one means a full.
    let parent_chain = match (&parent, &mode) {
        (Some(p), Mode::Diff { .. } | Mode::Compare { .. }) => match Chain::open(vol, p) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(
                    volume = %vol.name,
                    "revision {} cannot serve as a base ({e}): writing a full",
                    p.short()
                );
                mode = Mode::Full;
                None
            }
        },
        _ => None,
    };
    if let Mode::Compare { reason } = &mode {
        tracing::warn!(volume = %vol.name, "{reason}");
    }
    let layout = image.layout().unwrap_or_else(|e| {
        tracing::warn!(volume = %vol.name, "image layout unknown ({e}): not recorded");
        Default::default()
    });
    let snapshot = new_snapshot_name(&vol.snapshot_prefix());
    vol.write_pending(&Pending {
        snapshot: snapshot.clone(),
        started: now_rfc3339(),
        owner: Some(crate::archive::PendingOwner {
            host: crate::host::host(),
            pid: std::process::id(),
            client: image.client(),
        }),
    })?;
    crate::fault::point("backup: intent written");
    let t = Instant::now();
    // A phase of its own, so a watcher can tell a snapshot that takes too
    // long (a fleet kills a worker stuck here, see fleet::worker).
    progress.begin("snapshot", 0);
    let created = image.create_snapshot(&snapshot);
    progress.end();
    let snap = match created {
        Ok(s) => s,
        Err(e) => return Err(undo(vol, image, &snapshot, e)),
    };
    tracing::info!(volume = %vol.name, "snapshot {snapshot} created in {:?}", t.elapsed());
    crate::fault::point("backup: snapshot taken");
    let plan = commit::Plan {
        mode: &mode,
        parent: parent.as_ref(),
        parent_chain: parent_chain.as_ref(),
        layout,
    };
    let written = commit::write_revision(vol, snap.as_ref(), &plan, opts, progress);
    drop(snap);
    let (revision, bytes_read, bytes_written) = match written {
        Ok(w) => w,
        Err(e) => return Err(undo(vol, image, &snapshot, e)),
    };
    let t = Instant::now();
    commit::finish(vol, Some(image), &revision, &opts.tags, !opts.leave_intent)?;
    tracing::info!(volume = %vol.name, "old snapshots removed in {:?}", t.elapsed());
    if let Some(why) = &synthesize {
        // The delta is committed; the full is an optimisation of its storage.
        match crate::history::make_full_locked(vol, &revision.id) {
            Ok(()) => tracing::info!(volume = %vol.name, "synthetic full written: {why}"),
            Err(e) => {
                tracing::warn!(volume = %vol.name, "synthetic full failed, the delta stays: {e}")
            }
        }
    }
    Ok(BackupReport {
        revision,
        mode,
        bytes_read,
        bytes_written,
        duration: started.elapsed(),
        synthetic_full: synthesize.is_some(),
    })
}

/// After a failure before the commit: removes the snapshot and the intent
/// record, and returns the failure. When the cluster did not answer, both
/// stay for the next backup to undo (its recovery does): removing the
/// snapshot now would only wait another timeout for nothing.
fn undo(vol: &VolumeDir, image: &dyn SourceImage, snapshot: &str, e: Error) -> Error {
    if e.is_cluster_timeout() {
        tracing::info!(
            volume = %vol.name,
            "the cluster did not answer: snapshot {snapshot} is left for the next backup to remove"
        );
        return e;
    }
    if let Err(e2) = image.remove_snapshot(snapshot) {
        tracing::warn!("could not remove snapshot {snapshot}: {e2}");
    }
    if let Err(e2) = vol.clear_pending() {
        tracing::warn!("could not remove the intent record: {e2}");
    }
    e
}

fn choose_mode(
    image: &dyn SourceImage,
    vol: &VolumeDir,
    revisions: &[Revision],
    state: &VolumeState,
    opts: &BackupOptions,
    full_due: Option<&str>,
) -> Result<Mode> {
    let Some(parent) = revisions.last() else {
        return Ok(Mode::Full);
    };
    if opts.full {
        return Ok(Mode::Full);
    }
    if let Some(why) = full_due.filter(|_| !opts.synthetic_fulls) {
        tracing::info!(volume = %vol.name, "writing a full: {why}");
        return Ok(Mode::Full);
    }
    let pstate = state.get(&parent.id);
    if let Trust::Distrusted { reason } = &pstate.trust {
        tracing::warn!(
            "revision {} is distrusted ({reason}): writing a full",
            parent.short()
        );
        return Ok(Mode::Full);
    }
    let Some(base) = pstate.snapshot else {
        return Ok(Mode::Compare {
            reason: format!(
                "revision {} has no snapshot recorded: comparing checksums of the whole image",
                parent.short()
            ),
        });
    };
    // Listed, not opened: an open closed at once is what upsets librbd
    // (see `ceph::image::CLOSE_GRACE`), and a list costs one call.
    if !image.snapshot_names()?.contains(&base) {
        return Ok(Mode::Compare {
            reason: format!(
                "base snapshot {base} of revision {} is gone: comparing checksums of the whole image",
                parent.short()
            ),
        });
    }
    Ok(Mode::Diff {
        base_snapshot: base,
    })
}

/// `<volume prefix><UTC time>-<random>`: unique, sortable, recognisable.
pub fn new_snapshot_name(prefix: &str) -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{prefix}{:04}{:02}{:02}T{:02}{:02}{:02}Z-{}",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        crate::archive::random_hex(4)
    )
}
