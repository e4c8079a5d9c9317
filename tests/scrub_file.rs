//! Scrubbing on the file-backed source: rotating subsets cover every stored
//! block exactly once, damage moves revisions to distrusted (and a
//! distrusted base forces a full), a deep verify reads revisions as a
//! restore would, and `--source` catches an archive that disagrees with
//! its snapshot.

mod common;

use common::flip_byte;
use rbdelta::archive::state::{Trust, VolumeState};
use rbdelta::archive::VolumeDir;
use rbdelta::backup::{backup, BackupOptions, Mode};
use rbdelta::format::delta::DeltaFile;
use rbdelta::progress::NoProgress;
use rbdelta::source::file::{resize, write_at, FileImage};
use rbdelta::source::SourceImage;
use rbdelta::verify::source::verify_source;
use rbdelta::verify::{verify_with, Subset, VerifyOptions};

const BS: u64 = 4096;

struct Fx {
    dir: tempfile::TempDir,
    image: FileImage,
    vol: VolumeDir,
}

fn fx() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let image = FileImage::new(dir.path().join("img")).unwrap();
    let vol = VolumeDir::open_or_create(&dir.path().join("archive"), "vm", BS).unwrap();
    Fx { dir, image, vol }
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn run_backup(f: &Fx) -> rbdelta::backup::BackupReport {
    let o = BackupOptions {
        source_name: "test/vm".into(),
        ..Default::default()
    };
    backup(&f.vol, &f.image, &o, &NoProgress).unwrap()
}

/// A full of 1 MiB (256 blocks) and three deltas, one of them a grow.
fn history(f: &Fx) -> Vec<String> {
    resize(&f.image, 1 << 20).unwrap();
    write_at(&f.image, 0, &bytes(1 << 20, 1)).unwrap();
    let mut ids = vec![run_backup(f).revision.id];
    write_at(&f.image, 10 * BS, &bytes(3 * BS as usize, 2)).unwrap();
    write_at(&f.image, 200 * BS + 7, &bytes(100, 3)).unwrap();
    ids.push(run_backup(f).revision.id);
    resize(&f.image, (1 << 20) + 40 * BS).unwrap();
    write_at(&f.image, 260 * BS, &bytes(2 * BS as usize, 4)).unwrap();
    ids.push(run_backup(f).revision.id);
    write_at(&f.image, 70 * BS, &bytes(BS as usize, 5)).unwrap();
    ids.push(run_backup(f).revision.id);
    ids
}

fn trust(f: &Fx, id: &str) -> Trust {
    VolumeState::load(&f.vol.state_path())
        .unwrap()
        .get(id)
        .trust
}

#[test]
fn subset_scrubs_cover_every_stored_block_once_and_find_each_corruption_once() {
    let f = fx();
    let ids = history(&f);
    let all = verify_with(&f.vol, &VerifyOptions::default(), &NoProgress).unwrap();
    assert!(all.problems.is_empty(), "{:?}", all.problems);
    assert!(all.blocks_checked > 256);
    let m = 3;
    let per: Vec<u64> = (1..=m)
        .map(|n| {
            let o = VerifyOptions {
                subset: Some(Subset { n, m }),
                ..Default::default()
            };
            verify_with(&f.vol, &o, &NoProgress).unwrap().blocks_checked
        })
        .collect();
    assert_eq!(per.iter().sum::<u64>(), all.blocks_checked, "{per:?}");
    assert!(per.iter().all(|&c| c > 0), "{per:?}");

    // one bad block in the full (block 130) and one in the second delta
    let full = f.vol.full_path(&ids[0]);
    flip_byte(&full, 130 * BS + 9);
    let delta_path = f.vol.delta_path(&ids[2]);
    let entry = DeltaFile::open(&delta_path)
        .unwrap()
        .entries
        .into_iter()
        .find(|e| !e.zero)
        .unwrap();
    flip_byte(&delta_path, entry.offset + 1);
    let mut found = Vec::new();
    for n in 1..=m {
        let o = VerifyOptions {
            subset: Some(Subset { n, m }),
            ..Default::default()
        };
        for p in verify_with(&f.vol, &o, &NoProgress).unwrap().problems {
            found.push((n, p.range.unwrap().0 / BS));
        }
    }
    found.sort();
    let slice = |b: u64| (b / 64 % u64::from(m)) as u32 + 1;
    let mut want = vec![(slice(130), 130), (slice(entry.block), entry.block)];
    want.sort();
    assert_eq!(found, want);
}

#[test]
fn damage_distrusts_exactly_the_revisions_that_read_it_and_forces_a_full() {
    let f = fx();
    let ids = history(&f);
    // Block 70 of the full: the last revision rewrote it, the others read it.
    flip_byte(&f.vol.full_path(&ids[0]), 70 * BS + 3);
    let r = verify_with(&f.vol, &VerifyOptions::default(), &NoProgress).unwrap();
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    let mut distrusted = r.distrusted.clone();
    distrusted.sort();
    let mut want = ids[..3].to_vec();
    want.sort();
    assert_eq!(distrusted, want);
    assert!(matches!(trust(&f, &ids[0]), Trust::Distrusted { .. }));
    assert!(
        matches!(trust(&f, &ids[3]), Trust::Verified { .. }),
        "the newest rewrote the block"
    );
    // deep reading finds the same block through every chain that uses it
    let deep = VerifyOptions {
        deep: true,
        ..Default::default()
    };
    let r = verify_with(&f.vol, &deep, &NoProgress).unwrap();
    let through_chains = r
        .problems
        .iter()
        .filter(|p| p.what.contains("through its chain"))
        .count();
    assert_eq!(through_chains, 3, "{:?}", r.problems);

    // Now damage the newest revision's own block: the next backup cannot
    // use it as a base and writes a full.
    let newest = f.vol.delta_path(&ids[3]);
    let e = DeltaFile::open(&newest)
        .unwrap()
        .entries
        .into_iter()
        .find(|e| !e.zero)
        .unwrap();
    flip_byte(&newest, e.offset);
    verify_with(&f.vol, &VerifyOptions::default(), &NoProgress).unwrap();
    assert!(matches!(trust(&f, &ids[3]), Trust::Distrusted { .. }));
    write_at(&f.image, 0, &bytes(100, 9)).unwrap();
    assert_eq!(run_backup(&f).mode, Mode::Full);
}

#[test]
fn source_check_passes_and_catches_an_archive_that_disagrees_with_its_snapshot() {
    let f = fx();
    resize(&f.image, 512 * 1024).unwrap();
    write_at(&f.image, 4096, &bytes(300_000, 7)).unwrap();
    let rev = run_backup(&f).revision;
    let snap = f
        .image
        .open_snapshot(&rev.manifest.snapshot)
        .unwrap()
        .unwrap();
    let r = verify_source(&f.vol, &rev, snap.as_ref(), &NoProgress).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.verified, vec![rev.id.clone()]);
    drop(snap);
    // The snapshot says something else than what the archive stored.
    flip_byte(
        &f.dir.path().join("img/snaps").join(&rev.manifest.snapshot),
        5 * BS + 1,
    );
    let snap = f
        .image
        .open_snapshot(&rev.manifest.snapshot)
        .unwrap()
        .unwrap();
    let r = verify_source(&f.vol, &rev, snap.as_ref(), &NoProgress).unwrap();
    assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
    assert_eq!(r.problems[0].range, Some((5 * BS, 6 * BS)));
    assert!(r.problems[1].what.contains("image checksum"));
    assert!(matches!(trust(&f, &rev.id), Trust::Distrusted { .. }));
}

#[test]
fn repair_takes_good_copies_from_the_archive_and_the_snapshot_and_lists_the_rest() {
    let f = fx();
    resize(&f.image, 512 * 1024).unwrap();
    write_at(&f.image, 0, &bytes(40 * BS as usize, 1)).unwrap();
    let r1 = run_backup(&f).revision.id;
    write_at(&f.image, 60 * BS, &bytes(BS as usize, 2)).unwrap(); // only ever in r2
    let r2 = run_backup(&f).revision.id;
    write_at(&f.image, 60 * BS, &bytes(BS as usize, 3)).unwrap();
    let o = BackupOptions {
        source_name: "test/vm".into(),
        full: true,
        ..Default::default()
    };
    backup(&f.vol, &f.image, &o, &NoProgress).unwrap(); // a full: blocks 0..40 as in r1
    write_at(&f.image, 70 * BS, &bytes(BS as usize, 4)).unwrap(); // only in r4 and its snapshot
    let r4 = run_backup(&f).revision.id;

    flip_byte(&f.vol.full_path(&r1), 5 * BS + 17);
    let d2 = DeltaFile::open(&f.vol.delta_path(&r2)).unwrap();
    let e2 = d2.entries.iter().find(|e| e.block == 60).copied().unwrap();
    flip_byte(&f.vol.delta_path(&r2), e2.offset + 3);
    let d4 = DeltaFile::open(&f.vol.delta_path(&r4)).unwrap();
    let e4 = d4.entries.iter().find(|e| e.block == 70).copied().unwrap();
    flip_byte(&f.vol.delta_path(&r4), e4.offset + 9);

    let rep = rbdelta::repair::repair(&f.vol, Some(&f.image), &NoProgress).unwrap();
    let fixed: Vec<(String, u64)> = rep
        .fixed
        .iter()
        .map(|x| (x.revision.clone(), x.block))
        .collect();
    assert!(fixed.contains(&(r1.clone(), 5)), "{:?}", rep.fixed);
    assert!(fixed.contains(&(r4.clone(), 70)), "{:?}", rep.fixed);
    assert!(
        rep.fixed
            .iter()
            .any(|x| x.block == 5 && x.from.starts_with("data/")),
        "{:?}",
        rep.fixed
    );
    assert!(
        rep.fixed
            .iter()
            .any(|x| x.block == 70 && x.from.contains("snapshot")),
        "{:?}",
        rep.fixed
    );
    assert_eq!(rep.unfixed.len(), 1);
    assert_eq!(
        (rep.unfixed[0].revision.as_str(), rep.unfixed[0].block),
        (r2.as_str(), 60)
    );
    assert_eq!(rep.verify.distrusted, vec![r2.clone()]);
    assert!(matches!(trust(&f, &r1), Trust::Verified { .. }));
    assert!(matches!(trust(&f, &r4), Trust::Verified { .. }));
    assert!(matches!(trust(&f, &r2), Trust::Distrusted { .. }));
}

#[test]
fn a_stopped_verify_ends_as_cancelled_and_calls_nothing_damaged_or_verified() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let f = fx();
    let ids = history(&f);
    let before: Vec<Trust> = ids.iter().map(|id| trust(&f, id)).collect();
    for deep in [false, true] {
        let o = VerifyOptions {
            deep,
            cancel: Some(Arc::new(AtomicBool::new(true))),
            ..Default::default()
        };
        let e = verify_with(&f.vol, &o, &NoProgress).unwrap_err();
        assert!(
            matches!(e, rbdelta::error::Error::Cancelled(_)),
            "deep {deep}: {e}"
        );
        let after: Vec<Trust> = ids.iter().map(|id| trust(&f, id)).collect();
        assert_eq!(after, before, "deep {deep}: a stopped verify changed trust");
    }
    // not stopped, the same archive verifies clean
    let all = verify_with(&f.vol, &VerifyOptions::default(), &NoProgress).unwrap();
    assert!(all.problems.is_empty(), "{:?}", all.problems);
}
