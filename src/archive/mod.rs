//! The archive: one directory per volume holding fulls, deltas, manifests,
//! state, a lock and an operation log (layout in docs/FORMAT.md).
//!
//! This module owns paths and the rules that tie files together (which data
//! files belong to which revision, how revisions are ordered, how an
//! interrupted backup is recognised). It never talks to Ceph.

pub mod atomic;
pub mod direct;
pub mod direct_write;
pub mod global;
pub mod lock;
pub mod oplog;
pub mod owner;
pub mod read;
pub mod sparse;
pub mod state;
pub mod summary;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checksum::{self, Hash};
use crate::error::{Error, IoContext, Result};
use crate::format::{self, manifest::Manifest};
use atomic::{create_dir_private, write_atomic};
use lock::VolumeLock;

/// The volume header (`rbdelta-volume.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeHeader {
    pub format: String,
    pub version: u32,
    pub volume: String,
    /// Random id of this volume archive; its first 12 hex digits tag the
    /// volume's Ceph snapshots.
    pub id: String,
    pub block_size: u64,
    pub hash: String,
}

/// A committed revision: its id and manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    pub id: String,
    pub manifest: Manifest,
}

impl Revision {
    pub fn id_bytes(&self) -> Hash {
        checksum::from_hex(&self.id).expect("revision ids are hex")
    }
    pub fn short(&self) -> &str {
        &self.id[..12]
    }
}

/// How a revision's blocks are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    Full,
    Delta,
}

impl StorageKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            StorageKind::Full => "full",
            StorageKind::Delta => "delta",
        }
    }
}

/// Intent record of a backup in progress (`pending.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    /// The snapshot the backup created (or is about to create).
    pub snapshot: String,
    pub started: String,
    /// Who runs the backup (absent in records of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<PendingOwner>,
}

/// The process behind a `pending.json`, so the next backup can tell a dead
/// one and break the image lock it still holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingOwner {
    pub host: String,
    pub pid: u32,
    /// Its Ceph client (`client.<id>`), the owner of the image's exclusive
    /// lock while it writes the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// One volume's directory.
#[derive(Debug, Clone)]
pub struct VolumeDir {
    pub name: String,
    pub path: PathBuf,
    pub block_size: u64,
    /// The volume archive's random id (hex).
    pub id: String,
}

/// How far before the asked time [`VolumeDir::has_revision_since`] still
/// reads a manifest by its mtime: hosts of a shared archive whose clocks
/// disagree by up to this much are still answered right.
pub const MTIME_SLACK: i64 = 3600;

impl VolumeDir {
    /// Opens an existing volume directory.
    pub fn open(root: &Path, name: &str) -> Result<VolumeDir> {
        let path = root.join(name);
        owner::check(root)?;
        owner::check(&path)?;
        let header_path = path.join(format::VOLUME_FILE);
        let bytes = match std::fs::read(&header_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Invalid(format!(
                    "volume {name} has no archive yet at {} (run a backup first)",
                    path.display()
                )))
            }
            Err(e) => return Err(Error::io(&header_path, e)),
        };
        let header: VolumeHeader = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Corrupt(format!("{}: {e}", header_path.display())))?;
        if header.format != format::VOLUME_FORMAT_NAME || header.version != format::FORMAT_VERSION {
            return Err(Error::Corrupt(format!(
                "{}: unsupported archive format {} version {}",
                header_path.display(),
                header.format,
                header.version
            )));
        }
        let id_ok = header.id.len() >= 12 && header.id.bytes().all(|b| b.is_ascii_hexdigit());
        if header.hash != format::HASH_NAME
            || !format::valid_block_size(header.block_size)
            || !id_ok
        {
            return Err(Error::Corrupt(format!(
                "{}: unsupported hash {}, block size {} or id {:?}",
                header_path.display(),
                header.hash,
                header.block_size,
                header.id
            )));
        }
        Ok(VolumeDir {
            name: name.to_string(),
            path,
            block_size: header.block_size,
            id: header.id,
        })
    }

    /// Opens the volume directory, creating it (owner-only) if needed.
    pub fn open_or_create(root: &Path, name: &str, block_size: u64) -> Result<VolumeDir> {
        let path = root.join(name);
        if !path.join(format::VOLUME_FILE).exists() {
            create_dir_private(root)?;
            create_dir_private(&path)?;
            for sub in ["revisions", "data", "tmp"] {
                create_dir_private(&path.join(sub))?;
            }
            let header = VolumeHeader {
                format: format::VOLUME_FORMAT_NAME.into(),
                version: format::FORMAT_VERSION,
                volume: name.into(),
                id: random_hex(8),
                block_size,
                hash: format::HASH_NAME.into(),
            };
            let mut bytes = serde_json::to_vec_pretty(&header).expect("header serializes");
            bytes.push(b'\n');
            write_atomic(&path.join(format::VOLUME_FILE), &bytes)?;
            atomic::fsync_dir(root)?;
        }
        Self::open(root, name)
    }

    /// Prefix of the Ceph snapshots this volume archive creates:
    /// `rbdelta-<first 12 hex digits of the volume id>-`. Snapshots with
    /// another prefix (including other archives' rbdelta snapshots of the
    /// same image) are never touched.
    pub fn snapshot_prefix(&self) -> String {
        format!("rbdelta-{}-", &self.id[..12])
    }

    /// The writer lock (`lock.rs`); readers take none.
    pub fn lock(&self) -> Result<VolumeLock> {
        VolumeLock::acquire(&self.path.join("lock"), &self.name)
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.path.join("tmp")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.path.join("data")
    }
    pub fn revisions_dir(&self) -> PathBuf {
        self.path.join("revisions")
    }
    pub fn manifest_path(&self, id: &str) -> PathBuf {
        self.revisions_dir().join(format!("{id}.json"))
    }
    pub fn full_path(&self, id: &str) -> PathBuf {
        self.data_dir().join(format!("{id}.full"))
    }
    pub fn full_index_path(&self, id: &str) -> PathBuf {
        self.data_dir().join(format!("{id}.fidx"))
    }
    pub fn delta_path(&self, id: &str) -> PathBuf {
        self.data_dir().join(format!("{id}.delta"))
    }
    pub fn state_path(&self) -> PathBuf {
        self.path.join("state.json")
    }
    /// The operation log this process appends to (`log.jsonl`, or
    /// `log.<node>.jsonl` on a node of a shared fleet).
    pub fn log_path(&self) -> PathBuf {
        oplog::own_path(&self.path)
    }
    /// Every node's operation log of this volume, merged by time.
    pub fn read_log(&self) -> Result<oplog::Log> {
        oplog::read_merged(&self.path)
    }
    pub fn pending_path(&self) -> PathBuf {
        self.path.join("pending.json")
    }

    /// How `id` is stored; a full wins over a delta if both exist.
    pub fn storage_kind(&self, id: &str) -> Result<StorageKind> {
        if self.full_path(id).exists() && self.full_index_path(id).exists() {
            Ok(StorageKind::Full)
        } else if self.delta_path(id).exists() {
            Ok(StorageKind::Delta)
        } else if !self.manifest_path(id).exists() {
            Err(Error::Removed(format!(
                "revision {id} of volume {} was removed",
                self.name
            )))
        } else {
            Err(Error::Corrupt(format!(
                "revision {id} of volume {} has no data file",
                self.name
            )))
        }
    }

    /// All committed revisions, oldest first, each manifest checked against
    /// its id.
    pub fn revisions(&self) -> Result<Vec<Revision>> {
        let mut out = self.manifests(|_| true)?;
        out.sort_by(|a, b| a.manifest.seq.cmp(&b.manifest.seq).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Whether a committed revision was created at or after `since` (Unix
    /// seconds). Reads only manifests written since about then (by their
    /// mtime, with [`MTIME_SLACK`] for clocks that disagree), not every
    /// manifest of the volume: a shared daemon asks this before each
    /// leased backup, on CephFS where each read is a round trip. A
    /// manifest whose mtime lies more than the slack before its own
    /// creation time is missed, and the answer is then "no": at worst one
    /// backup too many, never one too few.
    pub fn has_revision_since(&self, since: i64) -> Result<bool> {
        let from = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(since.saturating_sub(MTIME_SLACK).max(0) as u64);
        let recent = self.manifests(|entry| {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .map_or(true, |t| t >= from)
        })?;
        Ok(recent
            .iter()
            .any(|r| crate::status::unix_of(&r.manifest.created).is_some_and(|t| t >= since)))
    }

    /// The committed revisions whose manifest's directory entry passes
    /// `wanted`, in directory order, each checked against its id.
    fn manifests(&self, wanted: impl Fn(&std::fs::DirEntry) -> bool) -> Result<Vec<Revision>> {
        let dir = self.revisions_dir();
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if checksum::from_hex(id).is_none() || !wanted(&entry) {
                continue;
            }
            match self.read_revision(id) {
                Ok(r) => out.push(r),
                // removed by a history edit since the directory was read
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Reads one manifest and checks it hashes to its id.
    pub fn read_revision(&self, id: &str) -> Result<Revision> {
        let path = self.manifest_path(id);
        let bytes = std::fs::read(&path).at(&path)?;
        if checksum::to_hex(&Manifest::id_of(&bytes)) != id {
            return Err(Error::Corrupt(format!(
                "{}: manifest does not match its id",
                path.display()
            )));
        }
        let manifest = Manifest::decode(&bytes)
            .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))?;
        Ok(Revision {
            id: id.to_string(),
            manifest,
        })
    }

    /// Resolves `latest`, a full id or a unique prefix.
    pub fn find_revision(&self, spec: &str) -> Result<Revision> {
        let revs = self.revisions()?;
        if spec == "latest" {
            return revs
                .last()
                .cloned()
                .ok_or_else(|| Error::Invalid(format!("volume {} has no revisions", self.name)));
        }
        let spec_l = spec.to_ascii_lowercase();
        let hits: Vec<_> = revs.iter().filter(|r| r.id.starts_with(&spec_l)).collect();
        match hits.as_slice() {
            [one] if !spec.is_empty() => Ok((*one).clone()),
            [] | [_] => Err(Error::Invalid(format!(
                "volume {} has no revision {spec:?}",
                self.name
            ))),
            _ => Err(Error::Invalid(format!(
                "revision prefix {spec:?} is ambiguous in volume {} ({} matches)",
                self.name,
                hits.len()
            ))),
        }
    }

    pub fn read_pending(&self) -> Result<Option<Pending>> {
        let path = self.pending_path();
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    pub fn write_pending(&self, p: &Pending) -> Result<()> {
        write_atomic(
            &self.pending_path(),
            &serde_json::to_vec(p).expect("serializes"),
        )
    }

    pub fn clear_pending(&self) -> Result<()> {
        let path = self.pending_path();
        match std::fs::remove_file(&path) {
            Ok(()) => atomic::fsync_dir(&self.path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Removes leftovers of interrupted writes from `tmp/`.
    pub fn clear_tmp(&self) -> Result<()> {
        let dir = self.tmp_dir();
        for entry in std::fs::read_dir(&dir).at(&dir)? {
            let p = entry.at(&dir)?.path();
            std::fs::remove_file(&p).at(&p)?;
        }
        Ok(())
    }
}

/// Whether `name` is a safe single path component for a volume directory.
/// The volume directories under the archive root (valid names with a
/// volume header), sorted. A missing root has none.
pub fn list_volumes(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|n| {
                    valid_volume_name(n) && root.join(n).join("rbdelta-volume.json").exists()
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

pub fn valid_volume_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '+'))
}

/// Now, RFC 3339 UTC with nanoseconds.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

/// `bytes` random bytes as hex, from the kernel's random source.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != bytes as isize {
        // Extremely unlikely; fall back to time and pid, still unique enough.
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        buf.copy_from_slice(&blake3::hash(seed.as_bytes()).as_bytes()[..bytes]);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
