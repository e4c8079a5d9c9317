//! The YAML configuration: the Ceph connection, the archive root and the
//! volumes to back up.
//!
//! Parsing is strict: unknown keys, missing keys, duplicate volume names and
//! volume names that are not a safe single path component are errors that
//! name the file, the line and the key, because a typo in a backup config is
//! otherwise found only on the day of the restore.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::archive::valid_volume_name;
use crate::error::{Error, Result};

/// Where the config is looked for when `-c` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/rbdelta/config.yaml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    #[serde(default)]
    pub ceph: CephConfig,
    /// Archive root; one subdirectory per volume.
    pub archive: PathBuf,
    pub volumes: Vec<Spanned<VolumeConfig>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CephConfig {
    #[serde(default = "default_conf")]
    pub conf: PathBuf,
    /// cephx client id (without `client.`).
    #[serde(default = "default_id")]
    pub id: String,
    #[serde(default)]
    pub keyring: Option<PathBuf>,
    /// Seconds before a cluster operation or the connection gives up.
    #[serde(default = "default_timeout")]
    pub timeout: u64,
}

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

fn default_conf() -> PathBuf {
    PathBuf::from("/etc/ceph/ceph.conf")
}
fn default_id() -> String {
    "admin".into()
}
fn default_timeout() -> u64 {
    30
}

impl CephConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VolumeConfig {
    /// Archive subdirectory; defaults to the image name.
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    pub pool: String,
    pub image: String,
    /// Diff whole RADOS objects instead of exact extents.
    #[serde(default)]
    pub whole_object: bool,
}

/// A volume with its name resolved.
#[derive(Debug, Clone)]
pub struct Volume {
    pub name: String,
    pub pool: String,
    pub image: String,
    pub whole_object: bool,
}

impl Volume {
    pub fn source_name(&self) -> String {
        format!("{}/{}", self.pool, self.image)
    }
}

impl Config {
    /// Reads and validates the config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: cannot read config: {e}", path.display())))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let cfg: Config = serde_saphyr::from_str(text).map_err(|e| {
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
        cfg.validate(origin)?;
        Ok(cfg)
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let mut seen: Vec<(String, u32)> = Vec::new();
        let mut sources: Vec<(String, u32)> = Vec::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let line = v.referenced.line() as u32;
            let (name, name_line) = match &v.value.name {
                Some(n) => (n.value.clone(), n.referenced.line() as u32),
                None => (v.value.image.clone(), line),
            };
            let key = format!("volumes[{i}].name");
            if !valid_volume_name(&name) {
                return Err(Error::Config(format!(
                    "{origin}:{name_line}: {key}: {name:?} is not a safe volume name (letters, digits, - _ . @ +; no leading dot)"
                )));
            }
            if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
                return Err(Error::Config(format!(
                    "{origin}:{name_line}: {key}: duplicate volume name {name:?} (first at line {first})"
                )));
            }
            let src = format!("{}/{}", v.value.pool, v.value.image);
            if let Some((_, first)) = sources.iter().find(|(s, _)| *s == src) {
                return Err(Error::Config(format!(
                    "{origin}:{line}: volumes[{i}]: image {src} is already listed at line {first}"
                )));
            }
            for (k, val) in [("pool", &v.value.pool), ("image", &v.value.image)] {
                if val.is_empty() || val.contains('/') || val.contains('@') {
                    return Err(Error::Config(format!(
                        "{origin}:{line}: volumes[{i}].{k}: {val:?} is not a valid {k} name"
                    )));
                }
            }
            seen.push((name, name_line));
            sources.push((src, line));
        }
        Ok(())
    }

    /// All volumes in config order.
    pub fn volumes(&self) -> Vec<Volume> {
        self.volumes
            .iter()
            .map(|v| Volume {
                name: v
                    .value
                    .name
                    .as_ref()
                    .map_or_else(|| v.value.image.clone(), |n| n.value.clone()),
                pool: v.value.pool.clone(),
                image: v.value.image.clone(),
                whole_object: v.value.whole_object,
            })
            .collect()
    }

    pub fn volume(&self, name: &str) -> Result<Volume> {
        self.volumes()
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| Error::Invalid(format!("no volume named {name:?} in the config")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, "c.yaml").unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_with_defaults() {
        let c = Config::parse(
            "archive: /srv/x\nvolumes:\n  - pool: rbd\n    image: vm1\n  - name: other\n    pool: rbd\n    image: vm2\n",
            "c.yaml",
        )
        .unwrap();
        assert_eq!(c.ceph.id, "admin");
        assert_eq!(c.ceph.conf, PathBuf::from("/etc/ceph/ceph.conf"));
        let v = c.volumes();
        assert_eq!(v[0].name, "vm1");
        assert_eq!(v[1].name, "other");
        assert_eq!(v[1].source_name(), "rbd/vm2");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = err("archive: /a\nvolumes:\n  - pool: rbd\n    image: vm1\n    colour: red\n");
        assert!(e.starts_with("c.yaml:5:"), "{e}");
        assert!(e.contains("colour"), "{e}");
        let e = err("archive: /a\nvolumes:\n  - pool: rbd\n");
        assert!(e.starts_with("c.yaml:3:") && e.contains("image"), "{e}");
        let e = err("volumes: []\n");
        assert!(e.contains("archive"), "{e}");
        let e = err("archive: /a\nvolumes:\n  - pool: rbd\n    image: a\n  - pool: rbd\n    image: b\n    name: a\n");
        assert!(
            e.starts_with("c.yaml:7:") && e.contains("duplicate volume name"),
            "{e}"
        );
        let e = err("archive: /a\nvolumes:\n  - pool: rbd\n    image: a\n    name: ../x\n");
        assert!(
            e.starts_with("c.yaml:5:") && e.contains("volumes[0].name"),
            "{e}"
        );
        let e = err("archive: /a\nvolumes:\n  - pool: rbd\n    image: a\n  - pool: rbd\n    image: a\n    name: b\n");
        assert!(e.contains("already listed"), "{e}");
    }
}
