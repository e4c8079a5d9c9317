//! `rbdelta check`: a Nagios/Icinga plugin. One line, exit 0 OK,
//! 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the check itself could not run).

use std::time::Duration;

use rbdelta::config::units::parse_duration;
use rbdelta::status::check::{judge, summary, Thresholds};
use rbdelta::status::{collect_of, first_unknown};

use super::{Ctx, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only these volumes [default: every volume the config backs up].
    volumes: Vec<String>,
    /// WARNING when the last success is older than this [default: 1.5× the
    /// volume's schedule interval, 24 h when unscheduled].
    #[arg(long, value_parser = duration)]
    warning: Option<Duration>,
    /// CRITICAL when the last success is older than this [default: 3× the
    /// interval].
    #[arg(long, value_parser = duration)]
    critical: Option<Duration>,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

pub fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let unknown = |e: anyhow::Error| {
        println!("RBDELTA UNKNOWN - {e:#}");
        Failure::silent(3)
    };
    let cfg = ctx.config().map_err(unknown)?;
    let only = (!a.volumes.is_empty()).then_some(a.volumes.as_slice());
    let statuses = collect_of(&cfg, only).map_err(|e| unknown(e.into()))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let t = Thresholds {
        warning: a.warning,
        critical: a.critical,
    };
    let verdicts: Vec<_> = statuses
        .iter()
        .filter(|s| {
            if a.volumes.is_empty() {
                s.in_config
            } else {
                a.volumes.contains(&s.volume)
            }
        })
        .map(|s| judge(s, now, t))
        .collect();
    if let Some(missing) = first_unknown(&a.volumes, &statuses) {
        return Err(unknown(anyhow::anyhow!("no volume named {missing:?}")));
    }
    let (level, line) = summary(&verdicts);
    println!("{line}");
    match level as u8 {
        0 => Ok(()),
        code => Err(Failure::silent(code)),
    }
}
