//! The append-only operation log (`<volume>/log.jsonl`): one JSON object per
//! line for the start and the end of every backup, restore and verify.
//! Lines are appended with O_APPEND and fsynced; nothing ever rewrites them.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// RFC 3339 UTC time of the event.
    pub time: String,
    /// `backup`, `restore` or `verify`.
    pub op: String,
    /// `start` or `end`.
    pub event: String,
    /// The volume, in the fleet log (a volume's own log omits it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// `ok` or `error` on end records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_read: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Whether a retry may help, on failed fleet jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transient: Option<bool>,
    /// In the fleet log: whether the volume's own log records the same
    /// operation (false for jobs that failed before taking the volume lock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_volume_log: Option<bool>,
}

/// Appends one record and fsyncs.
pub fn append(path: &Path, record: &LogRecord) -> Result<()> {
    let mut line = serde_json::to_vec(record).expect("log record serializes");
    line.push(b'\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .at(path)?;
    f.write_all(&line).at(path)?;
    f.sync_data().at(path)
}

/// Reads all records; a torn last line (crash mid-append) is skipped.
pub fn read_all(path: &Path) -> Result<Vec<LogRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(crate::error::Error::io(path, e)),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// One logged operation: a start record now, an end record with the
/// outcome, duration and whatever the caller adds when it finishes.
pub struct Operation {
    path: std::path::PathBuf,
    op: &'static str,
    revision: Option<String>,
    detail: Option<String>,
    started: std::time::Instant,
}

impl Operation {
    /// Appends the start record.
    pub fn start(
        path: std::path::PathBuf,
        op: &'static str,
        revision: Option<String>,
        detail: Option<String>,
    ) -> Result<Operation> {
        let this = Operation {
            path,
            op,
            revision,
            detail,
            started: std::time::Instant::now(),
        };
        append(&this.path, &this.record("start"))?;
        Ok(this)
    }

    fn record(&self, event: &str) -> LogRecord {
        LogRecord {
            time: super::now_rfc3339(),
            op: self.op.into(),
            event: event.into(),
            revision: self.revision.clone(),
            detail: self.detail.clone(),
            ..Default::default()
        }
    }

    /// Appends the end record of `result`; `fill` adds success details
    /// (and may set the outcome). Returns `result` unchanged.
    pub fn end<T>(self, result: Result<T>, fill: impl FnOnce(&T, &mut LogRecord)) -> Result<T> {
        let mut rec = self.record("end");
        rec.duration_ms = Some(self.started.elapsed().as_millis() as u64);
        match &result {
            Ok(v) => {
                rec.outcome = Some("ok".into());
                fill(v, &mut rec);
            }
            Err(e) => {
                rec.outcome = Some("error".into());
                rec.error = Some(e.to_string());
            }
        }
        // The operation's own outcome matters more than its log line (the
        // log may fail for the same reason the operation did, e.g. ENOSPC).
        if let Err(e) = append(&self.path, &rec) {
            tracing::warn!("could not append to the operation log: {e}");
        }
        result
    }
}
