//! What monitoring needs to know about every volume, gathered from the
//! archive alone (no cluster): the last successful backup and its age, the
//! last failure, revision count, archive size, the last verify and trust.
//!
//! Sources: backups come from the fleet log (every backup the CLI or the
//! daemon runs goes through it, including those that failed before their
//! volume directory existed); for archives older than the fleet log, the
//! volume's own log stands in. Verifies come from the volume's own log,
//! which records every verify however it was started.

pub mod check;
pub mod prometheus;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::archive::oplog::LogRecord;
use crate::archive::state::{Trust, VolumeState};
use crate::archive::{global, VolumeDir};
use crate::config::Config;
use crate::error::Result;

/// The status of one volume.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeStatus {
    pub volume: String,
    /// `pool/image` of the newest revision, or of the config entry.
    pub source: Option<String>,
    /// Whether the config still backs this volume up (listed, or matched
    /// by a pool selection); volumes that are not are not checked.
    pub in_config: bool,
    pub schedule: Option<String>,
    /// Seconds between scheduled backups (24 h when unscheduled).
    pub interval_seconds: u64,
    pub last_success: Option<Success>,
    pub last_failure: Option<Failure>,
    /// Failed backups since the last success.
    pub consecutive_failures: u32,
    /// Failed backups in the whole log.
    pub failures_total: u64,
    pub revisions: usize,
    /// Bytes allocated on disk by the volume's archive directory.
    pub archive_bytes: u64,
    pub last_verify: Option<VerifyResult>,
    /// The newest `rbdelta fsck` of any revision (same shape as a verify:
    /// `ok` false when a filesystem had errors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_fsck: Option<VerifyResult>,
    pub distrusted: usize,
    /// Unreadable lines of the fleet log and of the volume's own log: the
    /// counts above may be short by what they held.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub log_damage: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Success {
    pub time: String,
    pub unix: i64,
    pub kind: Option<String>,
    pub revision: Option<String>,
    pub duration_seconds: f64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub time: String,
    pub unix: i64,
    pub error: String,
    pub transient: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyResult {
    pub time: String,
    pub unix: i64,
    pub ok: bool,
    pub error: Option<String>,
}

/// RFC 3339 to Unix seconds; `None` when unparsable: a damaged time is
/// damage, never a time (as 0 it would be a backup in 1970, due again).
pub fn unix_of(t: &str) -> Option<i64> {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// The damage line for a log record whose time does not parse.
pub fn damaged_time(log: &str, r: &LogRecord) -> String {
    format!(
        "{log}: {} {} record{} with an unreadable time {:?}",
        crate::text::printable(&r.op, 20),
        crate::text::printable(&r.event, 20),
        r.volume.as_deref().map_or(String::new(), |v| format!(
            " of {}",
            crate::text::printable(v, 80)
        )),
        crate::text::printable(&r.time, 40)
    )
}

/// RFC 3339 to Unix nanoseconds (0 when unparsable), for ordering.
pub fn unix_nanos_of(t: &str) -> i128 {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .map_or(0, |t| t.unix_timestamp_nanos())
}

/// The status of volume `name` alone, from the fleet log's records of it.
pub fn of_volume(cfg: &Config, name: &str) -> Result<VolumeStatus> {
    let b = global::backups_of(&cfg.archive, Some(&[name.to_string()]))?;
    let dropped = b.dropped_failures.get(name).copied().unwrap_or(0);
    one(cfg, name, &b.records, dropped, &b.damaged)
}

/// The first of `names` that `statuses` (of [`collect_of`] for `names`)
/// does not hold: a volume neither the config nor the archive knows.
pub fn first_unknown<'a>(names: &'a [String], statuses: &[VolumeStatus]) -> Option<&'a String> {
    names
        .iter()
        .find(|n| !statuses.iter().any(|s| s.volume == **n))
}

/// Every volume the config or the archive knows, with its status.
pub fn collect(cfg: &Config) -> Result<Vec<VolumeStatus>> {
    collect_of(cfg, None)
}

/// [`collect`], `only` for these volumes when given (those of them that
/// the config or the archive knows): the fleet log is then scanned for
/// their names rather than parsed whole, and no other volume is looked at.
/// The fleet log is read through its summaries: only what was appended
/// since the last one is parsed.
pub fn collect_of(cfg: &Config, only: Option<&[String]>) -> Result<Vec<VolumeStatus>> {
    let fleet_log = global::backups_of(&cfg.archive, only)?;
    let mut by_volume: BTreeMap<String, Vec<LogRecord>> = BTreeMap::new();
    for r in fleet_log.records {
        if let Some(v) = r.volume.clone() {
            by_volume.entry(v).or_default().push(r);
        }
    }
    let mut names: Vec<String> = cfg.listed().map(|v| v.name.clone()).collect();
    let mut extra: Vec<String> = by_volume.keys().cloned().collect();
    extra.extend(crate::archive::list_volumes(&cfg.archive));
    extra.sort();
    extra.dedup();
    names.extend(
        extra
            .into_iter()
            .filter(|n| !cfg.listed().any(|v| v.name == *n)),
    );
    if let Some(only) = only {
        names.retain(|n| only.contains(n));
    }
    let mut out = Vec::new();
    for name in names {
        let fleet = by_volume.remove(&name).unwrap_or_default();
        let dropped = fleet_log.dropped_failures.get(&name).copied();
        out.push(one(
            cfg,
            &name,
            &fleet,
            dropped.unwrap_or(0),
            &fleet_log.damaged,
        )?);
    }
    Ok(out)
}

/// The status of one volume, given its fleet log records (its backup end
/// records, or those a summary kept of them and the failures it dropped)
/// and the fleet log's damaged lines.
fn one(
    cfg: &Config,
    name: &str,
    fleet: &[LogRecord],
    dropped_failures: u64,
    fleet_damage: &[String],
) -> Result<VolumeStatus> {
    let dir = cfg.archive.join(name);
    let vol = if dir.join("rbdelta-volume.json").exists() {
        Some(VolumeDir::open(&cfg.archive, name)?)
    } else {
        None
    };
    let own = match &vol {
        Some(v) => v.read_log()?,
        None => Default::default(),
    };
    let mut log_damage = fleet_damage.to_vec();
    log_damage.extend(own.damaged);
    let own = own.records;
    let revisions = match &vol {
        Some(v) => v.revisions()?,
        None => Vec::new(),
    };
    let source = revisions.last().map(|r| r.manifest.source.clone());
    let settings = cfg.settings_for(name, source.as_deref());
    let fleet_backups: Vec<&LogRecord> = fleet
        .iter()
        .filter(|r| r.op == "backup" && r.event == "end")
        .collect();
    let from_fleet = !fleet_backups.is_empty();
    let (backups, failures_before): (Vec<&LogRecord>, u64) = if fleet_backups.is_empty() {
        let own = own.iter().filter(|r| r.op == "backup" && r.event == "end");
        (own.collect(), 0)
    } else {
        (fleet_backups, dropped_failures)
    };
    let mut s = VolumeStatus {
        volume: name.to_string(),
        source: source.or_else(|| {
            cfg.listed()
                .find(|v| v.name == name)
                .map(|v| v.source_name())
        }),
        in_config: settings.is_some(),
        schedule: settings
            .and_then(|s| s.schedule.as_ref())
            .map(|s| s.pattern().to_string()),
        interval_seconds: settings
            .and_then(|s| s.schedule.as_ref())
            .map_or(86_400, |s| {
                s.interval(time::OffsetDateTime::now_utc().unix_timestamp())
                    .as_secs()
            }),
        last_success: None,
        last_failure: None,
        consecutive_failures: 0,
        failures_total: failures_before,
        revisions: revisions.len(),
        archive_bytes: allocated(&dir),
        last_verify: None,
        last_fsck: None,
        distrusted: 0,
        log_damage,
    };
    let log_of = |fleet_record: bool| match fleet_record {
        true => "fleet log",
        false => "volume log",
    };
    for r in backups {
        let Some(unix) = unix_of(&r.time) else {
            s.log_damage.push(damaged_time(log_of(from_fleet), r));
            continue;
        };
        if r.outcome.as_deref() == Some("ok") {
            s.consecutive_failures = 0;
            s.last_success = Some(Success {
                time: r.time.clone(),
                unix,
                kind: r.kind.clone(),
                revision: r.revision.clone(),
                duration_seconds: r.duration_ms.unwrap_or(0) as f64 / 1000.0,
                bytes_read: r.bytes_read.unwrap_or(0),
                bytes_written: r.bytes_written.unwrap_or(0),
            });
        } else {
            s.consecutive_failures += 1;
            s.failures_total += 1;
            s.last_failure = Some(Failure {
                time: r.time.clone(),
                unix,
                error: r.error.clone().unwrap_or_default(),
                transient: r.transient.unwrap_or(false),
            });
        }
    }
    if let Some(r) = own
        .iter()
        .rev()
        .find(|r| r.op == "verify" && r.event == "end" && r.revision.is_none())
    {
        let unix = unix_of(&r.time);
        if unix.is_none() {
            s.log_damage.push(damaged_time(log_of(false), r));
        }
        s.last_verify = unix.map(|unix| VerifyResult {
            time: r.time.clone(),
            unix,
            ok: r.outcome.as_deref() == Some("ok"),
            error: r.error.clone().or_else(|| r.detail.clone()),
        });
    }
    if let Some(r) = own
        .iter()
        .rev()
        .find(|r| r.op == "fsck" && r.event == "end")
    {
        let unix = unix_of(&r.time);
        if unix.is_none() {
            s.log_damage.push(damaged_time(log_of(false), r));
        }
        s.last_fsck = unix.map(|unix| VerifyResult {
            time: r.time.clone(),
            unix,
            ok: r.outcome.as_deref() == Some("ok"),
            error: r.error.clone().or_else(|| r.detail.clone()),
        });
    }
    if let Some(v) = &vol {
        let state = VolumeState::load(&v.state_path())?;
        s.distrusted = revisions
            .iter()
            .filter(|r| matches!(state.get(&r.id).trust, Trust::Distrusted { .. }))
            .count();
    }
    Ok(s)
}

impl VolumeStatus {
    /// Updates the status with a job that just ended (the daemon keeps its
    /// status current this way instead of re-reading every log).
    pub fn apply(&mut self, o: &crate::fleet::Outcome, archive: &Path) {
        let time = crate::archive::now_rfc3339();
        let unix = time::OffsetDateTime::now_utc().unix_timestamp();
        match (o.op.as_str(), o.ok) {
            ("backup", true) => {
                self.last_success = Some(Success {
                    time,
                    unix,
                    kind: o.kind.clone(),
                    revision: o.revision.clone(),
                    duration_seconds: o.duration.as_secs_f64(),
                    bytes_read: o.bytes_read,
                    bytes_written: o.bytes_written,
                });
                self.consecutive_failures = 0;
            }
            ("backup", false) => {
                self.last_failure = Some(Failure {
                    time,
                    unix,
                    error: o.error.clone().unwrap_or_default(),
                    transient: o.transient,
                });
                self.consecutive_failures += 1;
                self.failures_total += 1;
            }
            ("fsck", ok) => {
                self.last_fsck = Some(VerifyResult {
                    time,
                    unix,
                    ok,
                    error: o.error.clone(),
                })
            }
            (_, ok) => {
                self.last_verify = Some(VerifyResult {
                    time,
                    unix,
                    ok,
                    error: o.error.clone(),
                })
            }
        }
        let dir = archive.join(&self.volume);
        self.archive_bytes = allocated(&dir);
        self.revisions = std::fs::read_dir(dir.join("revisions")).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        });
    }
}

/// Bytes allocated under `dir` (sparse files count what they use).
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => allocated(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}
