//! `rbdelta export VOLUME [--revision REV] [-o FILE | -o -]`: a revision as
//! a raw image, for `rbd import`, `qemu-img convert` or a copy elsewhere.
//! A file is written sparse and appears only once complete (like
//! `restore --to-file`); `-` streams the image to stdout, holes as zeros.
//! Every block is verified on the way out; a bad one stops the export
//! unless `--allow-inconsistent`. Needs no cluster.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::anyhow;
use rbdelta::restore::file_target::FileTarget;
use rbdelta::restore::stream_target::StreamTarget;
use rbdelta::restore::{restore, RestoreOptions, RestoreTarget, TargetOptions};

use super::{human, open_volume, Ctx, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Volume name.
    volume: String,
    /// Revision id, unique prefix, or `latest`.
    #[arg(long, default_value = "latest")]
    revision: String,
    /// Where to write: a file (sparse), or `-` for stdout.
    #[arg(short, long, value_name = "FILE", default_value = "-")]
    output: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
    /// Export despite corrupt blocks, writing zeros there (with a warning).
    #[arg(long)]
    allow_inconsistent: bool,
}

/// Stdout, buffered, for a binary stream (`what`); refused when it is a
/// terminal.
pub(super) fn stdout_stream(
    what: &str,
) -> Result<std::io::BufWriter<std::io::StdoutLock<'static>>, Failure> {
    let stdout = std::io::stdout();
    if stdout.is_terminal() {
        return Err(Failure {
            code: 2,
            error: anyhow!("refusing to write {what} to a terminal: give -o FILE, or pipe it"),
        });
    }
    Ok(std::io::BufWriter::with_capacity(1 << 20, stdout.lock()))
}

pub fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    super::signals::stop_on_terminate(cancel.clone(), Some("the export ends"));
    let cfg = ctx.config()?;
    let vol = open_volume(&cfg, &a.volume)?;
    let rev = vol.find_revision(&a.revision)?;
    let size = rev.manifest.size;
    let to_stdout = a.output.as_os_str() == "-";
    let target: Box<dyn RestoreTarget> = if to_stdout {
        Box::new(StreamTarget::new(
            stdout_stream("a raw image")?,
            size,
            "stdout",
        ))
    } else {
        super::restore::refuse_inside_archive(&a.output, &cfg.archive)?;
        let topts = TargetOptions {
            force: a.force,
            ..Default::default()
        };
        Box::new(FileTarget::create(&a.output, size, &topts)?)
    };
    let progress = ctx.progress(&a.volume);
    let opts = RestoreOptions {
        allow_inconsistent: a.allow_inconsistent,
        cancel,
        only: None,
    };
    let report = restore(&vol, &rev, target, &opts, progress.as_ref())?;
    super::restore::warn_zeroed(&rev, &report, "exported");
    // stdout may be the image: the summary goes to stderr
    eprintln!(
        "{}: exported revision {} ({}, {} of data) to {} in {:.1}s, {}",
        a.volume,
        rev.short(),
        human(report.size),
        human(report.bytes_written),
        if to_stdout {
            "stdout".to_string()
        } else {
            a.output.display().to_string()
        },
        report.duration.as_secs_f64(),
        if report.bad.is_empty() {
            "every block verified"
        } else {
            super::restore::ZEROED
        }
    );
    Ok(())
}
