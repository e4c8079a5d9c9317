//! End-to-end tests of the `rbdelta` binary against the real test cluster:
//! backups through librbd, restores into new images, verify, the fallback
//! when a base snapshot is gone, locks, kill -9, the safety belt and config
//! errors.

mod common;

use std::path::PathBuf;

use common::cli::{read_image, restore_to_image, stderr, Env};
use common::{flip_byte, pattern, test_conf, test_ioctx, test_pool, unique_name, ScratchImage};

const MIB: u64 = 1 << 20;

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn history_with_resizes_discards_and_fulls_restores_exactly() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "hist", 24 * MIB);
    let env = Env::new(&conf, &[("hist", &src.name)]);
    let img = io.open_image(&src.name).unwrap();
    let mut expected: Vec<(String, Vec<u8>)> = Vec::new();
    let mut step = |label: &str, full: bool| {
        let mut args = vec!["backup", "hist"];
        if full {
            args.push("--full");
        }
        env.ok(&args);
        let revs = env.revisions("hist");
        let last = revs.last().unwrap();
        let snap = last["snapshot"]
            .as_str()
            .expect("newest keeps its snapshot")
            .to_string();
        let bytes = read_image(&io, &src.name, Some(&snap));
        assert_eq!(
            last["size"].as_u64().unwrap(),
            bytes.len() as u64,
            "{label}"
        );
        assert_eq!(
            last["checksum"].as_str().unwrap(),
            rbdelta::checksum::to_hex(&rbdelta::checksum::image_checksum_of(&bytes, 65536)),
            "{label}: manifest checksum equals the snapshot's"
        );
        expected.push((last["id"].as_str().unwrap().to_string(), bytes));
    };
    img.write(0, &pattern(3 * MIB as usize, 1)).unwrap();
    img.write(10 * MIB + 123, &pattern(MIB as usize, 2))
        .unwrap();
    step("first full", false);
    img.write(5 * MIB + 7, &pattern(4096, 3)).unwrap();
    img.discard(MIB, 2 * MIB).unwrap();
    step("writes + discard", false);
    img.resize(30 * MIB + 777).unwrap();
    img.write(29 * MIB, &pattern(MIB as usize + 777, 4))
        .unwrap();
    step("grow to an odd size", false);
    img.resize(8 * MIB + 5).unwrap();
    step("shrink", false);
    img.resize(20 * MIB).unwrap();
    img.write(15 * MIB, &pattern(100_000, 5)).unwrap();
    step("shrink then grow", false);
    img.write(0, &pattern(70_000, 6)).unwrap();
    step("forced full", true);
    img.write(19 * MIB, &pattern(5000, 7)).unwrap();
    step("delta over second full", false);

    let revs = env.revisions("hist");
    let kinds: Vec<&str> = revs.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["full", "delta", "delta", "delta", "delta", "full", "delta"]
    );
    // only the newest revision keeps a snapshot; older ones are gone from Ceph
    assert!(revs[..revs.len() - 1]
        .iter()
        .all(|r| r["snapshot"].is_null()));
    let snaps: Vec<String> = img.snap_list().unwrap().into_iter().map(|s| s.0).collect();
    assert_eq!(
        snaps,
        vec![revs.last().unwrap()["snapshot"]
            .as_str()
            .unwrap()
            .to_string()]
    );
    for (id, bytes) in &expected {
        assert!(
            restore_to_image(&env, &io, "hist", id) == *bytes,
            "revision {id} differs"
        );
    }
    env.ok(&["verify", "hist"]);
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn clone_is_backed_up_with_its_parent_data() {
    let (conf, io) = (test_conf(), test_ioctx());
    let parent = ScratchImage::create(&io, "parent", 16 * MIB);
    let p = io.open_image(&parent.name).unwrap();
    p.write(0, &pattern(6 * MIB as usize, 11)).unwrap();
    p.snap_create("base").unwrap();
    p.snap_protect("base").unwrap();
    let child_name = unique_name("child");
    io.clone_image(&parent.name, "base", &child_name).unwrap();
    let child = ScratchImage::adopt(&io, &child_name);
    let c = io.open_image(&child.name).unwrap();
    c.write(MIB, &pattern(4096, 12)).unwrap();
    let env = Env::new(&conf, &[("child", &child.name)]);
    env.ok(&["backup", "child"]);
    c.write(3 * MIB, &pattern(8192, 13)).unwrap();
    env.ok(&["backup", "child"]);
    let want = read_image(&io, &child.name, None);
    assert!(restore_to_image(&env, &io, "child", "latest") == want);
    drop(child); // before the parent
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn verify_names_flipped_bytes_in_a_full_and_a_delta() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "flip", 8 * MIB);
    let img = io.open_image(&src.name).unwrap();
    img.write(0, &pattern(2 * MIB as usize, 21)).unwrap();
    let env = Env::new(&conf, &[("flip", &src.name)]);
    env.ok(&["backup", "flip"]);
    img.write(5 * MIB, &pattern(4096, 22)).unwrap();
    env.ok(&["backup", "flip"]);
    env.ok(&["verify", "flip"]);
    let revs = env.revisions("flip");
    let (full, delta) = (
        revs[0]["id"].as_str().unwrap(),
        revs[1]["id"].as_str().unwrap(),
    );
    let data = env.archive().join("flip/data");
    flip_byte(&data.join(format!("{full}.full")), MIB + 5);
    flip_byte(&data.join(format!("{delta}.delta")), 4096 + 100);
    let out = env.fails(&["verify", "flip"]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(full) && text.contains("bytes 1048576..1114112"),
        "{text}"
    );
    assert!(
        text.contains(delta) && text.contains("bytes 5242880..5308416"),
        "{text}"
    );
    // a restore stops on the bad block and names it
    let target = unique_name("nope");
    let _c = ScratchImage::adopt(&io, &target);
    let out = env.fails(&[
        "restore",
        "flip",
        "--to-image",
        &format!("{}/{target}", test_pool()),
    ]);
    assert!(
        stderr(&out).contains("bytes 1048576..1114112"),
        "{}",
        stderr(&out)
    );
    assert!(
        !io.image_exists(&target).unwrap(),
        "a failed restore removes its image"
    );
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn deleted_base_snapshot_falls_back_to_checksum_compare() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "fallback", 8 * MIB);
    let img = io.open_image(&src.name).unwrap();
    img.write(0, &pattern(4 * MIB as usize, 31)).unwrap();
    let env = Env::new(&conf, &[("fb", &src.name)]);
    env.ok(&["backup", "fb"]);
    let snap = env.revisions("fb")[0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    img.snap_remove(&snap).unwrap();
    img.write(MIB, &pattern(10_000, 32)).unwrap();
    let out = env.cmd().args(["backup", "fb"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("checksum compare"));
    assert!(
        stderr(&out).contains("is gone"),
        "the reason is logged: {}",
        stderr(&out)
    );
    let want = read_image(&io, &src.name, None);
    assert!(restore_to_image(&env, &io, "fb", "latest") == want);
    // a later backup diffs normally again
    img.write(2 * MIB, &pattern(100, 33)).unwrap();
    let out = env.ok(&["backup", "fb"]);
    assert!(
        out.contains(": delta ") && !out.contains("compare"),
        "{out}"
    );
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_concurrent_backup_of_the_same_volume_fails_at_once() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "concurrent", 160 * MIB);
    let img = io.open_image(&src.name).unwrap();
    for i in 0..5 {
        img.write(i * 32 * MIB, &pattern(24 * MIB as usize, 90 + i))
            .unwrap();
    }
    let env = Env::new(&conf, &[("conc", &src.name)]);
    let mut first = env.spawn(&["backup", "conc"]);
    // The start record is written once the first backup holds the lock.
    let log = env.archive().join("conc/log.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains("\"start\"")) {
        assert!(
            std::time::Instant::now() < deadline,
            "first backup never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let out = env.fails(&["backup", "conc"]);
    assert!(
        stderr(&out).contains("locked by another rbdelta process"),
        "{}",
        stderr(&out)
    );
    let status = first.wait().unwrap();
    assert!(status.success(), "the first backup is unaffected");
    assert_eq!(env.revisions("conc").len(), 1);
    env.ok(&["verify", "conc"]);
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_held_lock_fails_a_second_backup_at_once() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "lock", 4 * MIB);
    let env = Env::new(&conf, &[("lock", &src.name)]);
    env.ok(&["backup", "lock"]);
    let vol = rbdelta::archive::VolumeDir::open(&env.archive(), "lock").unwrap();
    let held = vol.lock().unwrap();
    let started = std::time::Instant::now();
    let out = env.fails(&["backup", "lock"]);
    assert!(started.elapsed().as_secs() < 15);
    assert!(
        stderr(&out).contains("locked by another rbdelta process"),
        "{}",
        stderr(&out)
    );
    drop(held);
    env.ok(&["backup", "lock"]);
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn kill_9_during_backups_leaves_older_revisions_intact() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "kill", 96 * MIB);
    let img = io.open_image(&src.name).unwrap();
    img.write(0, &pattern(8 * MIB as usize, 41)).unwrap();
    let env = Env::new(&conf, &[("kill", &src.name)]);
    env.ok(&["backup", "kill"]);
    for (round, delay_ms) in [5u64, 40, 120, 300, 700].into_iter().enumerate() {
        img.write(
            round as u64 * 4 * MIB,
            &pattern(2 * MIB as usize, 50 + round as u64),
        )
        .unwrap();
        let before = env.revisions("kill").len();
        let mut child = env.spawn(&["backup", "kill", "--full"]);
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let after = env.revisions("kill");
        assert!(after.len() == before || after.len() == before + 1);
        env.ok(&["verify", "kill"]);
        env.ok(&["backup", "kill"]);
        env.ok(&["verify", "kill"]);
        let want = read_image(&io, &src.name, None);
        let latest = env.revisions("kill").last().unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            restore_to_image(&env, &io, "kill", &latest) == want,
            "round {round}"
        );
        // exactly one rbdelta snapshot survives: the newest revision's
        let snaps = img.snap_list().unwrap();
        assert_eq!(snaps.len(), 1, "round {round}: {snaps:?}");
        assert!(!env.archive().join("kill/pending.json").exists());
    }
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn safety_belt_refuses_dangerous_targets() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "belt", 4 * MIB);
    io.open_image(&src.name).unwrap().write(0, b"data").unwrap();
    let other = ScratchImage::create(&io, "belt-other", MIB);
    let env = Env::new(&conf, &[("belt", &src.name)]);
    env.ok(&["backup", "belt"]);
    let pool = test_pool();
    let out = env.fails(&[
        "restore",
        "belt",
        "--to-image",
        &format!("{pool}/{}", src.name),
    ]);
    assert!(
        stderr(&out).contains("own source image"),
        "{}",
        stderr(&out)
    );
    let out = env.fails(&[
        "restore",
        "belt",
        "--to-image",
        &format!("{pool}/{}", other.name),
    ]);
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    // --force overwrites an existing image, zeroing what the revision lacks
    io.open_image(&other.name)
        .unwrap()
        .write(MIB / 2, &[9u8; 1000])
        .unwrap();
    env.ok(&[
        "restore",
        "belt",
        "--to-image",
        &format!("{pool}/{}", other.name),
        "--force",
    ]);
    assert!(read_image(&io, &other.name, None) == read_image(&io, &src.name, None));
    let existing = env.dir.path().join("exists.img");
    std::fs::write(&existing, b"keep me").unwrap();
    let out = env.fails(&["restore", "belt", "--to-file", existing.to_str().unwrap()]);
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    let inside = env.archive().join("belt/restored.img");
    let out = env.fails(&[
        "restore",
        "belt",
        "--to-file",
        inside.to_str().unwrap(),
        "--force",
    ]);
    assert!(
        stderr(&out).contains("inside the archive"),
        "{}",
        stderr(&out)
    );
    let out = env.fails(&["restore", "belt", "--to-image", "no-slash"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_configs_and_an_unreachable_cluster_fail_cleanly() {
    // No cluster needed: every command here fails before or while connecting.
    let conf = PathBuf::from("/nonexistent/ceph.conf");
    let env = Env::new(&conf, &[("a", "a")]);
    let good = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        "archive: /tmp/x\nvolumes:\n  - pool: rbd\n    image: a\n    colour: red\n",
    )
    .unwrap();
    let out = env.fails(&["backup", "--all"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("config.yaml:5") && err.contains("colour"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    std::fs::write(&env.config, good).unwrap();
    let out = env.fails(&["list", "nosuch"]);
    assert!(stderr(&out).contains("no volume named"), "{}", stderr(&out));

    // a mon that does not exist: an error within the timeout, not a hang
    let bogus = env.dir.path().join("bogus.conf");
    std::fs::write(
        &bogus,
        "[global]\nmon host = v2:127.0.0.1:9\nauth client required = none\n",
    )
    .unwrap();
    std::fs::write(
        &env.config,
        format!(
            "ceph:\n  conf: {}\n  timeout: 3\narchive: {}\nvolumes:\n  - pool: rbd\n    image: a\n",
            bogus.display(),
            env.archive().display()
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = env.fails(&["backup", "--all"]);
    assert!(
        started.elapsed().as_secs() < 30,
        "took {:?}",
        started.elapsed()
    );
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn missing_image_fails_alone() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "alone", 4 * MIB);
    let env = Env::new(&conf, &[("gone", "no-such-image"), ("ok", &src.name)]);
    let out = env.fails(&["backup", "--all"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("gone: backup failed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.revisions("ok").len(), 1);
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_full_disk_fails_the_backup_cleanly_and_keeps_history() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "enospc", 64 * MIB);
    let img = io.open_image(&src.name).unwrap();
    img.write(0, &pattern(4 * MIB as usize, 61)).unwrap();
    let env = Env::new(&conf, &[("full", &src.name)]);
    let Some(_disk) = common::SmallDisk::mount(&env.archive(), 12) else {
        return;
    };
    env.ok(&["backup", "full"]);
    img.write(8 * MIB, &pattern(20 * MIB as usize, 62)).unwrap();
    let out = env.fails(&["backup", "full"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(env.revisions("full").len(), 1);
    let vol = env.archive().join("full");
    assert!(!vol.join("pending.json").exists());
    assert_eq!(
        std::fs::read_dir(vol.join("tmp")).unwrap().count(),
        0,
        "temp files removed"
    );
    assert_eq!(
        img.snap_list().unwrap().len(),
        1,
        "the failed backup's snapshot is removed"
    );
    env.ok(&["verify", "full"]);
    // once there is room again, backups go on
    img.write(8 * MIB, &pattern(MIB as usize, 63)).unwrap();
    img.discard(9 * MIB, 19 * MIB).unwrap();
    env.ok(&["backup", "full"]);
    env.ok(&["verify", "full"]);
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn restore_recreates_object_size_and_features_even_without_the_source() {
    let (conf, io) = (test_conf(), test_ioctx());
    use rbdelta::ceph::features;
    let name = unique_name("layout");
    let wanted = features::LAYERING | features::EXCLUSIVE_LOCK;
    io.create_image(&name, 8 * MIB, 21, wanted).unwrap();
    let src = ScratchImage::adopt(&io, &name);
    let data = pattern(3 * MIB as usize, 71);
    io.open_image(&name).unwrap().write(MIB, &data).unwrap();
    let env = Env::new(&conf, &[("layout", &name)]);
    env.ok(&["backup", "layout"]);
    drop(src); // the source image is gone
    let target = unique_name("layout-restored");
    let _t = ScratchImage::adopt(&io, &target);
    env.ok(&[
        "restore",
        "layout",
        "--to-image",
        &format!("{}/{target}", test_pool()),
    ]);
    let img = io.open_image(&target).unwrap();
    assert_eq!(img.stat().unwrap().order, 21);
    assert_eq!(img.features().unwrap(), wanted);
    let bytes = read_image(&io, &target, None);
    assert!(bytes[MIB as usize..4 * MIB as usize] == data[..]);
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn rewriting_identical_data_stores_nothing() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "same", 16 * MIB);
    let img = io.open_image(&src.name).unwrap();
    let data = pattern(6 * MIB as usize, 81);
    img.write(MIB, &data).unwrap();
    let env = Env::new(&conf, &[("same", &src.name)]);
    env.ok(&["backup", "same"]);
    img.write(MIB, &data).unwrap(); // Ceph reports this as changed
    img.write(10 * MIB, &pattern(100, 82)).unwrap(); // this really changed
    let out = env.ok(&["backup", "same"]);
    assert!(out.contains("stored 64.0 KiB"), "{out}");
    let want = read_image(&io, &src.name, None);
    assert!(restore_to_image(&env, &io, "same", "latest") == want);
    env.ok(&["verify", "same"]);
}
