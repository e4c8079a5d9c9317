//! Retention rules (`retention:` in the config): which revisions to keep.
//!
//! The rules work like restic's and borg's: `keep-last N` keeps the N
//! newest; `keep-hourly/daily/weekly/monthly/yearly N` keep the newest
//! revision of each of the N most recent hours/days/ISO weeks/months/years
//! (local time) that have revisions; `keep-within D` keeps everything newer
//! than D. A revision is kept if any rule keeps it. Tagged revisions and the
//! newest revision (the next backup's base) are always kept. No rules at
//! all keeps everything: pruning never happens by accident.

use std::time::Duration;

use chrono::{Datelike, Local, TimeZone};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retention {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within: Option<Duration>,
}

impl Retention {
    pub fn is_empty(&self) -> bool {
        *self == Retention::default()
    }
}

/// A revision as retention sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    /// Creation time, Unix seconds.
    pub time: i64,
    /// Position in the volume's history (breaks ties of equal times).
    pub seq: u64,
    pub tags: Vec<String>,
}

/// Whether a revision is kept, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub id: String,
    pub keep: bool,
    /// The rules that keep it (empty for revisions to remove).
    pub reasons: Vec<String>,
}

/// Decides for every candidate (any order); returns them newest first.
pub fn decide(candidates: &[Candidate], rules: &Retention, now: i64) -> Vec<Decision> {
    let mut revs: Vec<&Candidate> = candidates.iter().collect();
    revs.sort_by(|a, b| b.time.cmp(&a.time).then(b.seq.cmp(&a.seq)));
    let mut out: Vec<Decision> = revs
        .iter()
        .map(|c| Decision {
            id: c.id.clone(),
            keep: false,
            reasons: Vec::new(),
        })
        .collect();
    let keep = |i: usize, why: String, out: &mut Vec<Decision>| {
        out[i].keep = true;
        out[i].reasons.push(why);
    };
    if rules.is_empty() {
        for i in 0..out.len() {
            keep(i, "no retention rules".into(), &mut out);
        }
        return out;
    }
    if !revs.is_empty() {
        keep(0, "newest".into(), &mut out);
    }
    for (i, c) in revs.iter().enumerate() {
        if !c.tags.is_empty() {
            keep(i, format!("tagged {}", c.tags.join(",")), &mut out);
        }
        if rules.keep_last.is_some_and(|n| (i as u32) < n) {
            keep(i, "last".into(), &mut out);
        }
        if rules
            .keep_within
            .is_some_and(|d| now - c.time <= d.as_secs() as i64)
        {
            keep(i, "within".into(), &mut out);
        }
    }
    type Key = fn(i64) -> String;
    let buckets: [(&str, Option<u32>, Key); 5] = [
        ("hourly", rules.keep_hourly, |t| {
            local(t).format("%Y-%m-%d %H").to_string()
        }),
        ("daily", rules.keep_daily, |t| {
            local(t).format("%Y-%m-%d").to_string()
        }),
        ("weekly", rules.keep_weekly, |t| {
            let w = local(t).iso_week();
            format!("{}-W{:02}", w.year(), w.week())
        }),
        ("monthly", rules.keep_monthly, |t| {
            local(t).format("%Y-%m").to_string()
        }),
        ("yearly", rules.keep_yearly, |t| {
            local(t).format("%Y").to_string()
        }),
    ];
    for (name, n, key) in buckets {
        let Some(n) = n else { continue };
        let mut last: Option<String> = None;
        let mut used = 0;
        for (i, c) in revs.iter().enumerate() {
            if used >= n {
                break;
            }
            let k = key(c.time);
            if last.as_ref() != Some(&k) {
                keep(i, format!("{name} {k}"), &mut out);
                used += 1;
                last = Some(k);
            }
        }
    }
    out
}

fn local(t: i64) -> chrono::DateTime<Local> {
    Local
        .timestamp_opt(t, 0)
        .single()
        .unwrap_or_else(|| Local.timestamp_opt(0, 0).unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600;
    const D: i64 = 86_400;

    /// Hourly revisions over `days` days, ending at `end`.
    fn hourly(end: i64, days: i64) -> Vec<Candidate> {
        (0..days * 24)
            .map(|i| Candidate {
                id: format!("r{i:05}"),
                time: end - i * H,
                seq: (days * 24 - i) as u64,
                tags: Vec::new(),
            })
            .collect()
    }

    fn kept(d: &[Decision]) -> usize {
        d.iter().filter(|d| d.keep).count()
    }

    #[test]
    fn rules_keep_what_they_promise() {
        let end = 1_780_000_000 - 1_780_000_000 % D + 12 * H; // noon (UTC) of some day
        let revs = hourly(end, 60);
        assert_eq!(
            kept(&decide(&revs, &Retention::default(), end)),
            revs.len(),
            "no rules keep all"
        );
        let r = Retention {
            keep_last: Some(3),
            ..Default::default()
        };
        assert_eq!(kept(&decide(&revs, &r, end)), 3);
        let r = Retention {
            keep_daily: Some(7),
            ..Default::default()
        };
        let d = decide(&revs, &r, end);
        assert_eq!(
            kept(&d),
            7,
            "newest of each of 7 days (the newest is one of them)"
        );
        assert!(d[0].keep && d[0].reasons.iter().any(|x| x.starts_with("daily")));
        let r = Retention {
            keep_within: Some(Duration::from_secs(2 * D as u64)),
            keep_weekly: Some(4),
            ..Default::default()
        };
        let d = decide(&revs, &r, end);
        let within = d
            .iter()
            .filter(|d| d.reasons.iter().any(|r| r == "within"))
            .count();
        assert_eq!(
            within, 49,
            "two days of hourly revisions, both ends included"
        );
        let weekly = d
            .iter()
            .filter(|d| d.reasons.iter().any(|r| r.starts_with("weekly")))
            .count();
        assert_eq!(weekly, 4);
        let mut tagged = revs.clone();
        tagged[100].tags = vec!["before-upgrade".into()];
        let d = decide(
            &tagged,
            &Retention {
                keep_last: Some(1),
                ..Default::default()
            },
            end,
        );
        assert_eq!(kept(&d), 2);
        assert!(d
            .iter()
            .any(|x| x.id == "r00100" && x.keep && x.reasons[0].starts_with("tagged")));
    }
}
