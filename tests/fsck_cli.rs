//! Filesystems inside revisions, on the real cluster: a GPT disk with an
//! ext4 and an xfs partition is backed up over several changes (files
//! added and removed, a grow of the image and of the last partition, a
//! backup taken while both filesystems were mounted and busy, and one
//! after an inode of the ext4 was cleared). Every frozen revision's
//! partitions, loop-mounted from `rbdelta mount`, hold exactly the files
//! written; `rbdelta fsck --all` passes the sound revisions (the busy one
//! after replaying its journals in the overlay) and reports errors for the
//! damaged one only. Needs root, loop devices and /dev/fuse.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::Env;
use common::{pattern, test_conf, test_ioctx, test_pool, ScratchImage};

const MIB: u64 = 1 << 20;

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .env("TEST_DIR", "1") // let mkfs.xfs make a filesystem under 300 MB
        .env("TEST_DEV", "1")
        .env("QA_CHECK_FS", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device over a byte range of a file (read-only if asked).
struct Loop(String);

impl Loop {
    fn new(file: &Path, start: u64, len: u64, ro: bool) -> Loop {
        let (s, l) = (start.to_string(), len.to_string());
        let mut args = vec!["-f", "--show", "-o", &s, "--sizelimit", &l];
        if ro {
            args.push("-r");
        }
        args.push(file.to_str().unwrap());
        Loop(sh("losetup", &args).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A mount; unmounted on drop.
struct Mnt(PathBuf);

impl Mnt {
    fn new(dev: &str, at: &Path, opts: &str) -> Mnt {
        std::fs::create_dir_all(at).unwrap();
        sh("mount", &["-o", opts, dev, at.to_str().unwrap()]);
        Mnt(at.to_path_buf())
    }
}

impl Drop for Mnt {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The partitions of a disk image file: (start, length) in bytes.
fn partitions(disk: &Path) -> Vec<(u64, u64)> {
    let v: serde_json::Value =
        serde_json::from_str(&sh("sfdisk", &["--json", disk.to_str().unwrap()])).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap() * 512,
                p["size"].as_u64().unwrap() * 512,
            )
        })
        .collect()
}

/// Files by relative path.
type Tree = BTreeMap<String, Vec<u8>>;

/// Every file under `root`, lost+found aside.
fn tree(root: &Path) -> Tree {
    fn walk(dir: &Path, root: &Path, out: &mut Tree) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            if rel == "lost+found" {
                continue;
            }
            if p.is_dir() {
                walk(&p, root, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The local disk, the scratch RBD image it is copied to, and the volume.
struct Disk {
    env: Env,
    io: rbdelta::ceph::IoCtx,
    src: ScratchImage,
    file: PathBuf,
    /// What each revision's partitions hold (None: not compared).
    want: Vec<Option<[Tree; 2]>>,
}

impl Disk {
    /// Copies the local disk to the RBD image (4 MiB pieces that differ).
    fn sync_to_rbd(&self) {
        let bytes = std::fs::read(&self.file).unwrap();
        let img = self.io.open_image(&self.src.name).unwrap();
        if img.size().unwrap() != bytes.len() as u64 {
            img.resize(bytes.len() as u64).unwrap();
        }
        let old = common::cli::read_image(&self.io, &self.src.name, None);
        for (i, chunk) in bytes.chunks(4 << 20).enumerate() {
            let at = i * (4 << 20);
            if old[at..at + chunk.len()] != *chunk {
                img.write(at as u64, chunk).unwrap();
            }
        }
    }

    fn mount_both(&self, dir: &Path) -> (Loop, Loop, Mnt, Mnt) {
        let parts = partitions(&self.file);
        let (l1, l2) = (
            Loop::new(&self.file, parts[0].0, parts[0].1, false),
            Loop::new(&self.file, parts[1].0, parts[1].1, false),
        );
        let m1 = Mnt::new(&l1.0, &dir.join("p1"), "rw");
        let m2 = Mnt::new(&l2.0, &dir.join("p2"), "rw,nouuid");
        (l1, l2, m1, m2)
    }

    /// Backs up with both filesystems mounted: frozen (clean, trees
    /// recorded) or just synced (busy journals, trees not compared).
    fn backup(&mut self, dir: &Path, frozen: bool, change: impl FnOnce(&Path, &Path)) {
        let (l1, l2, m1, m2) = self.mount_both(dir);
        change(&m1.0, &m2.0);
        sh("sync", &[]);
        if frozen {
            let want = [tree(&m1.0), tree(&m2.0)];
            drop((m1, m2));
            drop((l1, l2));
            self.sync_to_rbd();
            self.want.push(Some(want));
        } else {
            self.sync_to_rbd(); // mounted: a crash-consistent snapshot
            self.want.push(None);
            drop((m1, m2));
            drop((l1, l2));
        }
        self.env.ok(&["backup", "v"]);
    }
}

fn write(dir: &Path, name: &str, len: usize, seed: u64) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, pattern(len, seed)).unwrap();
}

/// `rbdelta mount` of the volume, killed and unmounted on drop.
struct FuseMount(Child, PathBuf);

impl FuseMount {
    fn start(env: &Env, at: &Path) -> FuseMount {
        std::fs::create_dir_all(at).unwrap();
        let child = Command::new(assert_cmd::cargo::cargo_bin("rbdelta"))
            .arg("-c")
            .arg(&env.config)
            .args(["mount", at.to_str().unwrap(), "v"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !at.join("v").exists() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "mount did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        FuseMount(child, at.to_path_buf())
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn partitions_of_every_revision_mount_with_their_files_and_fsck_finds_the_damaged_one() {
    let (conf, io) = (test_conf(), test_ioctx());
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("disk.img");
    sh("truncate", &["-s", "96M", file.to_str().unwrap()]);
    let table = work.path().join("table");
    std::fs::write(&table, "label: gpt\n,32M\n,\n").unwrap();
    sh(
        "sh",
        &[
            "-c",
            &format!("sfdisk -q {} < {}", file.display(), table.display()),
        ],
    );
    let parts = partitions(&file);
    {
        let l1 = Loop::new(&file, parts[0].0, parts[0].1, false);
        let l2 = Loop::new(&file, parts[1].0, parts[1].1, false);
        sh("mkfs.ext4", &["-q", "-F", &l1.0]);
        sh("mkfs.xfs", &["-q", "-f", &l2.0]);
    }
    let src = ScratchImage::create(&io, "fsck", 96 * MIB);
    let env = Env::with_yaml(
        &conf,
        &format!(
            "volumes:\n  - name: v\n    pool: {}\n    image: {}\n",
            test_pool(),
            src.name
        ),
    );
    let mut d = Disk {
        env,
        io: io.clone(),
        src,
        file: file.clone(),
        want: Vec::new(),
    };
    let m = work.path().join("m");
    // 1: files on both
    d.backup(&m, true, |a, b| {
        for i in 0..20 {
            write(a, &format!("etc/conf-{i}"), 1000 + i * 37, i as u64);
            write(
                b,
                &format!("data/blob-{i}"),
                40_000 + i * 1000,
                100 + i as u64,
            );
        }
    });
    // 2: files added and removed
    d.backup(&m, true, |a, b| {
        write(a, "etc/new", 5000, 7);
        std::fs::remove_file(a.join("etc/conf-3")).unwrap();
        for i in 0..5 {
            std::fs::remove_file(b.join(format!("data/blob-{i}"))).unwrap();
        }
        write(b, "data/big", 3 << 20, 8);
    });
    // 3: the image and the xfs partition grow
    sh("truncate", &["-s", "128M", file.to_str().unwrap()]);
    sh(
        "sh",
        &[
            "-c",
            &format!("echo ', +' | sfdisk -q -N 2 {}", file.display()),
        ],
    );
    d.backup(&m, true, |_, b| {
        sh("xfs_growfs", &[b.to_str().unwrap()]);
        write(b, "data/after-grow", 100_000, 9);
    });
    // 4: busy: synced but mounted, so both journals are dirty
    d.backup(&m, false, |a, b| {
        write(a, "etc/busy", 8000, 10);
        write(b, "data/busy", 8000, 11);
    });
    // 5: an inode of the ext4 cleared (its directory entry left dangling)
    {
        let parts = partitions(&file);
        let l1 = Loop::new(&file, parts[0].0, parts[0].1, false);
        sh("debugfs", &["-w", "-R", "clri /etc/conf-7", &l1.0]);
    }
    d.sync_to_rbd();
    d.want.push(None);
    d.env.ok(&["backup", "v"]);
    // 6: mended again
    {
        let parts = partitions(&file);
        let l1 = Loop::new(&file, parts[0].0, parts[0].1, false);
        let out = Command::new("e2fsck")
            .args(["-fy", &l1.0])
            .output()
            .unwrap();
        assert!(out.status.code().is_some_and(|c| c <= 2), "{out:?}");
    }
    d.backup(&m, true, |_, _| {});
    // 7: an ext4 whose only good copy of an inode table block is in its
    // journal (a committed transaction that was never checkpointed, as a
    // crash leaves it): sound once the journal is replayed, damaged if not
    {
        let parts = partitions(&file);
        let l1 = Loop::new(&file, parts[0].0, parts[0].1, false);
        let imap = sh("debugfs", &["-R", "imap /etc/conf-8", &l1.0]);
        let block: u64 = imap
            .split("located at block ")
            .nth(1)
            .and_then(|t| t.split(',').next())
            .and_then(|b| b.parse().ok())
            .unwrap_or_else(|| panic!("{imap}"));
        let head = sh("dumpe2fs", &["-h", &l1.0]);
        let bs: u64 = head
            .lines()
            .find_map(|l| l.strip_prefix("Block size:"))
            .and_then(|b| b.trim().parse().ok())
            .unwrap();
        let good = work.path().join("inode-table-block");
        let mut bytes = vec![0u8; bs as usize];
        std::fs::File::open(&l1.0)
            .unwrap()
            .read_exact_at(&mut bytes, block * bs)
            .unwrap();
        std::fs::write(&good, &bytes).unwrap();
        sh("debugfs", &["-w", "-R", "clri /etc/conf-8", &l1.0]);
        let cmds = work.path().join("journal-cmds");
        std::fs::write(&cmds, format!("jo\njw -b {block} {}\njc\n", good.display())).unwrap();
        sh("debugfs", &["-w", "-f", cmds.to_str().unwrap(), &l1.0]);
    }
    d.sync_to_rbd();
    d.want.push(None);
    d.env.ok(&["backup", "v"]);

    let ids: Vec<String> = d
        .env
        .revisions("v")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 7);

    // every frozen revision: loop-mount its partitions through rbdelta mount
    let fuse = FuseMount::start(&d.env, &work.path().join("fuse"));
    for (i, (id, want)) in ids.iter().zip(&d.want).enumerate() {
        let img = fuse.1.join(format!("v/{id}.img"));
        let dev = sh("losetup", &["-r", "-f", "--show", img.to_str().unwrap()]);
        let dev = dev.trim().to_string();
        let _detach = Loop(dev.clone());
        sh("partx", &["-a", &dev]);
        if i == 3 {
            // the busy revision really has both journals to replay: a
            // plain read-only check would not pass it
            let ext = sh("dumpe2fs", &["-h", &format!("{dev}p1")]);
            assert!(ext.contains("needs_recovery"), "{ext}");
            let xfs = Command::new("xfs_repair")
                .args(["-n", &format!("{dev}p2")])
                .output()
                .unwrap();
            assert!(!xfs.status.success(), "the xfs log of revision 4 is clean");
        }
        if i == 6 {
            // revision 7 needs its journal: a check that skips the replay
            // finds the cleared inode
            let ext = sh("dumpe2fs", &["-h", &format!("{dev}p1")]);
            assert!(ext.contains("needs_recovery"), "{ext}");
            let out = Command::new("e2fsck")
                .args(["-fn", &format!("{dev}p1")])
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(4), "{out:?}");
        }
        let Some(want) = want else {
            let _ = Command::new("partx").args(["-d", &dev]).status();
            continue;
        };
        let at = work.path().join("check");
        {
            let p1 = Mnt::new(&format!("{dev}p1"), &at.join("p1"), "ro,noload");
            let p2 = Mnt::new(&format!("{dev}p2"), &at.join("p2"), "ro,norecovery,nouuid");
            assert!(
                tree(&p1.0) == want[0],
                "revision {id}: the ext4 files differ"
            );
            assert!(
                tree(&p2.0) == want[1],
                "revision {id}: the xfs files differ"
            );
        }
        let _ = Command::new("partx").args(["-d", &dev]).status();
    }
    drop(fuse);

    // fsck: every revision but the damaged one is sound; the busy one's
    // XFS log is dirty, and only a kernel mount replays it, which is off by
    // default: not checked (a warning), never "ok"
    let fsck_all = |env: &Env| {
        let out = env.cmd().args(["fsck", "v", "--all"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{text}{err}");
        (text, err)
    };
    let verdicts = |text: &str, kernel_replay: bool| {
        for (i, id) in ids.iter().enumerate() {
            let lines: Vec<&str> = text.lines().filter(|l| l.contains(&id[..12])).collect();
            let ext = lines
                .iter()
                .find(|l| l.contains("partition 1 (ext2/3/4)"))
                .unwrap();
            let xfs = lines
                .iter()
                .find(|l| l.contains("partition 2 (xfs)"))
                .unwrap();
            if i == 3 && !kernel_replay {
                assert!(
                    xfs.contains("NOT CHECKED: dirty log"),
                    "revision 4: {xfs}\n{text}"
                );
            } else {
                assert!(xfs.ends_with(": ok"), "revision {}: {xfs}\n{text}", i + 1);
            }
            if i == 4 {
                assert!(ext.ends_with("ERRORS"), "revision 5: {ext}\n{text}");
            } else {
                assert!(ext.ends_with(": ok"), "revision {}: {ext}\n{text}", i + 1);
            }
        }
    };
    let (text, err) = fsck_all(&d.env);
    verdicts(&text, false);
    assert!(!err.contains("warning"), "errors come first: {err}");
    // every checker ran in the sandbox: nothing mounted a guest filesystem
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains("rbdelta-fsck"),
        "an overlay was left mounted"
    );
    // the operator's opt-in: the kernel replays the log, then it is checked
    let replay_dir = tempfile::tempdir().unwrap();
    let replay = Env {
        config: replay_dir.path().join("config.yaml"),
        dir: replay_dir,
    };
    let yaml = std::fs::read_to_string(&d.env.config).unwrap();
    std::fs::write(
        &replay.config,
        format!("fsck:\n  kernel-replay: true\n{yaml}"),
    )
    .unwrap();
    let (text, _) = fsck_all(&replay);
    verdicts(&text, true);
    // recorded: the log, status and check
    let status: serde_json::Value = serde_json::from_str(&d.env.ok(&["status", "--json"])).unwrap();
    let v = status
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["volume"] == "v")
        .unwrap()
        .clone();
    assert_eq!(
        v["last_fsck"]["ok"], true,
        "the newest fsck was of revision 6: {v}"
    );
    let out = d
        .env
        .cmd()
        .args(["fsck", "v", "--revision", &ids[4]])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = d.env.cmd().args(["check", "v"]).output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(line.contains("WARNING") && line.contains("fsck"), "{line}");
    let log = d.env.ok(&["log", "v"]);
    assert!(log.contains("fsck end  errors"), "{log}");
    // and the archive was never written by any of it
    d.env.ok(&["verify", "v", "--deep"]);
}

#[test]
#[ignore = "needs root to drop to another user (ci/test.sh runs it)"]
fn without_root_the_kernel_replay_is_refused_in_one_line() {
    // in /tmp, which nobody may enter, not under $TMPDIR (the CephFS pass
    // puts that in a directory private to root)
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "archive: /nonexistent\nfsck:\n  kernel-replay: true\nvolumes:\n  - pool: p\n    image: i\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(assert_cmd::cargo::cargo_bin("rbdelta"))
        .arg("-c")
        .arg(&config)
        .args(["fsck", "v"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("fsck.kernel-replay needs root"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
#[ignore = "needs root, /dev/fuse and bubblewrap (ci/test.sh runs it)"]
fn a_stopped_fsck_ends_within_seconds_and_leaves_no_mount_behind() {
    common::require_fault_injection();
    // a revision without any cluster: an ext4 made on a plain file, imported
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("disk.img");
    sh("truncate", &["-s", "32M", file.to_str().unwrap()]);
    sh("mkfs.ext4", &["-q", "-F", file.to_str().unwrap()]);
    let env = Env::with_yaml(
        &test_conf(),
        "volumes:\n  - name: v\n    pool: rbd\n    image: v\n",
    );
    env.ok(&["import", "v", "--raw", file.to_str().unwrap()]);
    // held with the overlay mounted, before its first checker; then stopped
    let held = common::cli::Paused::start(&env, &["fsck", "v"], "fsck: checking");
    let pid = held.id();
    // this fsck's overlay: under its own scratch directory
    let overlays = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&format!("/rbdelta-fsck-{pid}-")))
            .count()
    };
    assert_eq!(overlays(), 1, "the overlay is mounted while fsck runs");
    let t = Instant::now();
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let out = held.wait();
    let took = t.elapsed();
    eprintln!("fsck stopped {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(!out.status.success(), "{out:?}");
    // the worker was killed where it stood; its parent cleared after it
    assert_eq!(overlays(), 0, "an overlay was left mounted");
    let scratch = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("rbdelta-fsck-{pid}-"))
        })
        .count();
    assert_eq!(scratch, 0, "a scratch directory was left");
    // and the next fsck runs as usual
    let out = env.ok(&["fsck", "v"]);
    assert!(out.contains("whole disk (ext2/3/4): ok"), "{out}");
}
