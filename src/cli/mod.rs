//! Argument parsing, logging set-up, exit codes and the shared plumbing of
//! the subcommands (config loading, cluster connection, progress bars).
//!
//! Exit codes: 0 success; 1 the operation failed; 2 bad invocation or bad
//! config; 3 `verify` found damage.

mod backup;
mod check;
mod config;
mod daemon;
mod export;
mod export_diff;
mod fsck;
mod import;
mod list;
mod log;
mod mount;
mod package;
mod progress;
mod prune;
mod repair;
mod restore;
mod signals;
mod status;
mod table;
mod tag;
mod verify;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use rbdelta::archive::VolumeDir;
use rbdelta::ceph::Cluster;
use rbdelta::config::{Config, DEFAULT_CONFIG};

#[derive(Debug, Parser)]
#[command(
    name = "rbdelta",
    version,
    about = "Incremental, verifiable backups of Ceph RBD images"
)]
pub struct Cli {
    /// Config file [default: $RBDELTA_CONFIG, then /etc/rbdelta/config.yaml]
    #[arg(short, long, global = true, env = "RBDELTA_CONFIG")]
    config: Option<PathBuf>,
    /// How to show progress: bars on a terminal, else plain log lines.
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// Same as --progress none (an explicit --progress wins).
    #[arg(long, global = true)]
    no_progress: bool,
    /// Seconds between plain progress lines.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 30)]
    progress_interval: u64,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// This host's name in a fleet shared by several backup hosts (`nodes:`
    /// in the config); its logs and daemon files are named after it
    /// [default: the host name]
    #[arg(long, global = true, env = "RBDELTA_NODE", value_name = "NAME")]
    node: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Back up volumes: a delta against the last backup, or a full.
    Backup(backup::Args),
    /// List a volume's revisions, oldest first.
    List(list::Args),
    /// Restore a revision into a new RBD image or a file.
    Restore(restore::Args),
    /// Check a volume's archive: every block, every revision checksum.
    Verify(verify::Args),
    /// Write a revision as a raw image: a sparse file, or stdout (`-o -`)
    /// for `rbd import -` and `qemu-img convert`; every block verified.
    Export(export::Args),
    /// The changes between two revisions in Ceph's `rbd diff v1` format,
    /// for `rbd import-diff`.
    ExportDiff(export_diff::Args),
    /// Adopt backups another tool made: a raw image becomes a full, a
    /// chain of `rbd export-diff` files on it becomes deltas.
    Import(import::Args),
    /// Check the config file.
    Config(config::Args),
    /// Per volume: last backup, failures, revisions, size, last verify.
    Status(status::Args),
    /// Nagios-style check: OK, WARNING or CRITICAL (exit 0, 1, 2).
    Check(check::Args),
    /// The operation history, newest last.
    Log(log::Args),
    /// Run backups and verifies by schedule until SIGTERM; SIGHUP reloads.
    Daemon(daemon::Args),
    /// Remove revisions the retention rules do not keep (later ones keep
    /// their content: deltas are merged forward).
    Prune(prune::PruneArgs),
    /// Fold a range of revisions into the newer end of the range.
    Merge(prune::MergeArgs),
    /// Tag a revision (tagged revisions are never pruned).
    Tag(tag::Args),
    /// Remove tags from a revision.
    Untag(tag::Args),
    /// Give a revision a synthetic full built from the archive (no Ceph reads).
    SyntheticFull(SyntheticArgs),
    /// Replace bad blocks with good copies (archive or Ceph snapshots).
    Repair(repair::Args),
    /// Every revision as a read-only image file under a FUSE mount.
    Mount(mount::Args),
    /// Check the filesystems inside revisions (journals replayed in a
    /// throwaway overlay; the archive is never written).
    Fsck(fsck::Args),
    /// Print the completion script for a shell (bash, zsh, fish, ...).
    Completions(package::CompletionsArgs),
    /// Write the man pages into a directory (for packagers).
    #[command(hide = true)]
    Man(package::ManArgs),
    /// Internal: run the backups a parent rbdelta sends on stdin.
    #[command(hide = true)]
    BackupWorker,
    /// Internal: run the fsck a parent rbdelta sends on stdin.
    #[command(hide = true)]
    FsckWorker,
}

#[derive(Debug, clap::Args)]
struct SyntheticArgs {
    volume: String,
    /// Revision id, unique prefix or `latest`.
    #[arg(default_value = "latest")]
    revision: String,
}

/// `--progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// Bars when stderr is a terminal, else plain lines.
    Auto,
    Bars,
    /// A line per running job every --progress-interval seconds.
    Plain,
    /// JSON lines on stdout.
    Json,
    /// Result lines only.
    None,
}

/// An error with its exit code.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let error = e.into();
        let code = match error.downcast_ref::<rbdelta::error::Error>() {
            Some(rbdelta::error::Error::Config(_)) => 2,
            _ => 1,
        };
        Failure { code, error }
    }
}

impl Failure {
    /// Exit with `code`, having said everything already.
    pub fn silent(code: u8) -> Failure {
        Failure {
            code,
            error: anyhow::anyhow!(""),
        }
    }

    /// A bad invocation (exit code 2).
    pub fn usage(msg: impl std::fmt::Display) -> Failure {
        Failure {
            code: 2,
            error: anyhow::anyhow!("{msg}"),
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon's own events (start, reload, stop, connection trouble) are
    // worth a journal line even at the default level.
    init_logging(cli.verbose, matches!(cli.command, Command::Daemon(_)));
    if let Some(n) = &cli.node {
        if let Err(e) = rbdelta::host::set_node(n) {
            eprintln!("rbdelta: error: {e}");
            return ExitCode::from(2);
        }
    }
    let ctx = Ctx {
        config_path: cli
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG)),
        verbose: cli.verbose,
        // An explicit --progress wins over --no-progress.
        mode: match (cli.progress, cli.no_progress) {
            (ProgressMode::Auto, true) => ProgressMode::None,
            (ProgressMode::Auto, false) if std::io::IsTerminal::is_terminal(&std::io::stderr()) => {
                ProgressMode::Bars
            }
            (ProgressMode::Auto, false) => ProgressMode::Plain,
            (m, _) => m,
        },
        interval: std::time::Duration::from_secs(cli.progress_interval.max(1)),
    };
    let result = match cli.command {
        Command::Backup(a) => backup::run(&ctx, a),
        Command::List(a) => list::run(&ctx, a),
        Command::Restore(a) => restore::run(&ctx, a),
        Command::Verify(a) => verify::run(&ctx, a),
        Command::Export(a) => export::run(&ctx, a),
        Command::ExportDiff(a) => export_diff::run(&ctx, a),
        Command::Import(a) => import::run(&ctx, a),
        Command::Config(a) => config::run(&ctx, a),
        Command::Status(a) => status::run(&ctx, a),
        Command::Check(a) => check::run(&ctx, a),
        Command::Log(a) => log::run(&ctx, a),
        Command::Daemon(a) => daemon::run(&ctx, a),
        Command::Prune(a) => prune::prune(&ctx, a),
        Command::Merge(a) => prune::merge(&ctx, a),
        Command::Tag(a) => tag::run(&ctx, a, true),
        Command::Untag(a) => tag::run(&ctx, a, false),
        Command::SyntheticFull(a) => synthetic_full(&ctx, a),
        Command::Repair(a) => repair::run(&ctx, a),
        Command::Mount(a) => mount::run(&ctx, a),
        Command::Fsck(a) => fsck::run(&ctx, a),
        Command::Completions(a) => package::completions(&ctx, a),
        Command::Man(a) => package::man(&ctx, a),
        Command::BackupWorker => backup_worker(),
        Command::FsckWorker => fsck::worker(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let msg = format!("{:#}", f.error);
            if !msg.is_empty() {
                eprintln!("rbdelta: error: {msg}");
            }
            ExitCode::from(f.code)
        }
    }
}

fn init_logging(verbose: u8, daemon: bool) {
    let default = match (verbose, daemon) {
        (0, false) => "warn",
        (0, true) => "warn,rbdelta::daemon=info",
        (1, _) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RBDELTA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// What every subcommand gets.
pub struct Ctx {
    pub config_path: PathBuf,
    pub verbose: u8,
    pub mode: ProgressMode,
    pub interval: std::time::Duration,
}

impl Ctx {
    /// The config; in a fleet shared by several nodes, this process is
    /// then a node (named by `--node`, else by the host name).
    pub fn config(&self) -> Result<Config> {
        let cfg = Config::load(&self.config_path)?;
        if cfg.nodes.is_some() && rbdelta::host::node().is_none() {
            rbdelta::host::set_node(&rbdelta::host::host())?;
        }
        Ok(cfg)
    }

    pub fn connect(&self, cfg: &Config) -> Result<Arc<Cluster>> {
        let opts = cfg.ceph.options();
        Cluster::connect(&opts).with_context(|| {
            format!(
                "cannot connect to the Ceph cluster of {}",
                cfg.ceph.conf.display()
            )
        })
    }

    /// Progress of one operation (restore, verify): a bar or nothing.
    pub fn progress(&self, label: &str) -> Box<dyn rbdelta::progress::Progress> {
        progress::for_terminal(self.mode == ProgressMode::Bars, label)
    }

    /// The view of a fleet run of `jobs` jobs.
    pub fn observer(&self, jobs: usize) -> Box<dyn rbdelta::fleet::Observer> {
        match self.mode {
            ProgressMode::Bars => Box::new(view::Bars::new(jobs)),
            ProgressMode::Plain => Box::new(view::Plain::new(self.interval)),
            ProgressMode::Json => Box::new(view::Json::new()),
            ProgressMode::None | ProgressMode::Auto => Box::new(view::Lines),
        }
    }
}

/// How a parent starts its backup workers: this binary, at this log level.
pub fn worker_spawner(verbose: u8) -> rbdelta::fleet::worker::Spawner {
    let mut args: Vec<String> = (0..verbose.min(2)).map(|_| "-v".to_string()).collect();
    args.push("backup-worker".into());
    rbdelta::fleet::worker::Spawner::this_binary(args)
}

fn backup_worker() -> Result<(), Failure> {
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
    signals::stop_on_terminate(cancel.clone(), None);
    rbdelta::fleet::worker::serve(std::io::stdin().lock(), Box::new(std::io::stdout()), cancel)?;
    Ok(())
}

fn synthetic_full(ctx: &Ctx, a: SyntheticArgs) -> Result<(), Failure> {
    let cfg = ctx.config()?;
    let vol = open_volume(&cfg, &a.volume)?;
    let rev = vol.find_revision(&a.revision)?;
    let t = std::time::Instant::now();
    rbdelta::history::make_full(&vol, &rev.id)?;
    println!(
        "{}: revision {} now has a full ({:.1}s)",
        a.volume,
        rev.short(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The archive directory of volume `name`: any volume with an archive,
/// listed in the config or not (a volume removed from the config can still
/// be listed, verified and restored).
pub fn open_volume(cfg: &Config, name: &str) -> Result<VolumeDir> {
    if !rbdelta::archive::valid_volume_name(name) {
        anyhow::bail!("{name:?} is not a volume name");
    }
    if !cfg.archive.join(name).exists() {
        let listed = cfg.listed().any(|v| v.name == name);
        anyhow::bail!(
            "no volume named {name:?} in the archive {}{}",
            cfg.archive.display(),
            if listed {
                " (it is in the config but has no backup yet)"
            } else {
                ""
            }
        );
    }
    Ok(VolumeDir::open(&cfg.archive, name)?)
}

/// Bytes in binary units for people ("1.5 GiB").
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
