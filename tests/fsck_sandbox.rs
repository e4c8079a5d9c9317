//! The sandbox every filesystem checker runs in (`rbdelta::fsck::sandbox`),
//! tried with a shell standing in for a checker that a crafted filesystem
//! took over: what it can see, reach and use. Each assertion fails when
//! the matching protection is removed from the sandbox.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use rbdelta::fsck::sandbox::{Ended, Limits, Sandbox, DISK};

fn limits(wall: u64) -> Limits {
    Limits {
        cpu: Duration::from_secs(2),
        memory: 256 << 20,
        wall: Duration::from_secs(wall),
    }
}

/// A throwaway "filesystem" file the checker gets, and the sandbox.
fn disk() -> (tempfile::NamedTempFile, std::fs::File) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), b"guest bytes\n").unwrap();
    let open = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(f.path())
        .unwrap();
    (f, open)
}

fn sh(sandbox: &Sandbox, script: &str, disk: &std::fs::File) -> rbdelta::fsck::sandbox::Output {
    sandbox
        .run("sh", &["-c", script], disk, &AtomicBool::new(false))
        .unwrap()
}

#[test]
#[ignore = "needs bubblewrap (ci/test.sh installs it)"]
fn a_checker_runs_unprivileged_alone_offline_and_limited() {
    let (file, fd) = disk();
    // the file's owner must be the sandbox's user, as the overlay's files are
    let sandbox = Sandbox::new(limits(60));
    let (uid, gid) = sandbox.owner();
    std::os::unix::fs::chown(file.path(), Some(uid), Some(gid)).unwrap();
    let script = "
        echo uid=$(grep '^Uid:' /proc/self/status | cut -f3)
        echo capeff=$(grep '^CapEff:' /proc/self/status | cut -f2)
        echo procs=$(ls /proc | grep -c '^[0-9]')
        echo ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ,)
        echo cpu=$(ulimit -t) mem=$(ulimit -v) core=$(ulimit -c)
        echo tmp=$(ls -A /tmp | wc -l)
        echo etc=$(ls /etc)
        echo home=$(ls /home /root /var 2>/dev/null | wc -l)
        echo disk=$(cat /dev/fd/3)
        echo tampered >> /dev/fd/3
    ";
    let out = sh(&sandbox, script, &fd);
    assert_eq!(out.ended, Ended::Exited(0), "{:?}", out.lines);
    let get = |k: &str| {
        out.lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {:?}", out.lines))
            .to_string()
    };
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(get("uid"), "65534", "root's checkers run as nobody");
    }
    assert_eq!(get("capeff"), "0000000000000000", "no capabilities");
    assert!(
        get("procs").parse::<u32>().unwrap() <= 8,
        "{}",
        get("procs")
    );
    assert_eq!(get("ifaces"), "lo,", "no network but its own loopback");
    assert_eq!(
        get("cpu").split_whitespace().collect::<Vec<_>>(),
        ["2", "mem=262144", "core=0"]
    );
    assert_eq!(get("tmp"), "0", "a private, empty /tmp");
    assert_eq!(get("etc"), "ld.so.cache", "nothing of the host's /etc");
    assert_eq!(get("home"), "0", "no home, root or var directories");
    assert_eq!(get("disk"), "guest bytes");
    assert_eq!(
        std::fs::read_to_string(file.path()).unwrap(),
        "guest bytes\ntampered\n",
        "the one file it may write is its own filesystem"
    );
    assert!(DISK.ends_with('3'));
}

#[test]
#[ignore = "needs bubblewrap (ci/test.sh installs it)"]
fn a_checker_is_killed_at_its_time_cpu_and_memory_limits() {
    let (_file, fd) = disk();
    // wall clock, with a descendant that holds the output open
    let t = Instant::now();
    let out = sh(&Sandbox::new(limits(2)), "sleep 1000 & sleep 1000", &fd);
    assert_eq!(out.ended, Ended::TimedOut);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // CPU time: a busy loop past 2 s of CPU
    let out = sh(&Sandbox::new(limits(60)), "while :; do :; done", &fd);
    assert!(
        matches!(out.ended, Ended::Killed(libc::SIGXCPU | libc::SIGKILL)),
        "{:?}",
        out.ended
    );
    // memory: a 1 GiB allocation under a 256 MiB address-space limit fails
    let out = sh(
        &Sandbox::new(limits(60)),
        "x=$(head -c 1073741824 /dev/zero | tr '\\0' a); echo ${#x}",
        &fd,
    );
    assert!(
        !matches!(out.ended, Ended::Exited(0)),
        "{:?} {:?}",
        out.ended,
        out.lines
    );
    // cancelled: stopped at once, an error
    let cancel = AtomicBool::new(true);
    let e = Sandbox::new(limits(60))
        .run("sleep", &["1000"], &fd, &cancel)
        .unwrap_err();
    assert!(matches!(e, rbdelta::error::Error::Cancelled(_)), "{e}");
}

#[test]
#[ignore = "needs bubblewrap (ci/test.sh installs it)"]
fn a_missing_checker_is_a_typed_error_naming_its_package() {
    let (_file, fd) = disk();
    let e = Sandbox::new(limits(60))
        .run("fsck.nonexistent", &[], &fd, &AtomicBool::new(false))
        .unwrap_err();
    assert!(
        matches!(e, rbdelta::error::Error::MissingTool { .. }),
        "{e}"
    );
}
