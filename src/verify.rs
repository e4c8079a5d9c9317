//! Verifying an archive: every manifest against its id, every stored block
//! against its hash, every hole of a full against zero, and every revision's
//! image checksum against the block hashes its chain resolves to.
//!
//! Verification reads each data file once, however many revisions share it,
//! and reports every problem it finds (revision, byte range, what) rather
//! than stopping at the first.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::archive::lock::LockMode;
use crate::archive::oplog::Operation;
use crate::archive::{Revision, StorageKind, VolumeDir};
use crate::chain::Chain;
use crate::checksum::{block_hash, is_zero, to_hex};
use crate::error::{IoContext, Result};
use crate::format::delta::DeltaFile;
use crate::format::index::BlockEntry;
use crate::progress::Progress;

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The revision whose stored data or manifest is bad.
    pub revision: String,
    /// Image byte range concerned, when it is a block problem.
    pub range: Option<(u64, u64)>,
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.range {
            Some((a, b)) => write!(
                f,
                "revision {}: bytes {a}..{b}: {}",
                self.revision, self.what
            ),
            None => write!(f, "revision {}: {}", self.revision, self.what),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub revisions: usize,
    pub bytes_read: u64,
    pub problems: Vec<Problem>,
}

/// Verifies revision `only` (and what it depends on), or all revisions.
/// Takes a shared volume lock.
pub fn verify(
    vol: &VolumeDir,
    only: Option<&Revision>,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let _lock = vol.lock(LockMode::Shared)?;
    let op = Operation::start(vol.log_path(), "verify", only.map(|r| r.id.clone()), None)?;
    op.end(verify_locked(vol, only, progress), |r, rec| {
        rec.bytes_read = Some(r.bytes_read);
        if let Some(first) = r.problems.first() {
            rec.outcome = Some("damaged".into());
            rec.error = Some(format!("{} problem(s); first: {first}", r.problems.len()));
        }
    })
}

fn verify_locked(
    vol: &VolumeDir,
    only: Option<&Revision>,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let (revisions, mut problems) = read_manifests(vol)?;
    report.problems.append(&mut problems);
    let targets: Vec<&Revision> = match only {
        Some(r) => vec![r],
        None => revisions.iter().collect(),
    };
    // Each target's image checksum from its chain's block hashes, and the
    // data files it needs (read once below, however many targets share them).
    let mut needed = BTreeSet::new();
    for r in &targets {
        report.revisions += 1;
        let chain = match Chain::open(vol, r) {
            Ok(chain) => chain,
            Err(e) => {
                report.problems.push(Problem {
                    revision: r.id.clone(),
                    range: None,
                    what: format!("cannot open its chain: {e}"),
                });
                continue;
            }
        };
        needed.extend(chain.links.iter().map(|l| l.revision.id.clone()));
        match chain.image_checksum() {
            Ok(sum) if sum == r.manifest.checksum_bytes() => {}
            Ok(sum) => report.problems.push(Problem {
                revision: r.id.clone(),
                range: None,
                what: format!(
                    "image checksum from its blocks is {} but the manifest says {}",
                    to_hex(&sum),
                    r.manifest.checksum
                ),
            }),
            Err(e) => report.problems.push(Problem {
                revision: r.id.clone(),
                range: None,
                what: e.to_string(),
            }),
        }
    }
    let total: u64 = needed.iter().filter_map(|id| data_len(vol, id)).sum();
    progress.begin("verify", total);
    for id in &needed {
        match check_data(vol, id, progress) {
            Ok((bytes, mut p)) => {
                report.bytes_read += bytes;
                report.problems.append(&mut p);
            }
            Err(e) => report.problems.push(Problem {
                revision: id.clone(),
                range: None,
                what: e.to_string(),
            }),
        }
    }
    progress.end();
    Ok(report)
}

/// Reads every manifest, reporting (not failing on) bad ones.
fn read_manifests(vol: &VolumeDir) -> Result<(Vec<Revision>, Vec<Problem>)> {
    let dir = vol.revisions_dir();
    let mut revs = Vec::new();
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(&dir).at(&dir)? {
        let name = entry.at(&dir)?.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        match vol.read_revision(id) {
            Ok(r) => revs.push(r),
            Err(e) => problems.push(Problem {
                revision: id.to_string(),
                range: None,
                what: e.to_string(),
            }),
        }
    }
    revs.sort_by_key(|r| r.manifest.seq);
    Ok((revs, problems))
}

fn data_len(vol: &VolumeDir, id: &str) -> Option<u64> {
    let p = match vol.storage_kind(id).ok()? {
        StorageKind::Full => vol.full_path(id),
        StorageKind::Delta => vol.delta_path(id),
    };
    std::fs::metadata(p).ok().map(|m| m.len())
}

/// Checks every stored block of one revision's data file.
fn check_data(vol: &VolumeDir, id: &str, progress: &dyn Progress) -> Result<(u64, Vec<Problem>)> {
    let bs = vol.block_size;
    match vol.storage_kind(id)? {
        StorageKind::Full => {
            let (idx, file, path) = crate::chain::open_full(vol, id)?;
            let len = idx.header.size;
            let mut problems = check_entries(id, &file, &path, idx.entries()?, bs, progress)?;
            problems.extend(check_holes(id, &file, &path, idx.entries()?, len, bs)?);
            Ok((len, problems))
        }
        StorageKind::Delta => {
            let path = vol.delta_path(id);
            let d = DeltaFile::open(&path)?;
            let entries = d.entries.iter().map(|e| Ok(*e));
            let problems = check_entries(id, &d.file, &path, entries, bs, progress)?;
            let len = d.file.metadata().at(&path)?.len();
            Ok((len, problems))
        }
    }
}

fn check_entries(
    id: &str,
    file: &File,
    path: &Path,
    entries: impl Iterator<Item = Result<BlockEntry>>,
    bs: u64,
    progress: &dyn Progress,
) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    let mut buf = Vec::new();
    for e in entries {
        let e = e?;
        if e.zero {
            continue;
        }
        buf.resize(e.len as usize, 0);
        file.read_exact_at(&mut buf, e.offset).at(path)?;
        progress.advance(e.len as u64);
        if block_hash(&buf) != e.hash {
            let start = e.block * bs;
            problems.push(Problem {
                revision: id.to_string(),
                range: Some((start, start + e.len as u64)),
                what: format!("block {} fails its checksum in {}", e.block, path.display()),
            });
        }
    }
    Ok(problems)
}

/// In a full, data found outside the listed blocks must be zeros. Walks the
/// file's data regions and the (ascending) index together.
fn check_holes(
    id: &str,
    file: &File,
    path: &Path,
    listed: impl Iterator<Item = Result<BlockEntry>>,
    size: u64,
    bs: u64,
) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    let mut listed = listed.peekable();
    let mut buf = vec![0u8; bs as usize];
    let mut pos = 0u64;
    let mut next_block = 0u64; // blocks below this were checked
    while pos < size {
        let Some((start, end)) = next_data(file, pos, size).at(path)? else {
            break;
        };
        let mut block = (start / bs).max(next_block);
        while block * bs < end {
            while let Some(Ok(e)) = listed.peek() {
                if e.block >= block {
                    break;
                }
                listed.next();
            }
            let is_listed = match listed.peek() {
                Some(Ok(e)) => e.block == block,
                Some(Err(_)) => return Err(listed.next().unwrap().unwrap_err()),
                None => false,
            };
            if !is_listed {
                let len = (size - block * bs).min(bs) as usize;
                file.read_exact_at(&mut buf[..len], block * bs).at(path)?;
                if !is_zero(&buf[..len]) {
                    problems.push(Problem {
                        revision: id.to_string(),
                        range: Some((block * bs, block * bs + len as u64)),
                        what: format!("unlisted block {block} is not zero in {}", path.display()),
                    });
                }
            }
            block += 1;
        }
        next_block = block;
        pos = end;
    }
    Ok(problems)
}

/// The next data region at or after `pos` (SEEK_DATA / SEEK_HOLE).
fn next_data(file: &File, pos: u64, size: u64) -> std::io::Result<Option<(u64, u64)>> {
    let fd = file.as_raw_fd();
    // SAFETY: lseek on a valid descriptor; offsets are in range.
    let start = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
    if start < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
    if end < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some((start as u64, (end as u64).min(size))))
}
