//! A full archive disk (ENOSPC) during history edits that write big files,
//! a merge and a synthetic full: each fails with a clear error, the history
//! stays intact and verifiable with no temp files left, and once there is
//! room again the same command succeeds. (The backup case is in
//! `cluster_cli.rs`.)

mod common;

use std::process::Command;

use common::cli::{read_image, stderr, Env};
use common::{pattern, test_conf, test_ioctx, ScratchImage, SmallDisk};

const MIB: u64 = 1 << 20;

fn kinds(env: &Env) -> Vec<(String, String)> {
    env.revisions("v")
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Fills the archive's disk up to `room` bytes with a ballast file.
fn fill(env: &Env, room: u64) -> std::path::PathBuf {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(env.archive())
        .output()
        .unwrap();
    let avail: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let ballast = env.archive().join(".ballast");
    std::fs::write(&ballast, vec![1u8; avail.saturating_sub(room) as usize]).unwrap();
    ballast
}

/// `args` fails for lack of room, leaving the history as it was.
fn fails_for_room(env: &Env, args: &[&str]) {
    let before = kinds(env);
    let out = env.fails(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.contains("No space left on device"), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert_eq!(kinds(env), before, "{args:?} changed the history");
    let tmp = env.archive().join("v/tmp");
    assert_eq!(
        std::fs::read_dir(tmp).unwrap().count(),
        0,
        "{args:?}: temp files left"
    );
    env.ok(&["verify", "v", "--deep"]);
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_full_disk_fails_merge_and_synthetic_full_cleanly_and_room_lets_them_finish() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "enospc-edit", 32 * MIB);
    let img = io.open_image(&src.name).unwrap();
    let env = Env::new(&conf, &[("v", &src.name)]);
    let Some(_disk) = SmallDisk::mount(&env.archive(), 24) else {
        return;
    };
    // a 4 MiB full and three 2 MiB deltas
    img.write(0, &pattern(4 * MIB as usize, 1)).unwrap();
    env.ok(&["backup", "v"]);
    for i in 0..3u64 {
        img.write((8 + 4 * i) * MIB, &pattern(2 * MIB as usize, 2 + i))
            .unwrap();
        env.ok(&["backup", "v"]);
    }
    let ids: Vec<String> = kinds(&env).into_iter().map(|k| k.0).collect();
    assert_eq!(ids.len(), 4);

    // 1 MiB of room: neither a 10 MiB full nor a 6 MiB delta fits
    let ballast = fill(&env, MIB);
    fails_for_room(&env, &["synthetic-full", "v", &ids[3]]);
    fails_for_room(&env, &["merge", "v", &ids[1], &ids[3]]);

    // room again: both finish, and the newest revision is the image
    std::fs::remove_file(&ballast).unwrap();
    env.ok(&["merge", "v", &ids[1], &ids[3]]);
    env.ok(&["synthetic-full", "v", &ids[3]]);
    let after = kinds(&env);
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[1], (ids[3].clone(), "full".to_string()));
    env.ok(&["verify", "v", "--deep"]);
    let out = env.dir.path().join("newest.img");
    env.ok(&["restore", "v", "--to-file", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == read_image(&io, &src.name, None));
}
