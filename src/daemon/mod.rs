//! `rbdelta daemon`: runs the fleet by schedule.
//!
//! One loop on a single-threaded tokio runtime owns all state (the
//! [`planner::Planner`], the config, the cluster connection) and reacts to
//! four things: a job is due, a job ended, SIGHUP (reload the config and
//! re-resolve pool selections), SIGTERM/SIGINT (stop). Jobs themselves are
//! blocking librbd and file work and run on tokio's blocking threads, at
//! most `defaults.parallel` at once.
//!
//! Shutdown: the shared cancel flag makes every running backup abort at its
//! next read (the engine removes its snapshot and temp files; no half
//! revision ever becomes visible), the loop waits for every job to report,
//! writes the status file and returns.
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
    rt.block_on(daemon.run())
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
            workers: None,
            shared: None,
        }
    }

    async fn run(mut self) -> Result<()> {
        let sig = |k| signal(k).map_err(|e| Error::io("signal handler", e));
        let (mut term, mut int, mut hup) = (
            sig(SignalKind::terminate())?,
            sig(SignalKind::interrupt())?,
            sig(SignalKind::hangup())?,
        );
        let (tx, mut rx) = mpsc::unbounded_channel::<Done>();
        tracing::info!("daemon started with {}", self.path.display());
        loop {
            self.ensure_connected();
            self.refresh_shared();
            self.start_due(&tx);
            self.status.write(&self.cfg, &self.planner);
            let wait = self.next_wakeup();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                Some(done) = rx.recv() => self.finished(done),
                _ = hup.recv() => self.reload(),
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        let running = self.planner.running();
        tracing::info!("stopping: {running} running job(s) are aborted cleanly");
        self.cancel.store(true, Ordering::Relaxed);
        while self.planner.running() > 0 {
            match rx.recv().await {
                Some(done) => self.finished(done),
                None => break,
            }
        }
        if let Some(s) = &self.shared {
            // the others take this node's volumes now, not after the lease
            if let Err(e) = s.leases.leave() {
                tracing::error!("could not give the node lease back: {e}");
            }
        }
        self.status.write(&self.cfg, &self.planner);
        tracing::info!("daemon stopped");
        Ok(())
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
    /// what, every third of a lease.
    fn refresh_shared(&mut self) {
        let Some(s) = &mut self.shared else { return };
        if s.due() {
            let volumes: Vec<&str> = self.planner.plans.keys().map(String::as_str).collect();
            let before = s.owned();
            s.refresh(&volumes);
            if s.owned() != before {
                tracing::info!(
                    "node {}: {} of {} volume(s) are this node's",
                    s.leases.node(),
                    s.owned(),
                    volumes.len()
                );
            }
        }
    }

    /// Connects (and resolves the volumes) if not connected, and re-resolves
    /// pool selections every [`RESOLVE_EVERY`] seconds.
    fn ensure_connected(&mut self) {
        let t = now();
        if self.fleet.is_none() {
            if t < self.resolved_at {
                return; // waiting before the next connection attempt
            }
            match Cluster::connect(&self.cfg.ceph.options()) {
                Ok(c) => {
                    if let (Some(nodes), Some(node)) = (&self.cfg.nodes, crate::host::node()) {
                        let leases = global::fleet_id(&self.cfg.archive).and_then(|fleet| {
                            crate::fleet::nodes::NodeLeases::new(&c, nodes, &fleet, node)
                        });
                        match leases {
                            Ok(l) => self.shared = Some(shared::Shared::new(l)),
                            Err(e) => {
                                tracing::error!(
                                    "cannot take part in the shared fleet (lease pool {}): {e}; retrying in {}s",
                                    nodes.lease_pool,
                                    RECONNECT_EVERY.as_secs()
                                );
                                self.resolved_at = t + RECONNECT_EVERY.as_secs() as i64;
                                return;
                            }
                        }
                    }
                    let mut f = Fleet::with_client(c, &self.cfg);
                    f.cancel = self.cancel.clone();
                    f.workers = self.workers.clone();
                    self.fleet = Some(Arc::new(f));
                    self.resolved_at = 0;
                }
                Err(e) => {
                    tracing::error!(
                        "cannot connect to the Ceph cluster ({e}); retrying in {}s",
                        RECONNECT_EVERY.as_secs()
                    );
                    self.resolved_at = t + RECONNECT_EVERY.as_secs() as i64;
                    return;
                }
            }
        }
        if t - self.resolved_at >= RESOLVE_EVERY || self.resolved_at == 0 {
            self.resolve(t);
        }
    }

    fn resolve(&mut self, t: i64) {
        let Some(fleet) = &self.fleet else { return };
        let resolved = fleet.resolve(&self.cfg);
        for u in &resolved.unresolved {
            tracing::error!("{}: {}", u.name, u.error);
        }
        // The fleet log is read only if a volume is new or rescheduled.
        let last = std::cell::OnceCell::new();
        let archive = self.cfg.archive.clone();
        self.planner
            .update(resolved.volumes, self.cfg.fleet.catch_up, t, &|n| {
                // an attempt whose time is damaged counts as just now:
                // damage is no reason to catch up (it is reported)
                last.get_or_init(|| last_attempts(&archive))
                    .get(n)
                    .map(|at| at.unwrap_or(t))
            });
        self.resolved_at = t;
        tracing::info!("{} volume(s) scheduled", self.planner.plans.len());
    }

    fn reload(&mut self) {
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
                self.ensure_connected();
                self.resolve(now());
                tracing::info!("config reloaded from {}", self.path.display());
            }
            Err(e) => tracing::error!("config not reloaded, keeping the old one: {e}"),
        }
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
    match leases.take_job(&vol.name) {
        Ok(Claim::Taken) => {}
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
    }
    let outcome = if kind == JobKind::Backup && backed_up_since(&fleet.archive, &vol.name, due) {
        tracing::info!(
            "{}: already backed up in this slot by another node",
            vol.name
        );
        None
    } else {
        Some(run_job(fleet, vol, kind, obs))
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
            verify_volume(&fleet.archive, &vol.name, subset, obs)
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
