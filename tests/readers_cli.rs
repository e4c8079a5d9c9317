//! Readers never wait for writers: `restore`, `verify` and `list` of a
//! volume work while its backup runs, and a restore or verify whose
//! revisions a prune removes meanwhile still reads them byte-exact. The
//! processes are held at known points with the test-only pause hook
//! (`RBDELTA_TEST_PAUSE`, fault-injection builds only).

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::cli::{read_image, Env, Paused};
use common::{pattern, test_conf, test_ioctx, ScratchImage};

const MIB: u64 = 1 << 20;

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Three revisions of volume `v` (a full and two deltas, the image growing
/// in between) and each revision's bytes as the image held them.
fn three_revisions(prefix: &str, keep: u32) -> (Env, ScratchImage, Vec<String>, Vec<Vec<u8>>) {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, prefix, 8 * MIB);
    let img = io.open_image(&src.name).unwrap();
    let env = Env::keeping_last(&conf, &src.name, keep);
    let mut bytes = Vec::new();
    for i in 0..3u64 {
        img.write(i * 2 * MIB + 4096, &pattern(3 * MIB as usize, 40 + i))
            .unwrap();
        if i == 1 {
            img.resize(9 * MIB + 512).unwrap();
        }
        env.ok(&["backup", "v"]);
        bytes.push(read_image(&io, &src.name, None));
    }
    let ids = env
        .revisions("v")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    (env, src, ids, bytes)
}

fn restore_to(env: &Env, rev: &str, out: &Path) -> Paused {
    Paused::start(
        env,
        &[
            "restore",
            "v",
            "--revision",
            rev,
            "--to-file",
            out.to_str().unwrap(),
        ],
        "restore: chain open",
    )
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_restore_started_before_a_prune_removes_its_base_restores_byte_exact() {
    common::require_fault_injection();
    let (env, _src, ids, bytes) = three_revisions("readers-prune", 1);
    // Both restores have their chains open: revision 2 (which the prune
    // removes) and revision 3 (whose base and base's base it removes).
    let (a, b) = (env.dir.path().join("a.img"), env.dir.path().join("b.img"));
    let ra = restore_to(&env, &ids[1], &a);
    let rb = restore_to(&env, &ids[2], &b);
    // The prune never waits for them, and finishes its whole job.
    let t = Instant::now();
    let out = env.ok(&["prune", "v"]);
    assert!(out.contains("2 revision(s) removed"), "{out}");
    eprintln!("prune beside two open restores took {:?}", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "the prune waited {:?}",
        t.elapsed()
    );
    let kinds: Vec<String> = env
        .revisions("v")
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                r["id"].as_str().unwrap(),
                r["kind"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(kinds, [format!("{}:full", ids[2])], "a synthetic full now");
    // and the readers read what they opened, exactly
    ok(&ra.finish(), "restore of the removed revision");
    ok(&rb.finish(), "restore of the kept revision");
    assert!(std::fs::read(&a).unwrap() == bytes[1], "revision 2 differs");
    assert!(std::fs::read(&b).unwrap() == bytes[2], "revision 3 differs");
    env.ok(&["verify", "v", "--deep"]);
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn verify_restore_and_list_run_while_a_backup_of_the_volume_runs() {
    common::require_fault_injection();
    let (env, src, ids, bytes) = three_revisions("readers-backup", 100);
    let io = test_ioctx();
    io.open_image(&src.name)
        .unwrap()
        .write(MIB, &pattern(MIB as usize, 99))
        .unwrap();
    let backup = Paused::start(&env, &["backup", "v"], "backup: data copied");
    // the backup holds the volume's writer lock, data copied, not committed
    let out = env.ok(&["verify", "v"]);
    assert!(out.contains("3 revision(s) verified"), "{out}");
    assert_eq!(env.revisions("v").len(), 3);
    let file = env.dir.path().join("latest.img");
    env.ok(&["restore", "v", "--to-file", file.to_str().unwrap()]);
    assert!(std::fs::read(&file).unwrap() == bytes[2]);
    env.ok(&["verify", "v", "--revision", &ids[0][..12], "--deep"]);
    // a second writer still fails at once
    let out = env.fails(&["synthetic-full", "v", &ids[1][..12]]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("locked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&backup.finish(), "the backup");
    assert_eq!(env.revisions("v").len(), 4);
    env.ok(&["verify", "v"]);
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_verify_that_meets_a_prune_passes_and_records_no_removed_revision() {
    common::require_fault_injection();
    let (env, _src, ids, _bytes) = three_revisions("readers-verify", 1);
    let v = Paused::start(&env, &["verify", "v", "--deep"], "verify: chains open");
    env.ok(&["prune", "v"]);
    let out = ok(&v.finish(), "verify across a prune");
    assert!(out.contains("3 revision(s) verified"), "{out}");
    // trust was recorded only for what still exists
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.archive().join("v/state.json")).unwrap())
            .unwrap();
    let recorded: Vec<&String> = state["revisions"].as_object().unwrap().keys().collect();
    assert_eq!(recorded, [&ids[2]], "{state}");
    // and a verify of a revision already removed says so clearly
    let out = env.fails(&["verify", "v", "--revision", &ids[0]]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no revision"), "{err}");
}
