//! Several backup hosts sharing one fleet (issue 13), on the real cluster:
//! three daemons, as separate processes, each with its own ceph-fuse mount
//! of one CephFS archive and its own node name, share 30 volumes on a
//! schedule with a slot every `RBDELTA_TEST_NODES_SLOT` seconds (20 in CI;
//! `RBDELTA_TEST_NODES_SLOT=60 ci/test.sh --test nodes_cli` runs the
//! every-minute schedule of the issue). One daemon is killed with SIGKILL
//! half-way through a slot, and started again two slots later.
//!
//! Judged from the fleet log, read through `rbdelta log` on one node:
//! every volume backed up exactly once in every slot, never two backups of
//! one volume at once, each node within ±30 % of its share, the dead
//! node's volumes backed up by the others in the first slot after its
//! lease lapsed, and the node that came back taking its share in the
//! first slot after it joined. The archive then verifies.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::cli::ceph_yaml;

/// The `ceph:` section for a node with a lease of `lease` seconds: a
/// timeout under half of it, as config check demands (a third, at least 1).
fn node_ceph_yaml(conf: &std::path::Path, lease: u64) -> String {
    let t = (lease / 3).max(1);
    ceph_yaml(conf).replace("  timeout: 20\n", &format!("  timeout: {t}\n"))
}
use common::ScratchImage;
use common::{pattern, required, skip, test_conf, test_ioctx, test_pool, unique_name};

const VOLUMES: usize = 30;
const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// `nodes.lease`: a dead node's volumes move this long after its death.
const LEASE: u64 = 6;

fn slot() -> u64 {
    std::env::var("RBDELTA_TEST_NODES_SLOT")
        .ok()
        .map(|s| s.parse().expect("RBDELTA_TEST_NODES_SLOT: seconds"))
        .unwrap_or(20)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Sleeps until Unix time `t`.
fn sleep_until(t: f64) {
    let d = t - unix_now();
    if d > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(d));
    }
}

/// A ceph-fuse mount of the test cluster's CephFS; unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn new(conf: &Path, at: &Path) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("ceph-fuse")
            .arg("-c")
            .arg(conf)
            .args(["--id", "admin"])
            .arg(at)
            .output()
            .expect("ceph-fuse runs");
        assert!(
            out.status.success(),
            "ceph-fuse {}: {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(&self.0)
            .status();
    }
}

/// One node: its mount, config and daemon.
struct Node {
    name: String,
    config: PathBuf,
    archive: PathBuf,
    log: PathBuf,
    daemon: Option<Child>,
}

impl Node {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("rbdelta"))
            .arg("-c")
            .arg(&self.config)
            .args(["--node", &self.name, "--progress", "none", "daemon"])
            .env("RBDELTA_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
    }

    fn signal(&mut self, sig: i32) -> std::process::ExitStatus {
        let mut c = self.daemon.take().expect("running");
        // SAFETY: signals a child process we own.
        assert_eq!(unsafe { libc::kill(c.id() as i32, sig) }, 0);
        let t = Instant::now();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{} did not stop",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("rbdelta"))
            .arg("-c")
            .arg(&self.config)
            .args(["--node", &self.name, "--no-progress"])
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd(args);
        assert!(
            o.status.success(),
            "{}: rbdelta {args:?}: {}{}",
            self.name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every node's daemon log, each under its name.
fn all_logs(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "--- {}:\n{}",
                n.name,
                std::fs::read_to_string(&n.log).unwrap()
            )
        })
        .collect()
}

/// A backup as the fleet log tells it.
#[derive(Debug)]
struct Backup {
    volume: String,
    node: String,
    start: f64,
    end: f64,
}

fn backups(node: &Node) -> (Vec<Backup>, Vec<String>) {
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for line in node.ok(&["log", "--json"]).lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        if r["op"] != "backup" || r["event"] != "end" {
            continue;
        }
        if r["outcome"] != "ok" {
            failed.push(line.to_string());
            continue;
        }
        let end = rbdelta::status::unix_nanos_of(r["time"].as_str().unwrap()) as f64 / 1e9;
        done.push(Backup {
            volume: r["volume"].as_str().unwrap().to_string(),
            node: r["node"]
                .as_str()
                .expect("a node's record names it")
                .to_string(),
            start: end - r["duration_ms"].as_u64().unwrap() as f64 / 1000.0,
            end,
        });
    }
    (done, failed)
}

#[test]
#[ignore = "needs the Ceph test cluster with CephFS (ci/test.sh runs it)"]
fn three_nodes_share_a_fleet_and_take_over_a_dead_ones_volumes() {
    let conf = test_conf();
    if !conf.exists() {
        return skip("no test cluster");
    }
    let cephfs = conf.parent().unwrap().join("cephfs");
    let mounted = std::process::Command::new("mountpoint")
        .arg("-q")
        .arg(&cephfs)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            !required(),
            "the test cluster has no CephFS: start it with --cephfs"
        );
        return skip("the test cluster has no CephFS (cluster.sh start --cephfs)");
    }
    let slot = slot();
    assert!(slot >= 20, "a slot must leave room for the lease to lapse");
    let io = test_ioctx();
    let images: Vec<ScratchImage> = (0..VOLUMES)
        .map(|i| {
            let s = ScratchImage::create(&io, "node", 4 << 20);
            io.open_image(&s.name)
                .unwrap()
                .write((i as u64 % 4) << 20, &pattern(64 << 10, i as u64))
                .unwrap();
            s
        })
        .collect();
    let mut volumes = String::from("volumes:\n");
    for (i, s) in images.iter().enumerate() {
        volumes += &format!(
            "  - name: v{i:02}\n    pool: {}\n    image: {}\n",
            test_pool(),
            s.name
        );
    }
    let schedule = if slot % 60 == 0 {
        format!("0 */{} * * * *", slot / 60)
    } else {
        format!("*/{slot} * * * * *")
    };
    let tmp = tempfile::tempdir().unwrap();
    let shared_dir = unique_name("nodes");
    let mut mounts = Vec::new();
    let mut nodes: Vec<Node> = NODES
        .iter()
        .map(|&name| {
            let m = Mount::new(&conf, &tmp.path().join(format!("mnt-{name}")));
            let archive = m.0.join(&shared_dir).join("archive");
            let config = tmp.path().join(format!("{name}.yaml"));
            std::fs::write(
                &config,
                format!(
                    "{}archive: {}\nnodes:\n  lease-pool: {}\n  lease: {LEASE}s\n\
                     defaults:\n  schedule: \"{schedule}\"\n  catch-up: false\n  parallel: 4\n{volumes}",
                    node_ceph_yaml(&conf, LEASE),
                    archive.display(),
                    test_pool()
                ),
            )
            .unwrap();
            mounts.push(m);
            Node {
                name: name.to_string(),
                config,
                archive,
                log: tmp.path().join(format!("{name}.log")),
                daemon: None,
            }
        })
        .collect();

    let t0 = unix_now();
    for n in &mut nodes {
        n.start();
    }
    // The first slot all three see settled (a node waits a third of a
    // lease after it joined before it takes jobs).
    let first = ((t0 + 5.0) / slot as f64).ceil() * slot as f64;
    let s = slot as f64;
    sleep_until(first + s / 2.0);
    let check = nodes[0].ok(&["config", "check", "--cluster"]);
    assert!(
        check.contains("3 live node(s), volumes each: n1 10, n2 10, n3 10"),
        "{check}"
    );
    // Kill n3 half-way through the second slot, when its backups are done.
    sleep_until(first + s * 1.5);
    let killed_at = unix_now();
    let status = nodes[2].signal(libc::SIGKILL);
    assert!(!status.success());
    // Two slots without n3: the first after its lease lapsed, and one
    // more, half-way through which n3 comes back; then one with it.
    let last = first + 4.0 * s;
    assert!(killed_at + LEASE as f64 + 2.0 < first + 2.0 * s);
    let wait_for = |nodes: &[Node]| {
        let deadline = Instant::now() + Duration::from_secs(slot);
        loop {
            let (done, _) = backups(&nodes[0]);
            let n = done
                .iter()
                .filter(|b| b.start >= last && b.start < last + s)
                .count();
            if n >= VOLUMES || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    sleep_until(first + s * 3.5);
    nodes[2].start();
    sleep_until(last);
    wait_for(&nodes);
    for n in nodes.iter_mut().filter(|n| n.daemon.is_some()) {
        let st = n.signal(libc::SIGTERM);
        assert!(st.success(), "{}: {st:?}", n.name);
    }

    let (done, failed) = backups(&nodes[1]);
    let logs = || all_logs(&nodes);
    assert!(failed.is_empty(), "failed backups: {failed:#?}\n{}", logs());
    // Never two backups of one volume at once.
    let mut by_volume: BTreeMap<&str, Vec<&Backup>> = BTreeMap::new();
    for b in &done {
        by_volume.entry(&b.volume).or_default().push(b);
    }
    for (v, bs) in &mut by_volume {
        bs.sort_by(|a, b| a.start.total_cmp(&b.start));
        for w in bs.windows(2) {
            assert!(w[0].end <= w[1].start, "{v}: overlapping backups {w:?}");
        }
    }
    // Every volume once per slot; the share of each node.
    for k in 0..5 {
        let from = first + k as f64 * s;
        let in_slot: Vec<&Backup> = done
            .iter()
            .filter(|b| b.start >= from && b.start < from + s)
            .collect();
        let mut per_volume: BTreeMap<&str, usize> = BTreeMap::new();
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for b in &in_slot {
            *per_volume.entry(&b.volume).or_default() += 1;
            *per_node.entry(&b.node).or_default() += 1;
        }
        assert_eq!(
            per_volume.len(),
            VOLUMES,
            "slot {k}: {} volumes backed up: {per_volume:?}\n{}",
            per_volume.len(),
            logs()
        );
        assert!(
            per_volume.values().all(|&n| n == 1),
            "slot {k}: {per_volume:?}"
        );
        let live: &[&str] = if k == 2 || k == 3 {
            &NODES[..2]
        } else {
            &NODES
        };
        let share = VOLUMES as f64 / live.len() as f64;
        for n in live {
            let got = per_node.get(n).copied().unwrap_or(0) as f64;
            assert!(
                (got - share).abs() <= 0.3 * share,
                "slot {k}: {n} backed up {got} volumes, its share is {share}: {per_node:?}"
            );
        }
        if k == 2 || k == 3 {
            assert!(!per_node.contains_key("n3"), "slot {k}: {per_node:?}");
        }
    }
    // Each node wrote its own fleet log, and any node shows all of them.
    for n in NODES {
        assert!(
            nodes[0]
                .archive
                .join(format!(".rbdelta/log.{n}.jsonl"))
                .exists(),
            "no fleet log of {n}"
        );
    }
    let status = nodes[1].ok(&["status", "--json"]);
    let st: Vec<serde_json::Value> = serde_json::from_str(&status).unwrap();
    assert_eq!(st.len(), VOLUMES, "{status}");
    for v in &st {
        assert!(
            v["last_success"].is_object() && v["consecutive_failures"] == 0,
            "{v}"
        );
    }
    nodes[0].ok(&["verify", "--all"]);
    // The archive is gone with the test; CephFS keeps nothing behind.
    std::fs::remove_dir_all(nodes[0].archive.parent().unwrap()).unwrap();
    drop(nodes);
    drop(mounts);
}

/// A node name that cannot name a file is refused at once, and a daemon
/// given a node name without `nodes:` in its config says what is missing.
#[test]
fn bad_node_names_and_a_node_without_nodes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!("archive: {}\nvolumes: []\n", dir.path().join("a").display()),
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("rbdelta"))
            .arg("-c")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    for bad in ["a/b", ".hidden", ""] {
        let o = run(&["--node", bad, "config", "check"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains("node name"), "{bad:?}: {err}");
    }
    // (a daemon that took the name would run until killed)
    let mut d = std::process::Command::new(assert_cmd::cargo::cargo_bin("rbdelta"))
        .arg("-c")
        .arg(&config)
        .args(["--node", "n1", "daemon"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while d.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = d.kill();
    let o = d.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("node \"n1\" given, but the config has no `nodes:` section"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// A node whose user may not take leases in the lease pool (client.rbdelta
/// has no caps on the CephFS data pool) runs no job at all, and says why
/// once, not once a second.
#[test]
#[ignore = "needs the Ceph test cluster with CephFS and cephx (ci/test.sh runs it)"]
fn a_node_refused_its_leases_runs_nothing_and_says_so_once() {
    let conf = test_conf();
    if !conf.exists() {
        return skip("no test cluster");
    }
    if std::env::var_os("RBDELTA_TEST_CEPH_ID").is_none() {
        assert!(!required(), "this test needs the cephx user client.rbdelta");
        return skip("no least-privileged user (RBDELTA_TEST_CEPH_ID)");
    }
    let io = test_ioctx();
    if io.pool() != "rbd" {
        return skip("the caps of client.rbdelta are for pool rbd");
    }
    let img = ScratchImage::create(&io, "nolease", 4 << 20);
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "{}archive: {}\nnodes:\n  lease-pool: cephfs_data\n  lease: 3s\n\
             defaults:\n  schedule: \"* * * * * *\"\nvolumes:\n  - name: v\n    pool: {}\n    image: {}\n",
            node_ceph_yaml(&conf, 3),
            tmp.path().join("archive").display(),
            test_pool(),
            img.name
        ),
    )
    .unwrap();
    let mut node = Node {
        name: "n1".into(),
        config,
        archive: tmp.path().join("archive"),
        log: tmp.path().join("n1.log"),
        daemon: None,
    };
    if !cephfs_pool_exists() {
        assert!(
            !required(),
            "the test cluster has no CephFS: start it with --cephfs"
        );
        return skip("no pool cephfs_data (cluster.sh start --cephfs)");
    }
    node.start();
    std::thread::sleep(Duration::from_secs(6));
    assert!(node.signal(libc::SIGTERM).success());
    let log = std::fs::read_to_string(&node.log).unwrap();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("heartbeat lease not renewed"))
        .collect();
    assert_eq!(refused.len(), 1, "{log}");
    assert!(refused[0].contains("caps do not allow"), "{log}");
    assert!(!node.archive.join("v").exists(), "a job ran:\n{log}");
}

/// Whether the test cluster has the CephFS data pool.
fn cephfs_pool_exists() -> bool {
    std::process::Command::new("ceph")
        .arg("-c")
        .arg(test_conf())
        .args(["osd", "pool", "ls"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == "cephfs_data")
        })
}

/// Two daemons given one node name in one fleet, each with a copy of the
/// archive (so no daemon lock tells them apart, but the fleet id is the
/// same), are told so; a node that died and was started again at once is
/// not mistaken for such a twin.
#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn two_daemons_under_one_name_are_told_so() {
    let conf = test_conf();
    if !conf.exists() {
        return skip("no test cluster");
    }
    let tmp = tempfile::tempdir().unwrap();
    let node = |name: &str, dir: &str| {
        let config = tmp.path().join(format!("{dir}.yaml"));
        std::fs::write(
            &config,
            format!(
                "{}archive: {}\nnodes:\n  lease-pool: {}\n  lease: 3s\nvolumes: []\n",
                node_ceph_yaml(&conf, 3),
                tmp.path().join(dir).display(),
                test_pool()
            ),
        )
        .unwrap();
        Node {
            name: name.to_string(),
            config,
            archive: tmp.path().join(dir),
            log: tmp.path().join(format!("{dir}.log")),
            daemon: None,
        }
    };
    let (twin, solo) = (unique_name("twin"), unique_name("solo"));
    let (mut a, mut b) = (node(&twin, "a"), node(&twin, "b"));
    let (mut c, mut c_again) = (node(&solo, "c"), node(&solo, "c"));
    c_again.log = tmp.path().join("c2.log");
    let id = format!("{:032x}", std::process::id() as u128 * 7919 + 1);
    for archive in [&a.archive, &b.archive] {
        std::fs::create_dir_all(archive.join(".rbdelta")).unwrap();
        std::fs::write(archive.join(".rbdelta/fleet-id"), format!("{id}\n")).unwrap();
    }
    a.start();
    b.start();
    c.start();
    std::thread::sleep(Duration::from_secs(2));
    assert!(!c.signal(libc::SIGKILL).success());
    c_again.start();
    std::thread::sleep(Duration::from_secs(7));
    for n in [&mut a, &mut b, &mut c_again] {
        assert!(n.signal(libc::SIGTERM).success(), "{}", n.name);
    }
    let said = |n: &Node| {
        std::fs::read_to_string(&n.log)
            .unwrap()
            .lines()
            .filter(|l| l.contains("another daemon runs under this node name"))
            .count()
    };
    assert_eq!(said(&a), 1, "{}", std::fs::read_to_string(&a.log).unwrap());
    assert_eq!(said(&b), 1, "{}", std::fs::read_to_string(&b.log).unwrap());
    assert_eq!(
        said(&c_again),
        0,
        "{}",
        std::fs::read_to_string(&c_again.log).unwrap()
    );
}

/// Issue 26, item 7: only real nodes count. Two nodes (n1, n2) share 8
/// volumes; a stray client (client.admin through the `rados` tool) holds
/// the heartbeat lease under a made-up cookie, and a third node (n3) runs
/// on the same archive with another volume list. Neither is counted: in a
/// slot after all settled, n1 and n2 back up every volume, once, between
/// them; each of n1 and n2 logs each of the two once (the run is shorter
/// than a minute) with its address and what is wrong; `config check
/// --cluster` counts two nodes and warns about the two others.
#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_stray_lock_holder_and_a_node_with_another_config_are_not_counted() {
    let conf = test_conf();
    if !conf.exists() {
        return skip("no test cluster");
    }
    const N: usize = 8;
    const SLOT: u64 = 10;
    let io = test_ioctx();
    let images: Vec<ScratchImage> = (0..N)
        .map(|i| {
            let s = ScratchImage::create(&io, "stray", 4 << 20);
            io.open_image(&s.name)
                .unwrap()
                .write(0, &pattern(64 << 10, i as u64))
                .unwrap();
            s
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    let fleet = format!("{:032x}", std::process::id() as u128 * 104_729 + 3);
    std::fs::create_dir_all(archive.join(".rbdelta")).unwrap();
    std::fs::write(archive.join(".rbdelta/fleet-id"), format!("{fleet}\n")).unwrap();
    let config = |file: &str, volumes: &str| {
        let path = tmp.path().join(file);
        std::fs::write(
            &path,
            format!(
                "{}archive: {}\nnodes:\n  lease-pool: {}\n  lease: 6s\n\
                 defaults:\n  schedule: \"*/{SLOT} * * * * *\"\n  catch-up: false\n  parallel: 4\n{volumes}",
                node_ceph_yaml(&conf, 6),
                archive.display(),
                test_pool()
            ),
        )
        .unwrap();
        path
    };
    let mut volumes = String::from("volumes:\n");
    for (i, s) in images.iter().enumerate() {
        volumes += &format!(
            "  - name: v{i}\n    pool: {}\n    image: {}\n",
            test_pool(),
            s.name
        );
    }
    let (real, other) = (
        config("real.yaml", &volumes),
        config("other.yaml", "volumes: []\n"),
    );
    let node = |name: &str, config: &Path| Node {
        name: name.to_string(),
        config: config.to_path_buf(),
        archive: archive.clone(),
        log: tmp.path().join(format!("{name}.log")),
        daemon: None,
    };
    let mut nodes = [node("n1", &real), node("n2", &real), node("n3", &other)];
    // The stray: a shared lock on the nodes object, as any client with
    // write access to the lease pool can take.
    let object = format!("rbdelta.nodes.{fleet}");
    let rados = |args: &[&str]| {
        let o = std::process::Command::new("rados")
            .arg("-c")
            .arg(&conf)
            .args(["--id", "admin", "-p", &test_pool()])
            .args(args)
            .output()
            .expect("rados runs");
        assert!(
            o.status.success(),
            "rados {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    rados(&[
        "lock",
        "get",
        &object,
        "node",
        "--lock-type",
        "shared",
        "--lock-cookie",
        "made-up",
        "--lock-duration",
        "120",
    ]);
    let t0 = unix_now();
    for n in &mut nodes {
        n.start();
    }
    let s = SLOT as f64;
    let first = ((t0 + 4.0) / s).ceil() * s;
    sleep_until(first + s / 2.0);
    let check = nodes[0].cmd(&["config", "check", "--cluster"]);
    // A whole slot after all settled.
    let deadline = first + 3.0 * s;
    let in_slot = |done: &[Backup]| -> Vec<(String, String)> {
        done.iter()
            .filter(|b| b.start >= first + s && b.start < first + 2.0 * s)
            .map(|b| (b.volume.clone(), b.node.clone()))
            .collect()
    };
    while unix_now() < deadline && in_slot(&backups(&nodes[0]).0).len() < N {
        std::thread::sleep(Duration::from_millis(500));
    }
    for n in &mut nodes {
        let st = n.signal(libc::SIGTERM);
        assert!(st.success(), "{}: {st:?}", n.name);
    }
    rados(&["rm", &object]);
    let logs = || all_logs(&nodes);
    let (done, failed) = backups(&nodes[0]);
    assert!(failed.is_empty(), "{failed:#?}\n{}", logs());
    let mut got = in_slot(&done);
    got.sort();
    let volumes: Vec<String> = got.iter().map(|(v, _)| v.clone()).collect();
    let expected: Vec<String> = (0..N).map(|i| format!("v{i}")).collect();
    assert_eq!(volumes, expected, "{got:?}\n{}", logs());
    assert!(got.iter().all(|(_, n)| n == "n1" || n == "n2"), "{got:?}");
    let (out, err) = (
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr),
    );
    assert!(check.status.success(), "{out}{err}");
    assert!(
        out.contains("2 live node(s), volumes each: n1 4, n2 4"),
        "{out}{err}"
    );
    assert!(
        err.contains("holds no rbdelta node lease") && err.contains("runs with another config"),
        "{err}"
    );
    for n in &nodes[..2] {
        let log = std::fs::read_to_string(&n.log).unwrap();
        let lines = |what: &str| {
            log.lines()
                .filter(|l| l.contains("not counted as a node") && l.contains(what))
                .count()
        };
        assert_eq!(lines("cookie \"made-up\""), 1, "{}:\n{log}", n.name);
        assert_eq!(
            lines("node n3 runs with another config"),
            1,
            "{}:\n{log}",
            n.name
        );
        assert!(
            log.lines()
                .filter(|l| l.contains("not counted as a node"))
                .all(|l| l.contains(" at ") && l.contains("WARN")),
            "{}:\n{log}",
            n.name
        );
    }
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_job_whose_lease_another_client_took_is_stopped_within_a_lease() {
    let conf = test_conf();
    if !conf.exists() {
        return skip("no test cluster");
    }
    let io = test_ioctx();
    // a backup slow enough to outlast the lease many times over
    let img = ScratchImage::create(&io, "lapse", 64 << 20);
    io.open_image(&img.name)
        .unwrap()
        .write(0, &pattern(48 << 20, 7))
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    let fleet = format!("{:032x}", std::process::id() as u128 * 7_919 + 11);
    std::fs::create_dir_all(archive.join(".rbdelta")).unwrap();
    std::fs::write(archive.join(".rbdelta/fleet-id"), format!("{fleet}\n")).unwrap();
    let config = tmp.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "{}archive: {}\nnodes:\n  lease-pool: {}\n  lease: {LEASE}s\n\
             defaults:\n  schedule: \"* * * * * *\"\n  bandwidth: 1MiB\nvolumes:\n  - name: v\n    pool: {}\n    image: {}\n",
            node_ceph_yaml(&conf, LEASE),
            archive.display(),
            test_pool(),
            test_pool(),
            img.name
        ),
    )
    .unwrap();
    let mut n = Node {
        name: "a".into(),
        config,
        archive: archive.clone(),
        log: tmp.path().join("a.log"),
        daemon: None,
    };
    let rados = |args: &[&str]| {
        std::process::Command::new("rados")
            .arg("-c")
            .arg(&conf)
            .args(["--id", "admin", "-p", &test_pool()])
            .args(args)
            .output()
            .expect("rados runs")
    };
    let object = format!("rbdelta.job.{fleet}.v");
    n.start();
    // once node a's backup runs under its job lease, another client breaks
    // that lease and takes it: a's renewals fail from then on
    let t = Instant::now();
    let locker = loop {
        let o = rados(&["lock", "info", &object, "job"]);
        let info: serde_json::Value =
            serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
        if let Some(l) = info["lockers"].as_array().and_then(|l| l.first()) {
            break l["name"].as_str().unwrap().to_string();
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no job lease taken");
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_secs(2));
    let o = rados(&[
        "lock",
        "break",
        &object,
        "job",
        &locker,
        "--lock-cookie",
        "a",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = rados(&[
        "lock",
        "get",
        &object,
        "job",
        "--lock-type",
        "exclusive",
        "--lock-cookie",
        "intruder",
        "--lock-duration",
        "120",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let taken = Instant::now();
    // the backup stops about a lease later, long before its 48 s of reads
    loop {
        let log = std::fs::read_to_string(&n.log).unwrap_or_default();
        if log.contains("job lease not renewed for a whole lease") && log.contains("cancelled") {
            break;
        }
        assert!(
            taken.elapsed() < Duration::from_secs(LEASE + 15),
            "the job went on without its lease:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let stopped = taken.elapsed();
    eprintln!("the job stopped {stopped:?} after its lease was taken");
    assert!(stopped >= Duration::from_secs(LEASE - 1), "{stopped:?}");
    assert_eq!(n.signal(libc::SIGTERM).code(), Some(0));
    let _ = rados(&[
        "lock",
        "break",
        &object,
        "job",
        "client.0",
        "--lock-cookie",
        "intruder",
    ]);
    // and no backup of v was made without the lease
    let log = std::fs::read_to_string(&n.log).unwrap();
    assert!(!log.contains("v: full "), "{log}");
}
