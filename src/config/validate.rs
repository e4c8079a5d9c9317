//! Validation: the raw config (`file.rs`) checked key by key into the
//! model (`mod.rs`), with inheritance from `defaults:` and errors that name
//! the file, the line and the key.

use std::time::Duration;

use super::file::{self, RawConfig, RawDefaults, RawHooks, RawVolume, S};
use super::{
    units, CephConfig, Config, Entry, Fleet, FsckSettings, FullEvery, Glob, Hooks, Nodes,
    Selection, Settings, Volume, DEFAULT_HOOK_TIMEOUT, DEFAULT_LEASE, DEFAULT_STALL_TIMEOUT,
    LEASE_RANGE, MAX_CEPH_TIMEOUT, MAX_HOOK_TIMEOUT, MAX_STALL_TIMEOUT,
};
use crate::archive::valid_volume_name;
use crate::error::{Error, Result};
use crate::schedule::Schedule;

/// Turns raw entries into the model, with `origin:line: key: message` errors.
pub(super) struct Validator<'a> {
    pub(super) origin: &'a str,
}

impl Validator<'_> {
    fn err<T>(&self, line: u64, key: &str, msg: impl std::fmt::Display) -> Result<T> {
        Err(Error::Config(format!(
            "{}:{line}: {key}: {msg}",
            self.origin
        )))
    }

    pub(super) fn config(&self, raw: RawConfig) -> Result<Config> {
        let d = &raw.defaults;
        let base = self.settings(&Overrides::of_defaults(d), None, "defaults")?;
        let fleet = Fleet {
            parallel: match &d.parallel {
                Some(p) if p.value == 0 || p.value > 64 => {
                    return self.err(p.referenced.line(), "defaults.parallel", "must be 1 to 64")
                }
                Some(p) => p.value,
                None => 2,
            },
            total_bandwidth: self.opt(&d.total_bandwidth, "defaults.total-bandwidth", |s| {
                units::parse_rate(s)
            })?,
            catch_up: d.catch_up.unwrap_or(true),
            stall_timeout: match self.opt(
                &d.stall_timeout,
                "defaults.stall-timeout",
                units::parse_duration,
            )? {
                Some(t) if t.is_zero() || t > MAX_STALL_TIMEOUT => {
                    return self.err(
                        d.stall_timeout.as_ref().map_or(0, |s| s.referenced.line()),
                        "defaults.stall-timeout",
                        "must be 1s to 7d",
                    )
                }
                Some(t) => t,
                None => DEFAULT_STALL_TIMEOUT,
            },
        };
        let mut entries = Vec::new();
        let mut names: Vec<(String, u64)> = Vec::new();
        let mut sources: Vec<(String, u64)> = Vec::new();
        for (i, v) in raw.volumes.iter().enumerate() {
            let key = format!("volumes[{i}]");
            let entry = self.entry(&v.value, v.referenced.line(), &key, &base)?;
            if let Entry::Image(vol) = &entry {
                let line = v
                    .value
                    .name
                    .as_ref()
                    .map_or(v.referenced.line(), |n| n.referenced.line());
                if let Some((_, first)) = names.iter().find(|(n, _)| *n == vol.name) {
                    return self.err(
                        line,
                        &format!("{key}.name"),
                        format!(
                            "duplicate volume name {:?} (first at line {first})",
                            vol.name
                        ),
                    );
                }
                let src = vol.source_name();
                if let Some((_, first)) = sources.iter().find(|(s, _)| *s == src) {
                    return self.err(
                        v.referenced.line(),
                        &key,
                        format!("image {src} is already listed at line {first}"),
                    );
                }
                names.push((vol.name.clone(), line));
                sources.push((src, v.referenced.line()));
            }
            entries.push(entry);
        }
        let timeout_line = raw.ceph.timeout.as_ref().map(|t| t.referenced.line());
        let mut ceph = self.ceph(raw.ceph)?;
        let nodes = raw.nodes.as_ref().map(|n| self.nodes(n)).transpose()?;
        if let Some(n) = &nodes {
            // A renewal may wait a whole ceph.timeout; two in a row must fit
            // in a lease, or a node that is merely slow loses its volumes.
            match timeout_line {
                None => ceph.timeout = ceph.timeout.min((n.lease.as_secs() / 3).max(1)),
                Some(line) if Duration::from_secs(ceph.timeout) * 2 >= n.lease => {
                    return self.err(
                        line,
                        "ceph.timeout",
                        format!(
                            "{}s must be under half of nodes.lease ({}): a lease renewal may wait a whole ceph.timeout; lower ceph.timeout or lengthen nodes.lease",
                            ceph.timeout,
                            units::format_duration(n.lease)
                        ),
                    );
                }
                Some(_) => {}
            }
        }
        Ok(Config {
            ceph,
            archive: raw.archive,
            fleet,
            nodes,
            fsck: self.fsck(&raw.fsck)?,
            entries,
            origin: self.origin.to_string(),
        })
    }

    fn nodes(&self, n: &S<file::RawNodes>) -> Result<Nodes> {
        let pool = &n.value.lease_pool;
        if pool.value.is_empty() {
            return self.err(
                pool.referenced.line(),
                "nodes.lease-pool",
                "must not be empty",
            );
        }
        let lease = match self.opt(&n.value.lease, "nodes.lease", units::parse_duration)? {
            Some(t) if !LEASE_RANGE.contains(&t) => {
                return self.err(
                    n.value.lease.as_ref().map_or(0, |s| s.referenced.line()),
                    "nodes.lease",
                    "must be 3s to 10m",
                )
            }
            Some(t) => t,
            None => DEFAULT_LEASE,
        };
        Ok(Nodes {
            lease_pool: pool.value.clone(),
            lease,
            // of the text, not of these structs: set by `Config::parse`
            config_digest: String::new(),
        })
    }

    fn fsck(&self, f: &file::RawFsck) -> Result<FsckSettings> {
        let d = FsckSettings::default();
        let at_least =
            |key: &str, v: &Option<S<String>>, min: Duration| -> Result<Option<Duration>> {
                match self.opt(v, key, units::parse_duration)? {
                    Some(t) if t < min => self.err(
                        v.as_ref().map_or(0, |s| s.referenced.line()),
                        key,
                        format!("must be at least {}", units::format_duration(min)),
                    ),
                    t => Ok(t),
                }
            };
        let memory = match self.opt(&f.memory, "fsck.memory", units::parse_size)? {
            Some(m) if m < 64 << 20 => {
                return self.err(
                    f.memory.as_ref().map_or(0, |s| s.referenced.line()),
                    "fsck.memory",
                    "must be at least 64MiB",
                )
            }
            m => m.unwrap_or(d.memory),
        };
        Ok(FsckSettings {
            kernel_replay: f.kernel_replay.unwrap_or(d.kernel_replay),
            memory,
            cpu_time: at_least("fsck.cpu-time", &f.cpu_time, Duration::from_secs(10))?
                .unwrap_or(d.cpu_time),
            timeout: at_least("fsck.timeout", &f.timeout, Duration::from_secs(10))?
                .unwrap_or(d.timeout),
        })
    }

    fn ceph(&self, c: file::RawCeph) -> Result<CephConfig> {
        let timeout = match c.timeout {
            Some(t) if t.value == 0 || t.value > MAX_CEPH_TIMEOUT => {
                return self.err(
                    t.referenced.line(),
                    "ceph.timeout",
                    format!("must be 1 to {MAX_CEPH_TIMEOUT} (seconds)"),
                )
            }
            Some(t) => t.value,
            None => super::default_timeout(),
        };
        Ok(CephConfig {
            conf: c.conf.unwrap_or_else(super::default_conf),
            id: c.id.unwrap_or_else(super::default_id),
            keyring: c.keyring,
            timeout,
        })
    }

    fn entry(&self, v: &RawVolume, line: u64, key: &str, base: &Settings) -> Result<Entry> {
        let pool = &v.pool.value;
        if !valid_ceph_name(pool) {
            return self.err(
                v.pool.referenced.line(),
                &format!("{key}.pool"),
                format!("{pool:?} is not a valid pool name"),
            );
        }
        let settings = self.settings(&Overrides::of_volume(v), Some(base), key)?;
        let selection = v.include.is_some() || v.exclude.is_some();
        match (&v.image, selection) {
            (Some(image), false) => {
                if !valid_ceph_name(&image.value) {
                    return self.err(
                        image.referenced.line(),
                        &format!("{key}.image"),
                        format!("{:?} is not a valid image name", image.value),
                    );
                }
                let (name, nline) = match &v.name {
                    Some(n) => (n.value.clone(), n.referenced.line()),
                    None => (image.value.clone(), line),
                };
                if !valid_volume_name(&name) {
                    return self.err(nline, &format!("{key}.name"), format!("{name:?} is not a safe volume name (letters, digits, - _ . @ +; no leading dot)"));
                }
                Ok(Entry::Image(Volume {
                    name,
                    pool: pool.clone(),
                    image: image.value.clone(),
                    settings,
                    line,
                }))
            }
            (Some(image), true) => self.err(
                image.referenced.line(),
                key,
                "give either image: (one volume) or include:/exclude: (a pool selection), not both",
            ),
            (None, false) => self.err(
                line,
                key,
                "missing image: (one volume) or include: (a pool selection, e.g. include: [\"*\"])",
            ),
            (None, true) => {
                let globs = |list: &Option<Vec<S<String>>>, k: &str| -> Result<Vec<Glob>> {
                    list.iter()
                        .flatten()
                        .map(|g| {
                            Glob::new(&g.value).or_else(|e| {
                                self.err(g.referenced.line(), &format!("{key}.{k}"), e)
                            })
                        })
                        .collect()
                };
                let include = globs(&v.include, "include")?;
                let exclude = globs(&v.exclude, "exclude")?;
                if include.is_empty() {
                    return self.err(line, &format!("{key}.include"), "a pool selection needs at least one include pattern (\"*\" for every image)");
                }
                let name = match &v.name {
                    Some(n) => {
                        let probe = n.value.replace("{image}", "x").replace("{pool}", "p");
                        if !n.value.contains("{image}") || !valid_volume_name(&probe) {
                            return self.err(n.referenced.line(), &format!("{key}.name"), format!("{:?}: a selection's name must be a template containing {{image}} (and may contain {{pool}})", n.value));
                        }
                        n.value.clone()
                    }
                    None => "{image}".into(),
                };
                Ok(Entry::Pool(Selection {
                    pool: pool.clone(),
                    include,
                    exclude,
                    name,
                    settings,
                    line,
                }))
            }
        }
    }

    fn settings(&self, o: &Overrides, base: Option<&Settings>, prefix: &str) -> Result<Settings> {
        let k = |name: &str| format!("{prefix}.{name}");
        let schedule = |v: &Option<S<String>>,
                        name: &str,
                        inherited: Option<&Option<Schedule>>|
         -> Result<Option<Schedule>> {
            match v {
                Some(s) => s
                    .value
                    .parse()
                    .map(Some)
                    .or_else(|e| self.err(s.referenced.line(), &k(name), e)),
                None => Ok(inherited.cloned().flatten()),
            }
        };
        let hooks = match o.hooks {
            Some(h) => Hooks {
                pre: h.value.pre.clone(),
                post: h.value.post.clone(),
                timeout: self
                    .opt(&h.value.timeout, &k("hooks.timeout"), |t| {
                        units::parse_duration(t).and_then(|d| {
                            if d.is_zero() || d > MAX_HOOK_TIMEOUT {
                                Err(format!("{t:?}: must be 1s to 24h"))
                            } else {
                                Ok(d)
                            }
                        })
                    })?
                    .or(base.map(|b| b.hooks.timeout))
                    .unwrap_or(DEFAULT_HOOK_TIMEOUT),
            },
            None => base.map(|b| b.hooks.clone()).unwrap_or(Hooks {
                timeout: DEFAULT_HOOK_TIMEOUT,
                ..Default::default()
            }),
        };
        Ok(Settings {
            schedule: schedule(o.schedule, "schedule", base.map(|b| &b.schedule))?,
            verify_schedule: schedule(
                o.verify_schedule,
                "verify-schedule",
                base.map(|b| &b.verify_schedule),
            )?,
            fsck_schedule: schedule(
                o.fsck_schedule,
                "fsck-schedule",
                base.map(|b| &b.fsck_schedule),
            )?,
            verify_slices: match o.verify_slices {
                Some(n) if n.value == 0 || n.value > 366 => {
                    return self.err(n.referenced.line(), &k("verify-slices"), "must be 1 to 366");
                }
                Some(n) => Some(n.value),
                None => base.and_then(|b| b.verify_slices),
            },
            spread: match self.opt(o.spread, &k("spread"), units::parse_duration)? {
                Some(d) => d,
                None => base.map_or(Duration::ZERO, |b| b.spread),
            },
            whole_object: o
                .whole_object
                .or(base.map(|b| b.whole_object))
                .unwrap_or(false),
            bandwidth: match self.opt(o.bandwidth, &k("bandwidth"), units::parse_rate)? {
                Some(r) => Some(r),
                None => base.and_then(|b| b.bandwidth),
            },
            full_every: match self.opt(o.full_every, &k("full-every"), parse_full_every)? {
                Some(f) => Some(f),
                None => base.and_then(|b| b.full_every),
            },
            synthetic_fulls: o
                .synthetic_fulls
                .or(base.map(|b| b.synthetic_fulls))
                .unwrap_or(false),
            hooks,
            retention: match o.retention {
                Some(r) => crate::retention::Retention {
                    keep_last: r.value.keep_last,
                    keep_hourly: r.value.keep_hourly,
                    keep_daily: r.value.keep_daily,
                    keep_weekly: r.value.keep_weekly,
                    keep_monthly: r.value.keep_monthly,
                    keep_yearly: r.value.keep_yearly,
                    keep_within: self.opt(
                        &r.value.keep_within,
                        &k("retention.keep-within"),
                        units::parse_duration,
                    )?,
                },
                None => base.map(|b| b.retention.clone()).unwrap_or_default(),
            },
            retries: o.retries.or(base.map(|b| b.retries)).unwrap_or(3),
            retry_delay: match self.opt(o.retry_delay, &k("retry-delay"), units::parse_duration)? {
                Some(d) => d,
                None => base.map_or(Duration::from_secs(300), |b| b.retry_delay),
            },
        })
    }

    /// Parses an optional spanned string, attaching its line to errors.
    fn opt<T>(
        &self,
        v: &Option<S<String>>,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>> {
        match v {
            Some(s) => parse(&s.value)
                .map(Some)
                .or_else(|e| self.err(s.referenced.line(), key, e)),
            None => Ok(None),
        }
    }
}

/// The inheritable keys, whether they come from `defaults:` or a volume.
struct Overrides<'a> {
    schedule: &'a Option<S<String>>,
    verify_schedule: &'a Option<S<String>>,
    fsck_schedule: &'a Option<S<String>>,
    verify_slices: &'a Option<S<u32>>,
    spread: &'a Option<S<String>>,
    whole_object: Option<bool>,
    bandwidth: &'a Option<S<String>>,
    full_every: &'a Option<S<String>>,
    synthetic_fulls: Option<bool>,
    hooks: Option<&'a S<RawHooks>>,
    retries: Option<u32>,
    retry_delay: &'a Option<S<String>>,
    retention: Option<&'a S<file::RawRetention>>,
}

impl<'a> Overrides<'a> {
    fn of_defaults(d: &'a RawDefaults) -> Self {
        Overrides {
            schedule: &d.schedule,
            verify_schedule: &d.verify_schedule,
            fsck_schedule: &d.fsck_schedule,
            verify_slices: &d.verify_slices,
            spread: &d.spread,
            whole_object: d.whole_object,
            bandwidth: &d.bandwidth,
            full_every: &d.full_every,
            synthetic_fulls: d.synthetic_fulls,
            hooks: d.hooks.as_ref(),
            retries: d.retries,
            retry_delay: &d.retry_delay,
            retention: d.retention.as_ref(),
        }
    }
    fn of_volume(v: &'a RawVolume) -> Self {
        Overrides {
            schedule: &v.schedule,
            verify_schedule: &v.verify_schedule,
            fsck_schedule: &v.fsck_schedule,
            verify_slices: &v.verify_slices,
            spread: &v.spread,
            whole_object: v.whole_object,
            bandwidth: &v.bandwidth,
            full_every: &v.full_every,
            synthetic_fulls: v.synthetic_fulls,
            hooks: v.hooks.as_ref(),
            retries: v.retries,
            retry_delay: &v.retry_delay,
            retention: v.retention.as_ref(),
        }
    }
}

/// `30d` (age of the newest full), `14` (deltas since it) or `50%` (delta
/// bytes since it, relative to the image size).
fn parse_full_every(s: &str) -> Result<FullEvery, String> {
    let t = s.trim();
    if let Some(p) = t.strip_suffix('%') {
        return match p.trim().parse::<f64>() {
            Ok(v) if v > 0.0 && v.is_finite() => Ok(FullEvery::Ratio(v / 100.0)),
            _ => Err(format!("{s:?}: a percentage must be above 0")),
        };
    }
    if let Ok(n) = t.parse::<u32>() {
        return match n {
            0 => Err(
                "full-every: 0 would never write a delta; use --full or a positive count".into(),
            ),
            n => Ok(FullEvery::Deltas(n)),
        };
    }
    units::parse_duration(t)
        .map(FullEvery::Age)
        .map_err(|_| format!("{s:?} is not a full-backup policy (an age like 30d, a delta count like 14, or a ratio like 50%)"))
}

/// Pool and image names: non-empty, no `/` or `@` (they separate pool,
/// image and snapshot in Ceph's own notation).
fn valid_ceph_name(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '@']) && !s.chars().any(char::is_control)
}
