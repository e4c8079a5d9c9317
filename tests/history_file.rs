//! History edits on the file-backed source: thirty-odd revisions with grows,
//! shrinks, discards and several fulls, pruned by retention rules and
//! merged (deltas folded forward, fulls replaced by synthetic fulls), with
//! every kept revision restoring to exactly its original bytes; an
//! interrupted removal is finished by the next writer; and a property test
//! over random histories and random removals.

mod common;

use std::collections::BTreeMap;

use proptest::prelude::*;
use rbdelta::archive::{state, StorageKind, VolumeDir};
use rbdelta::backup::{backup, BackupOptions};
use rbdelta::format::delta::{DeltaFile, DeltaWriter};
use rbdelta::history::{self, intent};
use rbdelta::progress::NoProgress;
use rbdelta::retention::{decide, Candidate, Retention};
use rbdelta::source::file::{resize, write_at, FileImage};
use rbdelta::verify::{verify_with, VerifyOptions};
use std::os::unix::fs::FileExt;

const BS: u64 = 4096;

struct Fx {
    dir: tempfile::TempDir,
    image: FileImage,
    vol: VolumeDir,
    /// Bytes of every revision at backup time.
    want: BTreeMap<String, Vec<u8>>,
}

fn fx() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let image = FileImage::new(dir.path().join("img")).unwrap();
    let vol = VolumeDir::open_or_create(&dir.path().join("archive"), "vm", BS).unwrap();
    Fx {
        dir,
        image,
        vol,
        want: BTreeMap::new(),
    }
}

fn snap(f: &mut Fx, full: bool) -> String {
    let o = BackupOptions {
        source_name: "test/vm".into(),
        full,
        ..Default::default()
    };
    let id = backup(&f.vol, &f.image, &o, &NoProgress)
        .unwrap()
        .revision
        .id;
    f.want
        .insert(id.clone(), std::fs::read(f.image.image_path()).unwrap());
    id
}

fn restored(f: &Fx, id: &str) -> Vec<u8> {
    common::restore_to_vec(&f.vol, id, f.dir.path())
}

/// Every revision left restores to its bytes and the archive verifies.
fn check_all(f: &Fx) {
    let revs = f.vol.revisions().unwrap();
    for r in &revs {
        assert!(
            restored(f, &r.id) == f.want[&r.id],
            "revision {} restores differently",
            r.short()
        );
    }
    let deep = VerifyOptions {
        deep: true,
        ..Default::default()
    };
    let report = verify_with(&f.vol, &deep, &NoProgress).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

fn op(f: &Fx, i: u64) {
    let size = std::fs::metadata(f.image.image_path()).unwrap().len();
    match i % 7 {
        0 => resize(&f.image, size + 9 * BS + 123).unwrap(),
        3 if size > 40 * BS => resize(&f.image, size - 13 * BS - 77).unwrap(),
        5 => write_at(
            &f.image,
            (i * 5 * BS) % size,
            &vec![0u8; (3 * BS) as usize][..(3 * BS).min(size - (i * 5 * BS) % size) as usize],
        )
        .unwrap(),
        _ => {
            let at = (i * 7919 * 13) % size;
            let len = ((i * 977) % (4 * BS)).max(1).min(size - at);
            write_at(&f.image, at, &vec![(i as u8) | 1; len as usize]).unwrap();
        }
    }
}

#[test]
fn thirty_revisions_with_resizes_pruned_and_merged_restore_exactly() {
    let mut f = fx();
    resize(&f.image, 64 * BS).unwrap();
    write_at(&f.image, 0, &vec![7u8; 20 * BS as usize]).unwrap();
    let mut ids = Vec::new();
    for i in 0..32u64 {
        op(&f, i);
        ids.push(snap(&mut f, i == 11 || i == 23));
    }
    check_all(&f);
    for id in [&ids[4], &ids[17]] {
        state::update(&f.vol.path, |s| {
            s.revisions
                .entry(id.clone())
                .or_default()
                .tags
                .push("keep".into())
        })
        .unwrap();
    }
    // Retention: the last 5 and the tagged ones.
    let st = state::VolumeState::load(&f.vol.state_path()).unwrap();
    let cands: Vec<Candidate> = f
        .vol
        .revisions()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, r)| Candidate {
            id: r.id.clone(),
            time: 1_000_000 + i as i64 * 3600,
            seq: r.manifest.seq,
            tags: st.get(&r.id).tags,
        })
        .collect();
    let rules = Retention {
        keep_last: Some(5),
        ..Default::default()
    };
    let remove: Vec<String> = decide(&cands, &rules, 2_000_000)
        .into_iter()
        .filter(|d| !d.keep)
        .map(|d| d.id)
        .collect();
    assert_eq!(remove.len(), 32 - 7);
    assert_eq!(
        history::remove_revisions(&f.vol, &remove, "remove", history::IfTagged::Remove).unwrap(),
        25
    );
    let left: Vec<String> = f
        .vol
        .revisions()
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    let mut expect = vec![ids[4].clone(), ids[17].clone()];
    expect.extend(ids[27..].iter().cloned());
    assert_eq!(left, expect);
    // The oldest kept revision needed its removed full: it has a synthetic one.
    assert_eq!(f.vol.storage_kind(&ids[4]).unwrap(), StorageKind::Full);
    check_all(&f);
    // Merge the middle away; a synthetic full for the newest.
    history::remove_revisions(
        &f.vol,
        &[ids[17].clone(), ids[28].clone()],
        "remove",
        history::IfTagged::Remove,
    )
    .unwrap();
    history::make_full(&f.vol, &ids[31]).unwrap();
    assert_eq!(f.vol.storage_kind(&ids[31]).unwrap(), StorageKind::Full);
    check_all(&f);
    assert!(
        history::remove_revisions(
            &f.vol,
            &[ids[31].clone()],
            "remove",
            history::IfTagged::Remove
        )
        .is_err(),
        "the newest stays"
    );
}

#[test]
fn an_interrupted_removal_is_finished_by_the_next_writer() {
    let mut f = fx();
    resize(&f.image, 32 * BS).unwrap();
    let mut ids = Vec::new();
    for i in 0..4u64 {
        op(&f, i * 2 + 1);
        ids.push(snap(&mut f, false));
    }
    // Stage and record the removal of revision 2, then "crash".
    let revs = f.vol.revisions().unwrap();
    let tmp = history::merge::stage(&f.vol, &revs[1], &revs[2]).unwrap();
    let i = intent::Intent {
        op: "remove".into(),
        remove: ids[1].clone(),
        child: Some(ids[2].clone()),
        staged: intent::Staged::Delta {
            tmp: tmp.file_name().unwrap().to_string_lossy().into_owned(),
        },
        // the same edit removes revision 3 next
        then: vec![ids[2].clone()],
        edit: Some("test".into()),
    };
    intent::write(&f.vol, &i).unwrap();
    check_all(&f); // nothing visible changed yet
    op(&f, 99);
    snap(&mut f, false); // the next backup finishes the whole edit first
    assert!(intent::read(&f.vol).unwrap().is_none());
    assert!(f
        .vol
        .revisions()
        .unwrap()
        .iter()
        .all(|r| r.id != ids[1] && r.id != ids[2]));
    f.want.remove(&ids[1]);
    f.want.remove(&ids[2]);
    check_all(&f);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_survive_random_removals(
        ops in proptest::collection::vec(0u64..1000, 6..14),
        fulls in proptest::collection::vec(any::<bool>(), 14),
        gone in proptest::collection::vec(any::<bool>(), 14),
    ) {
        let mut f = fx();
        resize(&f.image, 48 * BS + 100).unwrap();
        let mut ids = Vec::new();
        for (k, o) in ops.iter().enumerate() {
            op(&f, *o);
            ids.push(snap(&mut f, fulls[k] && k % 3 == 2));
        }
        let remove: Vec<String> = ids[..ids.len() - 1].iter().enumerate().filter(|(k, _)| gone[*k]).map(|(_, id)| id.clone()).collect();
        history::remove_revisions(&f.vol, &remove, "remove", history::IfTagged::Remove).unwrap();
        for id in &remove {
            f.want.remove(id);
        }
        check_all(&f);
    }
}

#[test]
fn full_every_with_synthetic_fulls_builds_the_full_from_the_archive() {
    let mut f = fx();
    resize(&f.image, 40 * BS).unwrap();
    write_at(&f.image, 0, &vec![3u8; 30 * BS as usize]).unwrap();
    let mut kinds = Vec::new();
    for i in 0..5u64 {
        op(&f, i * 3 + 1);
        let o = BackupOptions {
            source_name: "test/vm".into(),
            full_every: Some(rbdelta::config::FullEvery::Deltas(2)),
            synthetic_fulls: true,
            ..Default::default()
        };
        let r = backup(&f.vol, &f.image, &o, &NoProgress).unwrap();
        f.want.insert(
            r.revision.id.clone(),
            std::fs::read(f.image.image_path()).unwrap(),
        );
        if i == 3 {
            assert!(r.synthetic_full);
            assert!(
                r.bytes_read < 30 * BS,
                "a synthetic full reads only the delta from the source"
            );
        }
        kinds.push(f.vol.storage_kind(&r.revision.id).unwrap());
    }
    use StorageKind::*;
    assert_eq!(kinds, [Full, Delta, Delta, Full, Delta]);
    check_all(&f);
}

/// A case proptest found: shrink, grow, grow, with the shrunk revision
/// removed; the merged delta's straddling block must match its new size.
#[test]
fn removing_a_shrunk_revision_between_grows() {
    let mut f = fx();
    resize(&f.image, 48 * BS + 100).unwrap();
    let mut ids = Vec::new();
    for o in [11, 0, 11, 0, 738, 133, 7] {
        op(&f, o);
        ids.push(snap(&mut f, false));
    }
    // The newest delta stores the zero block straddling its parent's size.
    let newest = DeltaFile::open(&f.vol.delta_path(&ids[6])).unwrap();
    let straddle = 254_344 / BS;
    assert!(newest
        .entries
        .iter()
        .any(|e| e.block == straddle && e.zero && e.len as u64 == BS));
    // Archives from before that rule omit it: rewrite the newest delta
    // without it, as an old build wrote it. Reads stay the same.
    let old = f.vol.tmp_dir().join("old-style");
    let mut w = DeltaWriter::new(std::fs::File::create(&old).unwrap(), old.clone(), BS);
    for e in newest.entries.iter().filter(|e| e.block != straddle) {
        if e.zero {
            w.add_zero(e.block, e.len as u64, e.hash).unwrap();
        } else {
            let mut buf = vec![0u8; e.len as usize];
            newest.file.read_exact_at(&mut buf, e.offset).unwrap();
            w.add(e.block, &buf, e.hash).unwrap();
        }
    }
    w.finish(&newest.header).unwrap();
    std::fs::rename(&old, f.vol.delta_path(&ids[6])).unwrap();
    check_all(&f);
    // Removing the shrunk revision lists a zero entry of the old length
    // for that block below the newest; it still reads as zeros.
    history::remove_revisions(
        &f.vol,
        &[ids[4].clone()],
        "remove",
        history::IfTagged::Remove,
    )
    .unwrap();
    f.want.remove(&ids[4]);
    check_all(&f);
}

/// Readers take no lock: restores of the newest revision, each opening its
/// chain while another thread removes the oldest revisions one by one
/// (merging deltas forward, writing synthetic fulls), all read exactly
/// the newest revision's bytes; a chain that changes between two opens is
/// opened again (`Chain::open`), never read half old, half new.
#[test]
fn readers_opening_chains_during_removals_read_exactly() {
    let mut f = fx();
    resize(&f.image, 48 * BS).unwrap();
    write_at(&f.image, 0, &vec![3u8; 16 * BS as usize]).unwrap();
    let mut ids = Vec::new();
    for i in 0..24u64 {
        op(&f, i);
        ids.push(snap(&mut f, i == 9));
    }
    let newest = ids.last().unwrap().clone();
    let want = f.want[&newest].clone();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let reads = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let rev = f.vol.read_revision(&newest).unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Opening is the racy part: many cheap opens (the chain's
                // checksum from its indexes alone), and a whole restore now
                // and then.
                let chain = rbdelta::chain::Chain::open(&f.vol, &rev).unwrap();
                assert_eq!(
                    chain.image_checksum().unwrap(),
                    rev.manifest.checksum_bytes(),
                    "open {n} saw a mixed chain"
                );
                if n % 16 == 0 {
                    let scratch = tempfile::tempdir().unwrap();
                    let got = common::restore_to_vec(&f.vol, &newest, scratch.path());
                    assert!(got == want, "restore after open {n} read a mixed chain");
                }
                n += 1;
            }
            n
        });
        for id in &ids[..ids.len() - 1] {
            history::remove_revisions(
                &f.vol,
                std::slice::from_ref(id),
                "remove",
                history::IfTagged::Remove,
            )
            .unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap()
    });
    assert!(reads > 0);
    assert_eq!(f.vol.revisions().unwrap().len(), 1);
    f.want.retain(|id, _| *id == newest);
    check_all(&f);
}
