//! Fault injection: `prune` and `merge` killed at seeded crash points
//! (at least 50, spread over the whole operation), on copies of one real
//! archive. After every crash, every revision still listed verifies (deep)
//! and the next run completes the operation to the same end state as an
//! uninterrupted one.

mod common;

use std::path::Path;
use std::process::Command;

use common::cli::Env;
use common::{pattern, test_conf, test_ioctx, test_pool, ScratchImage};

const MIB: u64 = 1 << 20;

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// A small deterministic generator (no dependency on test ordering).
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn ids(env: &Env) -> Vec<String> {
    env.revisions("f")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn prune_and_merge_killed_at_fifty_seeded_points_leave_a_verifying_archive() {
    let (Some(conf), Some(io)) = (test_conf(), test_ioctx()) else {
        return;
    };
    let src = ScratchImage::create(&io, "fault", 8 * MIB);
    let img = io.open_image(&src.name).unwrap();
    img.write(0, &pattern(3 * MIB as usize, 1)).unwrap();
    let yaml = |keep: &str| {
        format!(
            "volumes:\n  - name: f\n    pool: {}\n    image: {}\n    retention:\n      keep-last: {keep}\n",
            test_pool(),
            src.name
        )
    };
    let env = Env::with_yaml(&conf, &yaml("3"));
    // 12 revisions: a full, deltas, a grow, a shrink, a second full.
    for i in 0..12u64 {
        img.write((i * 613 * 1024) % (6 * MIB), &pattern(200_000, 10 + i))
            .unwrap();
        if i == 4 {
            img.resize(10 * MIB).unwrap();
        }
        if i == 8 {
            img.resize(7 * MIB + 12345).unwrap();
        }
        let full = if i == 6 { vec!["--full"] } else { vec![] };
        let mut args = vec!["backup", "f"];
        args.extend(full);
        env.ok(&args);
    }
    let all = ids(&env);
    assert_eq!(all.len(), 12);
    let pristine = env.dir.path().join("pristine");
    copy_dir(&env.archive(), &pristine);

    // Uninterrupted: how many crash points, and the end state.
    let count_file = env.dir.path().join("points");
    let out = env
        .cmd()
        .env("RBDELTA_TEST_CRASH_COUNT", &count_file)
        .args(["prune", "f"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let points: u64 = std::fs::read_to_string(&count_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let want = ids(&env);
    assert_eq!(want, all[9..].to_vec());
    assert!(
        points >= 50,
        "only {points} crash points in a prune of 9 revisions"
    );

    let mut seed = 0x5eed_1234_u64;
    let mut crashes = 0;
    for round in 0..50 {
        copy_dir(&pristine, &env.archive());
        let at = next(&mut seed) % points + 1;
        let out = env
            .cmd()
            .env("RBDELTA_TEST_CRASH_AT", at.to_string())
            .args(["prune", "f"])
            .output()
            .unwrap();
        if !out.status.success() {
            crashes += 1;
        }
        // Whatever is listed now verifies, data read as a restore would.
        let v = env.cmd().args(["verify", "f", "--deep"]).output().unwrap();
        assert!(
            v.status.success(),
            "round {round}, crash point {at}: {}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
        // and the next run completes the job
        env.ok(&["prune", "f"]);
        assert_eq!(ids(&env), want, "round {round}, crash point {at}");
        let listed = ids(&env);
        assert!(listed.iter().all(|id| all.contains(id)));
    }
    eprintln!(
        "prune: {points} crash points; {crashes} of 50 seeded runs crashed and were recovered"
    );
    assert!(crashes >= 45, "only {crashes} of 50 runs crashed");
    env.ok(&["verify", "f", "--deep"]);

    // merge, killed too: fold revisions 2..6 into 7 on the pristine copy
    std::fs::write(
        &env.config,
        std::fs::read_to_string(&env.config)
            .unwrap()
            .replace("keep-last: 3", "keep-last: 100"),
    )
    .unwrap();
    for round in 0..5 {
        copy_dir(&pristine, &env.archive());
        let at = next(&mut seed) % 40 + 1;
        let _ = env
            .cmd()
            .env("RBDELTA_TEST_CRASH_AT", at.to_string())
            .args(["merge", "f", &all[1][..12], &all[6][..12]])
            .output()
            .unwrap();
        env.ok(&["verify", "f", "--deep"]);
        let left = ids(&env);
        let rest: Vec<&String> = left.iter().filter(|id| !all[1..6].contains(id)).collect();
        assert_eq!(
            rest.len(),
            7,
            "round {round}: revisions outside the range are never touched"
        );
    }
    // and the newest restores to the image's bytes
    let target = common::unique_name("fault-restore");
    let _c = ScratchImage::adopt(&io, &target);
    env.ok(&[
        "restore",
        "f",
        "--to-image",
        &format!("{}/{target}", test_pool()),
    ]);
}
