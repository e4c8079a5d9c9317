//! One job of a fleet run: back up or verify one volume, turning every
//! result into an [`Outcome`] and recording it in the fleet log.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::guarded::{Guarded, Guards};
use super::{Observer, Outcome};
use crate::archive::oplog::{self, LogRecord};
use crate::archive::{global, now_rfc3339, VolumeDir};
use crate::backup::{backup, BackupOptions, Mode};
use crate::ceph::{Cluster, IoCtx};
use crate::config::{Config, Resolved, Volume};
use crate::error::{Error, Result};
use crate::format::DEFAULT_BLOCK_SIZE;
use crate::source::rbd::RbdImage;
use crate::throttle::Throttle;
use crate::verify::{verify_with, Subset, VerifyOptions};

/// What the jobs of one run share: one cluster connection, opened on first
/// use. When connecting times out, the remaining jobs of the run fail at
/// once instead of each waiting out the timeout. With [`Fleet::workers`]
/// set, backups run in worker processes instead (see [`super::worker`]),
/// and this connection only lists pools.
pub struct Fleet {
    pub ceph: crate::ceph::CephOptions,
    shared: Mutex<Option<Arc<Cluster>>>,
    unreachable: Mutex<Option<String>>,
    pub archive: PathBuf,
    /// The fleet-wide read limit (`total-bandwidth`).
    pub total: Option<Arc<Throttle>>,
    /// Set to stop: jobs not started yet fail as cancelled, running ones
    /// abort at their next read.
    pub cancel: Arc<AtomicBool>,
    /// Backups run in worker processes started so; `None`: in this one.
    pub workers: Option<super::worker::Spawner>,
    /// Backups running at once (each worker gets this share of `total`).
    pub parallel: usize,
    /// A worker that reports nothing this long is killed.
    pub stall_timeout: std::time::Duration,
    /// How fsck jobs start their worker, and their sandbox's limits.
    pub fsck: crate::fsck::Runner,
}

impl Fleet {
    pub fn new(cfg: &Config) -> Fleet {
        Fleet {
            parallel: cfg.fleet.parallel,
            stall_timeout: cfg.fleet.stall_timeout,
            fsck: crate::fsck::Runner::this_binary(Vec::new(), cfg.fsck),
            ..Fleet::bare(
                cfg.ceph.options(),
                cfg.archive.clone(),
                cfg.fleet.total_bandwidth,
            )
        }
    }

    /// A fleet of one job at a time, in this process.
    pub fn bare(ceph: crate::ceph::CephOptions, archive: PathBuf, total: Option<u64>) -> Fleet {
        Fleet {
            ceph,
            shared: Mutex::new(None),
            unreachable: Mutex::new(None),
            archive,
            total: total.map(|r| Arc::new(Throttle::new(r))),
            cancel: Arc::new(AtomicBool::new(false)),
            workers: None,
            parallel: 1,
            stall_timeout: crate::config::DEFAULT_STALL_TIMEOUT,
            fsck: crate::fsck::Runner::this_binary(Vec::new(), Default::default()),
        }
    }

    /// The same fleet for one job, stopped by `cancel` instead (the
    /// daemon's job whose lease lapsed).
    pub fn with_cancel(&self, cancel: Arc<AtomicBool>) -> Fleet {
        let shared = self
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let unreachable = self
            .unreachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Fleet {
            ceph: self.ceph.clone(),
            shared: Mutex::new(shared),
            unreachable: Mutex::new(unreachable),
            archive: self.archive.clone(),
            total: self.total.clone(),
            cancel,
            workers: self.workers.clone(),
            parallel: self.parallel,
            stall_timeout: self.stall_timeout,
            fsck: self.fsck.clone(),
        }
    }

    /// A fleet whose connection is `cluster` (the daemon's).
    pub fn with_client(cluster: Arc<Cluster>, cfg: &Config) -> Fleet {
        let f = Fleet::new(cfg);
        *f.shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(cluster);
        f
    }

    /// The shared connection, opened on first use.
    pub fn client(&self) -> Result<Arc<Cluster>> {
        let mut l = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = &*l {
            return Ok(c.clone());
        }
        let c = self.connect()?;
        *l = Some(c.clone());
        Ok(c)
    }

    /// A new connection, or at once the error of an earlier one that timed out.
    fn connect(&self) -> Result<Arc<Cluster>> {
        if let Some(e) = &*self.unreachable.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(Error::Ceph {
                op: "connect".into(),
                errno: libc::ETIMEDOUT,
                msg: e.clone(),
            });
        }
        let conf = self
            .ceph
            .conf
            .as_ref()
            .map_or("the default ceph.conf".into(), |p| p.display().to_string());
        Cluster::connect(&self.ceph).map_err(|e| {
            let e = context(e, &format!("cannot connect to the Ceph cluster of {conf}"));
            if let Error::Ceph {
                errno: libc::ETIMEDOUT,
                ..
            } = e
            {
                *self.unreachable.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
            e
        })
    }

    /// Resolves `cfg`'s entries, listing pools only if it has selections.
    pub fn resolve(&self, cfg: &Config) -> Resolved {
        if !cfg.has_selections() {
            return cfg.resolve_listed();
        }
        match self.client() {
            Ok(c) => cfg.resolve(&mut |pool| c.ioctx(pool)?.list_images()),
            Err(e) => {
                let err = e.to_string();
                cfg.resolve(&mut |_| {
                    Err(Error::Ceph {
                        op: "list".into(),
                        errno: libc::ETIMEDOUT,
                        msg: err.clone(),
                    })
                })
            }
        }
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
    dead_clients: &[String],
    obs: &dyn Observer,
) -> Outcome {
    let started = Instant::now();
    let progress = obs.started(&vol.name, "backup");
    // Whether the backup engine logged the attempt in the volume's own log
    // (it does once it holds the volume lock).
    let mut reached = false;
    let (result, handles) = if fleet.cancelled() {
        let e = Error::Cancelled("shutting down before the backup started".into());
        (Err(e), None)
    } else {
        let opts = BackupOptions {
            full,
            whole_object: vol.settings.whole_object,
            source_name: vol.source_name(),
            full_every: vol.settings.full_every,
            tags: tags.to_vec(),
            synthetic_fulls: vol.settings.synthetic_fulls,
            leave_intent: true,
            dead_clients: dead_clients.to_vec(),
            ..Default::default()
        };
        run_backup(fleet, vol, &opts, progress.as_ref(), &mut reached)
    };
    let in_volume_log = reached && !matches!(result, Err(Error::Locked(_)));
    let committed = result.as_ref().ok().map(|r| r.revision.clone());
    drop(progress);
    let outcome = match result {
        Ok(r) => Outcome {
            kind: Some(
                match (&r.mode, r.synthetic_full) {
                    (Mode::Full, _) => "full",
                    (_, true) => "delta + synthetic full",
                    (Mode::Diff { .. }, _) => "delta",
                    (Mode::Compare { .. }, _) => "delta (checksum compare)",
                }
                .into(),
            ),
            revision: Some(r.revision.id.clone()),
            size: Some(r.revision.manifest.size),
            bytes_read: r.bytes_read,
            bytes_written: r.bytes_written,
            ..Outcome::succeeded(&vol.name, "backup", started.elapsed())
        },
        Err(e) => Outcome::failed(&vol.name, "backup", &e, started.elapsed()),
    };
    record(&fleet.archive, &outcome, in_volume_log);
    obs.finished(&outcome);
    // Only now close the image and the connection: with a cluster that
    // does not answer, that can take a timeout or more, and the outcome
    // is known already. Then the intent record goes (it named this
    // process's client while the image was open).
    crate::fault::point("backup: reported, image still open");
    drop(handles);
    if let (Some(r), Ok(dir)) = (&committed, VolumeDir::open(&fleet.archive, &vol.name)) {
        if let Err(e) = crate::backup::release_intent(&dir, r) {
            tracing::warn!(volume = %vol.name, "could not remove the intent record: {e}");
        }
    }
    outcome
}

/// Cuts `clients`, connections of backup workers that died on `vol`'s job,
/// off its image (when its retry died too, so nothing else will soon);
/// recorded nowhere, only logged.
pub fn evict_volume(fleet: &Fleet, vol: &Volume, clients: &[String]) -> Outcome {
    let started = Instant::now();
    let done = open_image(fleet, vol).map(|opened| {
        for c in clients {
            crate::backup::evict(&vol.name, &opened.0, c, crate::backup::DEAD_WORKER);
        }
    });
    match done {
        Ok(()) => Outcome::succeeded(&vol.name, "evict", started.elapsed()),
        Err(e) => Outcome::failed(&vol.name, "evict", &e, started.elapsed()),
    }
}

/// What a backup keeps open until its outcome is reported: closing them
/// can wait out a timeout when the cluster does not answer.
struct Handles {
    _image: RbdImage,
    _ioctx: IoCtx,
    _cluster: Arc<Cluster>,
}

/// Connects and opens `vol`'s image; the tuple drops in field order,
/// image first.
fn open_image(fleet: &Fleet, vol: &Volume) -> Result<(RbdImage, IoCtx, Arc<Cluster>)> {
    let cluster = fleet.client()?;
    let ioctx = cluster
        .ioctx(&vol.pool)
        .map_err(|e| context(e, &format!("pool {}", vol.pool)))?;
    let image = RbdImage::open(&ioctx, &vol.image)
        .map_err(|e| context(e, &format!("image {}", vol.source_name())))?;
    Ok((image, ioctx, cluster))
}

/// Opens the image and backs it up; the result, and the handles to close
/// once it is reported (none if the image never opened).
fn run_backup(
    fleet: &Fleet,
    vol: &Volume,
    opts: &BackupOptions,
    progress: &dyn crate::progress::Progress,
    reached: &mut bool,
) -> (Result<crate::backup::BackupReport>, Option<Handles>) {
    let opened = open_image(fleet, vol).inspect(|_| crate::fault::job_fault(&vol.name, "opened"));
    let (image, ioctx, cluster) = match opened {
        Ok(o) => o,
        Err(e) => return (Err(e), None),
    };
    let dir = match VolumeDir::open_or_create(&fleet.archive, &vol.name, DEFAULT_BLOCK_SIZE) {
        Ok(d) => d,
        Err(e) => return (Err(e), None),
    };
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
    *reached = true;
    let result = backup(&dir, &guarded, opts, progress);
    let handles = Handles {
        _image: guarded.inner,
        _ioctx: ioctx,
        _cluster: cluster,
    };
    (result, Some(handles))
}

/// Verifies every revision of volume `name` in `archive` (only slice
/// `subset` of the stored blocks, if given).
/// `cancel` stops it (the daemon's shutdown).
pub fn verify_volume(
    archive: &Path,
    name: &str,
    subset: Option<Subset>,
    cancel: Option<Arc<AtomicBool>>,
    obs: &dyn Observer,
) -> Outcome {
    let started = Instant::now();
    let progress = obs.started(name, "verify");
    let dir_exists = archive.join(name).is_dir();
    let result = VolumeDir::open(archive, name).and_then(|dir| {
        let opts = VerifyOptions {
            subset,
            cancel,
            ..Default::default()
        };
        verify_with(&dir, &opts, progress.as_ref())
    });
    drop(progress);
    let outcome = match result {
        Ok(report) if report.problems.is_empty() => Outcome {
            bytes_read: report.bytes_read,
            ..Outcome::succeeded(name, "verify", started.elapsed())
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

/// Runs `fsck` of the newest revision of volume `name` (the daemon's
/// `fsck-schedule`); filesystem errors fail the job (not transient).
pub fn fsck_volume(fleet: &Fleet, name: &str, obs: &dyn Observer) -> Outcome {
    let archive = fleet.archive.as_path();
    let started = Instant::now();
    let progress = obs.started(name, "fsck");
    let dir_exists = archive.join(name).is_dir();
    let result = VolumeDir::open(archive, name).and_then(|dir| {
        let rev = dir.find_revision("latest")?;
        crate::fsck::fsck(&dir, &rev, &fleet.fsck, &fleet.cancel)
    });
    drop(progress);
    let outcome = match result {
        Ok(r) if !r.has_errors() => Outcome {
            revision: Some(r.revision.id.clone()),
            ..Outcome::succeeded(name, "fsck", started.elapsed())
        },
        Ok(r) => Outcome {
            revision: Some(r.revision.id.clone()),
            ..Outcome::failed(
                name,
                "fsck",
                &Error::Corrupt(format!("filesystem errors: {}", r.summary())),
                started.elapsed(),
            )
        },
        Err(e) => Outcome::failed(name, "fsck", &e, started.elapsed()),
    };
    record(archive, &outcome, dir_exists);
    obs.finished(&outcome);
    outcome
}

/// Appends `o` to the fleet log; a log failure is a warning, not a failed
/// job. `in_volume_log`: the volume's own log has the operation too.
pub(super) fn record(archive: &Path, o: &Outcome, in_volume_log: bool) {
    let rec = LogRecord {
        time: now_rfc3339(),
        op: o.op.clone(),
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
        node: crate::host::node().map(str::to_string),
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
