//! The digest of the parts of a config that every node of a shared fleet
//! must agree on: the `volumes:` and `nodes:` sections. A node's heartbeat
//! lease carries it ([`crate::fleet::members`]), and nodes count as peers
//! only the holders whose digest is their own: a node started with another
//! volume list would otherwise take a share of volumes it does not back up.
//!
//! The digest is of the sections as written, not of what they mean after
//! `defaults:` are applied: the YAML is read again as plain data, and
//! mappings are encoded with their keys sorted, so comments, layout and key
//! order do not change it, but any other difference in the two sections
//! does (`lease: 30s` and no `lease:` differ). Nothing else in the file
//! (the archive path, the Ceph client, `defaults:`) counts, so nodes may
//! mount the archive at different paths.

use crate::error::{Error, Result};
use crate::format::CONFIG_DIGEST_HEX;

/// What the digest is over, before the sections (a version for the
/// encoding, so a change to it never collides with an old digest).
const DOMAIN: &[u8] = b"rbdelta config sections 1\n";

/// The digest of `text`'s `volumes:` and `nodes:` sections:
/// [`CONFIG_DIGEST_HEX`] lowercase hex digits of BLAKE3 over [`DOMAIN`]
/// and the canonical encoding of `{"nodes": .., "volumes": ..}` (a
/// missing section is `null`).
pub(super) fn sections_digest(text: &str, origin: &str) -> Result<String> {
    let doc: serde_json::Value = serde_saphyr::from_str(text)
        .map_err(|e| Error::Config(format!("{origin}: cannot read as plain YAML data: {e}")))?;
    let mut out = Vec::new();
    out.extend_from_slice(DOMAIN);
    for key in ["nodes", "volumes"] {
        canonical(key, &doc[key], &mut out);
    }
    Ok(blake3::hash(&out).to_hex()[..CONFIG_DIGEST_HEX].to_string())
}

/// Appends `key` and `v` to `out`: JSON, with every mapping's keys in
/// byte order.
fn canonical(key: &str, v: &serde_json::Value, out: &mut Vec<u8>) {
    out.extend_from_slice(serde_json::Value::from(key).to_string().as_bytes());
    out.push(b':');
    value(v, out);
    out.push(b'\n');
}

fn value(v: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match v {
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                value(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::from(k.as_str()).to_string().as_bytes());
                out.push(b':');
                value(&map[k], out);
            }
            out.push(b'}');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::sections_digest;

    fn d(text: &str) -> String {
        sections_digest(text, "t").unwrap()
    }

    /// Layout, comments, key order and the other sections leave the digest
    /// alone; a volume, a key of one, or the lease changes it.
    #[test]
    fn only_the_two_sections_count() {
        let base = "archive: /a\nnodes:\n  lease-pool: rbd\n  lease: 30s\nvolumes:\n  - name: v\n    pool: rbd\n    image: i\n";
        let same = [
            "archive: /elsewhere\nceph:\n  id: other\ndefaults:\n  parallel: 9\nnodes:\n  lease: 30s\n  lease-pool: rbd\nvolumes:\n  - {image: i, pool: rbd, name: v}  # flow\n",
            "# comment\nvolumes:\n- pool: rbd\n  name: v\n  image: i\nnodes: {lease-pool: rbd, lease: 30s}\narchive: /a\n",
        ];
        for s in same {
            assert_eq!(d(base), d(s), "{s}");
        }
        let other = [
            "archive: /a\nnodes:\n  lease-pool: rbd\nvolumes:\n  - name: v\n    pool: rbd\n    image: i\n",
            "archive: /a\nnodes:\n  lease-pool: rbd\n  lease: 30s\nvolumes:\n  - name: v\n    pool: rbd\n    image: j\n",
            "archive: /a\nnodes:\n  lease-pool: rbd\n  lease: 30s\nvolumes:\n  - name: v\n    pool: rbd\n    image: i\n    schedule: \"0 * * * * *\"\n",
            "archive: /a\nnodes:\n  lease-pool: rbd\n  lease: 30s\nvolumes: []\n",
        ];
        for s in other {
            assert_ne!(d(base), d(s), "{s}");
        }
        assert_eq!(d(base).len(), crate::format::CONFIG_DIGEST_HEX);
        assert!(d(base).bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
