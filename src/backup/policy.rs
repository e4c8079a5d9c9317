//! The full-backup policy (`full-every:`): whether the next backup should
//! start a new chain with a full instead of adding a delta, judged from the
//! archive alone (age of the newest full, deltas since it, or their bytes
//! relative to the image size).

use crate::archive::{Revision, StorageKind, VolumeDir};
use crate::config::FullEvery;
use crate::error::Result;

/// Why a full is due under `policy`, or `None` when a delta is fine.
pub fn full_due(
    vol: &VolumeDir,
    revisions: &[Revision],
    policy: FullEvery,
    now: i64,
) -> Result<Option<String>> {
    let mut deltas = 0u32;
    let mut delta_bytes = 0u64;
    let mut newest_full = None;
    for r in revisions.iter().rev() {
        if vol.storage_kind(&r.id)? == StorageKind::Full {
            newest_full = Some(r);
            break;
        }
        deltas += 1;
        delta_bytes += std::fs::metadata(vol.delta_path(&r.id)).map_or(0, |m| m.len());
    }
    let Some(full) = newest_full else {
        return Ok(None); // no revision yet: the backup is a full anyway
    };
    Ok(match policy {
        FullEvery::Deltas(n) if deltas >= n => Some(format!(
            "{deltas} deltas since the last full (full-every: {n})"
        )),
        FullEvery::Ratio(r) => {
            let size = revisions.last().map_or(0, |l| l.manifest.size).max(1);
            let ratio = delta_bytes as f64 / size as f64;
            (ratio >= r).then(|| {
                format!(
                    "deltas since the last full hold {:.0}% of the image size (full-every: {:.0}%)",
                    ratio * 100.0,
                    r * 100.0
                )
            })
        }
        FullEvery::Age(d) => {
            let created = time::OffsetDateTime::parse(
                &full.manifest.created,
                &time::format_description::well_known::Rfc3339,
            )
            .map(|t| t.unix_timestamp())
            .unwrap_or(0);
            let age = now - created;
            (age >= d.as_secs() as i64).then(|| {
                format!(
                    "the last full is {} old (full-every: {})",
                    crate::config::units::format_duration(std::time::Duration::from_secs(
                        age.max(0) as u64
                    )),
                    crate::config::units::format_duration(d)
                )
            })
        }
        FullEvery::Deltas(_) => None,
    })
}
