//! One job of a fleet run: back up or verify one volume, turning every
//! result into an [`Outcome`] and recording it in the fleet log.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::guarded::{Guarded, Guards};
use super::{Observer, Outcome};
use crate::archive::oplog::{self, LogRecord};
use crate::archive::{global, now_rfc3339, VolumeDir};
use crate::backup::{backup, BackupOptions, Mode};
use crate::ceph::Cluster;
use crate::config::{Config, Resolved, Volume};
use crate::error::{Error, Result};
use crate::format::DEFAULT_BLOCK_SIZE;
use crate::source::rbd::RbdImage;
use crate::throttle::Throttle;
use crate::verify::{verify_with, Subset, VerifyOptions};

/// What the jobs of one run share.
///
/// `cluster` serves listings (pool selections, `config check`). Each backup
/// opens its own client connection from `ceph` and shuts it down at the
/// end: librbd 16.2 (Debian 12) was seen to abort in a librados finisher
/// thread, on a mutex of an image closed earlier, in about one run of 30
/// to 1 of 8 with 50 volumes backed up over one shared client (even at
/// `--jobs 1`, and with open, close and snapshot calls serialized); with a
/// client per backup, 0 of 60 runs. A connection costs a few milliseconds
/// next to a backup's two snapshot operations.
pub struct Fleet {
    pub cluster: Arc<Cluster>,
    pub ceph: crate::ceph::CephOptions,
    pub archive: PathBuf,
    /// The fleet-wide read limit (`total-bandwidth`).
    pub total: Option<Arc<Throttle>>,
    /// Set to stop: jobs not started yet fail as cancelled, running ones
    /// abort at their next read.
    pub cancel: Arc<AtomicBool>,
}

impl Fleet {
    pub fn new(cluster: Arc<Cluster>, cfg: &Config) -> Fleet {
        Fleet {
            cluster,
            ceph: cfg.ceph.options(),
            archive: cfg.archive.clone(),
            total: cfg
                .fleet
                .total_bandwidth
                .map(|r| Arc::new(Throttle::new(r))),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Resolves `cfg`'s entries against the cluster.
    pub fn resolve(&self, cfg: &Config) -> Resolved {
        cfg.resolve(&mut |pool| self.cluster.ioctx(pool)?.list_images())
    }

    /// The failed outcome of an entry that yielded no volume, recorded and
    /// reported like any other job's.
    pub fn unresolved(&self, u: &crate::config::Unresolved, obs: &dyn Observer) -> Outcome {
        let o = Outcome::failed(
            &u.name,
            "backup",
            &Error::Invalid(u.error.clone()),
            std::time::Duration::ZERO,
        );
        let o = Outcome {
            transient: u.transient,
            ..o
        };
        record(&self.archive, &o, false);
        obs.finished(&o);
        o
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// Backs up `vol` (a full if `full`), reporting to `obs`.
pub fn backup_volume(
    fleet: &Fleet,
    vol: &Volume,
    full: bool,
    tags: &[String],
    obs: &dyn Observer,
) -> Outcome {
    let started = Instant::now();
    let progress = obs.started(&vol.name, "backup");
    // Whether the backup engine logged the attempt in the volume's own log
    // (it does once it holds the volume lock).
    let mut reached = false;
    let result = if fleet.cancelled() {
        Err(Error::Cancelled(
            "shutting down before the backup started".into(),
        ))
    } else {
        run_backup(fleet, vol, full, tags, progress.as_ref(), &mut reached)
    };
    let in_volume_log = reached && !matches!(result, Err(Error::Locked(_)));
    drop(progress);
    let outcome = match result {
        Ok(r) => Outcome {
            volume: vol.name.clone(),
            op: "backup",
            ok: true,
            kind: Some(
                match &r.mode {
                    Mode::Full => "full",
                    Mode::Diff { .. } => "delta",
                    Mode::Compare { .. } => "delta (checksum compare)",
                }
                .into(),
            ),
            revision: Some(r.revision.id.clone()),
            size: Some(r.revision.manifest.size),
            bytes_read: r.bytes_read,
            bytes_written: r.bytes_written,
            duration: started.elapsed(),
            error: None,
            transient: false,
        },
        Err(e) => Outcome::failed(&vol.name, "backup", &e, started.elapsed()),
    };
    record(&fleet.archive, &outcome, in_volume_log);
    obs.finished(&outcome);
    outcome
}

fn run_backup(
    fleet: &Fleet,
    vol: &Volume,
    full: bool,
    tags: &[String],
    progress: &dyn crate::progress::Progress,
    reached: &mut bool,
) -> Result<crate::backup::BackupReport> {
    // Declared first so it is dropped last, after the image and the ioctx.
    let cluster = Cluster::connect(&fleet.ceph)?;
    let ioctx = cluster
        .ioctx(&vol.pool)
        .map_err(|e| context(e, &format!("pool {}", vol.pool)))?;
    let image = RbdImage::open(&ioctx, &vol.image)
        .map_err(|e| context(e, &format!("image {}", vol.source_name())))?;
    let dir = VolumeDir::open_or_create(&fleet.archive, &vol.name, DEFAULT_BLOCK_SIZE)?;
    let mut throttles: Vec<_> = fleet.total.iter().cloned().collect();
    if let Some(r) = vol.settings.bandwidth {
        throttles.push(Arc::new(Throttle::new(r)));
    }
    let guarded = Guarded {
        inner: image,
        volume: vol,
        guards: Guards {
            throttles,
            cancel: Some(fleet.cancel.clone()),
        },
    };
    let opts = BackupOptions {
        full,
        whole_object: vol.settings.whole_object,
        source_name: vol.source_name(),
        full_every: vol.settings.full_every,
        tags: tags.to_vec(),
        ..Default::default()
    };
    *reached = true;
    backup(&dir, &guarded, &opts, progress)
}

/// Verifies every revision of volume `name` in `archive` (only slice
/// `subset` of the stored blocks, if given).
pub fn verify_volume(
    archive: &Path,
    name: &str,
    subset: Option<Subset>,
    obs: &dyn Observer,
) -> Outcome {
    let started = Instant::now();
    let progress = obs.started(name, "verify");
    let dir_exists = archive.join(name).is_dir();
    let result = VolumeDir::open(archive, name).and_then(|dir| {
        let opts = VerifyOptions {
            subset,
            ..Default::default()
        };
        verify_with(&dir, &opts, progress.as_ref())
    });
    drop(progress);
    let outcome = match result {
        Ok(report) if report.problems.is_empty() => Outcome {
            volume: name.to_string(),
            op: "verify",
            ok: true,
            kind: None,
            revision: None,
            size: None,
            bytes_read: report.bytes_read,
            bytes_written: 0,
            duration: started.elapsed(),
            error: None,
            transient: false,
        },
        Ok(report) => Outcome {
            bytes_read: report.bytes_read,
            ..Outcome::failed(
                name,
                "verify",
                &Error::Corrupt(format!(
                    "{} problem(s), first: {}",
                    report.problems.len(),
                    report.problems[0]
                )),
                started.elapsed(),
            )
        },
        Err(e) => Outcome::failed(name, "verify", &e, started.elapsed()),
    };
    record(archive, &outcome, dir_exists);
    obs.finished(&outcome);
    outcome
}

/// Appends `o` to the fleet log; a log failure is a warning, not a failed
/// job. `in_volume_log`: the volume's own log has the operation too.
fn record(archive: &Path, o: &Outcome, in_volume_log: bool) {
    let rec = LogRecord {
        time: now_rfc3339(),
        op: o.op.into(),
        event: "end".into(),
        volume: Some(o.volume.clone()),
        revision: o.revision.clone(),
        outcome: Some(if o.ok { "ok" } else { "error" }.into()),
        error: o.error.clone(),
        kind: o.kind.clone(),
        bytes_read: Some(o.bytes_read),
        bytes_written: Some(o.bytes_written),
        duration_ms: Some(o.duration.as_millis() as u64),
        transient: (!o.ok).then_some(o.transient),
        in_volume_log: Some(in_volume_log),
        detail: None,
    };
    if let Err(e) =
        global::ensure(archive).and_then(|()| oplog::append(&global::log_path(archive), &rec))
    {
        tracing::warn!("could not append to the fleet log: {e}");
    }
}

/// Prefixes a Ceph error's message with what it concerned, keeping its kind.
fn context(e: Error, what: &str) -> Error {
    match e {
        Error::Ceph { op, errno, msg } => Error::Ceph {
            op: format!("{what}: {op}"),
            errno,
            msg,
        },
        other => other,
    }
}
