//! Running many volumes: resolve the config against the cluster, back up (or
//! verify) each volume as an isolated job, several at once (backups in
//! worker processes, see [`worker`]), and record every outcome in the fleet
//! log.
//!
//! A job never takes the others down: every failure, from a missing pool to
//! a failing hook, becomes an [`Outcome`] with its message and whether a
//! retry may help; the caller decides how to report it and with which exit
//! code. The CLI's `backup` and the daemon both run jobs through here.

pub mod assign;
pub mod guarded;
pub mod hooks;
mod job;
pub mod members;
pub mod nodes;
mod parallel;
pub mod worker;

pub use job::{backup_volume, evict_volume, fsck_volume, verify_volume, Fleet};
pub use parallel::{run_parallel, run_parallel_with};
pub use worker::backup_isolated;

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::progress::Progress;

/// What a job did. Its JSON form is the progress stream's `end` event and
/// what a backup worker reports to its parent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub volume: String,
    /// `backup` or `verify`.
    pub op: String,
    pub ok: bool,
    /// `full`, `delta` or `delta (checksum compare)` for backups.
    pub kind: Option<String>,
    pub revision: Option<String>,
    /// Image size of the new revision.
    pub size: Option<u64>,
    pub bytes_read: u64,
    pub bytes_written: u64,
    #[serde(serialize_with = "secs", deserialize_with = "from_secs")]
    pub duration: Duration,
    pub error: Option<String>,
    /// On failures: whether a retry later may succeed.
    pub transient: bool,
    /// On failures: the cluster did not answer. A worker that reports this
    /// may then hang closing its connection, so it is not kept.
    #[serde(default)]
    pub cluster_silent: bool,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

fn from_secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Duration::try_from_secs_f64(f64::deserialize(d)?).map_err(serde::de::Error::custom)
}

impl Outcome {
    /// A job that succeeded (callers fill in what it read or made).
    pub fn succeeded(volume: &str, op: &'static str, duration: Duration) -> Outcome {
        Outcome {
            volume: volume.to_string(),
            op: op.to_string(),
            ok: true,
            kind: None,
            revision: None,
            size: None,
            bytes_read: 0,
            bytes_written: 0,
            duration,
            error: None,
            transient: false,
            cluster_silent: false,
        }
    }

    pub fn failed(
        volume: &str,
        op: &'static str,
        error: &crate::error::Error,
        duration: Duration,
    ) -> Outcome {
        Outcome {
            ok: false,
            error: Some(error.to_string()),
            transient: error.is_transient(),
            cluster_silent: error.is_cluster_timeout(),
            ..Outcome::succeeded(volume, op, duration)
        }
    }
}

/// Watches a fleet run: hands out a [`Progress`] per job and hears each
/// job's end. Implementations must be cheap and never block for long.
pub trait Observer: Send + Sync {
    fn started(&self, volume: &str, op: &'static str) -> Box<dyn Progress>;
    fn finished(&self, outcome: &Outcome);
}

/// An observer that shows nothing.
pub struct Quiet;

impl Observer for Quiet {
    fn started(&self, _: &str, _: &'static str) -> Box<dyn Progress> {
        Box::new(crate::progress::NoProgress)
    }
    fn finished(&self, _: &Outcome) {}
}
