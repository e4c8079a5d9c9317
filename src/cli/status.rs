//! `rbdelta status [VOLUME...] [--json | --format prometheus]`: per volume the last
//! success and its age, the last failure, revisions, archive size and the
//! last verify, read from the archive (no cluster needed).

use std::time::Duration;

use rbdelta::config::units::format_duration;
use rbdelta::status::{collect_of, first_unknown, prometheus, VolumeStatus};

use super::{human, table, Ctx, Failure};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Table,
    Json,
    Prometheus,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only these volumes [default: every volume the config or the archive
    /// knows].
    volumes: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Same as --format json.
    #[arg(long, conflicts_with = "format")]
    json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let cfg = ctx.config()?;
    let only = (!a.volumes.is_empty()).then_some(a.volumes.as_slice());
    let statuses = collect_of(&cfg, only)?;
    if let Some(missing) = first_unknown(&a.volumes, &statuses) {
        return Err(Failure::usage(format!("no volume named {missing:?}")));
    }
    match if a.json { Format::Json } else { a.format } {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&statuses).expect("serializes")
        ),
        Format::Prometheus => print!("{}", prometheus::render(&statuses)),
        Format::Table => print!("{}", render(&statuses)),
    }
    Ok(())
}

fn render(statuses: &[VolumeStatus]) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let ago = |unix: i64| format_duration(Duration::from_secs((now - unix).max(0) as u64)) + " ago";
    let mut rows = vec![[
        "VOLUME",
        "LAST SUCCESS",
        "KIND",
        "REVS",
        "ARCHIVE",
        "LAST VERIFY",
        "LAST FSCK",
        "LAST FAILURE",
    ]
    .map(String::from)
    .to_vec()];
    for s in statuses {
        rows.push(vec![
            if s.in_config {
                s.volume.clone()
            } else {
                format!("{} (not in config)", s.volume)
            },
            s.last_success
                .as_ref()
                .map_or("never".into(), |x| ago(x.unix)),
            s.last_success
                .as_ref()
                .and_then(|x| x.kind.clone())
                .unwrap_or_else(|| "-".into()),
            s.revisions.to_string(),
            human(s.archive_bytes),
            match &s.last_verify {
                None => "-".into(),
                Some(v) if v.ok => format!("ok {}", ago(v.unix)),
                Some(v) => format!("FAILED {}", ago(v.unix)),
            },
            match &s.last_fsck {
                None => "-".into(),
                Some(v) if v.ok => format!("ok {}", ago(v.unix)),
                Some(v) => format!("ERRORS {}", ago(v.unix)),
            },
            match &s.last_failure {
                Some(f) if s.last_success.as_ref().is_none_or(|ok| f.unix >= ok.unix) => {
                    format!("{}: {}", ago(f.unix), f.error)
                }
                _ => "-".into(),
            },
        ]);
    }
    table::render(&rows)
}
