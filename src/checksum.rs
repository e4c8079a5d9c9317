//! Block hashes and whole-image checksums.
//!
//! Both are BLAKE3. A block hash covers one block's bytes at a revision (the
//! last block is shorter when the image size is not a multiple of the block
//! size). The image checksum folds the size, the block size and every block
//! hash in order, so it depends only on the image content: a full, a chain of
//! deltas, a Ceph snapshot and a restored image all give the same value.

/// A 32-byte BLAKE3 digest.
pub type Hash = [u8; 32];

/// The key context of the image checksum (BLAKE3 derive-key mode).
pub const IMAGE_CHECKSUM_CONTEXT: &str = "rbdelta v1 image checksum";

/// Hash of one block's content.
pub fn block_hash(data: &[u8]) -> Hash {
    *blake3::hash(data).as_bytes()
}

/// Whether every byte is zero.
pub fn is_zero(data: &[u8]) -> bool {
    let chunks = data.chunks_exact(64);
    let rest = chunks.remainder();
    chunks
        .map(|c| c.iter().fold(0u8, |acc, &b| acc | b))
        .all(|x| x == 0)
        && rest.iter().all(|&b| b == 0)
}

/// Hashes of all-zero blocks of the two lengths an image can have (full
/// block and tail), computed once.
#[derive(Clone)]
pub struct ZeroHashes {
    block_size: u64,
    full: Hash,
}

impl ZeroHashes {
    pub fn new(block_size: u64) -> Self {
        let zeros = vec![0u8; block_size as usize];
        ZeroHashes {
            block_size,
            full: block_hash(&zeros),
        }
    }
    pub fn for_len(&self, len: u64) -> Hash {
        if len == self.block_size {
            self.full
        } else {
            block_hash(&vec![0u8; len as usize])
        }
    }
}

/// Streams block hashes, in block order, into an image checksum.
pub struct ImageChecksum {
    hasher: blake3::Hasher,
    size: u64,
    block_size: u64,
    next_block: u64,
}

impl ImageChecksum {
    pub fn new(size: u64, block_size: u64) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key(IMAGE_CHECKSUM_CONTEXT);
        hasher.update(&size.to_le_bytes());
        hasher.update(&(block_size as u32).to_le_bytes());
        ImageChecksum {
            hasher,
            size,
            block_size,
            next_block: 0,
        }
    }

    /// Adds the hash of the next block; blocks must come in order 0, 1, ...
    pub fn push(&mut self, block: u64, hash: &Hash) {
        debug_assert_eq!(block, self.next_block, "block hashes out of order");
        self.next_block = block + 1;
        self.hasher.update(hash);
    }

    pub fn blocks(&self) -> u64 {
        block_count(self.size, self.block_size)
    }

    /// The checksum of the blocks pushed so far (all of them, once done).
    pub fn finish(&self) -> Hash {
        debug_assert_eq!(
            self.next_block,
            self.blocks(),
            "image checksum missing blocks"
        );
        *self.hasher.finalize().as_bytes()
    }
}

/// Number of blocks of an image of `size` bytes.
pub fn block_count(size: u64, block_size: u64) -> u64 {
    size.div_ceil(block_size)
}

/// Length of block `block` in an image of `size` bytes (0 past the end).
pub fn block_len(block: u64, size: u64, block_size: u64) -> u64 {
    let start = block * block_size;
    if start >= size {
        0
    } else {
        (size - start).min(block_size)
    }
}

pub fn to_hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_hex(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Checksum of a whole image given as bytes (tests and small tools).
pub fn image_checksum_of(data: &[u8], block_size: u64) -> Hash {
    let mut sum = ImageChecksum::new(data.len() as u64, block_size);
    for (i, chunk) in data.chunks(block_size as usize).enumerate() {
        sum.push(i as u64, &block_hash(chunk));
    }
    sum.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let h = block_hash(b"abc");
        assert_eq!(from_hex(&to_hex(&h)), Some(h));
        assert_eq!(from_hex("zz"), None);
    }

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 1000];
        assert!(is_zero(&v[3..]));
        v[999] = 1;
        assert!(!is_zero(&v[3..]));
    }

    #[test]
    fn checksum_depends_on_size_and_content() {
        let a = image_checksum_of(&[0u8; 100], 64);
        let b = image_checksum_of(&[0u8; 101], 64);
        let mut c = vec![0u8; 100];
        c[70] = 1;
        assert_ne!(a, b);
        assert_ne!(a, image_checksum_of(&c, 64));
        assert_eq!(block_len(1, 100, 64), 36);
        assert_eq!(block_len(2, 100, 64), 0);
    }
}
