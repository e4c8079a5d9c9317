//! `rbdelta daemon`: runs the fleet by schedule.
//!
//! One loop on a single-threaded tokio runtime owns all state (the
//! [`planner::Planner`], the config, the cluster connection) and reacts to
//! four things: a job is due, a job ended, SIGHUP (reload the config and
//! re-resolve pool selections), SIGTERM/SIGINT (stop). Nothing that can
//! block runs on that loop: jobs, cluster connects, lease renewals and
//! pool listings run on tokio's blocking threads (jobs at most
//! `defaults.parallel` at once), and the status file is written by a
//! thread of its own ([`status_file::Writer`]). The loop awaits that
//! work together with the stop signals, so a stop is served at once
//! whatever the cluster does.
//!
//! Shutdown: the shared cancel flag makes every running job stop: a backup
//! aborts at its next read (the engine removes its snapshot and temp
//! files; no half revision ever becomes visible), a verify at its next
//! block, an fsck tells its worker to stop (which unmounts its overlay).
//! The loop waits [`STOP_WAIT`] for the jobs to report, gives its node
//! lease back (bounded too), writes the status file and returns; what is
//! still running then (a backup whose cluster does not answer) dies with
//! the process, which the archive survives as it survives `kill -9`.
//!
//! With `nodes:` in the config, the daemon is one node of a fleet shared by
//! several hosts ([`shared`]): it runs only the jobs of its own volumes,
//! each under the volume's job lease.

pub mod planner;
mod shared;
mod status_file;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::archive::global;
use crate::ceph::Cluster;
use crate::config::{Config, Volume};
use crate::error::{Error, Result};
use crate::fleet::worker::Spawner;
use crate::fleet::{backup_isolated, verify_volume, Fleet, Observer, Outcome};
use planner::{JobKind, Planner};

/// How often pool selections are listed again, to pick up new images.
const RESOLVE_EVERY: i64 = 600;
/// Wait between attempts to reach an unreachable cluster.
const RECONNECT_EVERY: Duration = Duration::from_secs(30);
/// How long a stopping daemon waits for its jobs to end, and then for its
/// lease to be given back and its status written: within 5 s of SIGTERM
/// it is gone, whatever the cluster does.
const STOP_WAIT: Duration = Duration::from_millis(3500);
const LEAVE_WAIT: Duration = Duration::from_millis(700);

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Runs until SIGTERM or SIGINT. Fails only when the config cannot be
/// loaded at start or signals cannot be set up.
/// Backups run in worker processes started by `workers` (in the daemon's
/// own process if `None`).
pub fn run(
    config_path: &Path,
    observer: Arc<dyn Observer>,
    workers: Option<Spawner>,
) -> Result<()> {
    let cfg = Config::load(config_path)?;
    match (&cfg.nodes, crate::host::node()) {
        (Some(_), None) => crate::host::set_node(&crate::host::host())?,
        (None, Some(n)) => {
            return Err(Error::Config(format!(
                "{}: node {n:?} given, but the config has no `nodes:` section (where the nodes' leases live)",
                cfg.origin
            )))
        }
        _ => {}
    }
    if let Some(n) = crate::host::node() {
        tracing::info!("node {n} of a shared fleet");
    }
    // One daemon per archive (per node of a shared fleet): two would run
    // every backup twice and fight over the volume locks. Held for the
    // process's life.
    crate::archive::global::ensure(&cfg.archive)?;
    let _one = crate::archive::lock::DaemonLock::acquire(
        &crate::archive::global::daemon_lock_path(&cfg.archive),
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    let mut daemon = Daemon::new(config_path.to_path_buf(), cfg, observer);
    daemon.workers = workers;
    let r = rt.block_on(daemon.run());
    // a blocking call still waiting on the cluster is not waited for
    rt.shutdown_timeout(Duration::from_millis(100));
    r
}

/// SIGTERM and SIGINT.
struct Stop {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stop {
    async fn requested(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Runs `f` on a blocking thread; `None` if a stop signal came first (`f`
/// then finishes, or not, on its own).
async fn off_loop<T: Send + 'static>(
    stop: &mut Stop,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let task = tokio::task::spawn_blocking(f);
    tokio::select! {
        r = task => match r {
            Ok(v) => Some(v),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        },
        _ = stop.requested() => None,
    }
}

struct Daemon {
    path: PathBuf,
    cfg: Config,
    observer: Arc<dyn Observer>,
    fleet: Option<Arc<Fleet>>,
    cancel: Arc<AtomicBool>,
    planner: Planner,
    resolved_at: i64,
    status: status_file::StatusFile,
    writer: status_file::Writer,
    workers: Option<Spawner>,
    /// This node's part in a shared fleet, once connected.
    shared: Option<shared::Shared>,
}

/// A job's end: its outcome, or `None` if another node ran it.
type Done = (String, JobKind, Option<Outcome>);

impl Daemon {
    fn new(path: PathBuf, cfg: Config, observer: Arc<dyn Observer>) -> Daemon {
        let status = status_file::StatusFile::new(&cfg, &path);
        Daemon {
            path,
            planner: Planner::new(cfg.fleet.catch_up),
            cfg,
            observer,
            fleet: None,
            cancel: Arc::new(AtomicBool::new(false)),
            resolved_at: 0,
            status,
            writer: status_file::Writer::start(),
            workers: None,
            shared: None,
        }
    }

    async fn run(mut self) -> Result<()> {
        let sig = |k| signal(k).map_err(|e| Error::io("signal handler", e));
        let mut stop = Stop {
            term: sig(SignalKind::terminate())?,
            int: sig(SignalKind::interrupt())?,
        };
        let mut hup = sig(SignalKind::hangup())?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Done>();
        tracing::info!("daemon started with {}", self.path.display());
        loop {
            if self.ensure_connected(&mut stop).await.is_none()
                || self.refresh_shared(&mut stop).await.is_none()
            {
                break;
            }
            self.start_due(&tx);
            self.write_status();
            let wait = self.next_wakeup();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                Some(done) = rx.recv() => self.finished(done),
                _ = hup.recv() => if self.reload(&mut stop).await.is_none() { break },
                _ = stop.requested() => break,
            }
        }
        let running = self.planner.running();
        tracing::info!("stopping: {running} running job(s) are told to stop");
        self.cancel.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        while self.planner.running() > 0 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(done)) => self.finished(done),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        "stopping: {} job(s) did not end within {} s; they die with the daemon (the archive keeps every revision; a backup's leftover snapshot is removed by its next run)",
                        self.planner.running(),
                        STOP_WAIT.as_secs_f32()
                    );
                    break;
                }
            }
        }
        if let Some(s) = &self.shared {
            // the others take this node's volumes now, not after the lease
            let leases = s.leases.clone();
            let left = tokio::task::spawn_blocking(move || leases.leave());
            match tokio::time::timeout(LEAVE_WAIT, left).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::error!("could not give the node lease back: {e}"),
                Ok(Err(_)) | Err(_) => {
                    tracing::warn!("the node lease was not given back in time: it lapses by itself")
                }
            }
        }
        self.write_status();
        self.writer.finish(LEAVE_WAIT);
        tracing::info!("daemon stopped");
        Ok(())
    }

    /// Hands the status file's new content to its writer.
    fn write_status(&self) {
        self.writer
            .write(&self.cfg.archive, self.status.render(&self.planner));
    }

    fn finished(&mut self, (name, kind, outcome): Done) {
        match outcome {
            Some(o) => {
                self.planner.finished(&name, kind, &o, now());
                self.status.record(&self.cfg, &o);
            }
            None => self.planner.pass(&name, kind, now()),
        }
    }

    /// On a node of a shared fleet: renews the leases and rereads who owns
    /// what, every third of a lease (off the loop). `None`: a stop signal
    /// came meanwhile.
    async fn refresh_shared(&mut self, stop: &mut Stop) -> Option<()> {
        let Some(mut s) = self.shared.take() else {
            return Some(());
        };
        if !s.due() {
            self.shared = Some(s);
            return Some(());
        }
        let volumes: Vec<String> = self.planner.plans.keys().cloned().collect();
        let before = s.owned();
        let leases = s.leases.clone();
        let refreshed = off_loop(stop, move || {
            let names: Vec<&str> = volumes.iter().map(String::as_str).collect();
            s.refresh(&names);
            (s, volumes.len())
        })
        .await;
        let Some((s, n)) = refreshed else {
            // keep what is needed to give the node lease back
            self.shared = Some(shared::Shared::new_from(leases));
            return None;
        };
        if s.owned() != before {
            tracing::info!(
                "node {}: {} of {n} volume(s) are this node's",
                s.leases.node(),
                s.owned(),
            );
        }
        self.shared = Some(s);
        Some(())
    }

    /// Connects (and resolves the volumes) if not connected, and re-resolves
    /// pool selections every [`RESOLVE_EVERY`] seconds; off the loop.
    /// `None`: a stop signal came meanwhile.
    async fn ensure_connected(&mut self, stop: &mut Stop) -> Option<()> {
        let t = now();
        if self.fleet.is_none() {
            if t < self.resolved_at {
                return Some(()); // waiting before the next connection attempt
            }
            let (opts, nodes, archive) = (
                self.cfg.ceph.options(),
                self.cfg.nodes.clone(),
                self.cfg.archive.clone(),
            );
            let connected = off_loop(stop, move || {
                let c = Cluster::connect(&opts).map_err(|e| (e, None))?;
                let leases = match (&nodes, crate::host::node()) {
                    (Some(nodes), Some(node)) => Some(
                        global::fleet_id(&archive)
                            .and_then(|fleet| {
                                crate::fleet::nodes::NodeLeases::new(&c, nodes, &fleet, node)
                            })
                            .map_err(|e| (e, Some(nodes.lease_pool.clone())))?,
                    ),
                    _ => None,
                };
                Ok((c, leases))
            })
            .await?;
            match connected {
                Ok((c, leases)) => {
                    self.shared = leases.map(shared::Shared::new);
                    let mut f = Fleet::with_client(c, &self.cfg);
                    f.cancel = self.cancel.clone();
                    f.workers = self.workers.clone();
                    self.fleet = Some(Arc::new(f));
                    self.resolved_at = 0;
                }
                Err((e, pool)) => {
                    match pool {
                        Some(pool) => tracing::error!(
                            "cannot take part in the shared fleet (lease pool {pool}): {e}; retrying in {}s",
                            RECONNECT_EVERY.as_secs()
                        ),
                        None => tracing::error!(
                            "cannot connect to the Ceph cluster ({e}); retrying in {}s",
                            RECONNECT_EVERY.as_secs()
                        ),
                    }
                    self.resolved_at = t + RECONNECT_EVERY.as_secs() as i64;
                    return Some(());
                }
            }
        }
        if t - self.resolved_at >= RESOLVE_EVERY || self.resolved_at == 0 {
            self.resolve(t, stop).await?;
        }
        Some(())
    }

    /// Lists the pools (off the loop) and reschedules.
    async fn resolve(&mut self, t: i64, stop: &mut Stop) -> Option<()> {
        let Some(fleet) = self.fleet.clone() else {
            return Some(());
        };
        let cfg = self.cfg.clone();
        let (resolved, last) = off_loop(stop, move || {
            let resolved = fleet.resolve(&cfg);
            // with the fleet log's summaries this is a small read
            (resolved, last_attempts(&cfg.archive))
        })
        .await?;
        for u in &resolved.unresolved {
            tracing::error!("{}: {}", u.name, u.error);
        }
        self.planner
            .update(resolved.volumes, self.cfg.fleet.catch_up, t, &|n| {
                // an attempt whose time is damaged counts as just now:
                // damage is no reason to catch up (it is reported)
                last.get(n).map(|at| at.unwrap_or(t))
            });
        self.resolved_at = t;
        tracing::info!("{} volume(s) scheduled", self.planner.plans.len());
        Some(())
    }

    async fn reload(&mut self, stop: &mut Stop) -> Option<()> {
        match Config::load(&self.path) {
            Ok(cfg) if cfg.nodes.is_some() != self.cfg.nodes.is_some() => tracing::error!(
                "config not reloaded: adding or removing `nodes:` needs a restart of the daemon"
            ),
            Ok(cfg) => {
                let reconnect = cfg.ceph.options() != self.cfg.ceph.options()
                    || cfg.archive != self.cfg.archive
                    || cfg.nodes != self.cfg.nodes;
                self.cfg = cfg;
                self.status = status_file::StatusFile::new(&self.cfg, &self.path);
                if reconnect {
                    self.fleet = None;
                    self.shared = None;
                    self.resolved_at = 0;
                }
                self.ensure_connected(stop).await?;
                self.resolve(now(), stop).await?;
                tracing::info!("config reloaded from {}", self.path.display());
            }
            Err(e) => tracing::error!("config not reloaded, keeping the old one: {e}"),
        }
        Some(())
    }

    fn start_due(&mut self, tx: &mpsc::UnboundedSender<Done>) {
        let Some(fleet) = self.fleet.clone() else {
            return;
        };
        if self.shared.as_ref().is_some_and(|s| !s.settled()) {
            return; // a node that just joined first sees the others
        }
        let t = now();
        while self.planner.running() < self.cfg.fleet.parallel {
            let Some((vol, kind, due)) = self.planner.take_due(t) else {
                break;
            };
            let leases = match &self.shared {
                Some(s) if !s.owns(&vol.name) => {
                    self.planner.pass(&vol.name, kind, t);
                    continue;
                }
                Some(s) => Some(s.leases.clone()),
                None => None,
            };
            let (fleet, obs, tx) = (fleet.clone(), self.observer.clone(), tx.clone());
            tokio::task::spawn_blocking(move || {
                let outcome = match &leases {
                    Some(l) => run_leased(l, &fleet, &vol, kind, due, obs.as_ref()),
                    None => Some(run_job(&fleet, &vol, kind, obs.as_ref())),
                };
                let _ = tx.send((vol.name.clone(), kind, outcome));
            });
        }
    }

    fn next_wakeup(&self) -> Duration {
        let t = now();
        if self.fleet.is_none() {
            // not connected: `resolved_at` holds the next attempt
            return Duration::from_secs((self.resolved_at - t).clamp(1, 3600) as u64);
        }
        let mut at = self.resolved_at + RESOLVE_EVERY;
        if let Some(due) = self.planner.next_due() {
            at = at.min(due);
        }
        let wait = Duration::from_secs((at - t).clamp(0, 3600) as u64);
        let wait = match &self.shared {
            Some(s) => wait.min(s.until_next()),
            None => wait,
        };
        wait.max(Duration::from_millis(200))
    }
}

/// Runs a job of a shared fleet under the volume's job lease; `None` if
/// another node holds the lease, or already made a backup since `due`.
fn run_leased(
    leases: &crate::fleet::nodes::NodeLeases,
    fleet: &Fleet,
    vol: &Volume,
    kind: JobKind,
    due: i64,
    obs: &dyn Observer,
) -> Option<Outcome> {
    use crate::fleet::nodes::Claim;
    let started = std::time::Instant::now();
    let lapsed = match leases.take_job(&vol.name) {
        Ok(Claim::Taken(lapsed)) => lapsed,
        Ok(Claim::HeldBy(n)) => {
            tracing::info!(
                "{}: {} left to node {n}, which holds its job lease",
                vol.name,
                kind.as_str()
            );
            return None;
        }
        Err(e) => {
            tracing::error!("{}: cannot take the job lease: {e}", vol.name);
            let o = Outcome::failed(&vol.name, kind.as_str(), &e, started.elapsed());
            obs.finished(&o);
            return Some(o);
        }
    };
    let outcome = if kind == JobKind::Backup && backed_up_since(&fleet.archive, &vol.name, due) {
        tracing::info!(
            "{}: already backed up in this slot by another node",
            vol.name
        );
        None
    } else {
        // The job stops on the daemon's stop, and once its lease went a
        // whole lease unrenewed (another node may run it by then).
        let stop = Arc::new(AtomicBool::new(false));
        let job = fleet.with_cancel(stop.clone());
        let done = Arc::new(AtomicBool::new(false));
        let watch = {
            let (stop, done, all) = (stop.clone(), done.clone(), fleet.cancel.clone());
            let lapsed = lapsed.clone();
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if all.load(Ordering::Relaxed) || lapsed.load(Ordering::Relaxed) {
                        stop.store(true, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let mut o = run_job(&job, vol, kind, obs);
        done.store(true, Ordering::Relaxed);
        let _ = watch.join();
        if lapsed.load(Ordering::Relaxed) && !o.ok {
            o.error = Some(format!(
                "stopped: its job lease was not renewed for a whole lease ({})",
                o.error.unwrap_or_default()
            ));
        }
        Some(o)
    };
    if let Err(e) = leases.release_job(&vol.name) {
        tracing::warn!(
            "{}: job lease not given back (it lapses by itself): {e}",
            vol.name
        );
    }
    outcome
}

/// Whether `volume` has a revision made at or after `since` (Unix seconds).
fn backed_up_since(archive: &Path, volume: &str, since: i64) -> bool {
    crate::archive::VolumeDir::open(archive, volume)
        .and_then(|d| d.has_revision_since(since))
        .unwrap_or(false)
}

fn run_job(fleet: &Fleet, vol: &Volume, kind: JobKind, obs: &dyn Observer) -> Outcome {
    match kind {
        JobKind::Backup => {
            // A worker per job: between nights no librbd state lingers.
            let o = backup_isolated(fleet, &mut None, vol, false, &[], obs);
            if o.ok && !vol.settings.retention.is_empty() {
                // Retention right after a successful backup, so a fleet
                // with rules never grows past them.
                let pruned = crate::archive::VolumeDir::open(&fleet.archive, &vol.name)
                    .and_then(|d| crate::history::prune(&d, &vol.settings.retention, now()));
                match pruned {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("{}: {n} revision(s) pruned", vol.name),
                    Err(e) => tracing::error!("{}: prune failed: {e}", vol.name),
                }
            }
            o
        }
        JobKind::Verify => {
            let day = (now() / 86_400) as u64;
            let subset = vol
                .settings
                .verify_slices
                .map(|m| crate::verify::Subset::for_day(day, m));
            verify_volume(
                &fleet.archive,
                &vol.name,
                subset,
                Some(fleet.cancel.clone()),
                obs,
            )
        }
        JobKind::Fsck => crate::fleet::fsck_volume(fleet, &vol.name, obs),
    }
}

/// When each volume's last backup ended, from the fleet log (its summary
/// keeps each volume's newest success and all that followed it, so the
/// newest attempt that was not cut short by a shutdown). `None`: its
/// records' times are damaged (logged as a warning), so when is unknown.
fn last_attempts(archive: &Path) -> std::collections::HashMap<String, Option<i64>> {
    let mut out = std::collections::HashMap::new();
    for r in global::backups_of(archive, None)
        .unwrap_or_default()
        .records
    {
        if let (Some(v), "backup", "end") = (r.volume.clone(), r.op.as_str(), r.event.as_str()) {
            if r.error
                .as_deref()
                .is_some_and(|e| e.starts_with("cancelled"))
            {
                continue; // a backup cut short by shutdown did not happen
            }
            match crate::status::unix_of(&r.time) {
                Some(t) => {
                    out.insert(v, Some(t));
                }
                None => {
                    tracing::warn!(
                        "{}: not taken as the time of the last backup, no catch-up for it",
                        crate::status::damaged_time("fleet log", &r)
                    );
                    out.entry(v).or_insert(None);
                }
            }
        }
    }
    out
}
