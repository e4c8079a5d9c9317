//! The `rbdelta` binary driven end to end: a config and archive in a temp
//! dir, helpers that run commands and read images back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Output, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;

use super::{test_pool, unique_name, ScratchImage};
use rbdelta::ceph::IoCtx;

/// The config's `ceph:` section for the test cluster. On a cephx cluster
/// (ci/test.sh) that is the least-privileged `client.rbdelta`, named by
/// `RBDELTA_TEST_CEPH_ID` and `RBDELTA_TEST_CEPH_KEYRING`: every command
/// line test runs with just the caps docs/CONFIG.md tells operators to give.
/// Always five lines, so tests can name config lines either way.
pub fn ceph_yaml(conf: &Path) -> String {
    let mut y = format!("ceph:\n  conf: {}\n  timeout: 20\n", conf.display());
    for (var, key) in [
        ("RBDELTA_TEST_CEPH_ID", "id"),
        ("RBDELTA_TEST_CEPH_KEYRING", "keyring"),
    ] {
        match std::env::var_os(var).filter(|v| !v.is_empty()) {
            Some(v) => y += &format!("  {key}: {}\n", Path::new(&v).display()),
            None => y += &format!("  # {key}: the default\n"),
        }
    }
    y
}

/// A config + archive in a temp dir, for volumes over scratch images.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Env {
    pub fn new(conf: &Path, volumes: &[(&str, &str)]) -> Env {
        let mut yaml = "volumes:\n".to_string();
        for (name, image) in volumes {
            yaml += &format!(
                "  - name: {name}\n    pool: {}\n    image: {image}\n",
                test_pool()
            );
        }
        Env::with_yaml(conf, &yaml)
    }

    /// One volume `v` over `image` whose retention keeps the last `keep`
    /// revisions.
    pub fn keeping_last(conf: &Path, image: &str, keep: u32) -> Env {
        Env::with_yaml(
            conf,
            &format!(
                "volumes:\n  - name: v\n    pool: {}\n    image: {image}\n    retention:\n      keep-last: {keep}\n",
                test_pool()
            ),
        )
    }

    /// A config of the `ceph:` and `archive:` keys followed by `rest`.
    pub fn with_yaml(conf: &Path, rest: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "{}archive: {}\n{rest}",
            ceph_yaml(conf),
            dir.path().join("archive").display()
        );
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, yaml).unwrap();
        Env { dir, config }
    }

    pub fn archive(&self) -> PathBuf {
        self.dir.path().join("archive")
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("rbdelta").unwrap();
        c.arg("-c").arg(&self.config).arg("--no-progress");
        c
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "rbdelta {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `rbdelta -c CONFIG --no-progress` as a std Command (to spawn with
    /// pipes).
    pub fn std_cmd(&self) -> std::process::Command {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("rbdelta"));
        c.arg("-c").arg(&self.config).arg("--no-progress");
        c
    }

    /// Starts `rbdelta ARGS` in the background, output discarded.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("rbdelta"))
            .arg("-c")
            .arg(&self.config)
            .arg("--no-progress")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    pub fn fails(&self, args: &[&str]) -> Output {
        let out = self.cmd().args(args).output().unwrap();
        assert!(!out.status.success(), "rbdelta {args:?} should have failed");
        out
    }

    pub fn revisions(&self, volume: &str) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["list", volume, "--json"])).unwrap()
    }

    /// The revision ids of `volume`, oldest first.
    pub fn revision_ids(&self, volume: &str) -> Vec<String> {
        self.revisions(volume)
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// `rbdelta ARGS` (writing to stdout) piped into `rbd RBD_ARGS` (as
    /// client.admin, a fixture); rbdelta's status and rbd's output.
    pub fn pipe_to_rbd(
        &self,
        args: &[&str],
        conf: &Path,
        rbd_args: &[&str],
    ) -> (std::process::ExitStatus, Output) {
        let mut rbdelta = self
            .std_cmd()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let rbd = std::process::Command::new("rbd")
            .arg("-c")
            .arg(conf)
            .args(rbd_args)
            .stdin(rbdelta.stdout.take().unwrap())
            .output()
            .unwrap();
        (rbdelta.wait().unwrap(), rbd)
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn read_image(io: &IoCtx, name: &str, snap: Option<&str>) -> Vec<u8> {
    let img = io.open_image_read_only(name, snap).unwrap();
    let size = img.size().unwrap() as usize;
    let mut buf = vec![0u8; size];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(4 << 20);
        img.read(off as u64, &mut buf[off..off + n]).unwrap();
        off += n;
    }
    buf
}

/// Restores `rev` into a new image and returns its bytes.
pub fn restore_to_image(env: &Env, io: &IoCtx, volume: &str, rev: &str) -> Vec<u8> {
    let target = unique_name("restored");
    let _cleanup = ScratchImage::adopt(io, &target);
    env.ok(&[
        "restore",
        volume,
        "--revision",
        rev,
        "--to-image",
        &format!("{}/{target}", test_pool()),
    ]);
    read_image(io, &target, None)
}

/// Spawns `cmd` (its stderr piped) to be held at its `at`-th crash point
/// (`RBDELTA_TEST_HOLD_AT`, the hold files in a new directory under
/// `parent`); returns once some process of it is held there, with that
/// directory (create `go` in it to let go). Fails if it ends first.
pub fn spawn_held(
    mut cmd: std::process::Command,
    at: u64,
    parent: &Path,
) -> (std::process::Child, PathBuf) {
    let dir = parent.join(unique_name("hold"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = cmd
        .env("RBDELTA_TEST_HOLD_AT", format!("{at}:{}", dir.display()))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("{cmd:?} ended ({s}) before point {at}: {err}");
        }
        let held = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("held-"));
        if held {
            return (child, dir);
        }
        assert!(
            t.elapsed().as_secs() < 60,
            "{cmd:?} never held at point {at}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// An `rbdelta` process held at a pause point until [`Paused::finish`].
pub struct Paused {
    child: Option<Child>,
    go: PathBuf,
}

impl Paused {
    pub fn start(env: &Env, args: &[&str], point: &str) -> Paused {
        let dir = tempfile::tempdir().unwrap().keep();
        let child = StdCommand::new(assert_cmd::cargo::cargo_bin("rbdelta"))
            .arg("-c")
            .arg(&env.config)
            .arg("--no-progress")
            .args(args)
            .env("RBDELTA_TEST_PAUSE", format!("{point}:{}", dir.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let file = point.replace(' ', "-");
        let paused = dir.join(format!("{file}.paused"));
        let t = Instant::now();
        while !paused.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "rbdelta {args:?} never reached {point:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Paused {
            child: Some(child),
            go: dir.join(format!("{file}.go")),
        }
    }

    /// The paused command's pid.
    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Its output once it ends, without letting it go on first.
    pub fn wait(mut self) -> Output {
        self.child.take().unwrap().wait_with_output().unwrap()
    }

    pub fn finish(mut self) -> Output {
        std::fs::write(&self.go, b"").unwrap();
        self.child.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::fs::write(&self.go, b"");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
