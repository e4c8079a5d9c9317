//! What a parent and its backup worker say to each other: one JSON object
//! per line, jobs on the worker's stdin, progress and outcomes on its stdout.
//! Both ends are the same binary, so the format is private and unversioned.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::super::{Fleet, Outcome};
use crate::ceph::CephOptions;
use crate::config::{FullEvery, Hooks, Settings, Volume};

/// One backup to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub ceph: CephOptions,
    pub archive: PathBuf,
    /// This worker's share of `total-bandwidth`, bytes per second.
    pub total_bandwidth: Option<u64>,
    pub volume: JobVolume,
    pub full: bool,
    pub tags: Vec<String>,
    /// Connections of earlier workers that died on this job: the worker
    /// cuts them off the image first (see `BackupOptions::dead_clients`).
    #[serde(default)]
    pub dead_clients: Vec<String>,
    /// No backup: only cut `dead_clients` off the image (after the retry
    /// died too, so that no dead connection is left holding the image).
    #[serde(default)]
    pub evict_only: bool,
}

/// The parts of a [`Volume`] a backup uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobVolume {
    pub name: String,
    pub pool: String,
    pub image: String,
    pub line: u64,
    pub whole_object: bool,
    pub bandwidth: Option<u64>,
    pub full_every: Option<FullEvery>,
    pub synthetic_fulls: bool,
    pub hooks: Hooks,
}

impl Job {
    pub fn new(fleet: &Fleet, vol: &Volume, full: bool, tags: &[String]) -> Job {
        let s = &vol.settings;
        Job {
            ceph: fleet.ceph.clone(),
            archive: fleet.archive.clone(),
            total_bandwidth: fleet
                .total
                .as_ref()
                .map(|t| (t.rate() / fleet.parallel.max(1) as u64).max(1)),
            volume: JobVolume {
                name: vol.name.clone(),
                pool: vol.pool.clone(),
                image: vol.image.clone(),
                line: vol.line,
                whole_object: s.whole_object,
                bandwidth: s.bandwidth,
                full_every: s.full_every,
                synthetic_fulls: s.synthetic_fulls,
                hooks: s.hooks.clone(),
            },
            full,
            tags: tags.to_vec(),
            dead_clients: Vec::new(),
            evict_only: false,
        }
    }
}

impl JobVolume {
    /// The volume the worker backs up; settings a backup does not read
    /// (schedules, retention) keep their defaults.
    pub fn into_volume(self) -> Volume {
        Volume {
            name: self.name,
            pool: self.pool,
            image: self.image,
            line: self.line,
            settings: Settings {
                whole_object: self.whole_object,
                bandwidth: self.bandwidth,
                full_every: self.full_every,
                synthetic_fulls: self.synthetic_fulls,
                hooks: self.hooks,
                ..Settings::default()
            },
        }
    }
}

/// A line from the worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum Message {
    /// The job's cluster connection (`client.<id>`), sent once it is open:
    /// if the worker dies, the retry cuts that client off the image.
    Client {
        client: String,
    },
    Begin {
        phase: String,
        total: u64,
    },
    Advance {
        bytes: u64,
    },
    End,
    Outcome {
        outcome: Outcome,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn outcome_round_trips() {
        let o = Outcome {
            volume: "v".into(),
            op: "backup".into(),
            ok: false,
            kind: Some("delta".into()),
            revision: None,
            size: Some(7),
            bytes_read: 1,
            bytes_written: 2,
            duration: Duration::from_millis(1500),
            error: Some("boom".into()),
            transient: true,
            cluster_silent: true,
        };
        let line = serde_json::to_string(&Message::Outcome { outcome: o.clone() }).unwrap();
        match serde_json::from_str::<Message>(&line).unwrap() {
            Message::Outcome { outcome } => assert_eq!(outcome, o),
            m => panic!("{m:?}"),
        }
    }
}
