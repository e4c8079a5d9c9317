//! The on-disk format, version 1: every magic number, fixed size and file
//! name rule in one place, and the codecs of each file kind.
//!
//! NEVER change a constant here without bumping [`FORMAT_VERSION`], adding a
//! reader for the old version and a change-log entry in docs/FORMAT.md: old
//! archives must stay readable. Readers reject unknown magics and versions.

pub mod delta;
pub mod full_index;
pub mod index;
pub mod index_pages;
pub mod manifest;
pub mod rbd_diff;

/// Version of the archive format written by this build.
pub const FORMAT_VERSION: u32 = 1;

/// Default block size: the unit of block checksums, diffs and delta storage.
pub const DEFAULT_BLOCK_SIZE: u64 = 64 * 1024;
/// Block sizes a volume may use (powers of two in this range).
pub const MIN_BLOCK_SIZE: u64 = 4 * 1024;
pub const MAX_BLOCK_SIZE: u64 = 4 * 1024 * 1024;

/// Magic of a delta file (`data/<id>.delta`).
pub const DELTA_MAGIC: [u8; 8] = *b"RBDDELTA";
/// Magic of a full's block index (`data/<id>.fidx`).
pub const FULL_INDEX_MAGIC: [u8; 8] = *b"RBDFIDX\0";

/// Size of the delta header; block data starts at [`DELTA_DATA_START`].
pub const DELTA_HEADER_LEN: usize = 128;
/// Block data in a delta starts here (page aligned, for direct I/O later).
pub const DELTA_DATA_START: u64 = 4096;
/// Size of the full index header.
pub const FULL_INDEX_HEADER_LEN: usize = 64;
/// Size of one delta index entry.
pub const DELTA_ENTRY_LEN: usize = 56;
/// Size of one full index entry.
pub const FULL_ENTRY_LEN: usize = 40;
/// Trailing BLAKE3 of a delta's header + index, or of a full index.
pub const TRAILER_LEN: usize = 32;

/// Delta entry flag: the block is all zeros and has no stored data.
pub const FLAG_ZERO: u32 = 1;

/// The volume header file at the top of each volume directory.
pub const VOLUME_FILE: &str = "rbdelta-volume.json";
/// Name written in the volume header's `format` field.
pub const VOLUME_FORMAT_NAME: &str = "rbdelta-volume";
/// Hash algorithm named in the volume header.
pub const HASH_NAME: &str = "blake3";

const _: () = assert!(DELTA_HEADER_LEN as u64 <= DELTA_DATA_START);
const _: () = assert!(DELTA_ENTRY_LEN == 8 + 8 + 4 + 4 + 32);
const _: () = assert!(FULL_ENTRY_LEN == 8 + 32);

/// Little-endian field access on fixed headers.
pub(crate) fn le_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().unwrap())
}
pub(crate) fn le_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().unwrap())
}
pub(crate) fn hash_at(buf: &[u8], at: usize) -> crate::checksum::Hash {
    buf[at..at + 32].try_into().unwrap()
}

/// Checks the prefix every binary file of the format shares (magic at 0,
/// version at 8, block size at 12) and returns the block size. `what` names
/// the file kind in errors.
pub(crate) fn check_prefix(
    buf: &[u8],
    magic: &[u8; 8],
    what: &str,
) -> std::result::Result<u64, String> {
    if buf[0..8] != magic[..] {
        return Err(format!("not a {what} (bad magic)"));
    }
    let version = le_u32(buf, 8);
    if version != FORMAT_VERSION {
        return Err(format!("unsupported {what} version {version}"));
    }
    let block_size = le_u32(buf, 12) as u64;
    if !valid_block_size(block_size) {
        return Err(format!("invalid block size {block_size}"));
    }
    Ok(block_size)
}

/// Whether `bs` is an allowed block size.
pub fn valid_block_size(bs: u64) -> bool {
    bs.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs)
}

/// The first word of a node's heartbeat lease cookie (`<this> <fleet id>
/// <config digest> <node>`, see [`crate::fleet::members`]): a holder whose
/// cookie does not start with it holds no rbdelta node lease.
pub const NODE_LEASE_FORMAT: &str = "rbdelta-node/1";
/// Hex digits of the config digest a node's lease carries.
pub const CONFIG_DIGEST_HEX: usize = 16;
