//! When things run: cron expressions (via croner, in local time, with an
//! optional seconds field) and the deterministic per-volume spread that keeps
//! 300 volumes scheduled "nightly" from starting in the same second.
//!
//! Times are Unix seconds throughout so the scheduler can be driven by any
//! clock, including a test's.

use std::str::FromStr;
use std::time::Duration;

use chrono::{Local, TimeZone};
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// A parsed cron expression.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    pattern: String,
}

impl FromStr for Schedule {
    type Err = String;
    fn from_str(pattern: &str) -> Result<Self, String> {
        // croner takes an empty list item (", * * * *") as a field that
        // matches nothing, and then searches for seconds before saying so
        if pattern
            .split_whitespace()
            .any(|field| field.split(',').any(str::is_empty))
        {
            return Err(format!("{pattern:?} has an empty item in a comma list"));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(pattern)
            .map_err(|e| format!("{pattern:?} is not a cron expression: {e}"))?;
        let s = Schedule {
            cron,
            pattern: pattern.to_string(),
        };
        // A pattern that never fires (say 30 February) is a mistake.
        if s.next_after(Local::now().timestamp()).is_none() {
            return Err(format!("{pattern:?} never fires"));
        }
        Ok(s)
    }
}

impl Schedule {
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The first occurrence strictly after `t`.
    pub fn next_after(&self, t: i64) -> Option<i64> {
        let at = Local.timestamp_opt(t, 0).single()?;
        self.cron
            .find_next_occurrence(&at, false)
            .ok()
            .map(|d| d.timestamp())
    }

    /// The latest occurrence at or before `t`.
    pub fn prev_at_or_before(&self, t: i64) -> Option<i64> {
        let at = Local.timestamp_opt(t, 0).single()?;
        self.cron
            .find_previous_occurrence(&at, true)
            .ok()
            .map(|d| d.timestamp())
    }

    /// The gap between the two occurrences that follow `t`: how often this
    /// schedule runs, for staleness thresholds.
    pub fn interval(&self, t: i64) -> Duration {
        let a = self.next_after(t);
        let b = a.and_then(|a| self.next_after(a));
        match (a, b) {
            (Some(a), Some(b)) => Duration::from_secs((b - a).max(1) as u64),
            _ => Duration::from_secs(86_400),
        }
    }
}

/// The fixed delay of volume `name` inside a spread window: a hash of the
/// name, so it is the same on every run and on every machine.
pub fn spread_offset(name: &str, window: Duration) -> Duration {
    let secs = window.as_secs();
    if secs == 0 {
        return Duration::ZERO;
    }
    let h = blake3::hash(name.as_bytes());
    let v = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
    Duration::from_secs(v % secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nightly_and_seconds_patterns() {
        let s: Schedule = "0 1 * * *".parse().unwrap();
        let now = Local::now().timestamp();
        let next = s.next_after(now).unwrap();
        assert!(next > now && next - now <= 86_400 + 3600);
        assert_eq!(s.interval(now).as_secs(), 86_400);
        let prev = s.prev_at_or_before(now).unwrap();
        assert!(prev <= now && now - prev <= 86_400 + 3600);
        let every5: Schedule = "*/5 * * * * *".parse().unwrap();
        assert_eq!(every5.interval(now).as_secs(), 5);
        assert!("61 * * * *".parse::<Schedule>().is_err());
        assert!("nightly".parse::<Schedule>().is_err());
        assert!("@daily".parse::<Schedule>().is_ok());
    }

    #[test]
    fn an_empty_list_item_is_refused_at_once() {
        for p in [", * * * *", "0,,30 * * * *", "0 0 * * 1,", "0, 0 * * *"] {
            let t = std::time::Instant::now();
            let e = p.parse::<Schedule>().unwrap_err();
            assert!(e.contains("empty item"), "{p}: {e}");
            assert!(t.elapsed() < Duration::from_secs(1), "{p}");
        }
        assert!("0,30 * * * *".parse::<Schedule>().is_ok());
    }

    #[test]
    fn spread_is_deterministic_and_inside_the_window() {
        let w = Duration::from_secs(7200);
        // Pinned values: every machine (and every release) must spread a
        // volume to the same second, or a fleet's nightly order shifts.
        let pinned: Vec<u64> = ["vm-1", "vm-2", "db", ""]
            .iter()
            .map(|n| spread_offset(n, w).as_secs())
            .collect();
        assert_eq!(pinned, [2910, 1595, 6447, 463]);
        assert_eq!(
            spread_offset("vm-1", Duration::from_secs(86_400)).as_secs(),
            74_910
        );
        let distinct: std::collections::HashSet<_> = (0..300)
            .map(|i| spread_offset(&format!("vm-{i}"), w))
            .collect();
        assert!(distinct.len() > 250, "{}", distinct.len());
        assert_eq!(spread_offset("x", Duration::ZERO), Duration::ZERO);
    }
}
