//! `rbdelta verify VOLUME [--revision REV]`.

use rbdelta::verify::verify;

use super::{human, open_volume, Ctx, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Volume name from the config.
    volume: String,
    /// Only this revision (id, unique prefix or `latest`) and what it needs.
    #[arg(long)]
    revision: Option<String>,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let cfg = ctx.config()?;
    let vol = open_volume(&cfg, &a.volume)?;
    let only = a
        .revision
        .as_deref()
        .map(|r| vol.find_revision(r))
        .transpose()?;
    let progress = ctx.progress(&a.volume);
    let report = verify(&vol, only.as_ref(), progress.as_ref())?;
    if report.problems.is_empty() {
        println!(
            "{}: {} revision(s) verified, {} read, no problems",
            a.volume,
            report.revisions,
            human(report.bytes_read)
        );
        return Ok(());
    }
    for p in &report.problems {
        println!("{}: DAMAGED: {p}", a.volume);
    }
    Err(Failure {
        code: 3,
        error: anyhow::anyhow!(
            "{}: verify found {} problem(s)",
            a.volume,
            report.problems.len()
        ),
    })
}
