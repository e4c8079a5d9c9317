//! The daemon's status file (`<archive>/.rbdelta/status.json`), rewritten
//! atomically after every job: each volume's status plus when its next
//! backup and verify are due and whether a job of it is running.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::planner::{JobKind, Planner};
use crate::archive::atomic::write_atomic;
use crate::archive::{global, now_rfc3339};
use crate::config::Config;
use crate::fleet::Outcome;
use crate::status::{self, VolumeStatus};

pub struct StatusFile {
    volumes: BTreeMap<String, VolumeStatus>,
    started: String,
    config: String,
}

#[derive(Serialize)]
struct File<'a> {
    generated: String,
    daemon: Daemon<'a>,
    volumes: Vec<Entry<'a>>,
}

#[derive(Serialize)]
struct Daemon<'a> {
    pid: u32,
    started: &'a str,
    config: &'a str,
}

#[derive(Serialize)]
struct Entry<'a> {
    #[serde(flatten)]
    status: &'a VolumeStatus,
    next_backup: Option<String>,
    next_verify: Option<String>,
    next_fsck: Option<String>,
    running: Option<&'static str>,
}

fn rfc3339(unix: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

impl StatusFile {
    /// Starts from the archive's logs (read once).
    pub fn new(cfg: &Config, config_path: &Path) -> StatusFile {
        let volumes = status::collect(cfg)
            .unwrap_or_else(|e| {
                tracing::warn!("status: {e}");
                Vec::new()
            })
            .into_iter()
            .map(|s| (s.volume.clone(), s))
            .collect();
        StatusFile {
            volumes,
            started: now_rfc3339(),
            config: config_path.display().to_string(),
        }
    }

    /// Folds a finished job (already in the fleet log) into the status.
    pub fn record(&mut self, cfg: &Config, o: &Outcome) {
        if let Some(s) = self.volumes.get_mut(&o.volume) {
            s.apply(o, &cfg.archive);
            return;
        }
        // A volume new since the start: read its history once.
        match status::of_volume(cfg, &o.volume) {
            Ok(s) => {
                self.volumes.insert(o.volume.clone(), s);
            }
            Err(e) => tracing::warn!("status of {}: {e}", o.volume),
        }
    }

    /// Writes the file; a failure is logged, never fatal.
    pub fn write(&self, cfg: &Config, planner: &Planner) {
        let volumes = self
            .volumes
            .values()
            .map(|s| {
                let plan = planner.plans.get(&s.volume);
                Entry {
                    status: s,
                    next_backup: plan.and_then(|p| p.next_backup).and_then(rfc3339),
                    next_verify: plan.and_then(|p| p.next_verify).and_then(rfc3339),
                    next_fsck: plan.and_then(|p| p.next_fsck).and_then(rfc3339),
                    running: plan.and_then(|p| p.running).map(JobKind::as_str),
                }
            })
            .collect();
        let file = File {
            generated: now_rfc3339(),
            daemon: Daemon {
                pid: std::process::id(),
                started: &self.started,
                config: &self.config,
            },
            volumes,
        };
        let mut bytes = serde_json::to_vec_pretty(&file).expect("status serializes");
        bytes.push(b'\n');
        let r = global::ensure(&cfg.archive)
            .and_then(|()| write_atomic(&global::status_path(&cfg.archive), &bytes));
        if let Err(e) = r {
            tracing::warn!("could not write the status file: {e}");
        }
    }
}
