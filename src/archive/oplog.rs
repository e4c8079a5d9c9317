//! The append-only operation log (`<volume>/log.jsonl`): one JSON object per
//! line for the start and the end of every backup, restore and verify.
//! Lines are appended with O_APPEND and fsynced; nothing ever rewrites them.
//!
//! On a node of a shared fleet, a process appends to `log.<node>.jsonl`
//! instead: O_APPEND from two CephFS clients to one file is not atomic, so
//! every host writes its own file and readers merge them by time.
//!
//! A crash mid-append can leave a torn last line. The next append starts
//! on a new line, so the torn one never spoils the record after it; once
//! followed, it is a damaged line like any other. Readers skip only a torn
//! *last* line (no newline yet) silently: every other line that does not
//! parse is returned as damage, so `status` and `check` can say their
//! counts may be short instead of quietly under-counting.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

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
    /// In the fleet log of a shared fleet: the node that ran the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Appends one record (on a line of its own) and fsyncs.
pub fn append(path: &Path, record: &LogRecord) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(path)
        .at(path)?;
    let mut line = Vec::new();
    if !ends_with_newline(&f).at(path)? {
        line.push(b'\n'); // after a torn line
    }
    serde_json::to_writer(&mut line, record).expect("log record serializes");
    line.push(b'\n');
    f.write_all(&line).at(path)?;
    f.sync_data().at(path)
}

/// Whether `f` is empty or ends with a newline.
/// A last byte that cannot be read counts as not a newline: an extra
/// newline only makes an empty line, which readers skip. (On ceph-fuse,
/// with several processes appending, the size can run ahead of what a
/// read returns: seen as "failed to fill whole buffer" in bench/scale.sh,
/// which lost a fleet-log record before this.)
fn ends_with_newline(f: &std::fs::File) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(true);
    }
    let mut last = [0u8];
    match f.read_at(&mut last, len - 1) {
        Ok(1) => Ok(last[0] == b'\n'),
        Ok(_) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The log this process appends to in `dir`: `log.jsonl`, or
/// `log.<node>.jsonl` on a node of a shared fleet.
pub fn own_path(dir: &Path) -> PathBuf {
    match crate::host::node() {
        Some(n) => dir.join(format!("log.{n}.jsonl")),
        None => dir.join("log.jsonl"),
    }
}

/// Every log of `dir` (`log.jsonl` and `log.<node>.jsonl`), with the node
/// each belongs to; none if `dir` does not exist.
pub fn paths(dir: &Path) -> Result<Vec<(Option<String>, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(crate::error::Error::io(dir, e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let name = e.at(dir)?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == "log.jsonl" {
            out.push((None, dir.join(name)));
        } else if let Some(n) = name
            .strip_prefix("log.")
            .and_then(|n| n.strip_suffix(".jsonl"))
            .filter(|n| crate::host::valid_node_name(n))
        {
            out.push((Some(n.to_string()), dir.join(name)));
        }
    }
    out.sort();
    Ok(out)
}

/// Every log of `dir` merged in time order. A record from a node's file
/// that does not name its node gets it.
pub fn read_merged(dir: &Path) -> Result<Log> {
    read_merged_of(dir, None)
}

/// [`read_merged`], keeping only the records of `volumes` when given. A
/// line that does not mention one of their names (as JSON strings) is not
/// parsed at all, unless it is not a whole `{...}` line: a torn or cut
/// line is still parsed and reported as damaged. So a check of one volume
/// scans a large fleet log instead of parsing every record of it.
pub fn read_merged_of(dir: &Path, volumes: Option<&[String]>) -> Result<Log> {
    let needles = needles(volumes);
    let mut log = Log::default();
    for (node, path) in paths(dir)? {
        let mut l = read_lines(&path, needles.as_deref())?;
        if let Some(v) = volumes {
            l.records
                .retain(|r| r.volume.as_ref().is_some_and(|n| v.contains(n)));
        }
        log.records.extend(l.records.into_iter().map(|mut r| {
            if r.node.is_none() {
                r.node.clone_from(&node);
            }
            r
        }));
        log.damaged.extend(l.damaged);
    }
    // stable: one file's records keep their order within a nanosecond
    log.records
        .sort_by_cached_key(|r| crate::status::unix_nanos_of(&r.time));
    Ok(log)
}

/// A log as read: its records, and the lines that did not parse.
#[derive(Debug, Default)]
pub struct Log {
    pub records: Vec<LogRecord>,
    /// `PATH:LINE: error` for every unreadable line but a torn last one.
    pub damaged: Vec<String>,
}

/// Reads a log; a missing file is an empty log.
pub fn read_all(path: &Path) -> Result<Log> {
    read_lines(path, None)
}

/// What a line of one of `volumes` contains: each name as a JSON string.
pub(crate) fn needles(volumes: Option<&[String]>) -> Option<Vec<String>> {
    volumes.map(|v| {
        v.iter()
            .map(|n| serde_json::to_string(n).expect("strings serialize"))
            .collect()
    })
}

/// Whether line `line` must be parsed: always without `needles`; with
/// them, if it mentions one, or is not a whole `{...}` record.
fn wanted(line: &[u8], needles: Option<&[String]>) -> bool {
    let Some(needles) = needles else { return true };
    let whole = line.first() == Some(&b'{') && line.last() == Some(&b'}');
    match std::str::from_utf8(line) {
        Ok(text) => !whole || needles.iter().any(|n| text.contains(n.as_str())),
        Err(_) => true, // reported as damaged by the parse
    }
}

/// [`read_all`], parsing only the lines [`wanted`] by `needles`.
fn read_lines(path: &Path, needles: Option<&[String]>) -> Result<Log> {
    let bytes = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Log::default()),
        Err(e) => return Err(crate::error::Error::io(path, e)),
    };
    let (body, torn) = split_torn(&bytes);
    let mut log = parse_lines(path, body, 0, needles);
    log.records.extend(parse_torn(torn));
    Ok(log)
}

/// `bytes` split into its complete lines (through the last newline) and
/// what follows them: a torn line, or nothing.
pub(crate) fn split_torn(bytes: &[u8]) -> (&[u8], &[u8]) {
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    bytes.split_at(end)
}

/// The records of `body`, complete lines that follow `before` lines of the
/// log at `path` (the number damaged lines are reported under).
pub(crate) fn parse_lines(
    path: &Path,
    body: &[u8],
    before: u64,
    needles: Option<&[String]>,
) -> Log {
    let mut log = Log::default();
    let Some(body) = body.strip_suffix(b"\n") else {
        return log;
    };
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() || !wanted(line, needles) {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(r) => log.records.push(r),
            Err(e) => log.damaged.push(format!(
                "{}:{}: unreadable record ({e})",
                path.display(),
                before + i as u64 + 1
            )),
        }
    }
    log
}

/// The record of a torn last line that is whole but for its newline; a
/// line cut short is skipped silently, as the next append ends it.
pub(crate) fn parse_torn(torn: &[u8]) -> Option<LogRecord> {
    serde_json::from_slice(torn).ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(op: &str) -> LogRecord {
        LogRecord {
            time: "2026-11-29T00:00:00Z".into(),
            op: op.into(),
            event: "end".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_damaged_middle_line_is_reported_and_a_torn_tail_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log.jsonl");
        append(&p, &rec("backup")).unwrap();
        append(&p, &rec("verify")).unwrap();
        // a crash mid-append: a torn last line is skipped silently
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(br#"{"time":"2026-11-29T00:00:01Z","op":"bac"#)
            .unwrap();
        let log = read_all(&p).unwrap();
        assert_eq!(log.records.len(), 2);
        assert!(log.damaged.is_empty(), "{:?}", log.damaged);
        // the next append starts a new line: its record survives, and the
        // torn one is now a damaged line, reported
        append(&p, &rec("restore")).unwrap();
        let log = read_all(&p).unwrap();
        let ops: Vec<&str> = log.records.iter().map(|r| r.op.as_str()).collect();
        assert_eq!(ops, ["backup", "verify", "restore"]);
        assert_eq!(log.damaged.len(), 1, "{:?}", log.damaged);
        assert!(log.damaged[0].contains("log.jsonl:3:"), "{:?}", log.damaged);
        // a flipped byte in the middle is damage too
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replacen("verify", "ver\"fy", 1);
        std::fs::write(&p, text).unwrap();
        let log = read_all(&p).unwrap();
        assert_eq!(log.records.len(), 2);
        assert_eq!(log.damaged.len(), 2, "{:?}", log.damaged);
        assert!(log.damaged[0].contains(":2:"), "{:?}", log.damaged);
    }

    /// Reading for some volumes keeps exactly their records, from every
    /// node's log, and still reports a cut line of anyone's.
    #[test]
    fn a_read_for_some_volumes_keeps_theirs_and_still_sees_cut_lines() {
        let dir = tempfile::tempdir().unwrap();
        let of = |v: &str, op: &str| LogRecord {
            volume: Some(v.into()),
            // every line mentions "vm1": the volume decides, not the text
            revision: (v != "vm2").then(|| "vm1".into()),
            ..rec(op)
        };
        let main = dir.path().join("log.jsonl");
        append(&main, &of("vm1", "backup")).unwrap();
        append(&main, &of("vm10", "backup")).unwrap();
        append(&dir.path().join("log.n2.jsonl"), &of("vm2", "verify")).unwrap();
        append(&dir.path().join("log.n2.jsonl"), &of("vm1", "fsck")).unwrap();
        let mut f = OpenOptions::new().append(true).open(&main).unwrap();
        f.write_all(br#"{"time":"2026-11-29T00:00:01Z","volume":"vm3","op""#)
            .unwrap();
        append(&main, &of("vm3", "prune")).unwrap();
        let only = ["vm1".to_string(), "vm2".to_string()];
        let some = read_merged_of(dir.path(), Some(&only)).unwrap();
        let all = read_merged(dir.path()).unwrap();
        let want: Vec<&LogRecord> = all
            .records
            .iter()
            .filter(|r| only.contains(r.volume.as_ref().unwrap()))
            .collect();
        assert_eq!(some.records.iter().collect::<Vec<_>>(), want);
        assert_eq!(some.records.len(), 3);
        assert_eq!(some.damaged, all.damaged);
        assert_eq!(some.damaged.len(), 1, "{:?}", some.damaged);
    }

    /// Every node's log of a directory is read, merged by time, each
    /// record naming its node; other files and bad node names are not logs.
    #[test]
    fn node_logs_merge_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let at = |t: &str, op: &str| LogRecord {
            time: format!("2026-11-30T12:00:{t}Z"),
            ..rec(op)
        };
        append(&dir.path().join("log.jsonl"), &at("01", "a")).unwrap();
        append(&dir.path().join("log.n2.jsonl"), &at("00.5", "b")).unwrap();
        append(&dir.path().join("log.n2.jsonl"), &at("03", "d")).unwrap();
        let named = LogRecord {
            node: Some("n1".into()),
            ..at("02", "c")
        };
        append(&dir.path().join("log.n1.jsonl"), &named).unwrap();
        for other in ["log.jsonl.tmp", "log..hidden.jsonl", "status.n1.json"] {
            std::fs::write(dir.path().join(other), "not a log\n").unwrap();
        }
        let log = read_merged(dir.path()).unwrap();
        assert!(log.damaged.is_empty(), "{:?}", log.damaged);
        let got: Vec<(&str, Option<&str>)> = log
            .records
            .iter()
            .map(|r| (r.op.as_str(), r.node.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("b", Some("n2")),
                ("a", None),
                ("c", Some("n1")),
                ("d", Some("n2"))
            ]
        );
        assert!(read_merged(&dir.path().join("gone"))
            .unwrap()
            .records
            .is_empty());
    }
}
