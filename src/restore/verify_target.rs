//! `--verify-target`: reads a restored image back in full and proves it
//! holds the revision, block by block and by image checksum. It trusts
//! nothing the restore itself computed.

use crate::archive::{Revision, VolumeDir};
use crate::ceph::IoCtx;
use crate::chain::Chain;
use crate::checksum::{to_hex, ImageChecksum};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::source::rbd::RbdSnapshot;
use crate::source::SourceSnapshot;
use crate::verify::source::walk_image;

/// Reads image `name` back and compares it with `rev`; returns the bytes
/// read. A difference is an error naming the first differing bytes and
/// how many blocks differ.
pub fn verify_image(
    vol: &VolumeDir,
    rev: &Revision,
    ioctx: &IoCtx,
    name: &str,
    progress: &dyn Progress,
) -> Result<u64> {
    let chain = Chain::open(vol, rev)?;
    let image = RbdSnapshot::head(ioctx, name)?;
    let size = rev.manifest.size;
    if image.size() != size {
        return Err(Error::Corrupt(format!(
            "{} is {} bytes after the restore, revision {} is {size}",
            image.name(),
            image.size(),
            rev.short()
        )));
    }
    let mut sum = ImageChecksum::new(size, chain.block_size);
    let (mut first, mut differ) = (None, 0u64);
    let walked = walk_image(
        &chain,
        &image,
        size,
        "verify target",
        progress,
        |r, actual| {
            sum.push(r.block, &actual);
            if chain.hash_of(r)? != actual {
                differ += 1;
                let start = r.block * chain.block_size;
                first.get_or_insert(start..start + r.len);
            }
            Ok(())
        },
    )?;
    let checksum = sum.finish();
    if let Some(range) = first {
        return Err(Error::Corrupt(format!(
            "{} does not hold revision {}: {differ} block(s) differ, the first at bytes {}..{}",
            image.name(),
            rev.short(),
            range.start,
            range.end
        )));
    }
    if checksum != rev.manifest.checksum_bytes() {
        return Err(Error::Corrupt(format!(
            "{} has image checksum {} but revision {} says {}",
            image.name(),
            to_hex(&checksum),
            rev.short(),
            rev.manifest.checksum
        )));
    }
    Ok(walked.bytes)
}
