//! Scrubbing end to end against the real cluster: `verify --all`, rotating
//! `--subset`, `--deep`, `--source` against the kept Ceph snapshot, trust
//! shown by `list` and `status`, the warning of a distrusted restore, and
//! the full that follows a distrusted base.

mod common;

use common::cli::{stderr, Env};
use common::{flip_byte, pattern, test_conf, test_ioctx, test_pool, unique_name, ScratchImage};

const MIB: u64 = 1 << 20;

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn verify_all_subsets_deep_source_and_trust() {
    let (conf, io) = (test_conf(), test_ioctx());
    let a = ScratchImage::create(&io, "scrub-a", 16 * MIB);
    let b = ScratchImage::create(&io, "scrub-b", 16 * MIB);
    for (img, seed) in [(&a, 1), (&b, 2)] {
        io.open_image(&img.name)
            .unwrap()
            .write(0, &pattern(10 * MIB as usize, seed))
            .unwrap();
    }
    let env = Env::new(&conf, &[("a", &a.name), ("b", &b.name)]);
    env.ok(&["backup", "--all"]);
    io.open_image(&a.name)
        .unwrap()
        .write(3 * MIB, &pattern(100_000, 3))
        .unwrap();
    env.ok(&["backup", "a"]);

    let out = env.ok(&["verify", "--all"]);
    assert!(
        out.contains("a: 2 revision(s) verified") && out.contains("b: 1 revision(s) verified"),
        "{out}"
    );
    let out = env.ok(&["list", "a"]);
    assert_eq!(
        out.lines().filter(|l| l.contains(" verified ")).count(),
        2,
        "{out}"
    );

    // Rotating subsets: the blocks of 1/2 and 2/2 add up to everything.
    let blocks = |args: &[&str]| -> u64 {
        let out = env.ok(args);
        let n = out.split(": ").nth(2).unwrap().split(' ').next().unwrap();
        n.parse().unwrap_or_else(|_| panic!("{out}"))
    };
    let one = blocks(&["verify", "a", "--subset", "1/2"]);
    let two = blocks(&["verify", "a", "--subset", "2/2"]);
    let all = blocks(&["verify", "a", "--subset", "1/1"]);
    assert!(one > 0 && two > 0, "{one} {two}");
    assert_eq!(one + two, all, "the two halves cover every block once");
    env.ok(&["verify", "a", "--deep"]);

    // --source: the newest revision against the snapshot rbdelta keeps
    let out = env.ok(&["verify", "a", "--source"]);
    assert!(out.contains("a: 1 revision(s) verified"), "{out}");

    // Damage in a's newest delta: verify names it and distrusts it, list
    // and status show it, restore warns, the next backup is a full.
    let revs = env.revisions("a");
    let newest = revs[1]["id"].as_str().unwrap().to_string();
    flip_byte(
        &env.archive().join(format!("a/data/{newest}.delta")),
        4096 + 10,
    );
    let out = env.fails(&["verify", "--all"]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("a: revision {} is now distrusted", &newest[..12])),
        "{text}"
    );
    assert!(
        text.contains("b: 1 revision(s) verified"),
        "other volumes are still checked: {text}"
    );
    let list = env.ok(&["list", "a"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&newest[..12]) && l.contains("DISTRUSTED")),
        "{list}"
    );
    let status: serde_json::Value = serde_json::from_str(&env.ok(&["status", "--json"])).unwrap();
    assert_eq!(status[0]["distrusted"], 1, "{status}");
    let target = unique_name("scrub-restore");
    let _cleanup = ScratchImage::adopt(&io, &target);
    let out = env
        .cmd()
        .args([
            "restore",
            "a",
            "--to-image",
            &format!("{}/{target}", test_pool()),
        ])
        .output()
        .unwrap();
    assert!(stderr(&out).contains("is distrusted"), "{}", stderr(&out));
    let out = env.ok(&["backup", "a"]);
    assert!(out.contains("a: full "), "{out}");
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn repair_restores_a_bad_block_from_the_ceph_snapshot() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "repair", 8 * MIB);
    let img = io.open_image(&src.name).unwrap();
    img.write(0, &pattern(2 * MIB as usize, 5)).unwrap();
    let env = Env::new(&conf, &[("r", &src.name)]);
    env.ok(&["backup", "r"]);
    img.write(5 * MIB, &pattern(70_000, 6)).unwrap();
    env.ok(&["backup", "r"]);
    let newest = env.revisions("r")[1]["id"].as_str().unwrap().to_string();
    flip_byte(
        &env.archive().join(format!("r/data/{newest}.delta")),
        4096 + 77,
    );
    assert_eq!(env.fails(&["verify", "r"]).status.code(), Some(3));
    let out = env.ok(&["repair", "r"]);
    assert!(
        out.contains("repaired from Ceph snapshot") && out.contains("every revision verifies"),
        "{out}"
    );
    env.ok(&["verify", "r"]);
    let list = env.ok(&["list", "r"]);
    assert_eq!(
        list.lines().filter(|l| l.contains(" verified ")).count(),
        2,
        "{list}"
    );
}
