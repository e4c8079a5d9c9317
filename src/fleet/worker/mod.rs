//! Backups in worker processes, so that one backup cannot take a run down.
//!
//! librbd 16.2 (Debian 12) was seen to abort the whole process (a librados
//! callback locking a mutex of an image already closed) in about 1 of 8
//! runs backing up 50 volumes over one connection, and once to hang four
//! backups for good (a librbd callback waiting on such a mutex). Neither
//! can be caught inside the process. So the parent (`backup --all`, the
//! daemon) hands each backup to a child process running this same binary
//! (its hidden `backup-worker` subcommand): a worker per parallel slot,
//! which opens a cluster connection of its own for every job and shuts it
//! down before the next (a connection shared by many jobs is what upset
//! librbd). The parent relays the worker's progress and outcome. If the
//! worker dies, the job's failure is recorded and the job is retried once
//! in a new worker, which first cuts the dead one's cluster connection
//! (named to the parent as soon as it opened) off the image, since its
//! watch would hold up every snapshot, and its lock the VM's writes, for
//! about 30 s; if the retry dies too, one more worker does only that cut.
//! A worker that reports nothing for `stall-timeout`, or is still taking
//! the snapshot long after the cluster should have answered (where the
//! hangs were seen, even with a fresh connection), is killed. Workers die
//! with their parent (`PR_SET_PDEATHSIG`), like threads would.

mod protocol;
mod serve;

pub use protocol::Job;
pub use serve::serve;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::job::record;
use super::{backup_volume, Fleet, Observer, Outcome};
use crate::config::Volume;
use crate::error::{Error, Result};
use crate::progress::Progress;
use protocol::Message;

/// How often a waiting parent looks at its cancel flag and the clock.
const TICK: Duration = Duration::from_millis(200);
/// How long a cancelled worker gets beyond its post hook's timeout.
const CANCEL_GRACE: Duration = Duration::from_secs(60);
/// How long a worker whose input was closed gets to exit.
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// How long a dead client's watch keeps its exclusive lock on an image
/// (Ceph's `osd_client_watch_timeout`), which a snapshot may wait out.
const WATCH_EXPIRY: Duration = Duration::from_secs(30);

/// How to start a worker.
#[derive(Debug, Clone)]
pub struct Spawner {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl Spawner {
    /// This very executable (even if its file was replaced since it
    /// started, so parent and worker always speak the same protocol).
    pub fn this_binary(args: Vec<String>) -> Spawner {
        Spawner {
            program: "/proc/self/exe".into(),
            args,
        }
    }
}

/// How long a worker may stay silent, and take for a snapshot.
#[derive(Debug, Clone, Copy)]
struct Limits {
    stall: Duration,
    snapshot: Duration,
}

impl Limits {
    /// A snapshot is a few cluster operations (each bounded by the client
    /// timeout), perhaps after waiting out a dead client's lock, between
    /// the hooks; never more than `stall-timeout`.
    fn of(fleet: &Fleet, vol: &Volume) -> Limits {
        let hooks = hook_time(&vol.settings.hooks);
        // Saturating: the config bounds every term, but a limit must never
        // overflow into a panic whatever the caller passes.
        let stall = fleet.stall_timeout.max(hooks);
        let snapshot = fleet
            .ceph
            .timeout
            .saturating_mul(3)
            .saturating_add(WATCH_EXPIRY)
            .saturating_add(hooks);
        Limits {
            stall,
            snapshot: snapshot.min(stall),
        }
    }
}

/// A running worker process.
pub struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// The running job's cluster connection, once the worker names it.
    client: Option<String>,
}

impl Worker {
    pub fn spawn(s: &Spawner) -> Result<Worker> {
        let mut child = crate::host::spawn_worker(&s.program, &s.args)?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Worker {
            stdin: child.stdin.take(),
            child,
            lines,
            client: None,
        })
    }

    /// Runs `job`, relaying progress, until its outcome arrives. `Err` says
    /// how the worker failed; it is dead then.
    fn run(
        &mut self,
        job: &Job,
        progress: &dyn Progress,
        cancel: &AtomicBool,
        limits: Limits,
    ) -> std::result::Result<Outcome, String> {
        self.client = None;
        let mut line = serde_json::to_string(job).expect("jobs serialize");
        line.push('\n');
        let sent = self
            .stdin
            .as_mut()
            .map(|i| i.write_all(line.as_bytes()).and_then(|()| i.flush()));
        if !matches!(sent, Some(Ok(()))) {
            return Err(self.died("before taking the job"));
        }
        let grace = hook_time(&job.volume.hooks).max(CANCEL_GRACE);
        let mut heard = Instant::now();
        let mut cancelled: Option<Instant> = None;
        // Since when the worker is taking the snapshot.
        let mut snapshot: Option<Instant> = None;
        loop {
            match self.lines.recv_timeout(TICK) {
                Ok(l) => {
                    heard = Instant::now();
                    match serde_json::from_str::<Message>(&l) {
                        Ok(Message::Client { client }) => self.client = Some(client),
                        Ok(Message::Begin { phase, total }) => {
                            snapshot = (phase == "snapshot").then(Instant::now);
                            progress.begin(&phase, total)
                        }
                        Ok(Message::Advance { bytes }) => progress.advance(bytes),
                        Ok(Message::End) => {
                            snapshot = None;
                            progress.end()
                        }
                        Ok(Message::Outcome { outcome }) => return Ok(outcome),
                        Err(_) => tracing::warn!("backup worker: {l}"),
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Err(self.died("")),
                Err(RecvTimeoutError::Timeout) => {
                    if cancelled.is_none() && cancel.load(Ordering::Relaxed) {
                        self.signal(libc::SIGTERM);
                        cancelled = Some(Instant::now());
                    }
                    if cancelled.is_some_and(|t| t.elapsed() >= grace) {
                        self.kill();
                        return Err(format!(
                            "did not stop within {}s of being cancelled and was killed",
                            grace.as_secs()
                        ));
                    }
                    if cancelled.is_none() && heard.elapsed() >= limits.stall {
                        self.kill();
                        return Err(format!(
                            "reported no progress for {}s and was killed (hung in a Ceph call?)",
                            limits.stall.as_secs()
                        ));
                    }
                    if cancelled.is_none()
                        && snapshot.is_some_and(|t| t.elapsed() >= limits.snapshot)
                    {
                        self.kill();
                        return Err(format!(
                            "was still taking the snapshot after {}s and was killed (hung in librbd?)",
                            limits.snapshot.as_secs()
                        ));
                    }
                }
            }
        }
    }

    /// How the worker ended, once its output closed.
    fn died(&mut self, when: &str) -> String {
        let status = match self.child.wait() {
            Ok(s) => s.to_string(),
            Err(e) => format!("status unknown: {e}"),
        };
        let when = if when.is_empty() {
            String::new()
        } else {
            format!(" {when}")
        };
        format!("died{when} ({status})")
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: a plain kill(2) of our own, not yet reaped, child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    /// Closes the worker's input, so it exits; kills it if it does not.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let until = Instant::now() + EXIT_GRACE;
        while Instant::now() < until {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        self.kill();
    }
}

/// How long a job's hooks may run (their timeout and a margin, if it has
/// any).
fn hook_time(h: &crate::config::Hooks) -> Duration {
    if h.pre.is_some() || h.post.is_some() {
        h.timeout.saturating_add(CANCEL_GRACE)
    } else {
        Duration::ZERO
    }
}

/// Backs up `vol` in the worker in `slot` (started if empty, replaced if
/// it dies), or in this process when `fleet` has no [`Spawner`]. Like
/// [`backup_volume`], every result becomes a recorded [`Outcome`].
pub fn backup_isolated(
    fleet: &Fleet,
    slot: &mut Option<Worker>,
    vol: &Volume,
    full: bool,
    tags: &[String],
    obs: &dyn Observer,
) -> Outcome {
    let Some(spawner) = &fleet.workers else {
        return backup_volume(fleet, vol, full, tags, &[], obs);
    };
    if fleet.cancel.load(Ordering::Relaxed) {
        return backup_volume(fleet, vol, full, tags, &[], obs); // fails as cancelled
    }
    let started = Instant::now();
    let progress = obs.started(&vol.name, "backup");
    let mut job = Job::new(fleet, vol, full, tags);
    let limits = Limits::of(fleet, vol);
    let mut attempt = 0;
    let outcome = loop {
        attempt += 1;
        let worker = match slot {
            Some(w) => w,
            None => match Worker::spawn(spawner) {
                Ok(w) => slot.insert(w),
                Err(e) => {
                    let e = Error::Invalid(format!("cannot start a backup worker: {e}"));
                    let o = Outcome::failed(&vol.name, "backup", &e, started.elapsed());
                    record(&fleet.archive, &o, false);
                    break o;
                }
            },
        };
        match worker.run(&job, progress.as_ref(), &fleet.cancel, limits) {
            Ok(o) => {
                if o.cluster_silent {
                    // it may hang closing its connection: not kept (the
                    // next backup cuts its client off the image)
                    worker.kill();
                    *slot = None;
                }
                break o;
            }
            Err(how) => {
                // Dead and reaped: its connection may still watch the
                // image (for about 30 s), which the retry cuts off.
                job.dead_clients
                    .extend(slot.take().and_then(|mut w| w.client.take()));
                let e = Error::Invalid(format!("backup worker {how}"));
                let o = Outcome {
                    transient: true,
                    ..Outcome::failed(&vol.name, "backup", &e, started.elapsed())
                };
                record(&fleet.archive, &o, false);
                if fleet.cancel.load(Ordering::Relaxed) {
                    break o;
                }
                if attempt > 1 {
                    evict_in_new_worker(spawner, &job, &fleet.cancel, limits);
                    break o;
                }
                tracing::warn!("{}: {e}; retrying in a new worker", vol.name);
            }
        }
    };
    drop(progress);
    obs.finished(&outcome);
    outcome
}

/// After the retry died too: a fresh worker cuts the dead workers'
/// connections off the image, so that none keeps holding its lock (and the
/// VM's writes waiting) until Ceph times it out.
fn evict_in_new_worker(spawner: &Spawner, job: &Job, cancel: &AtomicBool, limits: Limits) {
    if job.dead_clients.is_empty() {
        return;
    }
    let job = Job {
        evict_only: true,
        ..job.clone()
    };
    let what = format!(
        "{}: cutting off the connections of the dead workers ({})",
        job.volume.name,
        job.dead_clients.join(", ")
    );
    match Worker::spawn(spawner) {
        Err(e) => tracing::warn!("{what}: cannot start a worker: {e}"),
        Ok(mut w) => match w.run(&job, &crate::progress::NoProgress, cancel, limits) {
            Ok(o) if o.ok => {}
            Ok(o) => tracing::warn!("{what}: {}", o.error.unwrap_or_default()),
            Err(how) => tracing::warn!("{what}: the worker {how}"),
        },
    }
}
