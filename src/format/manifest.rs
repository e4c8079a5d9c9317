//! Revision manifests (`revisions/<id>.json`): the immutable identity of a
//! revision. The revision id is the BLAKE3 of the manifest file's exact bytes,
//! so a manifest cannot change without changing its id, and every reader can
//! check that a manifest is the one its name promises.
//!
//! The manifest holds what a revision *is* (content checksum, size, time,
//! snapshot, place in history), never how it is stored: merging or re-basing
//! deltas later rewrites data files but leaves ids and manifests alone.

use serde::{Deserialize, Serialize};

use crate::checksum::{self, Hash};

/// The identity record of one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version ([`super::FORMAT_VERSION`]).
    pub format: u32,
    /// Volume name (the archive subdirectory).
    pub volume: String,
    /// Where the data came from, `pool/image`.
    pub source: String,
    /// Position in the volume's history: 1 for the first revision, previous + 1 after.
    pub seq: u64,
    /// Creation time, RFC 3339 in UTC with nanoseconds.
    pub created: String,
    /// Image size in bytes at this revision.
    pub size: u64,
    /// Block size of the block hashes.
    pub block_size: u64,
    /// Hex image checksum (see `checksum.rs`).
    pub checksum: String,
    /// Name of the Ceph snapshot this revision was read from.
    pub snapshot: String,
    /// Id of the newest revision when this one was taken (None for the first).
    pub previous: Option<String>,
    /// log2 of the source image's object size (0 when unknown), so a restore
    /// can recreate the image's layout even when the source is gone.
    pub order: u8,
    /// librbd feature bits of the source image (0 when unknown).
    pub features: u64,
}

impl Manifest {
    /// The manifest's canonical file bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("manifest serializes");
        out.push(b'\n');
        out
    }

    /// The id of a manifest with these file bytes.
    pub fn id_of(bytes: &[u8]) -> Hash {
        checksum::block_hash(bytes)
    }

    pub fn decode(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if m.format != super::FORMAT_VERSION {
            return Err(format!("unsupported manifest format {}", m.format));
        }
        if m.previous
            .as_deref()
            .is_some_and(|p| checksum::from_hex(p).is_none())
        {
            return Err("manifest previous is not a 64-hex-digit revision id".into());
        }
        if checksum::from_hex(&m.checksum).is_none() {
            return Err("manifest checksum is not 64 hex digits".into());
        }
        // Readers cut this string into columns: it must be the RFC 3339
        // time it claims to be (and so plain ASCII).
        if time::OffsetDateTime::parse(&m.created, &time::format_description::well_known::Rfc3339)
            .is_err()
        {
            return Err(format!("manifest time {:?} is not RFC 3339", m.created));
        }
        if !super::valid_block_size(m.block_size) {
            return Err(format!("invalid block size {}", m.block_size));
        }
        Ok(m)
    }

    pub fn checksum_bytes(&self) -> Hash {
        checksum::from_hex(&self.checksum).expect("validated on decode")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: 1,
            volume: "vm1".into(),
            source: "rbd/vm1".into(),
            seq: 1,
            created: "2026-11-25T12:00:00.000000001Z".into(),
            size: 1 << 20,
            block_size: 65536,
            checksum: "ab".repeat(32),
            snapshot: "rbdelta-x".into(),
            previous: None,
            order: 22,
            features: 61,
        }
    }

    /// The exact bytes of a known manifest, and its id. Any change to the
    /// serialisation changes every revision id of every existing archive,
    /// so it must fail here first.
    const SAMPLE_BYTES: &str = r#"{
  "format": 1,
  "volume": "vm1",
  "source": "rbd/vm1",
  "seq": 1,
  "created": "2026-11-25T12:00:00.000000001Z",
  "size": 1048576,
  "block_size": 65536,
  "checksum": "abababababababababababababababababababababababababababababababab",
  "snapshot": "rbdelta-x",
  "previous": null,
  "order": 22,
  "features": 61
}
"#;
    // (cross-checked with the reference BLAKE3 of these bytes)
    const SAMPLE_ID: &str = "cb1c69d515909716ed4b84a3eb91af8066b902ba1f65481fbc9f6dfa2551678e";

    #[test]
    fn a_known_manifest_has_pinned_bytes_and_id() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(String::from_utf8(bytes.clone()).unwrap(), SAMPLE_BYTES);
        assert_eq!(checksum::to_hex(&Manifest::id_of(&bytes)), SAMPLE_ID);
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        let mut other = m.clone();
        other.size += 1;
        assert_ne!(Manifest::id_of(&bytes), Manifest::id_of(&other.encode()));
    }

    #[test]
    fn a_manifest_whose_time_is_not_rfc3339_is_rejected() {
        for bad in ["2026-11-25 12:00:00", "2026-11-25T12:00:00\u{e9}Z", ""] {
            let text = SAMPLE_BYTES.replace("2026-11-25T12:00:00.000000001Z", bad);
            let err = Manifest::decode(text.as_bytes()).unwrap_err();
            assert!(err.contains("not RFC 3339"), "{bad:?}: {err}");
        }
    }
}
