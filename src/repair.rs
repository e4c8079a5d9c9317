//! `rbdelta repair`: replacing bad blocks with good copies.
//!
//! Every stored block has a hash, so any block with the same hash and
//! length is a valid replacement, wherever it sits: in another full or
//! delta of the archive (the same content stored twice, e.g. by two fulls),
//! or in the Ceph snapshot of the revision that stored it, while that
//! snapshot exists. Candidates are hashed before use; nothing unverified is
//! ever written.
//!
//! Crash safety: a replacement is written in place over a block already
//! known to be bad, then fsynced. A crash mid-write leaves that block bad
//! (never a good block damaged) and the next repair writes it again, so no
//! intent record is needed. Non-zero data in an unlisted region of a full is
//! punched out (its expected content is zeros). Afterwards a full verify
//! re-trusts every revision that reads back whole and distrusts the rest.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use crate::archive::oplog::Operation;
use crate::archive::{Revision, StorageKind, VolumeDir};
use crate::buffers::BufferPool;
use crate::checksum::{block_hash, Hash};
use crate::error::{Error, IoContext, Result};
use crate::format::delta::DeltaFile;
use crate::format::index::BlockEntry;
use crate::progress::Progress;
use crate::source::{Extent, SourceImage};
use crate::verify::blocks::{check_data, BadBlock};
use crate::verify::{verify_with, VerifyOptions, VerifyReport};

/// One block put right.
#[derive(Debug, Clone)]
pub struct Fixed {
    /// The revision whose data file held the bad block.
    pub revision: String,
    pub block: u64,
    /// Where the good copy came from.
    pub from: String,
}

/// One block nothing could replace.
#[derive(Debug, Clone)]
pub struct Unfixed {
    pub revision: String,
    pub block: u64,
}

#[derive(Debug, Default)]
pub struct RepairReport {
    pub fixed: Vec<Fixed>,
    pub unfixed: Vec<Unfixed>,
    /// The verify that followed (trust recorded).
    pub verify: VerifyReport,
}

/// Repairs `vol`; `source` is the live image (for its snapshots), if
/// reachable. Takes the exclusive volume lock.
pub fn repair(
    vol: &VolumeDir,
    source: Option<&dyn SourceImage>,
    progress: &dyn Progress,
) -> Result<RepairReport> {
    let lock = vol.lock()?;
    crate::history::recover(vol)?;
    let op = Operation::start(vol.log_path(), "repair", None, None)?;
    let fixed = op.end(repair_locked(vol, source), |r, rec| {
        rec.detail = Some(format!(
            "{} block(s) repaired, {} not",
            r.0.len(),
            r.1.len()
        ));
        if !r.1.is_empty() {
            rec.outcome = Some("incomplete".into());
        }
    })?;
    drop(lock);
    let verify = verify_with(vol, &VerifyOptions::default(), progress)?;
    Ok(RepairReport {
        fixed: fixed.0,
        unfixed: fixed.1,
        verify,
    })
}

fn repair_locked(
    vol: &VolumeDir,
    source: Option<&dyn SourceImage>,
) -> Result<(Vec<Fixed>, Vec<Unfixed>)> {
    let revisions = vol.revisions()?;
    let mut bad: Vec<(Revision, BadBlock)> = Vec::new();
    for r in &revisions {
        let fc = check_data(vol, r, None, &crate::progress::NoProgress)?;
        bad.extend(fc.bad.into_iter().map(|b| (r.clone(), b)));
    }
    let mut fixed = Vec::new();
    let mut unfixed = Vec::new();
    // Wanted hash -> good copy, found by one pass over every index.
    let wanted: BTreeMap<Hash, u32> = bad
        .iter()
        .filter_map(|(_, b)| match b {
            BadBlock::Data(e) => Some((e.hash, e.len)),
            BadBlock::Hole { .. } => None,
        })
        .collect();
    let copies = find_copies(vol, &revisions, &wanted)?;
    for (rev, b) in bad {
        let path = data_path(vol, &rev.id)?;
        let file = OpenOptions::new().write(true).open(&path).at(&path)?;
        match b {
            BadBlock::Hole { block, len } => {
                crate::archive::sparse::punch_hole(&file, block * vol.block_size, len).at(&path)?;
                file.sync_all().at(&path)?;
                crate::fault::point("repair: hole punched");
                fixed.push(Fixed {
                    revision: rev.id.clone(),
                    block,
                    from: "zeros (an unlisted region of a full)".into(),
                });
            }
            BadBlock::Data(e) => {
                let good = match copies.get(&e.hash) {
                    Some((data, from)) => Some((data.clone(), from.clone())),
                    None => from_snapshot(vol, source, &rev, &e)?,
                };
                match good {
                    Some((data, from)) => {
                        crate::fault::point("repair: copy verified");
                        file.write_all_at(&data, e.offset).at(&path)?;
                        file.sync_all().at(&path)?;
                        crate::fault::point("repair: block written");
                        tracing::info!(volume = %vol.name, "block {} of revision {} repaired from {from}", e.block, rev.short());
                        fixed.push(Fixed {
                            revision: rev.id.clone(),
                            block: e.block,
                            from,
                        });
                    }
                    None => unfixed.push(Unfixed {
                        revision: rev.id.clone(),
                        block: e.block,
                    }),
                }
            }
        }
    }
    Ok((fixed, unfixed))
}

fn data_path(vol: &VolumeDir, id: &str) -> Result<std::path::PathBuf> {
    Ok(match vol.storage_kind(id)? {
        StorageKind::Full => vol.full_path(id),
        StorageKind::Delta => vol.delta_path(id),
    })
}

/// Good copies of the wanted hashes anywhere in the archive (verified).
fn find_copies(
    vol: &VolumeDir,
    revisions: &[Revision],
    wanted: &BTreeMap<Hash, u32>,
) -> Result<BTreeMap<Hash, (Vec<u8>, String)>> {
    let mut found = BTreeMap::new();
    if wanted.is_empty() {
        return Ok(found);
    }
    for r in revisions {
        let (entries, file, path): (Vec<BlockEntry>, std::fs::File, std::path::PathBuf) =
            match vol.storage_kind(&r.id)? {
                StorageKind::Full => {
                    let (idx, file, path) = crate::chain::open_full(vol, &r.id)?;
                    let entries = idx
                        .entries()?
                        .filter(|e| e.as_ref().map_or(true, |e| wanted.contains_key(&e.hash)))
                        .collect::<Result<_>>()?;
                    (entries, file, path)
                }
                StorageKind::Delta => {
                    let d = DeltaFile::open(&vol.delta_path(&r.id))?;
                    let entries = d
                        .entries
                        .iter()
                        .filter(|e| wanted.contains_key(&e.hash))
                        .copied()
                        .collect();
                    (entries, d.file, d.path)
                }
            };
        for e in entries {
            if e.zero || found.contains_key(&e.hash) || wanted.get(&e.hash) != Some(&e.len) {
                continue;
            }
            let mut buf = vec![0u8; e.len as usize];
            if file.read_exact_at(&mut buf, e.offset).is_ok() && block_hash(&buf) == e.hash {
                let name = path
                    .file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().into_owned());
                found.insert(e.hash, (buf, format!("data/{name} block {}", e.block)));
            }
        }
    }
    Ok(found)
}

/// The block from the Ceph snapshot of the revision that stored it.
fn from_snapshot(
    vol: &VolumeDir,
    source: Option<&dyn SourceImage>,
    rev: &Revision,
    e: &BlockEntry,
) -> Result<Option<(Vec<u8>, String)>> {
    let Some(img) = source else { return Ok(None) };
    let Some(snap) = img.open_snapshot(&rev.manifest.snapshot)? else {
        return Ok(None);
    };
    let offset = e.block * vol.block_size;
    if offset + u64::from(e.len) > snap.size() {
        return Ok(None);
    }
    let pool = BufferPool::new(1);
    let mut got = None;
    snap.read_extents(
        &[Extent::new(offset, u64::from(e.len))],
        1,
        &pool,
        &mut |_, buf| {
            got = Some(buf);
            Ok(())
        },
    )?;
    let data = got.ok_or_else(|| Error::Invalid("snapshot read returned nothing".into()))?;
    Ok((block_hash(&data) == e.hash).then(|| {
        (
            data.to_vec(),
            format!("Ceph snapshot {}", rev.manifest.snapshot),
        )
    }))
}
