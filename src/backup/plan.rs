//! Turns changed extents into the block-aligned reads a backup makes.
//!
//! Memory grows with the number of reads (16 bytes per up to 4 MiB), never
//! with the number of blocks: a dense 1 TiB image plans 256 Ki reads, not a
//! list of 16 Mi block numbers.

use crate::source::Extent;

/// Largest single read handed to the source (one RBD object by default).
pub const MAX_READ: u64 = 4 << 20;

/// Reads covering every block touched by `extents`, plus the block
/// straddling `boundary` (the smaller of old and new size after a resize),
/// within an image of `size` bytes: block-aligned starts, ascending,
/// non-overlapping, at most [`MAX_READ`] bytes each (the last one of the
/// image may end at `size`).
pub fn reads_for(extents: &[Extent], boundary: Option<u64>, size: u64, bs: u64) -> Vec<Extent> {
    let align = |e: &Extent| {
        let start = e.offset / bs * bs;
        let end = e.end().div_ceil(bs).saturating_mul(bs).min(size);
        (start, end)
    };
    let mut spans: Vec<(u64, u64)> = extents
        .iter()
        .filter(|e| e.len > 0 && e.offset < size)
        .map(align)
        .collect();
    // After a shrink the boundary is the new size itself: compare blocks.
    if let Some(b) = boundary.filter(|b| b % bs != 0 && b / bs < size.div_ceil(bs)) {
        spans.push((b / bs * bs, (b / bs * bs + bs).min(size)));
    }
    spans.sort_unstable();
    let per_read = (MAX_READ / bs).max(1) * bs;
    let mut out: Vec<Extent> = Vec::new();
    let mut current: Option<(u64, u64)> = None;
    for (start, end) in spans {
        current = match current {
            Some((s, e)) if start <= e => Some((s, e.max(end))),
            Some(done) => {
                split(done, per_read, &mut out);
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    if let Some(done) = current {
        split(done, per_read, &mut out);
    }
    out
}

/// Every block of an image of `size` bytes, as reads.
pub fn reads_for_all(size: u64, bs: u64) -> Vec<Extent> {
    reads_for(&[Extent::new(0, size)], None, size, bs)
}

fn split((mut start, end): (u64, u64), per_read: u64, out: &mut Vec<Extent>) {
    while start < end {
        let len = (end - start).min(per_read);
        out.push(Extent::new(start, len));
        start += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: u64 = 4096;

    #[test]
    fn reads_cover_touched_blocks_and_the_boundary() {
        let ex = [Extent::new(10, 5), Extent::new(BS * 3 - 1, 2)];
        assert_eq!(
            reads_for(&ex, None, 1 << 20, BS),
            vec![Extent::new(0, BS), Extent::new(2 * BS, 2 * BS)]
        );
        let r = reads_for(&ex, Some(BS * 5 + 7), 1 << 20, BS);
        assert_eq!(r.last(), Some(&Extent::new(5 * BS, BS)));
        // a shrink to 5 blocks + 7 bytes: the boundary is the size itself
        let r = reads_for(&[], Some(BS * 5 + 7), BS * 5 + 7, BS);
        assert_eq!(r, vec![Extent::new(5 * BS, 7)]);
        // an aligned boundary adds nothing; reads never pass the end
        let ex = [Extent::new(10, 5), Extent::new(BS * 2 + 1, BS)];
        assert_eq!(
            reads_for(&ex, Some(2 * BS), BS * 3 - 100, BS),
            vec![Extent::new(0, BS), Extent::new(2 * BS, BS - 100)]
        );
    }

    #[test]
    fn overlapping_and_unsorted_extents_merge() {
        let ex = [Extent::new(BS, 2 * BS), Extent::new(0, 2 * BS)];
        assert_eq!(
            reads_for(&ex, None, 1 << 20, BS),
            vec![Extent::new(0, 3 * BS)]
        );
    }

    #[test]
    fn large_spans_split_at_max_read() {
        let r = reads_for_all(3000 * BS + 5, BS);
        assert!(r.iter().all(|e| e.len <= MAX_READ && e.offset % BS == 0));
        assert_eq!(r.iter().map(|e| e.len).sum::<u64>(), 3000 * BS + 5);
        assert!(r.windows(2).all(|w| w[0].end() == w[1].offset));
    }
}
