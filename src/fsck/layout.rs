//! What a disk image holds: its partition table (GPT or MBR, or none) and
//! the filesystem, if any, at the start of each partition or of the whole
//! disk, recognised by its superblock magic. Reads through a closure, so it
//! never needs more than the few sectors it looks at.
//!
//! Every byte it reads was written by a guest, who may want to hurt the
//! host. So whatever a header claims: a GPT entry array is read only when
//! its size and count are what the UEFI specification allows and within
//! [`MAX_GPT_ENTRIES`] × [`MAX_GPT_ENTRY_SIZE`] (so no read is larger
//! than [`MAX_READ`]); all offset arithmetic is checked; a partition that
//! starts past the end of the image, or whose bounds wrap, is left out;
//! and a table that breaks these rules counts as no table. Fuzzed by
//! `tests/fuzz_parsers.rs` (`partition_table`).

use crate::error::Result;

const SECTOR: u64 = 512;

/// The most GPT entries read. The specification sets no upper bound; real
/// tables hold 128 (gdisk and parted allow a few hundred).
pub const MAX_GPT_ENTRIES: u32 = 1024;
/// The largest GPT entry size accepted: 128 × 2ⁿ by the specification,
/// and 128 in every table in use.
pub const MAX_GPT_ENTRY_SIZE: u32 = 4096;
/// The most bytes any one read asks for: a whole entry array at the
/// bounds above.
pub const MAX_READ: usize = MAX_GPT_ENTRIES as usize * MAX_GPT_ENTRY_SIZE as usize;

/// A byte range of the image and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Part {
    /// 1-based partition number; 0 for the whole disk.
    pub number: u32,
    pub start: u64,
    pub len: u64,
    pub content: Content,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    Ext,
    Xfs,
    Btrfs,
    Vfat,
    Swap,
    Lvm,
    /// An extended (MBR) partition: a container, not a filesystem.
    Extended,
    Unknown,
}

impl Content {
    pub fn as_str(self) -> &'static str {
        match self {
            Content::Ext => "ext2/3/4",
            Content::Xfs => "xfs",
            Content::Btrfs => "btrfs",
            Content::Vfat => "vfat",
            Content::Swap => "swap",
            Content::Lvm => "LVM physical volume",
            Content::Extended => "extended partition",
            Content::Unknown => "unknown contents",
        }
    }
}

/// Reads `len` bytes at `offset` of the image (fewer past its end).
pub type ReadAt<'a> = dyn Fn(u64, usize) -> Result<Vec<u8>> + 'a;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The partitions of an image of `size` bytes, or the whole disk as one
/// part when it has no partition table; none for an empty image. Every
/// part has bytes and lies inside the image.
pub fn partitions(read: &ReadAt<'_>, size: u64) -> Result<Vec<Part>> {
    let mbr = read(0, SECTOR as usize)?;
    let mut parts = Vec::new();
    let has_mbr = mbr.len() == 512 && mbr[510] == 0x55 && mbr[511] == 0xAA;
    let protective = has_mbr && (0..4).any(|i| mbr[446 + i * 16 + 4] == 0xEE);
    if protective {
        parts = gpt(read, size)?;
    } else if has_mbr && looks_like_mbr(&mbr) {
        for i in 0..4 {
            let e = &mbr[446 + i * 16..][..16];
            let kind = e[4];
            // u32 sectors of 512 bytes: no product can overflow a u64
            let (first, count) = (u64::from(le32(e, 8)), u64::from(le32(e, 12)));
            if kind == 0 {
                continue;
            }
            let content = match kind {
                0x05 | 0x0f | 0x85 => Content::Extended,
                _ => Content::Unknown,
            };
            parts.extend(part(
                i as u32 + 1,
                first * SECTOR,
                count * SECTOR,
                size,
                content,
            ));
        }
    }
    if parts.is_empty() {
        // the whole disk, unless it is empty (found by the fuzzer: a part
        // of no bytes)
        parts.extend(part(0, 0, size, size, Content::Unknown));
    }
    for p in &mut parts {
        if p.content != Content::Extended {
            p.content = detect(read, p.start, p.len)?;
        }
    }
    Ok(parts)
}

/// The part numbered `number` over `len` bytes at `start`, cut to the
/// image's `size`; none when it is empty or starts past the end.
fn part(number: u32, start: u64, len: u64, size: u64, content: Content) -> Option<Part> {
    let len = len.min(size.checked_sub(start)?);
    (len > 0).then_some(Part {
        number,
        start,
        len,
        content,
    })
}

/// The partitions of a GPT disk, from the primary header at LBA 1; none
/// when the header is not one the specification allows, or its entry
/// array lies outside the image.
fn gpt(read: &ReadAt<'_>, size: u64) -> Result<Vec<Part>> {
    let mut parts = Vec::new();
    let h = read(SECTOR, SECTOR as usize)?;
    if h.len() != SECTOR as usize || &h[0..8] != b"EFI PART" {
        return Ok(parts);
    }
    let (entries_lba, count, esize) = (le64(&h, 72), le32(&h, 80), le32(&h, 84));
    let sane = count > 0
        && count <= MAX_GPT_ENTRIES
        && (128..=MAX_GPT_ENTRY_SIZE).contains(&esize)
        && esize.is_power_of_two()
        && entries_lba >= 2;
    let at = entries_lba.checked_mul(SECTOR);
    let len = count as usize * esize as usize; // at most MAX_READ when sane
    let Some(at) = at.filter(|&at| sane && at.checked_add(len as u64).is_some_and(|e| e <= size))
    else {
        return Ok(parts);
    };
    let table = read(at, len)?;
    for (i, e) in table.chunks_exact(esize as usize).enumerate() {
        if e[0..16].iter().all(|&b| b == 0) {
            continue; // an unused entry
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        let bounds = last
            .checked_sub(first)
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(SECTOR))
            .zip(first.checked_mul(SECTOR));
        if let Some((len, start)) = bounds {
            // i < MAX_GPT_ENTRIES, so the number fits
            parts.extend(part(i as u32 + 1, start, len, size, Content::Unknown));
        }
    }
    Ok(parts)
}

/// An MBR whose entries are sane (a FAT boot sector also ends in 55 AA).
fn looks_like_mbr(mbr: &[u8]) -> bool {
    (0..4).all(|i| matches!(mbr[446 + i * 16], 0x00 | 0x80))
        && (0..4).any(|i| mbr[446 + i * 16 + 4] != 0)
        && !is_vfat(mbr)
}

fn is_vfat(boot: &[u8]) -> bool {
    boot.len() >= 512
        && boot[510] == 0x55
        && boot[511] == 0xAA
        && (&boot[54..59] == b"FAT12" || &boot[54..59] == b"FAT16" || &boot[82..87] == b"FAT32")
}

/// The filesystem at `start`, by its magic.
pub fn detect(read: &ReadAt<'_>, start: u64, len: u64) -> Result<Content> {
    let head = read(start, 4096.min(len) as usize)?;
    if head.len() >= 4 && &head[0..4] == b"XFSB" {
        return Ok(Content::Xfs);
    }
    if is_vfat(&head) {
        return Ok(Content::Vfat);
    }
    if head.len() >= 1024 && &head[512..520] == b"LABELONE" {
        return Ok(Content::Lvm);
    }
    if head.len() >= 4096
        && (&head[4086..4096] == b"SWAPSPACE2" || &head[4086..4096] == b"SWAP-SPACE")
    {
        return Ok(Content::Swap);
    }
    let Some(at) = start.checked_add(1024) else {
        return Ok(Content::Unknown);
    };
    let ext = read(at, 1024)?;
    if ext.len() >= 58 && le16(&ext, 56) == 0xEF53 {
        return Ok(Content::Ext);
    }
    if let (true, Some(at)) = (len > 65536 + 72, start.checked_add(65536 + 64)) {
        if read(at, 8)? == b"_BHRfS_M" {
            return Ok(Content::Btrfs);
        }
    }
    Ok(Content::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(img: &[u8]) -> impl Fn(u64, usize) -> Result<Vec<u8>> + '_ {
        move |at, len| {
            let at = (at as usize).min(img.len());
            Ok(img[at..(at + len).min(img.len())].to_vec())
        }
    }

    #[test]
    fn a_gpt_disk_with_ext_and_xfs_partitions() {
        let mut img = vec![0u8; 8 << 20];
        // protective MBR
        img[446 + 4] = 0xEE;
        img[510] = 0x55;
        img[511] = 0xAA;
        // GPT header at LBA 1, entries at LBA 2, 128 entries of 128 bytes
        img[512..520].copy_from_slice(b"EFI PART");
        img[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        img[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        img[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        for (i, (first, last)) in [(2048u64, 6143u64), (6144, 16383)].iter().enumerate() {
            let e = 1024 + i * 128;
            img[e] = 1; // a type GUID that is not zero
            img[e + 32..e + 40].copy_from_slice(&first.to_le_bytes());
            img[e + 40..e + 48].copy_from_slice(&last.to_le_bytes());
        }
        // ext superblock magic in partition 1, XFS magic in partition 2
        let p1 = 2048 * 512;
        img[p1 + 1024 + 56..p1 + 1024 + 58].copy_from_slice(&0xEF53u16.to_le_bytes());
        img[6144 * 512..6144 * 512 + 4].copy_from_slice(b"XFSB");
        let parts = partitions(&reader(&img), img.len() as u64).unwrap();
        let got: Vec<(u32, u64, u64, Content)> = parts
            .iter()
            .map(|p| (p.number, p.start, p.len, p.content))
            .collect();
        assert_eq!(
            got,
            [
                (1, 2048 * 512, 4096 * 512, Content::Ext),
                (2, 6144 * 512, 10240 * 512, Content::Xfs)
            ]
        );
    }

    #[test]
    fn mbr_partitions_and_a_bare_filesystem() {
        let mut img = vec![0u8; 4 << 20];
        img[510] = 0x55;
        img[511] = 0xAA;
        let e = 446;
        img[e + 4] = 0x83;
        img[e + 8..e + 12].copy_from_slice(&2048u32.to_le_bytes());
        img[e + 12..e + 16].copy_from_slice(&4096u32.to_le_bytes());
        img[e + 16 + 4] = 0x82;
        img[e + 16 + 8..e + 16 + 12].copy_from_slice(&6144u32.to_le_bytes());
        img[e + 16 + 12..e + 16 + 16].copy_from_slice(&2048u32.to_le_bytes());
        img[6144 * 512 + 4086..6144 * 512 + 4096].copy_from_slice(b"SWAPSPACE2");
        let parts = partitions(&reader(&img), img.len() as u64).unwrap();
        let got: Vec<(u32, Content)> = parts.iter().map(|p| (p.number, p.content)).collect();
        assert_eq!(got, [(1, Content::Unknown), (2, Content::Swap)]);
        // no table: the whole disk, here an ext filesystem
        let mut bare = vec![0u8; 1 << 20];
        bare[1024 + 56..1024 + 58].copy_from_slice(&0xEF53u16.to_le_bytes());
        let parts = partitions(&reader(&bare), bare.len() as u64).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!((parts[0].number, parts[0].content), (0, Content::Ext));
    }

    /// A protective MBR and a GPT header claiming `count` entries of
    /// `esize` bytes at LBA `lba`, with one entry from `first` to `last`.
    fn hostile_gpt(lba: u64, count: u32, esize: u32, first: u64, last: u64) -> Vec<u8> {
        let mut img = vec![0u8; 64 << 10];
        img[446 + 4] = 0xEE;
        img[510] = 0x55;
        img[511] = 0xAA;
        img[512..520].copy_from_slice(b"EFI PART");
        img[512 + 72..512 + 80].copy_from_slice(&lba.to_le_bytes());
        img[512 + 80..512 + 84].copy_from_slice(&count.to_le_bytes());
        img[512 + 84..512 + 88].copy_from_slice(&esize.to_le_bytes());
        img[1024] = 1;
        img[1024 + 32..1024 + 40].copy_from_slice(&first.to_le_bytes());
        img[1024 + 40..1024 + 48].copy_from_slice(&last.to_le_bytes());
        img
    }

    #[test]
    fn hostile_gpt_headers_ask_for_little_and_never_wrap() {
        let biggest = std::cell::Cell::new(0usize);
        for (lba, count, esize, first, last) in [
            (2, u32::MAX, 128, 34, 40),
            (2, 128, u32::MAX, 34, 40),
            (2, 1024, 4096, 34, 40),
            (2, 128, 200, 34, 40),
            (u64::MAX, 128, 128, 34, 40),
            (u64::MAX / 512 + 1, 128, 128, 34, 40),
            (2, 128, 128, u64::MAX, u64::MAX),
            (2, 128, 128, 0, u64::MAX),
            (2, 128, 128, 40, 34),
            (2, 128, 128, 1 << 60, (1 << 60) + 10),
        ] {
            let img = hostile_gpt(lba, count, esize, first, last);
            let inner = reader(&img);
            let read = |at: u64, len: usize| {
                assert!(len <= MAX_READ, "asked for {len} bytes");
                biggest.set(biggest.get().max(len));
                inner(at, len)
            };
            // a disk much larger than the bytes behind it reads as zeros
            for size in [img.len() as u64, 1 << 40, u64::MAX] {
                for p in partitions(&read, size).unwrap() {
                    assert!(p.len > 0 && p.start.checked_add(p.len).is_some_and(|e| e <= size));
                }
            }
        }
        assert!(biggest.get() <= 4096 * 1024);
        // the one sane header still gives its partition
        let img = hostile_gpt(2, 128, 128, 34, 40);
        let parts = partitions(&reader(&img), img.len() as u64).unwrap();
        assert_eq!(
            (parts[0].number, parts[0].start, parts[0].len),
            (1, 34 * 512, 7 * 512)
        );
    }
}
