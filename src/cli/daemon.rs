//! `rbdelta daemon`: run the fleet by schedule until SIGTERM (see
//! `rbdelta::daemon`). Progress goes to stderr as plain lines (or JSON
//! lines with `--progress json`), so journald keeps the history.

use std::sync::Arc;

use rbdelta::fleet::Observer;

use super::{view, Ctx, Failure, ProgressMode};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(ctx: &Ctx, _a: Args) -> Result<(), Failure> {
    let observer: Arc<dyn Observer> = match ctx.mode {
        ProgressMode::Json => Arc::new(view::Json::new()),
        ProgressMode::None => Arc::new(view::Lines),
        // Bars make no sense for a service: plain lines even on a terminal.
        _ => Arc::new(view::Plain::new(ctx.interval)),
    };
    rbdelta::daemon::run(
        &ctx.config_path,
        observer,
        Some(super::worker_spawner(ctx.verbose)),
    )?;
    Ok(())
}
