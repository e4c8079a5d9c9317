//! Turns changed extents into the blocks a backup must store and the reads
//! that fetch them.

use crate::checksum::block_count;
use crate::source::Extent;

/// Largest single read handed to the source (one RBD object by default).
pub const MAX_READ: u64 = 4 << 20;

/// Block numbers touched by `extents`, plus the block straddling
/// `boundary` (the smaller of old and new size after a resize), clipped to
/// an image of `size` bytes. Ascending, unique.
pub fn blocks_to_store(
    extents: &[Extent],
    boundary: Option<u64>,
    size: u64,
    block_size: u64,
) -> Vec<u64> {
    let n = block_count(size, block_size);
    let mut blocks: Vec<u64> = Vec::new();
    for e in extents {
        if e.len == 0 || e.offset >= size {
            continue;
        }
        let first = e.offset / block_size;
        let last = (e.end().min(size) - 1) / block_size;
        let from = blocks.last().map_or(first, |&b| first.max(b + 1));
        if from <= last {
            blocks.extend(from..=last);
        }
    }
    if let Some(b) = boundary {
        if b % block_size != 0 && b / block_size < n {
            blocks.push(b / block_size);
        }
    }
    blocks.sort_unstable();
    blocks.dedup();
    blocks
}

/// Coalesces ascending blocks into reads of at most [`MAX_READ`] bytes that
/// never cross `size`.
pub fn reads_for(blocks: &[u64], size: u64, block_size: u64) -> Vec<Extent> {
    let per_read = (MAX_READ / block_size).max(1);
    let mut out: Vec<Extent> = Vec::new();
    let mut run_start = None::<u64>;
    let mut run_len = 0u64;
    let flush = |out: &mut Vec<Extent>, start: u64, len: u64| {
        let off = start * block_size;
        let end = ((start + len) * block_size).min(size);
        out.push(Extent::new(off, end - off));
    };
    for &b in blocks {
        match run_start {
            Some(s) if s + run_len == b && run_len < per_read => run_len += 1,
            Some(s) => {
                flush(&mut out, s, run_len);
                run_start = Some(b);
                run_len = 1;
            }
            None => {
                run_start = Some(b);
                run_len = 1;
            }
        }
    }
    if let Some(s) = run_start {
        flush(&mut out, s, run_len);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_extents_and_boundary() {
        let ex = [Extent::new(10, 5), Extent::new(4096 * 3 - 1, 2)];
        assert_eq!(blocks_to_store(&ex, None, 1 << 20, 4096), vec![0, 2, 3]);
        assert_eq!(
            blocks_to_store(&ex, Some(4096 * 5 + 7), 1 << 20, 4096),
            vec![0, 2, 3, 5]
        );
        // aligned boundary adds nothing; blocks past the end are dropped
        assert_eq!(blocks_to_store(&ex, Some(8192), 4096 * 3, 4096), vec![0, 2]);
    }

    #[test]
    fn overlapping_extents_do_not_duplicate() {
        let ex = [Extent::new(0, 8192), Extent::new(4096, 8192)];
        assert_eq!(blocks_to_store(&ex, None, 1 << 20, 4096), vec![0, 1, 2]);
    }

    #[test]
    fn reads_coalesce_and_clip() {
        let r = reads_for(&[0, 1, 2, 5], 4096 * 5 + 100, 4096);
        assert_eq!(
            r,
            vec![Extent::new(0, 3 * 4096), Extent::new(5 * 4096, 100)]
        );
        let many: Vec<u64> = (0..3000).collect();
        let r = reads_for(&many, u64::MAX / 2, 4096);
        assert!(r.iter().all(|e| e.len <= MAX_READ));
        assert_eq!(r.iter().map(|e| e.len).sum::<u64>(), 3000 * 4096);
    }
}
