//! `rbdelta mount` against the real cluster: every revision byte-exact
//! through the mount, symlinks, new revisions appearing and pruned ones
//! disappearing (an open one still reading), SEEK_DATA/SEEK_HOLE, EIO for
//! a damaged block, a clean unmount on SIGTERM, a stale mount point
//! detected, bad input refused, only the owner, root or the named group
//! reading (nobody writing), and an unmount a loop device blocks reported
//! as the failure it is. Needs root, /dev/fuse, setpriv and losetup.

mod common;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::{read_image, stderr, Env};
use common::{pattern, test_conf, test_ioctx, ScratchImage};

const MIB: u64 = 1 << 20;

/// A running `rbdelta mount`; unmounted (SIGTERM, then forcibly) on drop.
struct Mounted {
    child: Option<Child>,
    at: PathBuf,
}

impl Mounted {
    fn start(env: &Env, args: &[&str]) -> Mounted {
        Mounted::start_at(env, env.dir.path().join("mnt"), args)
    }

    fn start_at(env: &Env, at: PathBuf, args: &[&str]) -> Mounted {
        std::fs::create_dir_all(&at).unwrap();
        let child = Command::new(assert_cmd::cargo::cargo_bin("rbdelta"))
            .arg("-c")
            .arg(&env.config)
            .arg("mount")
            .arg(&at)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let m = Mounted {
            child: Some(child),
            at,
        };
        wait_for("the mount", || is_mounted(&m.at));
        m
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.at.join(rel)
    }

    /// SIGTERM; the exit status and stderr.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        self.terminate()
    }

    /// SIGTERM; the exit status and stderr. The mount point stays as the
    /// process left it until drop.
    fn terminate(&mut self) -> (std::process::ExitStatus, String) {
        let child = self.child.as_ref().unwrap();
        // SAFETY: signals our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        self.wait()
    }

    /// Waits for the process to end; the exit status and stderr.
    fn wait(&mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let t = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "mount did not stop");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, err)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.at) || stale(&self.at) {
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
    }
}

fn is_mounted(p: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(p.to_str().unwrap()))
}

fn stale(p: &Path) -> bool {
    std::fs::metadata(p).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ids(env: &Env) -> Vec<String> {
    env.revisions("v")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// A volume `v` over a sparse 16 MiB image with data in three places,
/// three revisions (the last after a grow), keep-last 1 for prunes.
fn volume(prefix: &str) -> (Env, ScratchImage, Vec<Vec<u8>>) {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, prefix, 16 * MIB);
    let img = io.open_image(&src.name).unwrap();
    let env = Env::keeping_last(&conf, &src.name, 1);
    let mut bytes = Vec::new();
    for i in 0..3u64 {
        img.write(i * 5 * MIB + 65536, &pattern(MIB as usize + 4096, 70 + i))
            .unwrap();
        if i == 2 {
            img.resize(18 * MIB + 4096).unwrap();
        }
        env.ok(&["backup", "v"]);
        bytes.push(read_image(&io, &src.name, None));
    }
    (env, src, bytes)
}

fn seek(f: &std::fs::File, at: u64, whence: i32) -> Option<u64> {
    // SAFETY: lseek on a valid descriptor.
    let r = unsafe { libc::lseek(f.as_raw_fd(), at as libc::off_t, whence) };
    (r >= 0).then_some(r as u64)
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn every_revision_reads_exactly_and_the_tree_follows_backups_tags_and_prunes() {
    let (env, src, bytes) = volume("mount-tree");
    let revs = ids(&env);
    let m = Mounted::start(&env, &[]);
    for (id, want) in revs.iter().zip(&bytes) {
        let got = std::fs::read(m.path(&format!("v/{id}.img"))).unwrap();
        assert!(
            got == *want,
            "revision {id} reads differently through the mount"
        );
    }
    assert_eq!(
        std::fs::read_link(m.path("v/latest.img")).unwrap(),
        PathBuf::from(format!("{}.img", revs[2]))
    );
    let by_time: Vec<PathBuf> = std::fs::read_dir(m.path("v/by-time"))
        .unwrap()
        .map(|e| std::fs::read_link(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(by_time.len(), 3, "{by_time:?}");
    assert!(std::fs::read(m.path("v/latest.img")).unwrap() == bytes[2]);

    // SEEK_DATA / SEEK_HOLE, 64 KiB granular, on the sparse newest revision
    let f = std::fs::File::open(m.path("v/latest.img")).unwrap();
    let first_data = bytes[2]
        .chunks(65536)
        .position(|c| c.iter().any(|&b| b != 0))
        .unwrap() as u64
        * 65536;
    assert_eq!(seek(&f, 0, libc::SEEK_DATA), Some(first_data));
    let hole = seek(&f, first_data, libc::SEEK_HOLE).unwrap();
    assert!(hole > first_data && bytes[2][hole as usize..][..65536].iter().all(|&b| b == 0));
    // cp --sparse=always keeps the holes and the bytes
    let copy = env.dir.path().join("copy.img");
    let st = Command::new("cp")
        .args(["--sparse=always"])
        .arg(m.path("v/latest.img"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(std::fs::read(&copy).unwrap() == bytes[2]);
    assert!(std::fs::metadata(&copy).unwrap().len() > 0);

    // a tag appears; an open revision survives its prune; a new one appears
    env.ok(&["tag", "v", &revs[0][..12], "gold"]);
    wait_for("the tag link", || m.path("v/tags/gold.img").exists());
    env.ok(&["untag", "v", &revs[0][..12], "gold"]);
    let old = std::fs::File::open(m.path(&format!("v/{}.img", revs[0]))).unwrap();
    env.ok(&["prune", "v"]);
    wait_for("the pruned revision to go", || {
        !m.path(&format!("v/{}.img", revs[0])).exists()
    });
    let mut back = vec![0u8; bytes[0].len()];
    old.read_exact_at(&mut back, 0).unwrap();
    assert!(
        back == bytes[0],
        "an open, pruned revision reads differently"
    );
    let io = test_ioctx();
    io.open_image(&src.name)
        .unwrap()
        .write(MIB, &pattern(4096, 99))
        .unwrap();
    env.ok(&["backup", "v"]);
    let newest = ids(&env).last().unwrap().clone();
    wait_for("the new revision", || {
        std::fs::read_link(m.path("v/latest.img")).ok()
            == Some(PathBuf::from(format!("{newest}.img")))
    });
    assert!(std::fs::read(m.path("v/latest.img")).unwrap() == read_image(&io, &src.name, None));
    drop((f, old));
    let (status, err) = m.stop();
    assert!(status.success(), "{err}");
    assert!(err.contains("unmounted"), "{err}");
    assert!(!is_mounted(&env.dir.path().join("mnt")));
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_damaged_block_reads_as_eio_never_as_wrong_bytes() {
    let (env, _src, bytes) = volume("mount-eio");
    let first = ids(&env)[0].clone();
    common::flip_byte(
        &env.archive().join(format!("v/data/{first}.full")),
        65536 + 100,
    );
    let m = Mounted::start(&env, &["v"]);
    let f = std::fs::File::open(m.path(&format!("v/{first}.img"))).unwrap();
    let mut buf = vec![0u8; 65536];
    let err = f.read_exact_at(&mut buf, 65536).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // the blocks around it read fine
    f.read_exact_at(&mut buf, 2 * 65536).unwrap();
    assert!(buf[..] == bytes[0][2 * 65536..3 * 65536]);
    drop(f);
    let (status, err) = m.stop();
    assert!(status.success());
    assert!(
        err.contains(&format!("revision {first}")) && err.contains("fail their checksum"),
        "the log names the revision and the bytes: {err}"
    );
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn bad_mount_points_and_a_stale_mount_get_one_clear_line() {
    let (env, _src, _bytes) = volume("mount-bad");
    let run = |args: &[&str]| env.fails(&[&["mount"], args].concat());
    // one line, exit 2, saying what is wrong
    let refused = |args: &[&str], says: &str| {
        let out = run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    };
    let missing = env.dir.path().join("nope");
    refused(&[missing.to_str().unwrap()], "does not exist");
    let full = env.dir.path().join("full");
    std::fs::create_dir_all(full.join("x")).unwrap();
    refused(&[full.to_str().unwrap()], "not empty");
    let file = env.dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    refused(&[file.to_str().unwrap()], "not a directory");
    let empty = env.dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    refused(&[empty.to_str().unwrap(), "nosuchvolume"], "nosuchvolume");
    // kill -9: the mount point is left stale, and the next mount says so
    let mut m = Mounted::start(&env, &[]);
    let mut child = m.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for("the stale mount point", || stale(&m.at));
    refused(&[m.at.to_str().unwrap()], "stale");
    refused(&[m.at.to_str().unwrap()], "fusermount3 -u");
}

/// `cmd` run as user 65534 with supplementary `groups` (none if empty).
fn as_nobody(groups: &str, cmd: &[&str], file: &Path) -> std::process::Output {
    let groups = match groups {
        "" => "--clear-groups".to_string(),
        g => format!("--groups={g}"),
    };
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", &groups])
        .args(cmd)
        .arg(file)
        .output()
        .unwrap()
}

/// Appends to `file` as user 65534 in `groups`, or as root; stderr.
fn write_as(groups: Option<&str>, file: &Path) -> String {
    let script = ["sh", "-c", r#"echo x >> "$0""#];
    let out = match groups {
        Some(g) => as_nobody(g, &script, file),
        None => Command::new(script[0])
            .args(&script[1..])
            .arg(file)
            .output()
            .unwrap(),
    };
    assert!(!out.status.success(), "a write into the mount succeeded");
    stderr(&out)
}

/// A group id no user of the test machine has (setpriv adds it).
const GROUP: &str = "48151";

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn only_the_owner_root_or_the_named_group_reads_and_nobody_writes() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (env, _src, bytes) = volume("mount-other");
    // mount points another user can reach
    let open = tempfile::Builder::new()
        .prefix("rbdelta-access")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let head = ["head", "-c", "65536"];
    let denied = |out: std::process::Output, what: &str| {
        assert!(!out.status.success(), "{what} read the mount");
        assert!(
            stderr(&out).contains("Permission denied"),
            "{what}: {}",
            stderr(&out)
        );
    };

    // no choice: the mounting user alone
    let m = Mounted::start_at(&env, open.path().join("private"), &[]);
    denied(
        as_nobody("", &head, &m.path("v/latest.img")),
        "another user",
    );
    denied(
        as_nobody(GROUP, &head, &m.path("v/latest.img")),
        "a group member",
    );
    m.stop();

    // --allow-root: root (the mounting user here) and still nobody else
    let m = Mounted::start_at(&env, open.path().join("root"), &["--allow-root"]);
    denied(
        as_nobody("", &head, &m.path("v/latest.img")),
        "another user",
    );
    assert!(std::fs::read(m.path("v/latest.img")).unwrap() == bytes[2]);
    m.stop();

    // --group: its members read, others get EACCES, nobody writes
    let m = Mounted::start_at(&env, open.path().join("group"), &["--group", GROUP]);
    let img = m.path("v/latest.img");
    let meta = std::fs::metadata(&img).unwrap();
    assert_eq!(meta.gid().to_string(), GROUP);
    assert_eq!(meta.mode() & 0o777, 0o440);
    assert_eq!(
        std::fs::metadata(m.path("v")).unwrap().mode() & 0o777,
        0o550
    );
    denied(as_nobody("", &head, &img), "a user outside the group");
    denied(
        as_nobody("", &["ls"], &m.path("v")),
        "a user outside the group",
    );
    let out = as_nobody(GROUP, &head, &img);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == bytes[2][..65536], "a member read other bytes");
    // a member and root: EROFS; anyone else does not get that far
    for who in [Some(GROUP), None] {
        let err = write_as(who, &img);
        assert!(err.contains("Read-only file system"), "{who:?}: {err}");
    }
    assert!(write_as(Some(""), &img).contains("Permission denied"));
    m.stop();

    // --allow-other is gone, an unknown group is named: one line, exit 2
    for (args, says) in [
        (&["--allow-other"][..], "--group GROUP"),
        (
            &["--group", "no-such-group-rbdelta"][..],
            "no-such-group-rbdelta",
        ),
    ] {
        let at = open.path().join("refused");
        std::fs::create_dir_all(&at).unwrap();
        let out = env.fails(&[&["mount", at.to_str().unwrap()], args].concat());
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(!is_mounted(&at));
    }

    // no /dev/fuse (a private mount namespace with an empty /dev)
    let at = env.dir.path().join("nofuse");
    std::fs::create_dir_all(&at).unwrap();
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs none /dev && exec "$0" "$@""#)
        .arg(assert_cmd::cargo::cargo_bin("rbdelta"))
        .arg("-c")
        .arg(&env.config)
        .arg("mount")
        .arg(&at)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/dev/fuse does not exist"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// A read-only loop device over a file; detached on drop.
struct Loop(String);

impl Loop {
    fn over(file: &Path) -> Loop {
        let out = Command::new("losetup")
            .args(["-r", "-f", "--show"])
            .arg(file)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {}", stderr(&out));
        Loop(String::from_utf8(out.stdout).unwrap().trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn an_unmount_that_fails_is_a_failure_that_names_the_cure_and_never_unmounted() {
    let (env, _src, _bytes) = volume("mount-busy");
    let mut m = Mounted::start(&env, &[]);
    let at = m.at.canonicalize().unwrap();
    let held = Loop::over(&m.path("v/latest.img"));
    let (status, err) = m.terminate();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(!err.contains("unmounted"), "{err}");
    let last = err.lines().last().unwrap();
    let at_s = at.display();
    for says in [
        format!("{at_s} is still mounted (it is busy)"),
        format!("losetup -d {}", held.0),
        format!("fusermount3 -u {at_s}"),
        format!("umount -l {at_s}"),
    ] {
        assert!(last.contains(&says), "{says:?} not in {last:?}");
    }
    assert!(is_mounted(&at), "it said still mounted, and is not");
    drop(held);
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg(&at)
        .status()
        .unwrap();
    assert!(st.success() && !is_mounted(&at));
    drop(m);

    // unmounted by someone else: the mount ends cleanly and says so,
    // without unmounting the path a second time (fuser's EINVAL)
    let mut m = Mounted::start(&env, &[]);
    let st = Command::new("umount").arg(&m.at).status().unwrap();
    assert!(st.success());
    let (status, err) = m.wait();
    assert!(status.success(), "{err}");
    assert!(err.contains("unmounted"), "{err}");
    assert!(!err.contains("Unmount failed"), "{err}");
}
