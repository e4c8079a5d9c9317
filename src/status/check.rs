//! The Nagios-style verdict: per volume OK, WARNING or CRITICAL, and one
//! summary line whose level is the worst of them.
//!
//! A volume is CRITICAL when its last success is older than the critical
//! threshold (default 3× its schedule interval), when it failed and never
//! succeeded, when its last verify failed, or when a revision is
//! distrusted; WARNING when its last success is older than the warning
//! threshold (default 1.5× the interval) or it has never been backed up
//! (nor tried), when a line of its logs cannot be read (its counts may
//! then be short), or when its last fsck found filesystem errors.

use std::time::Duration;

use super::VolumeStatus;
use crate::config::units::format_duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok = 0,
    Warning = 1,
    Critical = 2,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
        }
    }
}

/// Thresholds that override the schedule-derived ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct Thresholds {
    pub warning: Option<Duration>,
    pub critical: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Verdict {
    pub volume: String,
    pub level: Level,
    pub reason: String,
}

/// Judges one volume at time `now` (Unix seconds).
pub fn judge(s: &VolumeStatus, now: i64, t: Thresholds) -> Verdict {
    let interval = s.interval_seconds as f64;
    let warn = t.warning.map_or(interval * 1.5, |d| d.as_secs_f64());
    let crit = t.critical.map_or(interval * 3.0, |d| d.as_secs_f64());
    let v = |level, reason: String| Verdict {
        volume: s.volume.clone(),
        level,
        reason,
    };
    if let Some(vr) = s.last_verify.as_ref().filter(|v| !v.ok) {
        return v(
            Level::Critical,
            format!("last verify failed: {}", vr.error.as_deref().unwrap_or("?")),
        );
    }
    if s.distrusted > 0 {
        return v(
            Level::Critical,
            format!("{} distrusted revision(s)", s.distrusted),
        );
    }
    let Some(ok) = &s.last_success else {
        // a backup whose record is damaged may have happened: say so
        let damaged = match s.log_damage.as_slice() {
            [] => String::new(),
            [d] => format!("; log damaged: {d}"),
            [d, more @ ..] => format!("; log damaged: {d} (and {} more)", more.len()),
        };
        return match &s.last_failure {
            Some(f) => v(
                Level::Critical,
                format!("never backed up; last failure: {}{damaged}", f.error),
            ),
            None => v(Level::Warning, format!("never backed up{damaged}")),
        };
    };
    let age = (now - ok.unix).max(0) as f64;
    if let Some(f) = s.last_fsck.as_ref().filter(|f| !f.ok) {
        if age <= crit {
            return v(
                Level::Warning,
                format!(
                    "last fsck found errors: {}",
                    f.error.as_deref().unwrap_or("?")
                ),
            );
        }
    }
    if let Some(d) = s.log_damage.first() {
        if age <= crit {
            let more = match s.log_damage.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            return v(Level::Warning, format!("log damaged: {d}{more}"));
        }
    }
    let ago = format_duration(Duration::from_secs(age as u64));
    let failing = match &s.last_failure {
        Some(f) if f.unix >= ok.unix => format!("; failing: {}", f.error),
        _ => String::new(),
    };
    if age > crit {
        v(Level::Critical, format!("last success {ago} ago{failing}"))
    } else if age > warn {
        v(Level::Warning, format!("last success {ago} ago{failing}"))
    } else {
        v(Level::Ok, format!("last success {ago} ago{failing}"))
    }
}

/// The worst level and the one-line summary of `verdicts`.
pub fn summary(verdicts: &[Verdict]) -> (Level, String) {
    let worst = verdicts.iter().map(|v| v.level).max().unwrap_or(Level::Ok);
    let count = |l| verdicts.iter().filter(|v| v.level == l).count();
    let mut line = format!(
        "RBDELTA {} - {} volume(s): {} critical, {} warning, {} ok",
        worst.as_str(),
        verdicts.len(),
        count(Level::Critical),
        count(Level::Warning),
        count(Level::Ok)
    );
    let mut bad: Vec<&Verdict> = verdicts.iter().filter(|v| v.level != Level::Ok).collect();
    bad.sort_by(|a, b| b.level.cmp(&a.level).then(a.volume.cmp(&b.volume)));
    for (i, v) in bad.iter().enumerate() {
        if i == 5 {
            line += &format!("; and {} more", bad.len() - 5);
            break;
        }
        line += &format!("; {}: {}", v.volume, v.reason);
    }
    (worst, line)
}

#[cfg(test)]
mod tests {
    use super::super::{Failure, Success, VerifyResult};
    use super::*;

    fn status(
        last_ok: Option<i64>,
        failed_at: Option<i64>,
        verify_ok: Option<bool>,
    ) -> VolumeStatus {
        VolumeStatus {
            volume: "v".into(),
            source: None,
            in_config: true,
            schedule: None,
            interval_seconds: 3600,
            last_success: last_ok.map(|unix| Success {
                time: String::new(),
                unix,
                kind: None,
                revision: None,
                duration_seconds: 0.0,
                bytes_read: 0,
                bytes_written: 0,
            }),
            last_failure: failed_at.map(|unix| Failure {
                time: String::new(),
                unix,
                error: "boom".into(),
                transient: true,
            }),
            consecutive_failures: 0,
            failures_total: 0,
            revisions: 1,
            archive_bytes: 0,
            last_verify: verify_ok.map(|ok| VerifyResult {
                time: String::new(),
                unix: 0,
                ok,
                error: None,
            }),
            last_fsck: None,
            distrusted: 0,
            log_damage: Vec::new(),
        }
    }

    #[test]
    fn levels_follow_age_failures_and_verify() {
        let now = 100_000;
        let t = Thresholds::default();
        assert_eq!(
            judge(&status(Some(now - 3000), None, Some(true)), now, t).level,
            Level::Ok
        );
        assert_eq!(
            judge(&status(Some(now - 6000), None, None), now, t).level,
            Level::Warning
        );
        assert_eq!(
            judge(&status(Some(now - 20_000), None, None), now, t).level,
            Level::Critical
        );
        assert_eq!(
            judge(&status(Some(now - 60), None, Some(false)), now, t).level,
            Level::Critical
        );
        assert_eq!(
            judge(&status(None, None, None), now, t).level,
            Level::Warning
        );
        assert_eq!(
            judge(&status(None, Some(now), None), now, t).level,
            Level::Critical
        );
        let over = Thresholds {
            warning: Some(Duration::from_secs(60)),
            critical: None,
        };
        assert_eq!(
            judge(&status(Some(now - 120), None, None), now, over).level,
            Level::Warning
        );
        // an unreadable log line: the counts may be short, a WARNING
        let mut damaged = status(Some(now - 60), None, Some(true));
        damaged.log_damage = vec!["/a/v/log.jsonl:7: unreadable record".into()];
        let d = judge(&damaged, now, t);
        assert_eq!(d.level, Level::Warning);
        assert!(d.reason.contains("log.jsonl:7"), "{}", d.reason);
        // a failed fsck: a WARNING naming what it found
        let mut fsck = status(Some(now - 60), None, Some(true));
        fsck.last_fsck = Some(VerifyResult {
            time: String::new(),
            unix: now,
            ok: false,
            error: Some("partition 1 (ext2/3/4): 2 inodes damaged".into()),
        });
        let d = judge(&fsck, now, t);
        assert_eq!(d.level, Level::Warning);
        assert!(
            d.reason.contains("fsck found errors: partition 1"),
            "{}",
            d.reason
        );
        let failing = judge(&status(Some(now - 60), Some(now - 10), None), now, t);
        assert!(
            failing.reason.contains("failing: boom"),
            "{}",
            failing.reason
        );
        let (worst, line) = summary(&[
            judge(&status(Some(now - 60), None, None), now, t),
            judge(&status(None, Some(now), None), now, t),
        ]);
        assert_eq!(worst, Level::Critical);
        assert!(
            line.starts_with(
                "RBDELTA CRITICAL - 2 volume(s): 1 critical, 0 warning, 1 ok; v: never backed up"
            ),
            "{line}"
        );
    }
}
