//! The daemon's schedule book: for every volume, when its next backup,
//! verify and fsck are due, whether a job of it is running, and how many retries the
//! current backup has had. Pure bookkeeping over Unix seconds, so every
//! rule (spread, catch-up, retry backoff, reload) is tested with a made-up
//! clock.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::Volume;
use crate::fleet::Outcome;
use crate::schedule::{spread_offset, Schedule};

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Backup,
    Verify,
    Fsck,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Verify => "verify",
            JobKind::Fsck => "fsck",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub volume: Volume,
    pub next_backup: Option<i64>,
    pub next_verify: Option<i64>,
    pub next_fsck: Option<i64>,
    pub running: Option<JobKind>,
    /// Retries done for the current scheduled backup.
    pub retries: u32,
}

#[derive(Debug, Default)]
pub struct Planner {
    pub plans: BTreeMap<String, Plan>,
    catch_up: bool,
}

/// The first run of `s` (shifted by `offset`) strictly after `now`.
fn next_run(s: &Schedule, offset: i64, now: i64) -> Option<i64> {
    s.next_after(now - offset).map(|t| t + offset)
}

impl Planner {
    /// An empty book; [`Planner::update`] adds the volumes.
    pub fn new(catch_up: bool) -> Planner {
        Planner {
            plans: BTreeMap::new(),
            catch_up,
        }
    }

    /// Replaces the set of volumes (start, reload, re-resolved selections).
    /// `last_attempt` says when a volume's last backup ended (from the
    /// fleet log); with catch-up, a new volume whose latest scheduled run
    /// passed after that is due at once.
    /// Volumes that stay keep their running job and retry state; their
    /// times are recomputed only if their schedule changed. Removed
    /// volumes with a running job stay until it ends.
    pub fn update(
        &mut self,
        volumes: Vec<Volume>,
        catch_up: bool,
        now: i64,
        last_attempt: &dyn Fn(&str) -> Option<i64>,
    ) {
        self.catch_up = catch_up;
        let mut next = BTreeMap::new();
        for v in volumes {
            let plan = match self.plans.remove(&v.name) {
                Some(mut old) => {
                    let same = |a: &Option<Schedule>, b: &Option<Schedule>| {
                        a.as_ref().map(Schedule::pattern) == b.as_ref().map(Schedule::pattern)
                    };
                    let changed = !same(&old.volume.settings.schedule, &v.settings.schedule)
                        || old.volume.settings.spread != v.settings.spread;
                    let verify_changed = !same(
                        &old.volume.settings.verify_schedule,
                        &v.settings.verify_schedule,
                    );
                    let fsck_changed = !same(
                        &old.volume.settings.fsck_schedule,
                        &v.settings.fsck_schedule,
                    );
                    old.volume = v;
                    if changed {
                        old.next_backup = self.first_backup(&old.volume, now, last_attempt);
                        old.retries = 0;
                    }
                    if verify_changed {
                        old.next_verify =
                            first_run(&old.volume, &old.volume.settings.verify_schedule, now);
                    }
                    if fsck_changed {
                        old.next_fsck =
                            first_run(&old.volume, &old.volume.settings.fsck_schedule, now);
                    }
                    old
                }
                None => Plan {
                    next_backup: self.first_backup(&v, now, last_attempt),
                    next_verify: first_run(&v, &v.settings.verify_schedule, now),
                    next_fsck: first_run(&v, &v.settings.fsck_schedule, now),
                    volume: v,
                    running: None,
                    retries: 0,
                },
            };
            next.insert(plan.volume.name.clone(), plan);
        }
        // Keep removed volumes only while a job of theirs runs.
        for (name, mut p) in std::mem::take(&mut self.plans) {
            if p.running.is_some() {
                p.next_backup = None;
                p.next_verify = None;
                p.next_fsck = None;
                next.insert(name, p);
            }
        }
        self.plans = next;
    }

    fn first_backup(
        &self,
        v: &Volume,
        now: i64,
        last_attempt: &dyn Fn(&str) -> Option<i64>,
    ) -> Option<i64> {
        let s = v.settings.schedule.as_ref()?;
        let offset = spread_offset(&v.name, v.settings.spread).as_secs() as i64;
        if self.catch_up {
            if let Some(prev) = s.prev_at_or_before(now - offset).map(|t| t + offset) {
                if last_attempt(&v.name).is_none_or(|t| t < prev) {
                    return Some(now);
                }
            }
        }
        next_run(s, offset, now)
    }

    /// The next due job whose volume is idle, marked as running, with the
    /// time it was due.
    pub fn take_due(&mut self, now: i64) -> Option<(Volume, JobKind, i64)> {
        let p = self
            .plans
            .values_mut()
            .filter(|p| p.running.is_none())
            .flat_map(|p| {
                let b = p
                    .next_backup
                    .filter(|t| *t <= now)
                    .map(|t| (t, JobKind::Backup));
                let v = p
                    .next_verify
                    .filter(|t| *t <= now)
                    .map(|t| (t, JobKind::Verify));
                let f = p
                    .next_fsck
                    .filter(|t| *t <= now)
                    .map(|t| (t, JobKind::Fsck));
                [b, v, f]
                    .into_iter()
                    .flatten()
                    .map(move |(t, k)| (t, k, p.volume.name.clone()))
            })
            // backups first at the same second, then verifies, then fscks
            .min_by_key(|(t, k, name)| (*t, *k as u8, name.clone()));
        let (due, kind, name) = p?;
        let plan = self.plans.get_mut(&name).expect("just found");
        plan.running = Some(kind);
        Some((plan.volume.clone(), kind, due))
    }

    /// Lets a taken job's slot pass without running it (another node of a
    /// shared fleet runs it): its next run is planned as after a success.
    pub fn pass(&mut self, name: &str, kind: JobKind, now: i64) {
        let done = Outcome::succeeded(name, kind.as_str(), Duration::ZERO);
        self.finished(name, kind, &done, now);
    }

    /// Records the end of a job and plans the next one.
    pub fn finished(&mut self, name: &str, kind: JobKind, outcome: &Outcome, now: i64) {
        let Some(p) = self.plans.get_mut(name) else {
            return;
        };
        p.running = None;
        let s = &p.volume.settings;
        let offset = spread_offset(name, s.spread).as_secs() as i64;
        let cancelled = outcome
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("cancelled"));
        match kind {
            JobKind::Verify => {
                if p.next_verify.is_some() {
                    p.next_verify = s
                        .verify_schedule
                        .as_ref()
                        .and_then(|v| next_run(v, offset, now));
                }
            }
            JobKind::Fsck => {
                if p.next_fsck.is_some() {
                    p.next_fsck = s
                        .fsck_schedule
                        .as_ref()
                        .and_then(|v| next_run(v, offset, now));
                }
            }
            JobKind::Backup
                if !outcome.ok && outcome.transient && p.retries < s.retries && !cancelled =>
            {
                let delay = retry_delay(s.retry_delay, p.retries);
                p.retries += 1;
                let regular = s.schedule.as_ref().and_then(|v| next_run(v, offset, now));
                let retry = now + delay.as_secs() as i64;
                // A retry never pushes past the next regular run.
                p.next_backup = Some(regular.map_or(retry, |r| r.min(retry)));
            }
            JobKind::Backup => {
                p.retries = 0;
                if p.next_backup.is_some() {
                    p.next_backup = s.schedule.as_ref().and_then(|v| next_run(v, offset, now));
                }
            }
        }
    }

    /// When the next job is due, if any.
    pub fn next_due(&self) -> Option<i64> {
        self.plans
            .values()
            .filter(|p| p.running.is_none())
            .flat_map(|p| [p.next_backup, p.next_verify, p.next_fsck])
            .flatten()
            .min()
    }

    pub fn running(&self) -> usize {
        self.plans.values().filter(|p| p.running.is_some()).count()
    }
}

/// The first run of a volume's verify or fsck schedule after `now`.
fn first_run(v: &Volume, schedule: &Option<Schedule>, now: i64) -> Option<i64> {
    let s = schedule.as_ref()?;
    next_run(
        s,
        spread_offset(&v.name, v.settings.spread).as_secs() as i64,
        now,
    )
}

/// `base × 2^n`, capped at a day.
pub fn retry_delay(base: Duration, n: u32) -> Duration {
    base.saturating_mul(1u32 << n.min(16))
        .min(Duration::from_secs(86_400))
}

#[cfg(test)]
mod tests;
