//! Synthetic fulls: a full of revision S built from the archive alone (the
//! chain's full plus its deltas), with no read from Ceph.
//!
//! The chain's full is copied region by region with `copy_file_range`
//! (which shares extents on file systems that can, such as XFS and btrfs,
//! and copies in the kernel elsewhere), only its data regions, so the copy
//! stays sparse. Then every block S reads from a later link is written in
//! place, every block S reads as zeros but the copy holds is punched out,
//! and the index is written from the resolved block hashes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

use crate::archive::atomic::TempFile;
use crate::archive::{Revision, VolumeDir};
use crate::chain::{Chain, Source};
use crate::error::{IoContext, Result};
use crate::format::full_index::FullIndexWriter;

/// Stages a full of `s` and its index as kept temp files: (full, index).
pub fn stage(vol: &VolumeDir, s: &Revision) -> Result<(PathBuf, PathBuf)> {
    let chain = Chain::open(vol, s)?;
    let bs = vol.block_size;
    let size = s.manifest.size;
    let base = &chain.links[0];
    let full = TempFile::new_in(&vol.tmp_dir(), "synth")?;
    if let Some(e) = crate::fault::read_fault(&base.path) {
        return Err(crate::error::Error::io(&base.path, e));
    }
    copy_data_regions(&base.file, &full.file, base.size.min(size)).map_err(|e| {
        // a read error is the base full's (a bad sector); others (a full
        // disk) are the copy's
        let failed = match e.raw_os_error() {
            Some(libc::EIO) => &base.path,
            _ => &full.path,
        };
        crate::error::Error::io(failed, e)
    })?;
    full.file.set_len(size).at(&full.path)?;
    crate::fault::point("synthetic: base copied");
    let index_tmp = TempFile::new_in(&vol.tmp_dir(), "synth-idx")?;
    let mut index = FullIndexWriter::new(
        index_tmp.file.try_clone().at(&index_tmp.path)?,
        index_tmp.path.clone(),
    )?;
    let mut buf = Vec::new();
    for r in chain.blocks()? {
        let r = r?;
        let offset = r.block * bs;
        match r.source {
            Source::Stored { link: 0, entry } if !entry.zero => index.push(r.block, &entry.hash)?,
            Source::Stored { link, entry } if !entry.zero => {
                chain.read_entry(link, &entry, &mut buf)?;
                full.file.write_all_at(&buf, offset).at(&full.path)?;
                index.push(r.block, &entry.hash)?;
                crate::fault::point("synthetic: block written");
            }
            // Zero at S: the copy must not hold data there.
            Source::Stored { .. } | Source::Zero => {
                if offset < base.size {
                    crate::archive::sparse::punch_hole(&full.file, offset, r.len).at(&full.path)?;
                }
            }
        }
    }
    index.finish(bs, size, s.id_bytes())?;
    Ok((full.keep()?, index_tmp.keep()?))
}

/// Copies the data regions of `from` below `len` to the same offsets of `to`.
fn copy_data_regions(from: &File, to: &File, len: u64) -> std::io::Result<()> {
    let (src, dst) = (from.as_raw_fd(), to.as_raw_fd());
    let mut pos = 0u64;
    while pos < len {
        let Some((start, end)) = crate::archive::sparse::next_data(from, pos, len)? else {
            break;
        };
        if start >= len {
            break;
        }
        let (mut off_in, mut off_out) = (start as i64, start as i64);
        while (off_in as u64) < end {
            // SAFETY: valid descriptors and offset pointers; the kernel
            // copies at most the requested length.
            let n = unsafe {
                libc::copy_file_range(
                    src,
                    &mut off_in,
                    dst,
                    &mut off_out,
                    (end - off_in as u64) as usize,
                    0,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL)
                ) {
                    copy_plain(from, to, off_in as u64, end)?;
                    break;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "full shorter than its index says",
                ));
            }
        }
        pos = end;
    }
    Ok(())
}

fn copy_plain(from: &File, to: &File, mut at: u64, end: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while at < end {
        let n = ((end - at) as usize).min(buf.len());
        from.read_exact_at(&mut buf[..n], at)?;
        to.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    Ok(())
}
