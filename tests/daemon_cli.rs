//! The scheduler daemon and the monitoring commands against the real test
//! cluster: schedules, catch-up across restarts, SIGHUP reload, SIGTERM
//! during a backup, retries of temporary failures only, and the status,
//! check and log outputs parsed the way monitoring would.

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::cli::{stderr, Env};
use common::{flip_byte, pattern, test_conf, test_ioctx, test_pool, ScratchImage};

const MIB: u64 = 1 << 20;

/// The daemon, logging to `<dir>/daemon.log`; SIGTERM on drop if alive.
struct Daemon(Child);

impl Daemon {
    fn start(env: &Env) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(env.dir.path().join("daemon.log"))
            .unwrap();
        let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("rbdelta"))
            .arg("-c")
            .arg(&env.config)
            .args(["--progress", "plain", "--progress-interval", "1", "daemon"])
            .env("RBDELTA_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Daemon(child)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signals a child process we own.
        assert_eq!(unsafe { libc::kill(self.0.id() as i32, sig) }, 0);
    }

    /// SIGTERM, then the exit status within `limit`.
    fn stop(mut self, limit: Duration) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let t = Instant::now();
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            assert!(
                t.elapsed() < limit,
                "the daemon did not stop within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits until this daemon has planned `volumes` (its status file names its
/// pid and a next backup for each), then asserts that none of them has a
/// job running: the positive sign that it is up and decided to wait.
fn planned_and_idle(env: &Env, d: &Daemon, volumes: &[&str]) {
    let path = env.archive().join(".rbdelta/status.json");
    let mut last = serde_json::Value::Null;
    wait_until(
        "the daemon's plan in its status file",
        Duration::from_secs(30),
        || {
            let Ok(v) = std::fs::read(&path)
                .map_err(|_| ())
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).map_err(|_| ()))
            else {
                return false;
            };
            last = v.clone();
            v["daemon"]["pid"] == d.0.id()
                && volumes.iter().all(|name| {
                    v["volumes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|e| e["volume"] == *name && e["next_backup"].is_string())
                })
        },
    );
    for e in last["volumes"].as_array().unwrap() {
        assert!(e["running"].is_null(), "a job started: {e}");
    }
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for a successful `op` of `volume` in the fleet log; shows that
/// log if none comes.
fn wait_for_ok(env: &Env, volume: &str, op: &str) {
    let t = Instant::now();
    loop {
        let log = fleet_log(env, volume);
        if log.iter().any(|r| r["op"] == op && r["outcome"] == "ok") {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "timed out waiting for a {op} of {volume}; its log:\n{}\nthe daemon's output:\n{}",
            log.iter().map(|r| format!("{r}\n")).collect::<String>(),
            std::fs::read_to_string(env.dir.path().join("daemon.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Revisions of `volume`, 0 when it has no archive yet.
fn count(env: &Env, volume: &str) -> usize {
    if !env.archive().join(volume).exists() {
        return 0;
    }
    env.revisions(volume).len()
}

fn image_with_data(
    io: &rbdelta::ceph::IoCtx,
    prefix: &str,
    size: u64,
    data: usize,
) -> ScratchImage {
    let s = ScratchImage::create(io, prefix, size);
    io.open_image(&s.name)
        .unwrap()
        .write(0, &pattern(data, 7))
        .unwrap();
    s
}

fn fleet_log(env: &Env, volume: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(env.archive().join(".rbdelta/log.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["volume"] == volume)
        .collect()
}

fn volume_yaml(name: &str, image: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    pool: {}\n    image: {image}\n{extra}",
        test_pool()
    )
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn daemon_runs_backups_and_verifies_by_schedule_and_writes_status() {
    let (conf, io) = (test_conf(), test_ioctx());
    let a = image_with_data(&io, "dmn-a", 8 * MIB, 300_000);
    let b = image_with_data(&io, "dmn-b", 8 * MIB, 300_000);
    let env = Env::with_yaml(
        &conf,
        &format!(
            "defaults:\n  schedule: \"*/2 * * * * *\"\n  verify-schedule: \"*/3 * * * * *\"\nvolumes:\n{}{}",
            volume_yaml("a", &a.name, "    fsck-schedule: \"*/4 * * * * *\"\n"),
            volume_yaml("b", &b.name, "")
        ),
    );
    let d = Daemon::start(&env);
    wait_until(
        "two backups of each volume",
        Duration::from_secs(60),
        || count(&env, "a") >= 2 && count(&env, "b") >= 2,
    );
    wait_for_ok(&env, "a", "verify");
    // a's fsck: no partition table, no filesystem it knows: skipped, ok
    wait_for_ok(&env, "a", "fsck");
    assert!(fleet_log(&env, "b").iter().all(|r| r["op"] != "fsck"));
    let status = d.stop(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.archive().join(".rbdelta/status.json")).unwrap())
            .unwrap();
    let vols = file["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 2);
    for v in vols {
        assert!(v["last_success"]["unix"].as_i64().unwrap() > 0, "{v}");
        assert!(v["next_backup"].as_str().is_some(), "{v}");
        assert_eq!(
            v["running"],
            serde_json::Value::Null,
            "nothing runs after a clean stop"
        );
        assert!(v["revisions"].as_u64().unwrap() >= 2);
    }
    assert!(file["daemon"]["pid"].as_u64().is_some());
    assert_eq!(vols[0]["last_fsck"]["ok"], true, "{}", vols[0]);
    assert!(vols[0]["next_fsck"].is_string() && vols[1]["next_fsck"].is_null());
    env.ok(&["verify", "a"]);
    env.ok(&["verify", "b"]);
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn daemon_catches_up_once_reloads_on_sighup_and_not_again_after_restart() {
    let (conf, io) = (test_conf(), test_ioctx());
    let a = image_with_data(&io, "cu-a", 4 * MIB, 100_000);
    let b = image_with_data(&io, "cu-b", 4 * MIB, 100_000);
    // Yearly: the last scheduled run (1 January) passed long ago.
    let head = "defaults:\n  schedule: \"0 0 1 1 *\"\nvolumes:\n";
    let env = Env::with_yaml(&conf, &format!("{head}{}", volume_yaml("a", &a.name, "")));
    let d = Daemon::start(&env);
    wait_until("the catch-up backup of a", Duration::from_secs(30), || {
        count(&env, "a") == 1
    });
    // add b and reload
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!("{text}{}", volume_yaml("b", &b.name, "")),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    wait_until("b after the reload", Duration::from_secs(30), || {
        count(&env, "b") == 1
    });
    assert!(d.stop(Duration::from_secs(30)).success());
    // A restart finds both backed up since the last scheduled run.
    let d = Daemon::start(&env);
    planned_and_idle(&env, &d, &["a", "b"]);
    assert!(d.stop(Duration::from_secs(30)).success());
    assert_eq!(
        (count(&env, "a"), count(&env, "b")),
        (1, 1),
        "no second catch-up"
    );
    // catch-up off: a new volume waits for its schedule
    let c = image_with_data(&io, "cu-c", 4 * MIB, 1000);
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!(
            "{}{}",
            text.replace("defaults:\n", "defaults:\n  catch-up: false\n"),
            volume_yaml("c", &c.name, "")
        ),
    )
    .unwrap();
    let d = Daemon::start(&env);
    planned_and_idle(&env, &d, &["a", "b", "c"]);
    assert!(d.stop(Duration::from_secs(30)).success());
    assert_eq!(count(&env, "c"), 0);
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn sigterm_during_a_backup_aborts_it_cleanly() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = image_with_data(&io, "term", 32 * MIB, 2_000_000);
    let env = Env::with_yaml(
        &conf,
        &format!("volumes:\n{}", volume_yaml("slow", &src.name, "")),
    );
    env.ok(&["backup", "slow"]);
    io.open_image(&src.name)
        .unwrap()
        .write(4 * MIB, &pattern(20 * MIB as usize, 8))
        .unwrap();
    // Throttled to 1 MiB/s, the 20 MiB delta takes about 20 s; the
    // schedule fires every second, so the daemon starts at once.
    std::fs::write(
        &env.config,
        std::fs::read_to_string(&env.config).unwrap().replace(
            "volumes:\n",
            "defaults:\n  schedule: \"* * * * * *\"\n  bandwidth: 1MiB\nvolumes:\n",
        ),
    )
    .unwrap();
    let d = Daemon::start(&env);
    let vlog = env.archive().join("slow/log.jsonl");
    wait_until(
        "the daemon's backup to start",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&vlog)
                .unwrap_or_default()
                .matches("\"event\":\"start\"")
                .count()
                == 2
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let status = d.stop(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "stopping took {:?}",
        t.elapsed()
    );
    // plain progress: a start line and periodic lines with a percentage
    let log = std::fs::read_to_string(env.dir.path().join("daemon.log")).unwrap();
    assert!(log.contains("rbdelta: slow: backup started"), "{log}");
    assert!(
        log.lines().any(|l| l.starts_with("rbdelta: slow: delta ")
            && l.contains("% (")
            && l.contains("/s")),
        "{log}"
    );
    let last = fleet_log(&env, "slow").pop().unwrap();
    assert!(
        last["error"].as_str().unwrap().starts_with("cancelled"),
        "{last}"
    );
    assert_eq!(count(&env, "slow"), 1, "no half revision");
    assert!(!env.archive().join("slow/pending.json").exists());
    let snaps = io.open_image(&src.name).unwrap().snap_list().unwrap();
    assert_eq!(
        snaps.len(),
        1,
        "only the first revision's snapshot: {snaps:?}"
    );
    env.ok(&["verify", "slow"]);
    // the next run is a normal delta
    std::fs::write(
        &env.config,
        std::fs::read_to_string(&env.config)
            .unwrap()
            .replace("  bandwidth: 1MiB\n", ""),
    )
    .unwrap();
    let out = env.ok(&["backup", "slow"]);
    assert!(out.contains(": delta "), "{out}");
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn daemon_retries_temporary_failures_but_not_permanent_ones() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = image_with_data(&io, "flaky", 4 * MIB, 10_000);
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("failed-once");
    let env = Env::with_yaml(
        &conf,
        &format!(
            "defaults:\n  schedule: \"0 0 1 1 *\"\n  retry-delay: 1s\nvolumes:\n{}{}",
            volume_yaml(
                "flaky",
                &src.name,
                &format!("    hooks:\n      pre: 'if [ ! -e {m} ]; then touch {m}; echo not yet >&2; exit 1; fi'\n", m = marker.display())
            ),
            volume_yaml("gone", "no-such-image-here", "")
        ),
    );
    let d = Daemon::start(&env);
    wait_until("the retried backup", Duration::from_secs(30), || {
        count(&env, "flaky") == 1
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(d.stop(Duration::from_secs(30)).success());
    let flaky: Vec<_> = fleet_log(&env, "flaky")
        .iter()
        .map(|r| r["outcome"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(flaky, ["error", "ok"]);
    let gone = fleet_log(&env, "gone");
    assert_eq!(gone.len(), 1, "a missing image is not retried: {gone:?}");
    assert_eq!(gone[0]["transient"], false);
}

fn check(env: &Env, args: &[&str]) -> (i32, String) {
    let out = env.cmd().arg("check").args(args).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn status_prometheus_check_and_log_report_what_happened() {
    let (conf, io) = (test_conf(), test_ioctx());
    let a = image_with_data(&io, "st-a", 4 * MIB, 100_000);
    let b = image_with_data(&io, "st-b", 4 * MIB, 100_000);
    let env = Env::with_yaml(
        &conf,
        &format!(
            "volumes:\n{}{}",
            volume_yaml("a", &a.name, ""),
            volume_yaml("b", &b.name, "")
        ),
    );
    env.ok(&["backup", "--all"]);
    let (code, line) = check(&env, &[]);
    assert_eq!(code, 0, "{line}");
    assert!(line.starts_with("RBDELTA OK - 2 volume(s)"), "{line}");
    assert_eq!(line.lines().count(), 1);

    let json: serde_json::Value = serde_json::from_str(&env.ok(&["status", "--json"])).unwrap();
    let vols = json.as_array().unwrap();
    assert_eq!(vols.len(), 2);
    for v in vols {
        assert_eq!(v["revisions"], 1);
        assert_eq!(v["last_success"]["kind"], "full");
        assert!(v["archive_bytes"].as_u64().unwrap() >= 100_000);
        assert_eq!(v["consecutive_failures"], 0);
    }

    // a broken volume: CRITICAL, and the failure shows everywhere
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!("{text}{}", volume_yaml("broken", "not-there", "")),
    )
    .unwrap();
    let out = env.fails(&["backup", "--all"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let (code, line) = check(&env, &[]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with(
            "RBDELTA CRITICAL - 3 volume(s): 1 critical, 0 warning, 2 ok; broken: never backed up"
        ),
        "{line}"
    );
    // one volume at a time (the fleet log scanned for its name only)
    let (code, line) = check(&env, &["broken"]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with("RBDELTA CRITICAL - 1 volume(s): 1 critical, 0 warning, 0 ok; broken:"),
        "{line}"
    );
    let (code, line) = check(&env, &["a"]);
    assert_eq!(code, 0, "{line}");
    assert!(line.starts_with("RBDELTA OK - 1 volume(s)"), "{line}");
    let one: serde_json::Value =
        serde_json::from_str(&env.ok(&["status", "broken", "--json"])).unwrap();
    let one = one.as_array().unwrap();
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(one[0]["volume"], "broken");
    assert_eq!(one[0]["consecutive_failures"], 1);
    let out = env.fails(&["status", "nosuch"]);
    assert!(
        stderr(&out).contains("no volume named \"nosuch\""),
        "{}",
        stderr(&out)
    );
    let prom = env.ok(&["status", "--format", "prometheus"]);
    let mut samples = std::collections::HashMap::new();
    for l in prom.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = l.rsplit_once(' ').unwrap();
        samples.insert(
            name.to_string(),
            value.parse::<f64>().unwrap_or_else(|e| panic!("{e}: {l}")),
        );
    }
    assert_eq!(samples["rbdelta_revisions{volume=\"a\"}"], 2.0);
    assert_eq!(
        samples["rbdelta_consecutive_failures{volume=\"broken\"}"],
        1.0
    );
    assert!(samples["rbdelta_last_success_timestamp_seconds{volume=\"b\"}"] > 1.7e9);
    assert!(!samples.contains_key("rbdelta_last_success_timestamp_seconds{volume=\"broken\"}"));

    // thresholds: a second old is too old with --warning 1s
    std::thread::sleep(Duration::from_secs(2));
    let (code, line) = check(&env, &["a", "b", "--warning", "1s"]);
    assert_eq!(code, 1, "{line}");
    assert!(line.starts_with("RBDELTA WARNING"), "{line}");

    // a failed verify is CRITICAL
    let full = std::fs::read_dir(env.archive().join("a/data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "full"))
        .unwrap();
    flip_byte(&full, 50_000);
    assert_eq!(env.fails(&["verify", "a"]).status.code(), Some(3));
    let (code, line) = check(&env, &["a"]);
    assert_eq!(code, 2, "{line}");
    assert!(line.contains("a: last verify failed"), "{line}");

    // the log: fleet-wide and per volume, text and JSON
    let log = env.ok(&["log"]);
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("  broken  backup end  error"))
            .count(),
        1,
        "{log}"
    );
    let a_log = env.ok(&["log", "a", "--json"]);
    let recs: Vec<serde_json::Value> = a_log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ops: Vec<String> = recs
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["op"].as_str().unwrap(),
                r["event"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            "backup start",
            "backup end",
            "backup start",
            "backup end",
            "verify start",
            "verify end"
        ],
        "{a_log}"
    );
    let broken = env.ok(&["log", "broken"]);
    assert!(
        broken.contains("not-there"),
        "failures before the volume log are shown: {broken}"
    );
    assert_eq!(env.ok(&["log", "-n", "1"]).lines().count(), 1);
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_second_daemon_on_the_same_archive_refuses_to_start() {
    let (conf, io) = (test_conf(), test_ioctx());
    let a = image_with_data(&io, "dmn-two", 4 * MIB, 10_000);
    let env = Env::with_yaml(
        &conf,
        &format!(
            "defaults:\n  schedule: \"0 0 1 1 *\"\n  catch-up: false\nvolumes:\n{}",
            volume_yaml("a", &a.name, "")
        ),
    );
    let d = Daemon::start(&env);
    planned_and_idle(&env, &d, &["a"]);
    let mut second = std::process::Command::new(assert_cmd::cargo::cargo_bin("rbdelta"))
        .arg("-c")
        .arg(&env.config)
        .args(["--no-progress", "daemon"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while second.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(10) {
            let _ = second.kill();
            panic!("a second daemon started on the same archive");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = second.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "another rbdelta daemon (pid {}) runs on this archive",
            d.0.id()
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        d.stop(Duration::from_secs(30)).success(),
        "the first one still runs"
    );
}

/// A fleet-log record whose time is damaged is damage, not a backup made
/// in 1970: the daemon does not catch the volume up for it (a yearly
/// schedule whose last run passed long ago would), says why in its log,
/// and `status` and `check` report the line.
#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_damaged_time_in_the_fleet_log_is_reported_and_triggers_no_catch_up() {
    let (conf, io) = (test_conf(), test_ioctx());
    let a = image_with_data(&io, "dt-a", 4 * MIB, 1000);
    let head = "defaults:\n  schedule: \"0 0 1 1 *\"\nvolumes:\n";
    let env = Env::with_yaml(&conf, &format!("{head}{}", volume_yaml("a", &a.name, "")));
    std::fs::create_dir_all(env.archive().join(".rbdelta")).unwrap();
    std::fs::write(
        env.archive().join(".rbdelta/log.jsonl"),
        "{\"time\":\"2026-13-45T99:00:00Z\",\"op\":\"backup\",\"event\":\"end\",\
         \"volume\":\"a\",\"outcome\":\"ok\",\"kind\":\"full\"}\n",
    )
    .unwrap();
    let d = Daemon::start(&env);
    planned_and_idle(&env, &d, &["a"]);
    // (a catch-up would start at once; give it time to show)
    std::thread::sleep(Duration::from_secs(3));
    assert!(d.stop(Duration::from_secs(30)).success());
    let log = std::fs::read_to_string(env.dir.path().join("daemon.log")).unwrap();
    assert_eq!(count(&env, "a"), 0, "caught up for a damaged time:\n{log}");
    assert!(
        log.contains("backup end record of a with an unreadable time \"2026-13-45T99:00:00Z\"")
            && log.contains("no catch-up"),
        "{log}"
    );
    let status: serde_json::Value = serde_json::from_str(&env.ok(&["status", "--json"])).unwrap();
    let a = &status[0];
    assert!(a["last_success"].is_null(), "{a}");
    assert!(
        a["log_damage"][0]
            .as_str()
            .is_some_and(|d| d.contains("unreadable time")),
        "{a}"
    );
    let check = env.cmd().args(["check"]).output().unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        out.contains("log damaged") && out.contains("unreadable time"),
        "{out}{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
