//! `verify --source`: a revision against the Ceph snapshot it was read
//! from, while that snapshot exists. Every block's hash at the snapshot is
//! compared with the block hash the archive resolves for the revision, and
//! the image checksum of the snapshot with the manifest. This catches what
//! no archive-internal check can: a backup that stored the wrong bytes.

use super::{Problem, VerifyReport};
use crate::archive::state::{self, Trust};
use crate::archive::{now_rfc3339, Revision, VolumeDir};
use crate::backup::plan::reads_for;
use crate::buffers::BufferPool;
use crate::chain::{Chain, Resolved};
use crate::checksum::{block_hash, to_hex, Hash, ImageChecksum};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::source::SourceSnapshot;

/// Compares `rev` with `snap` and records the revision's trust.
pub fn verify_source(
    vol: &VolumeDir,
    rev: &Revision,
    snap: &dyn SourceSnapshot,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let chain = Chain::open(vol, rev)?;
    let bs = vol.block_size;
    let size = rev.manifest.size;
    let mut report = VerifyReport {
        revisions: 1,
        ..Default::default()
    };
    let bad = |range: Option<(u64, u64)>, what: String| Problem {
        revision: rev.id.clone(),
        range,
        what,
    };
    if snap.size() != size {
        report.problems.push(bad(
            None,
            format!(
                "snapshot {} is {} bytes, the revision {size}",
                snap.name(),
                snap.size()
            ),
        ));
    } else {
        let mut sum = ImageChecksum::new(size, bs);
        let seen = |r: &Resolved, actual: Hash| -> Result<()> {
            sum.push(r.block, &actual);
            if chain.hash_of(r)? != actual {
                let start = r.block * bs;
                report.problems.push(bad(
                    Some((start, start + r.len)),
                    format!("block {} differs from snapshot {}", r.block, snap.name()),
                ));
            }
            Ok(())
        };
        let read = walk_image(&chain, snap, size, "verify source", progress, seen)?;
        report.bytes_read += read.bytes;
        report.blocks_checked += read.blocks;
        let actual = sum.finish();
        if actual != rev.manifest.checksum_bytes() {
            report.problems.push(bad(
                None,
                format!(
                    "snapshot {} has image checksum {} but the manifest says {}",
                    snap.name(),
                    to_hex(&actual),
                    rev.manifest.checksum
                ),
            ));
        }
    }
    let now = now_rfc3339();
    let reason = report.problems.first().map(|p| p.to_string());
    state::update(&vol.path, |s| {
        let entry = s.revisions.entry(rev.id.clone()).or_default();
        entry.trust = match &reason {
            Some(r) => Trust::Distrusted { reason: r.clone() },
            None => Trust::Verified { at: now },
        };
    })?;
    match reason {
        Some(_) => report.distrusted.push(rev.id.clone()),
        None => report.verified.push(rev.id.clone()),
    }
    Ok(report)
}

/// What [`walk_image`] read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Walked {
    /// Bytes read from the image.
    pub bytes: u64,
    /// Blocks hashed from what was read (the rest are known zeros).
    pub blocks: u64,
}

/// Walks the blocks of `chain`'s target alongside `image`, calling
/// `seen(block, hash of the image's bytes there)` for each, in order.
/// Only allocated ranges are read (in parallel); the rest, and everything
/// at or past `readable`, count as zeros. A block cut short by `readable`
/// is hashed as read, so it never matches a full-length block.
pub fn walk_image(
    chain: &Chain,
    image: &dyn SourceSnapshot,
    readable: u64,
    label: &str,
    progress: &dyn Progress,
    mut seen: impl FnMut(&Resolved, Hash) -> Result<()>,
) -> Result<Walked> {
    let bs = chain.block_size;
    let size = chain.size();
    let readable = readable.min(size).min(image.size());
    let extents = image.changed_extents(None, false)?;
    let reads = reads_for(&extents, None, readable, bs);
    progress.begin(label, reads.iter().map(|e| e.len).sum());
    let mut expected = chain.blocks()?;
    let zeros = chain.zero_hashes().clone();
    let mut next = |actual: Option<&[u8]>| -> Result<()> {
        let r = expected
            .next()
            .ok_or_else(|| Error::Corrupt("chain has fewer blocks than the image".into()))??;
        let hash = match actual {
            Some(d) => block_hash(d),
            None => zeros.for_len(r.len),
        };
        seen(&r, hash)
    };
    let pool = BufferPool::new(8);
    let mut walked = Walked::default();
    let mut next_block = 0u64;
    image.read_extents(&reads, 8, &pool, &mut |e, buf| {
        for _ in next_block..e.offset / bs {
            next(None)?;
        }
        for chunk in buf.chunks(bs as usize) {
            next(Some(chunk))?;
        }
        next_block = e.offset / bs + buf.len().div_ceil(bs as usize) as u64;
        walked.bytes += buf.len() as u64;
        walked.blocks += buf.len().div_ceil(bs as usize) as u64;
        progress.advance(e.len);
        pool.put(buf);
        Ok(())
    })?;
    for _ in next_block..crate::checksum::block_count(size, bs) {
        next(None)?;
    }
    progress.end();
    match expected.next() {
        None => Ok(walked),
        Some(_) => Err(Error::Corrupt(
            "chain has more blocks than the image".into(),
        )),
    }
}
