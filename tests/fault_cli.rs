//! Fault injection: `prune`, `merge`, `synthetic-full` and `repair`, each
//! killed (abort, like `kill -9`) at 50 distinct seeded crash points out of
//! the ones an uninterrupted run passes, on copies of one real archive.
//! After every crash, every revision still listed verifies (deep; for
//! repair: no damage beyond what it started with), and a rerun completes
//! the operation to the same end state as an uninterrupted run.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;

use common::cli::{read_image, Env};
use common::{pattern, test_conf, test_ioctx, test_pool, ScratchImage};

const MIB: u64 = 1 << 20;
/// Crash points killed per operation.
const ROUNDS: usize = 50;

/// A small deterministic generator (no dependency on test ordering).
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// `n` distinct points of `1..=points`, chosen by `seed`, in order.
fn choose(points: u64, n: usize, mut seed: u64) -> Vec<u64> {
    let mut all: Vec<u64> = (1..=points).collect();
    for i in (1..all.len()).rev() {
        all.swap(i, (next(&mut seed) % (i as u64 + 1)) as usize);
    }
    all.truncate(n);
    all.sort_unstable();
    all
}

/// A volume `f` of 12 revisions (fulls at 1, 7 and 12, a grow at 5, a
/// shrink at 9) over a scratch image, and a pristine copy of its archive.
struct Fixture {
    env: Env,
    io: rbdelta::ceph::IoCtx,
    src: ScratchImage,
    all: Vec<String>,
    pristine: PathBuf,
}

impl Fixture {
    fn new(prefix: &str, keep: u32) -> Fixture {
        let (conf, io) = (test_conf(), test_ioctx());
        let src = ScratchImage::create(&io, prefix, 8 * MIB);
        let img = io.open_image(&src.name).unwrap();
        img.write(0, &pattern(3 * MIB as usize, 1)).unwrap();
        let env = Env::with_yaml(
            &conf,
            &format!(
                "volumes:\n  - name: f\n    pool: {}\n    image: {}\n    retention:\n      keep-last: {keep}\n",
                test_pool(),
                src.name
            ),
        );
        for i in 0..12u64 {
            // 1.5 MB writes, spread so that the deltas of one chain hold
            // enough blocks for 50 crash points in every operation.
            img.write((i * 1613 * 1024) % (6 * MIB), &pattern(1_500_000, 10 + i))
                .unwrap();
            if i == 4 {
                img.resize(10 * MIB).unwrap();
            }
            if i == 8 {
                img.resize(7 * MIB + 12345).unwrap();
            }
            let mut args = vec!["backup", "f"];
            if i == 6 || i == 11 {
                args.push("--full");
            }
            env.ok(&args);
        }
        let all = ids(&env);
        assert_eq!(all.len(), 12);
        let pristine = env.dir.path().join("pristine");
        common::copy_dir(&env.archive(), &pristine);
        Fixture {
            env,
            io,
            src,
            all,
            pristine,
        }
    }

    /// Runs `args` uninterrupted on a fresh copy (then checks `done`) to
    /// count its crash points; then, for 50 of them, kills a run there,
    /// checks `after_crash`, reruns to completion and checks `done` again.
    fn kill_at_seeded_points(
        &self,
        args: &[&str],
        seed: u64,
        after_crash: impl Fn(&str),
        done: impl Fn(&str),
    ) {
        let env = &self.env;
        common::copy_dir(&self.pristine, &env.archive());
        let count_file = env.dir.path().join("points");
        let _ = std::fs::remove_file(&count_file); // it keeps the most reached
        let out = env
            .cmd()
            .env("RBDELTA_TEST_CRASH_COUNT", &count_file)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        done("uninterrupted");
        let points: u64 = std::fs::read_to_string(&count_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            points >= ROUNDS as u64,
            "{args:?}: only {points} crash points"
        );
        let mut crashed = 0;
        for at in choose(points, ROUNDS, seed) {
            let ctx = format!("{args:?} killed at point {at} of {points}");
            common::copy_dir(&self.pristine, &env.archive());
            let out = env
                .cmd()
                .env("RBDELTA_TEST_CRASH_AT", at.to_string())
                .args(args)
                .output()
                .unwrap();
            if out.status.signal() == Some(libc::SIGABRT) {
                crashed += 1;
            } else {
                assert!(
                    out.status.success(),
                    "{ctx}: failed without crashing: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            after_crash(&ctx);
            env.ok(args);
            done(&ctx);
        }
        eprintln!("{args:?}: {points} crash points; {crashed} of {ROUNDS} seeded runs crashed and were completed");
        // The points of one run are the same in every run of the same
        // archive; allow a little slack for timing-dependent paths.
        assert!(
            crashed >= ROUNDS * 9 / 10,
            "{args:?}: only {crashed} of {ROUNDS} runs crashed"
        );
    }

    /// `verify --deep` passes (data read as a restore would).
    fn verifies(&self, ctx: &str) {
        let v = self
            .env
            .cmd()
            .args(["verify", "f", "--deep"])
            .output()
            .unwrap();
        assert!(
            v.status.success(),
            "{ctx}: {}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
    }
}

fn ids(env: &Env) -> Vec<String> {
    env.revisions("f")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

fn kinds(env: &Env) -> Vec<String> {
    env.revisions("f")
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect()
}

fn tmp_is_empty(env: &Env) -> bool {
    std::fs::read_dir(env.archive().join("f/tmp"))
        .unwrap()
        .next()
        .is_none()
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn prune_killed_at_fifty_seeded_points_leaves_a_verifying_archive() {
    common::require_fault_injection();
    let f = Fixture::new("fault-prune", 3);
    let want = f.all[9..].to_vec();
    f.kill_at_seeded_points(
        &["prune", "f"],
        0x5eed_1234,
        |ctx| {
            f.verifies(ctx);
            let listed = ids(&f.env);
            assert!(listed.iter().all(|id| f.all.contains(id)), "{ctx}");
            assert!(want.iter().all(|id| listed.contains(id)), "{ctx}");
        },
        |ctx| {
            assert_eq!(ids(&f.env), want, "{ctx}");
            assert!(tmp_is_empty(&f.env), "{ctx}: temp files left");
        },
    );
    f.verifies("after prune");
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn merge_killed_at_fifty_seeded_points_leaves_a_verifying_archive() {
    common::require_fault_injection();
    let f = Fixture::new("fault-merge", 100);
    // fold revisions 2..6 into 7; every other revision is never touched
    let (from, to) = (f.all[1][..12].to_string(), f.all[6][..12].to_string());
    let mut want = vec![f.all[0].clone()];
    want.extend(f.all[6..].iter().cloned());
    let outside: Vec<&String> = want.iter().collect();
    f.kill_at_seeded_points(
        &["merge", "f", &from, &to],
        0x00de_cade,
        |ctx| {
            f.verifies(ctx);
            let listed = ids(&f.env);
            assert!(outside.iter().all(|id| listed.contains(id)), "{ctx}");
        },
        |ctx| {
            assert_eq!(ids(&f.env), want, "{ctx}");
            assert!(tmp_is_empty(&f.env), "{ctx}: temp files left");
        },
    );
    f.verifies("after merge");
    // and the newest restores to exactly the image's bytes
    let out = f.env.dir.path().join("newest.img");
    f.env
        .ok(&["restore", "f", "--to-file", out.to_str().unwrap()]);
    let image = read_image(&f.io, &f.src.name, None);
    assert!(
        std::fs::read(&out).unwrap() == image,
        "the restored newest revision differs from the image"
    );
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn synthetic_full_killed_at_fifty_seeded_points_leaves_a_verifying_archive() {
    common::require_fault_injection();
    let f = Fixture::new("fault-synth", 100);
    // revision 10: a delta on 9, 8 and the full of 7
    let target = f.all[9].clone();
    let before = kinds(&f.env);
    assert_eq!(before[9], "delta");
    let mut want = before.clone();
    want[9] = "full".into();
    let stale_delta = f.env.archive().join(format!("f/data/{target}.delta"));
    f.kill_at_seeded_points(
        &["synthetic-full", "f", &target[..12]],
        0x0005_1e7a,
        |ctx| {
            f.verifies(ctx);
            assert_eq!(ids(&f.env), f.all, "{ctx}");
        },
        |ctx| {
            assert_eq!(ids(&f.env), f.all, "{ctx}");
            assert_eq!(kinds(&f.env), want, "{ctx}");
            assert!(!stale_delta.exists(), "{ctx}: the replaced delta is left");
            assert!(tmp_is_empty(&f.env), "{ctx}: temp files left");
        },
    );
    f.verifies("after synthetic-full");
}

/// The `DAMAGED` lines of a plain verify (exit 0 or 3).
fn damage(env: &Env, ctx: &str) -> Vec<String> {
    let out = env.cmd().args(["verify", "f"]).output().unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{ctx}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("DAMAGED"))
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn repair_killed_at_fifty_seeded_points_never_damages_more() {
    common::require_fault_injection();
    let f = Fixture::new("fault-repair", 100);
    // Damage 60 data blocks of the newest full: good copies are in the
    // older full (blocks unchanged since) and in the newest snapshot.
    let newest = f.all[11].clone();
    let full = f.pristine.join(format!("f/data/{newest}.full"));
    let bytes = std::fs::read(&full).unwrap();
    let data_blocks: Vec<u64> = bytes
        .chunks(64 << 10)
        .enumerate()
        .filter(|(_, b)| b.iter().any(|&x| x != 0))
        .map(|(i, _)| i as u64)
        .collect();
    assert!(data_blocks.len() >= 60, "{}", data_blocks.len());
    for b in data_blocks.iter().take(60) {
        common::flip_byte(&full, b * (64 << 10) + 777);
    }
    // the damaged archive, with its damage found (and distrusted), is
    // what every round starts from
    common::copy_dir(&f.pristine, &f.env.archive());
    let initial = damage(&f.env, "initial");
    assert_eq!(initial.len(), 60, "{initial:?}");
    common::copy_dir(&f.env.archive(), &f.pristine);
    let env = &f.env;
    f.kill_at_seeded_points(
        &["repair", "f"],
        0x0bad_b10c,
        |ctx| {
            let left = damage(env, ctx);
            assert!(
                left.iter().all(|l| initial.contains(l)),
                "{ctx}: new damage: {left:?}"
            );
        },
        |ctx| {
            assert!(damage(env, ctx).is_empty(), "{ctx}");
            let distrusted = env
                .revisions("f")
                .iter()
                .filter(|r| r["trust"].as_str().unwrap().starts_with("distrusted"))
                .count();
            assert_eq!(distrusted, 0, "{ctx}");
        },
    );
    f.verifies("after repair");
}
