//! The YAML configuration: the Ceph connection, the archive root, defaults
//! every volume inherits, and the volumes, listed one by one or as pool
//! selections resolved against the cluster at run time.
//!
//! Parsing is strict: unknown keys, missing keys, bad cron expressions,
//! durations, rates and patterns, duplicate volume names and names that are
//! not a safe path component are errors that name the file, the line and the
//! key, because a typo in a backup config is otherwise found only on the day
//! of the restore. `docs/CONFIG.md` documents every key.

mod digest;
mod file;
pub mod glob;
mod select;
pub mod units;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::schedule::Schedule;
use file::RawConfig;
pub use glob::Glob;
pub use select::{Resolved, Unresolved};

/// Where the config is looked for when `-c` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/rbdelta/config.yaml";

#[derive(Debug, Clone)]
pub struct CephConfig {
    pub conf: PathBuf,
    /// cephx client id (without `client.`).
    pub id: String,
    pub keyring: Option<PathBuf>,
    /// Seconds before a cluster operation or the connection gives up
    /// (1 to [`MAX_CEPH_TIMEOUT`]).
    pub timeout: u64,
}

/// The longest `ceph.timeout`, in seconds: an hour per cluster operation
/// is already far past any useful wait.
pub const MAX_CEPH_TIMEOUT: u64 = 3600;
/// The longest `hooks.timeout`.
pub const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(86_400);
/// The longest `defaults.stall-timeout`.
pub const MAX_STALL_TIMEOUT: Duration = Duration::from_secs(7 * 86_400);

impl Default for CephConfig {
    fn default() -> Self {
        CephConfig {
            conf: default_conf(),
            id: default_id(),
            keyring: None,
            timeout: default_timeout(),
        }
    }
}

pub(crate) fn default_conf() -> PathBuf {
    PathBuf::from("/etc/ceph/ceph.conf")
}
pub(crate) fn default_id() -> String {
    "admin".into()
}
pub(crate) fn default_timeout() -> u64 {
    30
}

impl CephConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }

    /// How to connect.
    pub fn options(&self) -> crate::ceph::CephOptions {
        crate::ceph::CephOptions {
            conf: Some(self.conf.clone()),
            id: self.id.clone(),
            keyring: self.keyring.clone(),
            timeout: self.timeout(),
        }
    }
}

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    pub ceph: CephConfig,
    pub archive: PathBuf,
    pub fleet: Fleet,
    /// Several backup hosts share this fleet (`nodes:`); `None`: one host.
    pub nodes: Option<Nodes>,
    /// How fsck runs its checkers (`fsck:`).
    pub fsck: FsckSettings,
    pub entries: Vec<Entry>,
    /// The file it came from, for messages.
    pub origin: String,
}

/// How several backup hosts (nodes) share one fleet: each runs
/// `rbdelta daemon --node NAME`, shows it is alive with a lease in
/// `lease_pool`, and backs up the volumes the assignment gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Nodes {
    /// The RADOS pool that holds the leases (objects `rbdelta.nodes.<fleet
    /// id>` and `rbdelta.job.<fleet id>.<volume>`, the fleet id from the
    /// archive).
    pub lease_pool: String,
    /// How long a lease lasts unrenewed: a dead node's volumes move to the
    /// others this long after it died.
    pub lease: Duration,
    /// The digest of the config's `volumes:` and `nodes:` sections, which
    /// a node's heartbeat lease carries: nodes count only the holders
    /// whose config has the same (see [`crate::fleet::members`]).
    pub config_digest: String,
}

/// The default `nodes.lease`.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// The range of `nodes.lease`: renewals every third of it must fit, and a
/// dead node's volumes should not wait for long.
pub const LEASE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(3)..=Duration::from_secs(600);

/// How `fsck` treats guest filesystems (`fsck:`): each checker runs in a
/// sandbox with these limits, and the kernel mounts nothing unless
/// `kernel_replay` says it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FsckSettings {
    /// Replay a dirty XFS log through a kernel mount (root only): kernel
    /// filesystem code then runs over bytes a tenant wrote.
    pub kernel_replay: bool,
    /// Address space of one checker, bytes.
    pub memory: u64,
    /// CPU time of one checker.
    pub cpu_time: Duration,
    /// Wall-clock time of one checker.
    pub timeout: Duration,
}

impl Default for FsckSettings {
    fn default() -> FsckSettings {
        FsckSettings {
            kernel_replay: false,
            memory: 4 << 30,
            cpu_time: Duration::from_secs(3600),
            timeout: Duration::from_secs(2 * 3600),
        }
    }
}

/// Settings of the whole run rather than of one volume.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    /// Volumes backed up at once.
    pub parallel: usize,
    /// Read rate shared by all running backups, bytes per second.
    pub total_bandwidth: Option<u64>,
    /// Whether the daemon runs a backup missed while it was down.
    pub catch_up: bool,
    /// A backup worker silent (no progress) this long is killed.
    pub stall_timeout: std::time::Duration,
}

/// One `volumes:` entry.
#[derive(Debug, Clone)]
pub enum Entry {
    Image(Volume),
    Pool(Selection),
}

/// A volume: one image and how to back it up.
#[derive(Debug, Clone)]
pub struct Volume {
    /// Archive subdirectory.
    pub name: String,
    pub pool: String,
    pub image: String,
    pub settings: Settings,
    /// Config line of the entry that produced it.
    pub line: u64,
}

impl Volume {
    pub fn source_name(&self) -> String {
        format!("{}/{}", self.pool, self.image)
    }
}

/// The images of a pool whose names match `include` and none of `exclude`.
#[derive(Debug, Clone)]
pub struct Selection {
    pub pool: String,
    pub include: Vec<Glob>,
    pub exclude: Vec<Glob>,
    /// Volume name template with `{image}` and `{pool}`.
    pub name: String,
    pub settings: Settings,
    pub line: u64,
}

/// Per-volume settings after inheritance from `defaults:`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub schedule: Option<Schedule>,
    pub verify_schedule: Option<Schedule>,
    /// When the daemon runs `fsck` of the newest revision.
    pub fsck_schedule: Option<Schedule>,
    /// Scheduled verifies check one of this many rotating slices of the
    /// stored blocks (`verify --subset`), a different one each day.
    pub verify_slices: Option<u32>,
    pub spread: Duration,
    pub whole_object: bool,
    /// Read rate of this volume's backup, bytes per second.
    pub bandwidth: Option<u64>,
    pub full_every: Option<FullEvery>,
    /// Build the fulls `full_every` asks for from the archive (synthetic)
    /// instead of reading the image.
    pub synthetic_fulls: bool,
    pub hooks: Hooks,
    /// Retries of a backup that failed with a temporary error (daemon).
    pub retries: u32,
    /// Delay before the first retry; doubled for each further one.
    pub retry_delay: Duration,
    /// Which revisions `prune` keeps (empty: all).
    pub retention: crate::retention::Retention,
}

impl Default for Settings {
    /// The built-in defaults: what a volume gets when neither `defaults:`
    /// nor its entry sets a key.
    fn default() -> Self {
        Settings {
            schedule: None,
            verify_schedule: None,
            fsck_schedule: None,
            verify_slices: None,
            spread: Duration::ZERO,
            whole_object: false,
            bandwidth: None,
            full_every: None,
            synthetic_fulls: false,
            hooks: Hooks {
                timeout: DEFAULT_HOOK_TIMEOUT,
                ..Default::default()
            },
            retries: 3,
            retry_delay: Duration::from_secs(300),
            retention: Default::default(),
        }
    }
}

/// When a backup writes a new full instead of a delta.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum FullEvery {
    /// The newest full is at least this old.
    Age(Duration),
    /// This many deltas follow the newest full.
    Deltas(u32),
    /// The deltas since the newest full add up to this fraction of the
    /// image size.
    Ratio(f64),
}

/// Commands run around the snapshot (`sh -c`), e.g. to freeze a guest.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Hooks {
    pub pre: Option<String>,
    pub post: Option<String>,
    pub timeout: Duration,
}

const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// `defaults.stall-timeout` when not set.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

impl Config {
    /// Reads and validates the config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: cannot read config: {e}", path.display())))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid YAML").trim();
            // The parser repeats the position ("error: line L column C: ...").
            let first = match first.strip_prefix("error: line ") {
                Some(rest) => rest.split_once(": ").map_or(rest, |(_, m)| m),
                None => first,
            };
            match e.location() {
                Some(l) => Error::Config(format!("{origin}:{}:{}: {first}", l.line(), l.column())),
                None => Error::Config(format!("{origin}: {first}")),
            }
        })?;
        let mut cfg = validate::Validator { origin }.config(raw)?;
        if let Some(n) = &mut cfg.nodes {
            n.config_digest = digest::sections_digest(text, origin)?;
        }
        Ok(cfg)
    }

    /// The explicitly listed volumes, in config order.
    pub fn listed(&self) -> impl Iterator<Item = &Volume> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Image(v) => Some(v),
            Entry::Pool(_) => None,
        })
    }

    /// Whether some entry is a pool selection (resolving needs the cluster).
    pub fn has_selections(&self) -> bool {
        self.entries.iter().any(|e| matches!(e, Entry::Pool(_)))
    }
}

#[cfg(test)]
mod tests;
