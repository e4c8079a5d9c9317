//! What `status`, `check` and the daemon need of the fleet logs (each
//! volume's last success, last failure, the failures since and how many
//! there were in all), kept per log file in `.rbdelta/summary/` so that a
//! reader parses only what was appended since: a year of 500 nightly
//! volumes is 52 MB of log, and parsing it all took half a second.
//!
//! A summary is derived data. It covers a prefix of its log, which it
//! names by inode, length and a hash of the prefix's last bytes; a log
//! that was replaced, truncated or rewritten does not match, and its
//! summary is built again from the start. (Not by device: every node of a
//! shared fleet mounts CephFS as a device of its own, and they share the
//! summaries.) Deleting the directory is
//! always safe. Readers write summaries best-effort (a read-only archive
//! only makes them parse everything), atomically, and racing writers each
//! leave a valid one.
//!
//! Per volume a summary keeps the backup end records that decide the
//! status (the newest success, every record after it, and the newest
//! failure) and counts the failures it dropped. Merging the kept records
//! of several nodes' logs by time gives the same status as merging the
//! whole logs: a failure older than a file's own newest success is older
//! than the fleet's newest success too.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::atomic::{create_dir_private, write_atomic};
use super::oplog::{self, LogRecord};
use crate::error::{IoContext, Result};

/// Version of the summary files; another one is ignored and rebuilt.
const FORMAT: u32 = 1;
/// Bytes at the end of the covered prefix whose hash a summary keeps.
const TAIL: u64 = 4096;
/// A summary is rewritten once this much more of its log was parsed.
const REWRITE_AFTER: u64 = 1 << 20;

/// The backup end records of the fleet logs that decide each volume's
/// status, merged by time, and the failures left out of them.
#[derive(Debug, Default)]
pub struct Backups {
    pub records: Vec<LogRecord>,
    /// Failures of each volume that `records` leave out (older than a
    /// newer success and than the newest failure).
    pub dropped_failures: HashMap<String, u64>,
    /// `PATH:LINE: error` for every unreadable line but a torn last one.
    pub damaged: Vec<String>,
}

/// A volume's kept records in one log, in the log's order.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Kept {
    records: Vec<LogRecord>,
    dropped_failures: u64,
}

impl Kept {
    /// Adds the next record of the log and drops what no longer decides
    /// the status: records before the newest success, except the newest
    /// failure while no failure follows that success.
    fn push(&mut self, r: LogRecord) {
        self.records.push(r);
        let Some(s) = self.records.iter().rposition(is_ok) else {
            return; // no success yet: every failure counts
        };
        let before: Vec<LogRecord> = self.records.drain(..s).collect();
        let failure_after = self.records.iter().any(|r| !is_ok(r));
        let mut newest = None;
        for r in before.into_iter().filter(|r| !is_ok(r)) {
            if newest.replace(r).is_some() {
                self.dropped_failures += 1;
            }
        }
        if let Some(f) = newest {
            if failure_after {
                self.dropped_failures += 1;
            } else {
                self.records.insert(0, f);
            }
        }
    }
}

fn is_ok(r: &LogRecord) -> bool {
    r.outcome.as_deref() == Some("ok")
}

/// One log file's summary, as stored.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Summary {
    format: u32,
    ino: u64,
    /// Length of the covered prefix: whole lines only.
    bytes: u64,
    /// Lines in the prefix (damaged lines after it are numbered on).
    lines: u64,
    /// BLAKE3 (hex) of the prefix's last [`TAIL`] bytes, or all of them.
    tail: String,
    damaged: Vec<String>,
    volumes: BTreeMap<String, Kept>,
    /// BLAKE3 (hex) of the file as written with this field empty: a
    /// summary that no longer matches it is not used.
    #[serde(default)]
    check: String,
}

impl Summary {
    /// BLAKE3 of the summary with an empty `check`.
    fn own_hash(&self) -> String {
        let body = Summary {
            check: String::new(),
            ..self.clone()
        };
        let bytes = serde_json::to_vec(&body).expect("summaries serialize");
        blake3::hash(&bytes).to_hex().to_string()
    }
}

/// The backups of the fleet logs in `dir` (`log.jsonl` and every
/// `log.<node>.jsonl`), of `volumes` when given, each log read from the
/// end of its summary on. For some volumes, lines that do not name one
/// are not parsed (see [`oplog::read_merged_of`]), and no summary is
/// written, as it would miss the other volumes.
pub fn backups_of(dir: &Path, volumes: Option<&[String]>) -> Result<Backups> {
    let needles = oplog::needles(volumes);
    let mut out = Backups::default();
    for (node, path) in oplog::paths(dir)? {
        let Some((summary, torn)) = summarize(dir, &path, needles.as_deref())? else {
            continue;
        };
        out.damaged.extend(summary.damaged);
        let mut volumes_of = summary.volumes;
        if let Some(r) = torn.filter(is_backup_end) {
            let v = r.volume.clone().expect("is_backup_end");
            volumes_of.entry(v).or_default().push(r);
        }
        for (v, kept) in volumes_of {
            if volumes.is_some_and(|only| !only.contains(&v)) {
                continue;
            }
            *out.dropped_failures.entry(v).or_default() += kept.dropped_failures;
            out.records.extend(kept.records.into_iter().map(|mut r| {
                if r.node.is_none() {
                    r.node.clone_from(&node);
                }
                r
            }));
        }
    }
    // stable: one file's records keep their order within a nanosecond
    out.records
        .sort_by_cached_key(|r| crate::status::unix_nanos_of(&r.time));
    Ok(out)
}

fn is_backup_end(r: &LogRecord) -> bool {
    r.op == "backup" && r.event == "end" && r.volume.is_some()
}

/// `<dir>/summary/<log file name>.json`.
fn summary_path(dir: &Path, log: &Path) -> PathBuf {
    let name = log
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    dir.join("summary").join(format!("{name}.json"))
}

/// The summary of the log at `path` through its last whole line (of the
/// volumes `needles` name, when given), and the record of a torn last line
/// that is whole but for its newline; `None` if the log is gone.
fn summarize(
    dir: &Path,
    path: &Path,
    needles: Option<&[String]>,
) -> Result<Option<(Summary, Option<LogRecord>)>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(crate::error::Error::io(path, e)),
    };
    let meta = f.metadata().at(path)?;
    let stored = summary_path(dir, path);
    let mut s = match load(&stored) {
        Some(s) if covers(&s, &f, meta.ino(), meta.len()) => s,
        _ => Summary {
            format: FORMAT,
            ino: meta.ino(),
            ..Summary::default()
        },
    };
    f.seek(SeekFrom::Start(s.bytes)).at(path)?;
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).at(path)?;
    let (body, torn) = oplog::split_torn(&rest);
    let log = oplog::parse_lines(path, body, s.lines, needles);
    for r in log.records.into_iter().filter(is_backup_end) {
        let v = r.volume.clone().expect("is_backup_end");
        s.volumes.entry(v).or_default().push(r);
    }
    s.damaged.extend(log.damaged);
    let new_lines = body.iter().filter(|&&b| b == b'\n').count() as u64;
    s.lines = s.lines.saturating_add(new_lines);
    s.bytes += body.len() as u64;
    if needles.is_none() && body.len() as u64 >= REWRITE_AFTER {
        s.tail = tail_hash(&mut f, s.bytes).at(path)?;
        store(dir, &stored, &mut s);
    }
    Ok(Some((s, oplog::parse_torn(torn))))
}

/// The stored summary at `path`, if there is an intact one of this format.
fn load(path: &Path) -> Option<Summary> {
    let bytes = std::fs::read(path).ok()?;
    let s: Summary = serde_json::from_slice(&bytes).ok()?;
    (s.format == FORMAT && s.check == s.own_hash()).then_some(s)
}

/// Whether `s` covers a prefix of the open log `f`.
fn covers(s: &Summary, f: &std::fs::File, ino: u64, len: u64) -> bool {
    let mut f = f;
    s.ino == ino && s.bytes <= len && tail_hash(&mut f, s.bytes).is_ok_and(|h| h == s.tail)
}

/// BLAKE3 (hex) of the [`TAIL`] bytes before offset `end` of `f`.
fn tail_hash(mut f: impl Read + Seek, end: u64) -> std::io::Result<String> {
    let start = end.saturating_sub(TAIL);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = vec![0; (end - start) as usize];
    f.read_exact(&mut buf)?;
    Ok(blake3::hash(&buf).to_hex().to_string())
}

/// Writes `s` to `path`; a failure only costs the next reader a full parse.
fn store(dir: &Path, path: &Path, s: &mut Summary) {
    s.check = s.own_hash();
    let written = create_dir_private(&dir.join("summary"))
        .and_then(|()| write_atomic(path, &serde_json::to_vec(s).expect("summaries serialize")));
    if let Err(e) = written {
        tracing::debug!("log summary not written: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::oplog::append;

    /// A volume's status as `status` folds it: newest success and failure
    /// times, failures since the success, failures in all.
    fn fold(records: &[LogRecord], v: &str, dropped: u64) -> (String, String, u32, u64) {
        let (mut ok, mut failed, mut since, mut total) = (String::new(), String::new(), 0, dropped);
        for r in records.iter().filter(|r| r.volume.as_deref() == Some(v)) {
            if !is_backup_end(r) {
                continue;
            }
            if is_ok(r) {
                (ok, since) = (r.time.clone(), 0);
            } else {
                (failed, since, total) = (r.time.clone(), since + 1, total + 1);
            }
        }
        (ok, failed, since, total)
    }

    /// Appends `n` backup end records of volumes v0..v4 to `path`, at
    /// seconds `t0`, `t0 + 2`, … (each node writes odd or even seconds).
    fn append_records(path: &Path, seed: u64, t0: u64, n: u64) {
        let mut x = seed;
        for i in 0..n {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let t = time::OffsetDateTime::from_unix_timestamp((t0 + 2 * i) as i64).unwrap();
            let outcome = match (x >> 33) % 4 {
                0 => "error",
                _ => "ok",
            };
            let r = LogRecord {
                time: t
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap(),
                op: if (x >> 40) % 9 == 0 {
                    "verify"
                } else {
                    "backup"
                }
                .into(),
                event: "end".into(),
                volume: Some(format!("v{}", (x >> 50) % 5)),
                outcome: Some(outcome.into()),
                detail: Some("x".repeat(200)), // lines of about a fleet log's length
                ..LogRecord::default()
            };
            append(path, &r).unwrap();
        }
    }

    fn same_as_whole_parse(dir: &Path) {
        let whole = oplog::read_merged(dir).unwrap();
        let b = backups_of(dir, None).unwrap();
        assert_eq!(b.damaged, whole.damaged);
        for v in ["v0", "v1", "v2", "v3", "v4"] {
            let dropped = b.dropped_failures.get(v).copied().unwrap_or(0);
            assert_eq!(
                fold(&b.records, v, dropped),
                fold(&whole.records, v, 0),
                "{v}"
            );
        }
    }

    /// Two nodes' logs of interleaved records: the summaries give every
    /// volume the status a whole parse gives, before and after more
    /// appends, and a summary spares the reader its prefix.
    #[test]
    fn a_summary_gives_the_status_of_a_whole_parse_and_spares_its_prefix() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("log.jsonl"), d.path().join("log.n2.jsonl"));
        append_records(&a, 1, 1_000_000, 6000);
        append_records(&b, 2, 1_000_001, 300);
        same_as_whole_parse(d.path());
        let stored = summary_path(d.path(), &a);
        let s = load(&stored).expect("a summary of the 1.5 MB log");
        assert_eq!(s.bytes, std::fs::metadata(&a).unwrap().len());
        assert!(load(&summary_path(d.path(), &b)).is_none(), "small log");

        append_records(&a, 3, 1_012_000, 50);
        append_records(&b, 4, 1_012_001, 50);
        same_as_whole_parse(d.path());

        // a line spoilt inside the summarized prefix (away from its last
        // bytes) is not seen: the prefix was not parsed again
        let mut bytes = std::fs::read(&a).unwrap();
        bytes[0] = b'#'; // line 1 no longer JSON
        std::fs::write(&a, &bytes).unwrap(); // same inode
        assert!(backups_of(d.path(), None).unwrap().damaged.is_empty());

        // a log replaced by another is parsed whole again
        std::fs::remove_file(&a).unwrap();
        append_records(&a, 5, 2_000_000, 100);
        same_as_whole_parse(d.path());
        // and so is one rewritten in place, shorter or not
        std::fs::write(&a, b"").unwrap();
        append_records(&a, 6, 3_000_000, 7000);
        same_as_whole_parse(d.path());
        // rewritten in place with other records and no shorter: only the
        // hash of the covered prefix's last bytes tells
        let e = tempfile::tempdir().unwrap();
        append_records(&e.path().join("log.jsonl"), 8, 4_000_000, 7100);
        std::fs::write(&a, std::fs::read(e.path().join("log.jsonl")).unwrap()).unwrap();
        same_as_whole_parse(d.path());
        std::fs::write(&a, &bytes).unwrap(); // shorter, damaged line 1
        same_as_whole_parse(d.path());
        assert_eq!(backups_of(d.path(), None).unwrap().damaged.len(), 1);
    }

    /// A volume's kept records stay few however long its history.
    #[test]
    fn a_summary_keeps_little_per_volume() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("log.jsonl");
        append_records(&a, 7, 1_000_000, 6000);
        backups_of(d.path(), None).unwrap();
        let s = load(&summary_path(d.path(), &a)).unwrap();
        for (v, k) in &s.volumes {
            let after_success = k.records.iter().rposition(is_ok).unwrap();
            assert!(
                after_success <= 1,
                "{v}: {after_success} records before the newest success"
            );
        }
    }
}
