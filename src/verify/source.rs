//! `verify --source`: a revision against the Ceph snapshot it was read
//! from, while that snapshot exists. Every block's hash at the snapshot is
//! compared with the block hash the archive resolves for the revision, and
//! the image checksum of the snapshot with the manifest. This catches what
//! no archive-internal check can: a backup that stored the wrong bytes.

use std::iter::Peekable;

use super::{Problem, VerifyReport};
use crate::archive::state::{self, Trust};
use crate::archive::{now_rfc3339, Revision, VolumeDir};
use crate::backup::plan::reads_for;
use crate::buffers::BufferPool;
use crate::chain::{Blocks, Chain};
use crate::checksum::{block_hash, to_hex, ImageChecksum};
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
        let extents = snap.changed_extents(None, false)?;
        let reads = reads_for(&extents, None, size, bs);
        progress.begin("verify source", reads.iter().map(|e| e.len).sum());
        let mut expected = chain.blocks()?.peekable();
        let mut sum = ImageChecksum::new(size, bs);
        let pool = BufferPool::new(8);
        let mut cmp = |block: u64,
                       actual: [u8; 32],
                       report: &mut VerifyReport,
                       sum: &mut ImageChecksum|
         -> Result<()> {
            let r = expected
                .next()
                .ok_or_else(|| Error::Corrupt("chain has fewer blocks than the image".into()))??;
            let want = chain.hash_of(&r)?;
            sum.push(block, &actual);
            if want != actual {
                let start = block * bs;
                report.problems.push(bad(
                    Some((start, start + r.len)),
                    format!("block {block} differs from snapshot {}", snap.name()),
                ));
            }
            Ok(())
        };
        let zeros = chain.zero_hashes().clone();
        let mut next_block = 0u64;
        snap.read_extents(&reads, 8, &pool, &mut |e, buf| {
            let first = e.offset / bs;
            while next_block < first {
                let len = (size - next_block * bs).min(bs);
                cmp(next_block, zeros.for_len(len), &mut report, &mut sum)?;
                next_block += 1;
            }
            for (i, chunk) in buf.chunks(bs as usize).enumerate() {
                cmp(first + i as u64, block_hash(chunk), &mut report, &mut sum)?;
            }
            next_block = first + buf.len().div_ceil(bs as usize) as u64;
            report.bytes_read += buf.len() as u64;
            report.blocks_checked += buf.len().div_ceil(bs as usize) as u64;
            progress.advance(e.len);
            pool.put(buf);
            Ok(())
        })?;
        let blocks = crate::checksum::block_count(size, bs);
        while next_block < blocks {
            let len = (size - next_block * bs).min(bs);
            cmp(next_block, zeros.for_len(len), &mut report, &mut sum)?;
            next_block += 1;
        }
        drain(&mut expected)?;
        progress.end();
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

fn drain(rest: &mut Peekable<Blocks<'_>>) -> Result<()> {
    match rest.next() {
        None => Ok(()),
        Some(_) => Err(Error::Corrupt(
            "chain has more blocks than the image".into(),
        )),
    }
}
