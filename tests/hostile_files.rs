//! Hostile and broken archive files, as a property test on the file
//! backend: an archive of three revisions (a full and two deltas), then
//! one of its files damaged at random (bytes flipped, cut short, extended
//! with garbage, or replaced by another of its files). Whatever the damage,
//! nothing panics, and a restore of any revision either fails or writes
//! exactly that revision's bytes, never wrong ones. Verify never calls an
//! archive clean when a restore fails, and always reports damage to bytes
//! that are checked ([`must_report`]).

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use rbdelta::archive::VolumeDir;
use rbdelta::backup::{backup, BackupOptions};
use rbdelta::progress::NoProgress;
use rbdelta::restore::file_target::FileTarget;
use rbdelta::restore::{restore, RestoreOptions, TargetOptions};
use rbdelta::source::file::{resize, write_at, FileImage};
use rbdelta::verify::verify;

const BS: u64 = 4096;

#[derive(Debug, Clone)]
enum Damage {
    /// XOR `mask` into the byte at `at` (a fraction of the length, /1000).
    Flip { at: u64, mask: u8 },
    /// Keep only the first `keep`/1000 of the file.
    Cut { keep: u64 },
    /// Append these bytes.
    Extend(Vec<u8>),
    /// Replace the file by a copy of another one (index into the list).
    Swap(usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => (0u64..1000, 1u8..=255).prop_map(|(at, mask)| Damage::Flip { at, mask }),
        2 => (0u64..1000).prop_map(|keep| Damage::Cut { keep }),
        1 => prop::collection::vec(any::<u8>(), 1..200).prop_map(Damage::Extend),
        1 => (0usize..100).prop_map(Damage::Swap),
    ]
}

/// Every regular file under `dir`, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn apply(all: &[PathBuf], target: &Path, d: &Damage) {
    let mut bytes = std::fs::read(target).unwrap();
    match d {
        Damage::Flip { at, mask } if !bytes.is_empty() => {
            let i = (*at as usize * bytes.len() / 1000).min(bytes.len() - 1);
            bytes[i] ^= mask;
        }
        Damage::Flip { .. } => bytes.push(1),
        Damage::Cut { keep } => bytes.truncate(*keep as usize * bytes.len() / 1000),
        Damage::Extend(more) => bytes.extend_from_slice(more),
        Damage::Swap(i) => bytes = std::fs::read(&all[i % all.len()]).unwrap(),
    }
    std::fs::write(target, bytes).unwrap();
}

/// Whether changing `target` from `before` to `after` is damage verify
/// must report, whatever restore makes of it (FORMAT.md): a full must be
/// exactly the image size and every byte of it is checked (listed blocks
/// by hash, the others must be zeros); a full index is sealed whole by its
/// trailer; a delta's length is fixed by its header, its header and index
/// are sealed and its block data hashed: only its zero padding, bytes
/// `[128, 4096)`, is not read. Damage to a manifest, the volume header,
/// state or logs is judged by what restore and verify make of it.
fn must_report(target: &Path, before: &[u8], after: &[u8]) -> bool {
    if before == after {
        return false;
    }
    let name = target.to_string_lossy();
    if name.ends_with(".full") || name.ends_with(".fidx") {
        return true;
    }
    if name.ends_with(".delta") {
        return before.len() != after.len()
            || before
                .iter()
                .zip(after)
                .enumerate()
                .any(|(i, (a, b))| a != b && !(128..4096).contains(&i));
    }
    false
}

/// Restores revision `id` to a file; its bytes, or the error.
fn restored(vol: &VolumeDir, id: &str, out: &Path) -> Result<Vec<u8>, String> {
    let rev = vol.find_revision(id).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(out);
    let opts = TargetOptions {
        force: true,
        ..Default::default()
    };
    let target = FileTarget::create(out, rev.manifest.size, &opts).map_err(|e| e.to_string())?;
    restore(
        vol,
        &rev,
        Box::new(target),
        &RestoreOptions::default(),
        &NoProgress,
    )
    .map_err(|e| e.to_string())?;
    Ok(std::fs::read(out).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn damage_never_panics_and_never_restores_wrong_bytes(which in 0usize..1000, d in damage()) {
        let dir = tempfile::tempdir().unwrap();
        let image = FileImage::new(dir.path().join("img")).unwrap();
        let root = dir.path().join("archive");
        let vol = VolumeDir::open_or_create(&root, "vm", BS).unwrap();
        resize(&image, 40_000).unwrap();
        let opts = BackupOptions { source_name: "test/vm".into(), ..Default::default() };
        let mut want = Vec::new();
        for (i, (at, len)) in [(0u64, 20_000usize), (8_000, 5_000), (30_000, 9_000)].into_iter().enumerate() {
            write_at(&image, at, &vec![i as u8 + 1; len]).unwrap();
            let r = backup(&vol, &image, &opts, &NoProgress).unwrap();
            want.push((r.revision.id.clone(), std::fs::read(image.image_path()).unwrap()));
        }
        let all = files(&root);
        let target = all[which % all.len()].clone();
        let before = std::fs::read(&target).unwrap();
        apply(&all, &target, &d);
        let after = std::fs::read(&target).unwrap();
        let out = dir.path().join("out.img");
        let ran = catch_unwind(AssertUnwindSafe(|| {
            let mut refused = Vec::new();
            for (id, bytes) in &want {
                // a restore refuses, or gives the revision's own bytes
                match VolumeDir::open(&root, "vm").map_err(|e| e.to_string()).and_then(|v| restored(&v, id, &out)) {
                    Ok(got) => assert!(got == *bytes, "revision {id} restored other bytes after {d:?} of {}", target.display()),
                    Err(e) => refused.push(format!("{id}: {e}")),
                }
            }
            // verify: clean means three revisions, no problem, none distrusted
            let report = VolumeDir::open(&root, "vm").and_then(|v| {
                let _ = v.revisions();
                verify(&v, None, &NoProgress)
            });
            let clean = report.as_ref().is_ok_and(|r| {
                r.revisions == want.len() && r.problems.is_empty() && r.distrusted.is_empty()
            });
            assert!(
                !clean || refused.is_empty(),
                "verify called the archive clean after {d:?} of {}, but restores refused: {refused:?}",
                target.display()
            );
            assert!(
                !clean || !must_report(&target, &before, &after),
                "verify did not report {d:?} of {}: {:?}",
                target.display(),
                report.map(|r| (r.revisions, r.problems.len()))
            );
        }));
        match ran {
            Ok(()) => {}
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                prop_assert!(false, "after {:?} of {}: {}", d, target.display(), msg);
            }
        }
    }
}
