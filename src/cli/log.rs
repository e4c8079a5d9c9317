//! `rbdelta log [VOLUME] [--json] [-n N]`: the operation history, newest
//! last. Without a volume: the fleet log (one line per job of every
//! volume). With one: the volume's own log (start and end of every backup,
//! restore and verify) plus fleet jobs that failed before reaching it.

use rbdelta::archive::global;
use rbdelta::archive::oplog::{read_merged, LogRecord};
use rbdelta::text::prefix;

use super::{human, Ctx, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One volume's history instead of the fleet's.
    volume: Option<String>,
    /// JSON lines, as stored.
    #[arg(long)]
    json: bool,
    /// Only the last N records.
    #[arg(short = 'n', long, value_name = "N")]
    last: Option<usize>,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let cfg = ctx.config()?;
    // one volume's: the fleet log scanned for its name, not parsed whole
    let only = a.volume.as_ref().map(std::slice::from_ref);
    let fleet_log = global::read_log_of(&cfg.archive, only)?;
    let mut damaged = fleet_log.damaged;
    let fleet = fleet_log.records;
    let mut records: Vec<LogRecord> = match &a.volume {
        None => fleet,
        Some(name) => {
            if !rbdelta::archive::valid_volume_name(name) {
                return Err(Failure::usage(format!("{name:?} is not a volume name")));
            }
            let own_log = read_merged(&cfg.archive.join(name))?;
            damaged.extend(own_log.damaged);
            let mut own: Vec<LogRecord> = own_log
                .records
                .into_iter()
                .map(|mut r| {
                    r.volume = Some(name.clone());
                    r
                })
                .collect();
            let outside: Vec<LogRecord> = fleet
                .into_iter()
                .filter(|r| r.volume.as_deref() == Some(name) && r.in_volume_log == Some(false))
                .collect();
            if own.is_empty() && outside.is_empty() && !cfg.archive.join(name).exists() {
                return Err(Failure::usage(format!(
                    "no volume named {name:?} in the archive {}",
                    cfg.archive.display()
                )));
            }
            own.extend(outside);
            own.sort_by_key(|r| rbdelta::status::unix_nanos_of(&r.time));
            own
        }
    };
    for d in &damaged {
        eprintln!("rbdelta: warning: {d}");
    }
    if let Some(n) = a.last {
        records.drain(..records.len().saturating_sub(n));
    }
    for r in &records {
        if a.json {
            println!("{}", serde_json::to_string(r).expect("serializes"));
        } else {
            println!("{}", line(r));
        }
    }
    Ok(())
}

fn line(r: &LogRecord) -> String {
    let mut s = format!(
        "{}  {}  {} {}",
        r.time,
        r.volume.as_deref().unwrap_or("-"),
        r.op,
        r.event
    );
    if let Some(o) = &r.outcome {
        s += &format!("  {o}");
    }
    if let Some(k) = &r.kind {
        s += &format!("  {k}");
    }
    if let Some(rev) = &r.revision {
        s += &format!(" {}", prefix(rev, 12));
    }
    if let (Some(rd), Some(wr)) = (r.bytes_read, r.bytes_written) {
        if r.outcome.as_deref() == Some("ok") {
            s += &format!("  read {} stored {}", human(rd), human(wr));
        }
    }
    if let Some(ms) = r.duration_ms {
        s += &format!("  {:.1}s", ms as f64 / 1000.0);
    }
    if let Some(d) = &r.detail {
        s += &format!("  ({d})");
    }
    if let Some(e) = &r.error {
        s += &format!("  error: {e}");
    }
    s
}
