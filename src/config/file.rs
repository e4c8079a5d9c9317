//! The config file as written: serde structs that mirror the YAML keys one
//! to one. Nothing here is interpreted; [`super::Config`] validates these
//! into the model the rest of the program uses, so every key keeps its line
//! number until it has been checked.

use std::path::PathBuf;

use serde::Deserialize;
use serde_saphyr::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawConfig {
    #[serde(default)]
    pub ceph: RawCeph,
    pub archive: PathBuf,
    #[serde(default)]
    pub defaults: RawDefaults,
    pub nodes: Option<S<RawNodes>>,
    #[serde(default)]
    pub fsck: RawFsck,
    pub volumes: Vec<S<RawVolume>>,
}

/// The `fsck:` mapping: how filesystem checkers run over guest data.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawFsck {
    pub kernel_replay: Option<bool>,
    pub memory: Option<S<String>>,
    pub cpu_time: Option<S<String>>,
    pub timeout: Option<S<String>>,
}

/// The `nodes:` mapping: several backup hosts share the fleet.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawNodes {
    pub lease_pool: S<String>,
    pub lease: Option<S<String>>,
}

/// The `ceph:` mapping.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawCeph {
    pub conf: Option<PathBuf>,
    pub id: Option<String>,
    pub keyring: Option<PathBuf>,
    /// Whole seconds (not a duration string: librados takes seconds).
    pub timeout: Option<S<u64>>,
}

/// Keys every volume inherits (first block) and fleet-wide keys (second).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDefaults {
    pub schedule: Option<S<String>>,
    pub verify_schedule: Option<S<String>>,
    pub fsck_schedule: Option<S<String>>,
    pub verify_slices: Option<S<u32>>,
    pub spread: Option<S<String>>,
    pub whole_object: Option<bool>,
    pub bandwidth: Option<S<String>>,
    pub full_every: Option<S<String>>,
    pub synthetic_fulls: Option<bool>,
    pub hooks: Option<S<RawHooks>>,
    pub retries: Option<u32>,
    pub retry_delay: Option<S<String>>,
    pub retention: Option<S<RawRetention>>,

    pub parallel: Option<S<usize>>,
    pub total_bandwidth: Option<S<String>>,
    pub catch_up: Option<bool>,
    pub stall_timeout: Option<S<String>>,
}

/// One `volumes:` entry: a single image, or a pool selection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawVolume {
    pub name: Option<S<String>>,
    pub pool: S<String>,
    pub image: Option<S<String>>,
    pub include: Option<Vec<S<String>>>,
    pub exclude: Option<Vec<S<String>>>,

    pub schedule: Option<S<String>>,
    pub verify_schedule: Option<S<String>>,
    pub fsck_schedule: Option<S<String>>,
    pub verify_slices: Option<S<u32>>,
    pub spread: Option<S<String>>,
    pub whole_object: Option<bool>,
    pub bandwidth: Option<S<String>>,
    pub full_every: Option<S<String>>,
    pub synthetic_fulls: Option<bool>,
    pub hooks: Option<S<RawHooks>>,
    pub retries: Option<u32>,
    pub retry_delay: Option<S<String>>,
    pub retention: Option<S<RawRetention>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawHooks {
    pub pre: Option<String>,
    pub post: Option<String>,
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRetention {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within: Option<S<String>>,
}
