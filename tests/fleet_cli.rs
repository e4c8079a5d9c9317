//! End-to-end tests of fleet runs against the real test cluster: pool
//! selections, parallel `backup --all` with a broken volume, the JSON
//! progress stream, hooks around the snapshot, bandwidth limits, the
//! full-every policy and `config check`.

mod common;

use common::cli::{stderr, Env};
use common::{pattern, test_conf, test_ioctx, test_pool, unique_name, ScratchImage};

const MIB: u64 = 1 << 20;

/// Images `{prefix}-{suffix}` with a little data each.
fn images(io: &rbdelta::ceph::IoCtx, prefix: &str, suffixes: &[&str]) -> Vec<ScratchImage> {
    suffixes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let name = format!("{prefix}-{s}");
            io.create_image(&name, 4 * MIB, 0, 0).unwrap();
            let img = io.open_image(&name).unwrap();
            img.write(MIB, &pattern(300_000, i as u64)).unwrap();
            ScratchImage::adopt(io, &name)
        })
        .collect()
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn backup_all_runs_a_pool_selection_in_parallel_and_a_broken_volume_fails_alone() {
    let (conf, io) = (test_conf(), test_ioctx());
    let p = unique_name("fleet");
    let vms: Vec<String> = (0..10).map(|i| format!("vm-{i}")).collect();
    let mut suffixes: Vec<&str> = vms.iter().map(String::as_str).collect();
    suffixes.extend(["vm-8-tmp", "db-1"]);
    let _images = images(&io, &p, &suffixes);
    let env = Env::with_yaml(
        &conf,
        &format!(
            "defaults:\n  parallel: 2\nvolumes:\n  - pool: {pool}\n    include: [\"{p}-vm-*\"]\n    exclude: [\"*-tmp\"]\n    name: \"sel-{{image}}\"\n  - name: broken\n    pool: {pool}\n    image: {p}-missing\n",
            pool = test_pool()
        ),
    );

    // config check --cluster lists what the selection resolves to and
    // names the missing image with its line.
    let out = env.fails(&["config", "check", "--cluster"]);
    assert_eq!(out.status.code(), Some(2));
    let listing = String::from_utf8_lossy(&out.stdout);
    for vm in &vms {
        assert!(
            listing.contains(&format!("sel-{p}-{vm} ")),
            "{vm}: {listing}"
        );
    }
    assert!(
        !listing.contains("tmp") && !listing.contains("db-1"),
        "{listing}"
    );
    assert!(
        stderr(&out).contains(&format!(
            "config.yaml:14: image {}/{p}-missing does not exist",
            test_pool()
        )),
        "{}",
        stderr(&out)
    );

    let out = env.fails(&["backup", "--all", "--jobs", "4"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("broken: backup failed"),
        "{}",
        stderr(&out)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("11 volumes: 10 ok, 1 failed"), "{table}");
    let failed_rows: Vec<_> = table.lines().filter(|l| l.contains("FAILED")).collect();
    assert_eq!(failed_rows.len(), 1, "{table}");
    assert!(failed_rows[0].starts_with("broken "), "{table}");
    for vm in &vms {
        let revs = env.revisions(&format!("sel-{p}-{vm}"));
        assert_eq!(revs.len(), 1, "{vm}");
        assert_eq!(revs[0]["kind"], "full");
    }

    // Second night: one image changed; JSON lines for other tools.
    io.open_image(&format!("{p}-vm-3"))
        .unwrap()
        .write(0, &pattern(1000, 99))
        .unwrap();
    let out = env
        .cmd()
        .args(["--progress", "json", "backup", "--all", "-j", "4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let ends: Vec<_> = events.iter().filter(|e| e["event"] == "end").collect();
    assert_eq!(ends.len(), 11);
    assert_eq!(events.iter().filter(|e| e["event"] == "start").count(), 11);
    for e in &ends {
        let vol = e["volume"].as_str().unwrap();
        if vol == "broken" {
            assert_eq!(e["ok"], false);
            assert_eq!(e["transient"], false, "a missing image is permanent: {e}");
        } else {
            assert_eq!(e["ok"], true, "{e}");
            assert_eq!(e["kind"], "delta");
            let changed = vol.ends_with("vm-3");
            assert_eq!(e["bytes_written"].as_u64().unwrap() > 0, changed, "{e}");
        }
    }
    let summary = events.last().unwrap();
    assert_eq!(summary["event"], "summary");
    assert_eq!(summary["failed"], 1);

    // The fleet log has every outcome, the broken volume's included.
    let log = std::fs::read_to_string(env.archive().join(".rbdelta/log.jsonl")).unwrap();
    let broken: Vec<_> = log
        .lines()
        .filter(|l| l.contains("\"volume\":\"broken\""))
        .collect();
    assert_eq!(broken.len(), 2, "{log}");
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn hooks_run_around_the_snapshot_and_a_failing_pre_hook_aborts_cleanly() {
    let (conf, io) = (test_conf(), test_ioctx());
    let a = ScratchImage::create(&io, "hook-ok", 4 * MIB);
    let b = ScratchImage::create(&io, "hook-bad", 4 * MIB);
    io.open_image(&b.name)
        .unwrap()
        .write(0, &pattern(5000, 1))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hooks.log");
    // the good volume's pre hook leaves a sleep behind, holding its stderr
    let bg = dir.path().join("background.pid");
    let env = Env::with_yaml(
        &conf,
        &format!(
            r#"defaults:
  stall-timeout: 2m
  hooks:
    pre: 'echo "pre $RBDELTA_VOLUME $RBDELTA_POOL/$RBDELTA_IMAGE $RBDELTA_PHASE" >> {log}; sleep 1000 & echo $! > {bg}'
    post: 'echo "post $RBDELTA_VOLUME" >> {log}'
volumes:
  - name: good
    pool: {pool}
    image: {a}
  - name: bad
    pool: {pool}
    image: {b}
    hooks:
      pre: 'echo "guest agent not answering" >&2; exit 7'
      post: 'echo "post-after-failure $RBDELTA_VOLUME" >> {log}'
"#,
            log = log.display(),
            bg = bg.display(),
            pool = test_pool(),
            a = a.name,
            b = b.name
        ),
    );
    let started = std::time::Instant::now();
    let out = env.fails(&["backup", "--all"]);
    // well before the stall timeout (2m) that would otherwise end it
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    let pid: i32 = std::fs::read_to_string(&bg)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: signal 0 only asks whether the process exists.
    let left = unsafe { libc::kill(pid, 0) } == 0
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z");
    if left {
        // SAFETY: the sleep this test's hook started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(!left, "the hook's background sleep outlived the backup");
    let err = stderr(&out);
    assert!(
        err.contains("bad: backup failed: hook: pre hook failed")
            && err.contains("guest agent not answering"),
        "{err}"
    );
    let lines = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert!(
        lines.contains(&format!("pre good {}/{} pre", test_pool(), a.name).as_str()),
        "{lines:?}"
    );
    let pre = lines
        .iter()
        .position(|l| l.starts_with("pre good"))
        .unwrap();
    let post = lines.iter().position(|l| *l == "post good").unwrap();
    assert!(pre < post, "{lines:?}");
    assert!(
        lines.contains(&"post-after-failure bad"),
        "the post hook runs after a failed pre hook: {lines:?}"
    );
    assert_eq!(env.revisions("good").len(), 1);
    // the failed backup left no revision and no snapshot
    // (a volume listed in the config lists, even with no revision yet)
    assert_eq!(env.revisions("bad"), Vec::<serde_json::Value>::new());
    let snaps = io.open_image(&b.name).unwrap().snap_list().unwrap();
    assert!(snaps.is_empty(), "{snaps:?}");
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn bandwidth_limit_and_full_every_policy() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "bw", 8 * MIB);
    let img = io.open_image(&src.name).unwrap();
    img.write(0, &pattern(4 * MIB as usize, 5)).unwrap();
    let env = Env::with_yaml(
        &conf,
        &format!(
            "volumes:\n  - name: bw\n    pool: {}\n    image: {}\n    bandwidth: 2MiB\n    full-every: 2\n",
            test_pool(),
            src.name
        ),
    );
    let t = std::time::Instant::now();
    env.ok(&["backup", "bw"]);
    // 4 MiB at 2 MiB/s cannot take less than about 2 s (lower bound only:
    // a slow machine makes it longer, never shorter).
    assert!(t.elapsed().as_secs_f64() > 1.5, "{:?}", t.elapsed());
    for i in 0..3 {
        img.write(i * MIB, &pattern(1000, 10 + i)).unwrap();
        env.ok(&["backup", "bw"]);
    }
    let kinds: Vec<String> = env
        .revisions("bw")
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["full", "delta", "delta", "full"]);
}

#[test]
fn config_check_reports_errors_with_line_and_key() {
    // No cluster needed: `config check` without --cluster never connects.
    let conf = std::path::PathBuf::from("/nonexistent/ceph.conf");
    let env = Env::with_yaml(
        &conf,
        "volumes:\n  - pool: rbd\n    image: a\n    schedule: \"0 3 * * 8\"\n",
    );
    let out = env.fails(&["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("config.yaml:10: volumes[0].schedule:"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    let env = Env::new(&conf, &[("a", "a")]);
    let out = env.ok(&["config", "check"]);
    assert!(out.contains("ok: 1 image(s), 0 pool selection(s)"), "{out}");
}

/// Volume `name` over a fresh 4 MiB image with some data.
fn one_volume(
    conf: &std::path::Path,
    io: &rbdelta::ceph::IoCtx,
    name: &str,
    seed: u64,
) -> (ScratchImage, Env) {
    let src = ScratchImage::create(io, name, 4 * MIB);
    io.open_image(&src.name)
        .unwrap()
        .write(0, &pattern(50_000, seed))
        .unwrap();
    let env = Env::new(conf, &[(name, &src.name)]);
    (src, env)
}

/// Runs rbdelta `args` with backup workers failing as `fault` says
/// (`RBDELTA_TEST_JOB_FAULT`), logging at info level; its output and
/// stderr.
fn with_job_fault(env: &Env, fault: &str, args: &[&str]) -> (std::process::Output, String) {
    let out = env
        .cmd()
        .env("RBDELTA_LOG", "info")
        .env("RBDELTA_TEST_JOB_FAULT", fault)
        .args(args)
        .output()
        .unwrap();
    let err = stderr(&out);
    (out, err)
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_dead_worker_is_retried_and_a_hung_one_is_killed_while_the_others_finish() {
    common::require_fault_injection();
    let (conf, io) = (test_conf(), test_ioctx());
    let p = unique_name("worker");
    let imgs = images(&io, &p, &["a", "b", "c"]);
    let yaml = format!(
        "defaults:\n  parallel: 2\nvolumes:\n  - pool: {}\n    include: [\"{p}-*\"]\n    name: \"{{image}}\"\n",
        test_pool()
    );
    let env = Env::with_yaml(&conf, &yaml);
    env.ok(&["backup", "--all"]);
    let config = std::fs::read_to_string(&env.config).unwrap();
    let vol = |s: &str| format!("{p}-{s}");
    let fleet_log = || std::fs::read_to_string(env.archive().join(".rbdelta/log.jsonl")).unwrap();

    // b's worker aborts mid-backup (volume locked, snapshot taken) once:
    // the job is retried in a new worker and the run succeeds.
    io.open_image(&imgs[1].name)
        .unwrap()
        .write(0, &pattern(70_000, 9))
        .unwrap();
    let once = env.dir.path().join("aborted-once");
    let (out, err) = with_job_fault(
        &env,
        &format!("{}:abort:{}", vol("b"), once.display()),
        &["backup", "--all"],
    );
    assert!(out.status.success(), "{err}");
    assert!(once.exists(), "the fault was never reached");
    assert!(
        err.contains(&format!("{}: backup worker died", vol("b")))
            && err.contains("retrying in a new worker"),
        "{err}"
    );
    for s in ["a", "b", "c"] {
        assert_eq!(env.revisions(&vol(s)).len(), 2, "{s}");
    }
    let log = fleet_log();
    assert!(
        log.lines().any(|l| l.contains(&vol("b"))
            && l.contains("backup worker died")
            && l.contains("SIGABRT")
            && l.contains("\"transient\":true")),
        "{log}"
    );
    env.ok(&["verify", &vol("b")]);

    // c's worker hangs: killed after the stall timeout (and once more on
    // the retry); a and b are backed up regardless and the exit code says
    // one volume failed.
    std::fs::write(
        &env.config,
        // long enough that a healthy worker on a loaded test machine (a
        // cephx connection per job) never looks stalled
        config.replace("parallel: 2", "parallel: 2\n  stall-timeout: 6s"),
    )
    .unwrap();
    let t = std::time::Instant::now();
    let (out, err) = with_job_fault(&env, &format!("{}:hang", vol("c")), &["backup", "--all"]);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(t.elapsed().as_secs() < 60, "{:?}", t.elapsed());
    assert!(
        err.contains("reported no progress for 6s and was killed"),
        "{err}"
    );
    assert_eq!(env.revisions(&vol("a")).len(), 3, "{err}");
    assert_eq!(env.revisions(&vol("b")).len(), 3, "{err}");
    assert_eq!(env.revisions(&vol("c")).len(), 2);
    // Nothing half-done is visible, and the next run cleans up (cutting
    // the killed worker's client off the image) and succeeds.
    std::fs::write(&env.config, &config).unwrap();
    env.ok(&["verify", &vol("c")]);
    env.ok(&["backup", &vol("c")]);
    env.ok(&["verify", &vol("c")]);
    assert_eq!(env.revisions(&vol("c")).len(), 3);
    let snaps = io.open_image(&imgs[2].name).unwrap().snap_list().unwrap();
    assert_eq!(snaps.len(), 1, "stale snapshots are removed: {snaps:?}");
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_worker_stuck_taking_the_snapshot_is_killed_long_before_the_stall_timeout() {
    common::require_fault_injection();
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "snaphang", 4 * MIB);
    let env = Env::new(&conf, &[("snaphang", &src.name)]);
    // client timeout 5 s: a snapshot may take 3 × 5 + 30 = 45 s, while
    // stall-timeout stays at its default of 30 min
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, config.replace("timeout: 20", "timeout: 5")).unwrap();
    let once = env.dir.path().join("hung-once");
    let t = std::time::Instant::now();
    let (out, err) = with_job_fault(
        &env,
        &format!("snaphang:hang-snapshot:{}", once.display()),
        &["backup", "snaphang"],
    );
    assert!(out.status.success(), "{err}");
    assert!(once.exists(), "the fault was never reached");
    assert!(
        err.contains("was still taking the snapshot after 45s and was killed")
            && err.contains("retrying in a new worker"),
        "{err}"
    );
    assert!(t.elapsed().as_secs() < 150, "{:?}", t.elapsed());
    assert_eq!(env.revisions("snaphang").len(), 1);
    env.ok(&["verify", "snaphang"]);
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_worker_dead_before_its_intent_record_is_cut_off_by_the_retry() {
    common::require_fault_injection();
    let (conf, io) = (test_conf(), test_ioctx());
    let (_src, env) = one_volume(&conf, &io, "opendeath", 3);
    // The worker aborts with the image open (its watch registered) before
    // any record in the archive names it; only the parent knows its
    // client, and the retry must cut that off rather than wait for Ceph to
    // time the watch out.
    let once = env.dir.path().join("died-once");
    let (out, err) = with_job_fault(
        &env,
        &format!("opendeath:abort-opened:{}", once.display()),
        &["backup", "opendeath"],
    );
    assert!(out.status.success(), "{err}");
    assert!(once.exists(), "the fault was never reached");
    assert!(err.contains("retrying in a new worker"), "{err}");
    assert!(
        err.contains("cut off client.")
            && err.contains("the connection of a backup worker that died on this job"),
        "{err}"
    );
    assert_eq!(env.revisions("opendeath").len(), 1);
    env.ok(&["verify", "opendeath"]);
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_dead_worker_is_cut_off_even_while_another_process_holds_the_volume() {
    common::require_fault_injection();
    let (conf, io) = (test_conf(), test_ioctx());
    let (src, env) = one_volume(&conf, &io, "heldvol", 5);
    env.ok(&["backup", "heldvol"]);
    // A prune or merge holds the volume while the worker dies with the
    // image open: its retry cannot back up, but the dead connection (which
    // could hold the image's exclusive lock, stalling the VM) must not wait
    // for the volume to be free, nor for Ceph's 30 s watch timeout.
    let dir = rbdelta::archive::VolumeDir::open(&env.archive(), "heldvol").unwrap();
    let held = dir.lock().unwrap();
    let once = env.dir.path().join("died-once");
    let (out, err) = with_job_fault(
        &env,
        &format!("heldvol:abort-opened:{}", once.display()),
        &["backup", "heldvol"],
    );
    drop(held);
    assert!(!out.status.success(), "{err}");
    assert!(once.exists(), "the fault was never reached");
    assert!(
        err.contains("is locked by another rbdelta process"),
        "{err}"
    );
    assert!(
        err.contains("cut off client.")
            && err.contains("the connection of a backup worker that died on this job"),
        "{err}"
    );
    let watchers = io.open_image(&src.name).unwrap().watchers().unwrap();
    assert_eq!(
        watchers.len(),
        1,
        "only this check's own watch: {watchers:?}"
    );
    assert_eq!(env.revisions("heldvol").len(), 1);
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn when_the_retry_dies_too_a_fresh_worker_cuts_both_dead_connections_off() {
    common::require_fault_injection();
    let (conf, io) = (test_conf(), test_ioctx());
    let (src, env) = one_volume(&conf, &io, "diestwice", 7);
    // Every backup worker of this volume dies with the image open, the
    // retry's included, before either could cut anything off.
    let (out, err) = with_job_fault(&env, "diestwice:abort-opened", &["backup", "diestwice"]);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("retrying in a new worker"), "{err}");
    assert_eq!(
        err.matches("the connection of a backup worker that died on this job")
            .count(),
        2,
        "{err}"
    );
    let watchers = io.open_image(&src.name).unwrap().watchers().unwrap();
    assert_eq!(
        watchers.len(),
        1,
        "only this check's own watch: {watchers:?}"
    );
}
