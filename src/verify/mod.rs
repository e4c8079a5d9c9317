//! Verifying an archive: every manifest against its id, every stored block
//! against its hash, every hole of a full against zero, and every revision's
//! image checksum against the block hashes its chain resolves to; with
//! `deep`, every revision's image checksum recomputed from its data as a
//! restore would read it; with a [`Subset`], only one slice of the stored
//! blocks (rotating scrubs); and, in [`source`], a revision against the Ceph
//! snapshot it was read from.
//!
//! Verification reads each data file once, however many revisions share it,
//! and reports every problem it finds (revision, byte range, what) rather
//! than stopping at the first. It then records trust: a revision whose data
//! fails is distrusted (so it is never a backup's base again), and a full
//! verify that finds nothing marks the revisions it covered verified.

pub(crate) mod blocks;
pub mod source;
pub mod subset;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::archive::oplog::Operation;
use crate::archive::state::{self, Trust};
use crate::archive::{now_rfc3339, Revision, VolumeDir};
use crate::buffers::BufferPool;
use crate::chain::{Chain, Source};
use crate::checksum::to_hex;
use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
pub use subset::Subset;

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The revision whose stored data or manifest is bad.
    pub revision: String,
    /// Image byte range concerned, when it is a block problem.
    pub range: Option<(u64, u64)>,
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.range {
            Some((a, b)) => write!(
                f,
                "revision {}: bytes {a}..{b}: {}",
                self.revision, self.what
            ),
            None => write!(f, "revision {}: {}", self.revision, self.what),
        }
    }
}

/// What to verify and how thoroughly.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Only this revision and what it depends on.
    pub only: Option<Revision>,
    /// Only this slice of the stored blocks.
    pub subset: Option<Subset>,
    /// Also recompute each revision's image checksum from its data.
    pub deep: bool,
    /// Set to stop (the daemon's shutdown): the verify ends with
    /// [`Error::Cancelled`], reporting nothing about what it did not read.
    pub cancel: Option<Arc<AtomicBool>>,
}

#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub revisions: usize,
    pub bytes_read: u64,
    /// Stored blocks whose data was read and hashed.
    pub blocks_checked: u64,
    pub problems: Vec<Problem>,
    /// Revisions found unusable (now distrusted).
    pub distrusted: Vec<String>,
    /// Revisions marked verified (full, clean verifies only).
    pub verified: Vec<String>,
}

/// Verifies revision `only` (and what it depends on), or all revisions.
pub fn verify(
    vol: &VolumeDir,
    only: Option<&Revision>,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let opts = VerifyOptions {
        only: only.cloned(),
        ..Default::default()
    };
    verify_with(vol, &opts, progress)
}

/// Verifies as `opts` says and records trust. Takes no lock: every
/// revision is checked through its chain, opened as one snapshot
/// ([`Chain::open`]), so a backup, prune or merge may run meanwhile; a
/// revision they remove before its chain is open is skipped, not reported.
pub fn verify_with(
    vol: &VolumeDir,
    opts: &VerifyOptions,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let detail = match (opts.subset, opts.deep) {
        (Some(s), true) => Some(format!("subset {s}, deep")),
        (Some(s), false) => Some(format!("subset {s}")),
        (None, true) => Some("deep".to_string()),
        (None, false) => None,
    };
    let op = Operation::start(
        vol.log_path(),
        "verify",
        opts.only.as_ref().map(|r| r.id.clone()),
        detail,
    )?;
    op.end(verify_locked(vol, opts, progress), |r, rec| {
        rec.bytes_read = Some(r.bytes_read);
        if let Some(first) = r.problems.first() {
            rec.outcome = Some("damaged".into());
            rec.error = Some(format!("{} problem(s); first: {first}", r.problems.len()));
        }
    })
}

fn verify_locked(
    vol: &VolumeDir,
    opts: &VerifyOptions,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let (revisions, mut problems) = read_manifests(vol)?;
    report.problems.append(&mut problems);
    let targets: Vec<&Revision> = match &opts.only {
        Some(r) => vec![r],
        None => revisions.iter().collect(),
    };
    // Each target's image checksum from its chain's block hashes, and the
    // data files it needs (read once below, however many targets share them).
    let mut needed: BTreeMap<String, (String, usize)> = BTreeMap::new();
    let mut chains: BTreeMap<String, Chain> = BTreeMap::new();
    let mut gone = BTreeSet::new();
    for r in &targets {
        let chain = match Chain::open(vol, r) {
            Ok(chain) => chain,
            Err(Error::Removed(_)) => {
                gone.insert(r.id.clone()); // pruned or merged meanwhile
                continue;
            }
            Err(e) => {
                report.revisions += 1;
                report
                    .problems
                    .push(problem(&r.id, format!("cannot open its chain: {e}")));
                continue;
            }
        };
        report.revisions += 1;
        for (j, l) in chain.links.iter().enumerate() {
            needed
                .entry(l.revision.id.clone())
                .or_insert_with(|| (r.id.clone(), j));
        }
        match chain.image_checksum() {
            Ok(sum) if sum == r.manifest.checksum_bytes() => {}
            Ok(sum) => report.problems.push(problem(
                &r.id,
                format!(
                    "image checksum from its blocks is {} but the manifest says {}",
                    to_hex(&sum),
                    r.manifest.checksum
                ),
            )),
            Err(e) => report.problems.push(problem(&r.id, e.to_string())),
        }
        chains.insert(r.id.clone(), chain);
    }
    crate::fault::pause("verify: chains open");
    if let (Some(only), false) = (&opts.only, gone.is_empty()) {
        return Err(Error::Removed(format!(
            "revision {} of volume {} was removed (by a prune or merge) before it could be verified",
            only.id, vol.name
        )));
    }
    let divisor = opts.subset.map_or(1, |s| u64::from(s.m));
    let link = |(chain, j): &(String, usize)| &chains[chain].links[*j];
    let mut total: u64 = needed
        .values()
        .map(|at| blocks::data_len(link(at)))
        .sum::<u64>()
        / divisor;
    if opts.deep {
        total += chains.values().map(Chain::size).sum::<u64>();
    }
    progress.begin("verify", total);
    let never = AtomicBool::new(false);
    let cancel = opts.cancel.as_deref().unwrap_or(&never);
    for (id, at) in &needed {
        match blocks::check_link(link(at), vol.block_size, opts.subset, progress, cancel) {
            Err(e @ Error::Cancelled(_)) => return Err(e),
            Ok(fc) => {
                report.bytes_read += fc.bytes_read;
                report.blocks_checked += fc.blocks_checked;
                report.problems.extend(fc.problems);
            }
            Err(e) => report.problems.push(problem(id, e.to_string())),
        }
    }
    if opts.deep {
        for (id, chain) in &chains {
            let rev = targets
                .iter()
                .find(|r| r.id == *id)
                .expect("chain of a target");
            report
                .problems
                .extend(deep(chain, rev, progress, cancel, &mut report.bytes_read)?);
        }
    }
    progress.end();
    let targets: Vec<&Revision> = targets
        .into_iter()
        .filter(|t| !gone.contains(&t.id))
        .collect();
    record_trust(vol, &targets, &chains, opts, &mut report)?;
    Ok(report)
}

fn problem(revision: &str, what: String) -> Problem {
    Problem {
        revision: revision.to_string(),
        range: None,
        what,
    }
}

/// Reads `rev` as a restore would and compares the image checksum of the
/// bytes with the manifest.
fn deep(
    chain: &Chain,
    rev: &Revision,
    progress: &dyn Progress,
    cancel: &AtomicBool,
    bytes_read: &mut u64,
) -> Result<Vec<Problem>> {
    let lanes = crate::restore::reader::LANES;
    let pool = BufferPool::new(crate::restore::reader::buffers(lanes) + 1);
    let mut emit = |p: crate::restore::reader::Piece| {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled(format!("verify of {} stopped", rev.id)));
        }
        if let crate::restore::reader::Piece::Data { data, .. } = p {
            progress.advance(data.len() as u64);
            pool.put(data);
        }
        Ok(())
    };
    match crate::restore::reader::read_blocks(chain, true, false, None, lanes, &pool, &mut emit) {
        Ok(o) => {
            *bytes_read += o.bytes_read;
            let mut out: Vec<Problem> = o
                .bad
                .iter()
                .map(|r| Problem {
                    revision: rev.id.clone(),
                    range: Some((r.start, r.end)),
                    what: "reads as corrupt through its chain".into(),
                })
                .collect();
            if o.bad.is_empty() && o.checksum != rev.manifest.checksum_bytes() {
                out.push(problem(
                    &rev.id,
                    format!(
                        "image checksum of its data is {} but the manifest says {}",
                        to_hex(&o.checksum),
                        rev.manifest.checksum
                    ),
                ));
            }
            Ok(out)
        }
        Err(e @ Error::Cancelled(_)) => Err(e),
        Err(e) => Ok(vec![problem(&rev.id, format!("deep read failed: {e}"))]),
    }
}

/// Distrusts every target a problem makes unrestorable, and marks the
/// others verified when the whole archive was checked.
fn record_trust(
    vol: &VolumeDir,
    targets: &[&Revision],
    chains: &BTreeMap<String, Chain>,
    opts: &VerifyOptions,
    report: &mut VerifyReport,
) -> Result<()> {
    let bs = vol.block_size;
    let mut bad: BTreeMap<String, String> = BTreeMap::new();
    for t in targets {
        let Some(chain) = chains.get(&t.id) else {
            bad.insert(t.id.clone(), "its chain cannot be opened".into());
            continue;
        };
        for p in &report.problems {
            let in_chain = chain.links.iter().position(|l| l.revision.id == p.revision);
            let hit = match (in_chain, p.range) {
                (None, _) => false,
                // A whole-file or manifest problem of a link, or of the target.
                (Some(_), None) => true,
                // A bad block: only if the target reads it from that link.
                (Some(link), Some((start, _))) => match chain.resolve(start / bs) {
                    Ok(r) => {
                        matches!(r.source, Source::Stored { link: l, .. } if l == link)
                            || p.revision == t.id
                    }
                    Err(_) => true,
                },
            };
            if hit {
                bad.entry(t.id.clone()).or_insert_with(|| p.to_string());
            }
        }
    }
    let complete = opts.subset.is_none();
    let now = now_rfc3339();
    state::update(&vol.path, |s| {
        for t in targets {
            // Removed by a prune or merge since: no entry comes back for it.
            if !vol.manifest_path(&t.id).exists() {
                continue;
            }
            let entry = s.revisions.entry(t.id.clone()).or_default();
            match bad.get(&t.id) {
                Some(reason) => {
                    entry.trust = Trust::Distrusted {
                        reason: reason.clone(),
                    }
                }
                None if complete => entry.trust = Trust::Verified { at: now.clone() },
                None => {}
            }
        }
    })?;
    report.distrusted = bad.keys().cloned().collect();
    if complete {
        report.verified = targets
            .iter()
            .filter(|t| !bad.contains_key(&t.id))
            .map(|t| t.id.clone())
            .collect();
    }
    Ok(())
}

/// Reads every manifest, reporting (not failing on) bad ones.
fn read_manifests(vol: &VolumeDir) -> Result<(Vec<Revision>, Vec<Problem>)> {
    let dir = vol.revisions_dir();
    let mut revs = Vec::new();
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(&dir).at(&dir)? {
        let name = entry.at(&dir)?.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        match vol.read_revision(id) {
            Ok(r) => revs.push(r),
            Err(e) if e.is_not_found() => {} // removed since the listing
            Err(e) => problems.push(Problem {
                revision: id.to_string(),
                range: None,
                what: e.to_string(),
            }),
        }
    }
    revs.sort_by_key(|r| r.manifest.seq);
    Ok((revs, problems))
}
