//! Human units in the config: durations (`90s`, `5m`, `2h`, `1d12h`, `1w`)
//! and byte rates (`100MiB`, `1.5GB/s`). Kept strict so `5M` as a duration
//! or `100` as a rate are errors instead of surprises.

use std::time::Duration;

/// Parses a duration: one or more `<number><unit>` with units s, m, h, d, w.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (examples: 90s, 5m, 2h, 1d12h, 1w)");
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let unit = rest[digits..].chars().next().ok_or_else(bad)?;
        let secs = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(secs)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        rest = &rest[digits + 1..];
    }
    Ok(Duration::from_secs(total))
}

/// Parses a byte rate per second: a number with a unit (B, KB, MB, GB,
/// KiB, MiB, GiB), optionally followed by `/s`.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a byte rate (examples: 50MiB, 1GiB/s, 200MB)");
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim_end();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let n: f64 = t[..split].parse().map_err(|_| bad())?;
    let mult: u64 = match t[split..].trim() {
        "B" => 1,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    let v = n * mult as f64;
    if !(v >= 1.0 && v < u64::MAX as f64) {
        return Err(format!("{s:?}: a rate must be at least 1 B/s"));
    }
    Ok(v as u64)
}

/// Parses a size in bytes: a number with a unit (B, KB, MB, GB, KiB,
/// MiB, GiB).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a size (examples: 512MiB, 4GiB)");
    if s.trim_end().ends_with("/s") {
        return Err(bad());
    }
    parse_rate(s).map_err(|_| bad())
}

/// A duration for people: `3d 4h`, `12m 5s`, `40s`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {mins}m")
    } else if mins > 0 {
        format!("{mins}m {secs}s")
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("1d12h").unwrap().as_secs(), 36 * 3600);
        assert_eq!(parse_duration("1w").unwrap().as_secs(), 604_800);
        assert_eq!(parse_duration(" 5m ").unwrap().as_secs(), 300);
        for bad in [
            "",
            "5",
            "m",
            "5M",
            "1.5h",
            "5m3",
            "-1s",
            "99999999999999999w",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            format_duration(Duration::from_secs(3 * 86_400 + 4 * 3600)),
            "3d 4h"
        );
        assert_eq!(format_duration(Duration::from_secs(725)), "12m 5s");
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100MiB").unwrap(), 100 << 20);
        assert_eq!(parse_rate("1.5GB/s").unwrap(), 1_500_000_000);
        assert_eq!(parse_rate("10 KiB/s").unwrap(), 10 << 10);
        for bad in ["100", "MiB", "0MiB", "1 furlong", "-5MiB"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
