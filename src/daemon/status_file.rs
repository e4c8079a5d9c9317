//! The daemon's status file (`<archive>/.rbdelta/status.json`), rewritten
//! atomically after every job: each volume's status plus when its next
//! backup and verify are due and whether a job of it is running. The loop
//! renders it; a [`Writer`] thread of its own writes it (an fsync on a
//! slow or hung archive disk never holds the loop), always the newest
//! content, skipping any it had no time for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

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

    /// The file's content now.
    pub fn render(&self, planner: &Planner) -> Vec<u8> {
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
        bytes
    }
}

/// The thread that writes the status file.
pub struct Writer {
    tx: Option<mpsc::Sender<(PathBuf, Vec<u8>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start() -> Writer {
        let (tx, rx) = mpsc::channel::<(PathBuf, Vec<u8>)>();
        let thread = std::thread::spawn(move || {
            while let Ok(mut next) = rx.recv() {
                // only the newest content matters
                while let Ok(newer) = rx.try_recv() {
                    next = newer;
                }
                let (archive, bytes) = next;
                let r = global::ensure(&archive)
                    .and_then(|()| write_atomic(&global::status_path(&archive), &bytes));
                if let Err(e) = r {
                    tracing::warn!("could not write the status file: {e}");
                }
            }
        });
        Writer {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Queues `bytes` as the status file of the archive at `archive`; a
    /// failure is logged, never fatal.
    pub fn write(&self, archive: &Path, bytes: Vec<u8>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((archive.to_path_buf(), bytes));
        }
    }

    /// Writes what is queued, waiting at most `wait`.
    pub fn finish(&mut self, wait: std::time::Duration) {
        drop(self.tx.take());
        let Some(t) = self.thread.take() else { return };
        let until = std::time::Instant::now() + wait;
        while !t.is_finished() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if t.is_finished() {
            let _ = t.join();
        } else {
            tracing::warn!("the status file was not written in time");
        }
    }
}
