//! Mutable per-revision attributes (`<volume>/state.json`): whether the
//! revision's Ceph snapshot still exists, its tags and its trust state.
//!
//! Unlike manifests these change over a revision's life, so they live apart
//! from the content-addressed manifests and are rewritten atomically as a
//! whole. A revision missing from the state has no snapshot, no tags and is
//! trusted.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::atomic::write_atomic;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeState {
    pub format: u32,
    /// Keyed by revision id (hex).
    pub revisions: BTreeMap<String, RevisionState>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevisionState {
    /// The Ceph snapshot, while rbdelta keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default)]
    pub trust: Trust,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Trust {
    #[default]
    Trusted,
    Verified {
        at: String,
    },
    Distrusted {
        reason: String,
    },
}

impl VolumeState {
    pub fn load(path: &Path) -> Result<VolumeState> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(VolumeState {
                format: crate::format::FORMAT_VERSION,
                ..Default::default()
            }),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("state serializes");
        bytes.push(b'\n');
        write_atomic(path, &bytes)
    }

    pub fn get(&self, id: &str) -> RevisionState {
        self.revisions.get(id).cloned().unwrap_or_default()
    }
}

/// Read-modify-write of `<volume>/state.json` under `<volume>/state.lock`
/// (a blocking flock held only for the update), so concurrent verifies,
/// tag commands and backups never lose each other's changes.
pub fn update<T>(volume_dir: &Path, f: impl FnOnce(&mut VolumeState) -> T) -> Result<T> {
    let _lock = lock(volume_dir)?;
    let path = volume_dir.join("state.json");
    let mut state = VolumeState::load(&path)?;
    let out = f(&mut state);
    state.save(&path)?;
    Ok(out)
}

/// Runs `f` on the state with `<volume>/state.lock` held, changing nothing:
/// for a step that must not interleave with a state update (a prune writes
/// a removal's intent record under it, after seeing the revision untagged,
/// and a tag command checks for that record under it).
pub fn locked<T>(volume_dir: &Path, f: impl FnOnce(&VolumeState) -> Result<T>) -> Result<T> {
    let _lock = lock(volume_dir)?;
    f(&VolumeState::load(&volume_dir.join("state.json"))?)
}

/// Takes the blocking exclusive flock on `<volume>/state.lock`, released
/// when the returned file drops.
fn lock(volume_dir: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let lock_path = volume_dir.join("state.lock");
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| Error::io(&lock_path, e))?;
    // SAFETY: flock on a valid, owned descriptor; released when `lock` drops.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(Error::io(&lock_path, std::io::Error::last_os_error()));
    }
    Ok(lock)
}
