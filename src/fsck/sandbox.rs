//! Where a filesystem checker meets guest data: a bubblewrap sandbox.
//!
//! A tenant controls every byte of the filesystems fsck checks, and
//! checkers (e2fsck, xfs_repair, btrfs check, fsck.vfat) are large C
//! programs not written to survive crafted images. So no checker runs with
//! the host's powers. Each one runs:
//! - as an unprivileged user: root drops to `nobody` before bubblewrap
//!   starts, and any other operator stays who it is; never as root;
//! - in its own user, mount, pid, network, IPC, UTS and cgroup namespaces
//!   (`bwrap --unshare-all --unshare-user`), so it sees no other process,
//!   has no network at all, and cannot gain capabilities on the host;
//! - over a root of read-only `/usr` (and the loader cache), a private
//!   size-limited `/tmp`, a minimal `/dev` and its own `/proc`; the one
//!   writable file it can reach is its filesystem in the throwaway
//!   overlay, handed over as open descriptor 3 ([`DISK`]): the overlay's
//!   directory is private to the operator, and the sandbox's root does not
//!   hold it;
//! - with CPU-time, address-space, file-count and core-dump limits, and a
//!   wall-clock deadline after which it is killed with everything it
//!   started (the sandbox's pid namespace dies with its first process);
//! - with its output read in bounded memory and shown through
//!   [`crate::text::printable`].
//!
//! Why bubblewrap: it is small, audited and in Debian, and unlike a
//! `setpriv` + `unshare` pipeline it sets up an unprivileged user
//! namespace and a new root in one step; systemd-run needs a running
//! systemd (not in containers); a VM would confine even kernel bugs but
//! needs a guest kernel, an initrd and seconds per check, and nothing here
//! needs the kernel any more: with the kernel XFS log replay off (the
//! default, see docs/CONFIG.md), no guest filesystem is ever mounted.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How much of a checker's output is kept (its end: the summary).
const KEEP_OUTPUT: usize = 64 << 10;
/// The size of the sandbox's private `/tmp`.
const TMP_BYTES: u64 = 64 << 20;
/// Where a checker finds its filesystem: the descriptor it inherits.
pub const DISK: &str = "/dev/fd/3";
/// The descriptor bwrap reports on (`--json-status-fd`).
const STATUS_FD: i32 = 4;

/// The user a root operator's checkers run as.
const NOBODY: (u32, u32) = (65534, 65534);

/// What one checker may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// CPU time (RLIMIT_CPU).
    pub cpu: Duration,
    /// Address space (RLIMIT_AS), bytes.
    pub memory: u64,
    /// Wall-clock time, after which it is killed.
    pub wall: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            cpu: Duration::from_secs(3600),
            memory: 4 << 30,
            wall: Duration::from_secs(2 * 3600),
        }
    }
}

/// How a checker run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by a signal (its CPU or memory limit, a crash).
    Killed(i32),
    /// It ran past its wall-clock limit and was killed.
    TimedOut,
}

/// What bwrap said of the sandbox (`--json-status-fd`): the program's pid
/// once it started, its exit code once it ended.
#[derive(Debug, Default, serde::Deserialize)]
struct Status {
    #[serde(rename = "child-pid")]
    child_pid: Option<u64>,
}

/// A checker's end and the last of its output, stdout then stderr, as
/// lines (not yet escaped).
#[derive(Debug, Clone)]
pub struct Output {
    pub ended: Ended,
    pub lines: Vec<String>,
}

/// The sandbox checkers run in.
#[derive(Debug, Clone)]
pub struct Sandbox {
    uid: u32,
    gid: u32,
    limits: Limits,
}

impl Sandbox {
    /// The sandbox for this process: `nobody` when running as root, else
    /// the caller's own user.
    pub fn new(limits: Limits) -> Sandbox {
        // SAFETY: geteuid/getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let (uid, gid) = if uid == 0 { NOBODY } else { (uid, gid) };
        Sandbox { uid, gid, limits }
    }

    /// The user and group the checkers run as (who the overlay's files
    /// must belong to).
    pub fn owner(&self) -> (u32, u32) {
        (self.uid, self.gid)
    }

    /// Runs `program args…` in the sandbox with `disk` open as [`DISK`]
    /// (`args` name it so); kills it at its wall-clock limit, or when
    /// `cancel` is set (then errs with [`Error::Cancelled`]). Errs when
    /// the sandbox could not be set up (the program never ran).
    pub fn run(
        &self,
        program: &str,
        args: &[&str],
        disk: &std::fs::File,
        cancel: &AtomicBool,
    ) -> Result<Output> {
        let bwrap = which("bwrap").ok_or_else(|| Error::MissingTool {
            program: "bwrap".into(),
            package: "bubblewrap".into(),
        })?;
        let Some(path) = which(program) else {
            return Err(Error::MissingTool {
                program: program.into(),
                package: super::check::package_of(program).into(),
            });
        };
        let fd = disk.as_raw_fd();
        let (status_read, status_write) = pipe()?;
        let status_fd = status_write.as_raw_fd();
        let mut cmd = Command::new(bwrap);
        cmd.args(["--unshare-all", "--unshare-user", "--die-with-parent"])
            .args(["--new-session", "--cap-drop", "ALL"])
            .args(["--ro-bind", "/usr", "/usr"])
            .args(["--symlink", "usr/lib", "/lib"])
            .args(["--symlink", "usr/lib64", "/lib64"])
            .args(["--symlink", "usr/bin", "/bin"])
            .args(["--symlink", "usr/sbin", "/sbin"])
            .args(["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"])
            .args(["--proc", "/proc", "--dev", "/dev"])
            .args(["--size", &TMP_BYTES.to_string(), "--tmpfs", "/tmp"])
            .args(["--json-status-fd", &STATUS_FD.to_string()])
            .args(["--chdir", "/tmp", "--clearenv"])
            .args(["--setenv", "PATH", "/usr/sbin:/usr/bin"])
            .args(["--setenv", "LC_ALL", "C"])
            .arg("--")
            .arg(path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let (uid, gid, limits) = (self.uid, self.gid, self.limits);
        // SAFETY: only async-signal-safe calls (prctl, setrlimit, fcntl,
        // setgroups, setresgid, setresuid) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fail = || Err(std::io::Error::last_os_error());
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return fail();
                }
                // the disk as descriptor 3 and bwrap's status as 4, kept
                // across exec (dup2 clears close-on-exec); through copies
                // above both, since either may be 3 or 4 now
                let high = [fd, status_fd].map(|f| libc::fcntl(f, libc::F_DUPFD_CLOEXEC, 10));
                if high.iter().any(|&f| f < 0)
                    || libc::dup2(high[0], 3) < 0
                    || libc::dup2(high[1], STATUS_FD) < 0
                {
                    return fail();
                }
                for (res, v) in [
                    (libc::RLIMIT_CPU, limits.cpu.as_secs().max(1)),
                    (libc::RLIMIT_AS, limits.memory),
                    (libc::RLIMIT_CORE, 0),
                    (libc::RLIMIT_NOFILE, 1024),
                ] {
                    let l = libc::rlimit {
                        rlim_cur: v,
                        rlim_max: v,
                    };
                    if libc::setrlimit(res, &l) != 0 {
                        return fail();
                    }
                }
                if libc::geteuid() == 0
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setresgid(gid, gid, gid) != 0
                        || libc::setresuid(uid, uid, uid) != 0)
                {
                    return fail();
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("bwrap ({program})"), e))?;
        drop(cmd); // closes this process's copy of the status pipe's end
        drop(status_write);
        let status = keep_tail(status_read);
        let out = wait(child, self.limits.wall, cancel, program)?;
        let started = String::from_utf8_lossy(&status.join().unwrap_or_default())
            .lines()
            .filter_map(|l| serde_json::from_str::<Status>(l).ok())
            .any(|s| s.child_pid.is_some());
        if !started {
            return Err(Error::Invalid(format!(
                "the sandbox for {program} could not be set up: {}",
                crate::text::printable(&out.lines.join("; "), 300)
            )));
        }
        Ok(out)
    }
}

/// Waits for the sandbox, killing its process group at `wall` or on
/// `cancel`; collects its output.
fn wait(mut child: Child, wall: Duration, cancel: &AtomicBool, program: &str) -> Result<Output> {
    let readers = [
        keep_tail(child.stdout.take().expect("piped")),
        keep_tail(child.stderr.take().expect("piped")),
    ];
    let started = Instant::now();
    let kill = |child: &mut Child| {
        // SAFETY: signals the process group spawned above (bwrap; the
        // sandbox's own processes die with it, --die-with-parent).
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
    };
    let ended = loop {
        match child.try_wait() {
            Ok(Some(s)) => {
                use std::os::unix::process::ExitStatusExt;
                break match (s.code(), s.signal()) {
                    // bwrap's init reports a program killed by signal N
                    // as exit code 128 + N, like a shell
                    (Some(c), _) if c > 128 => Ended::Killed(c - 128),
                    (Some(c), _) => Ended::Exited(c),
                    (None, Some(sig)) => Ended::Killed(sig),
                    (None, None) => Ended::Killed(0),
                };
            }
            Ok(None) if cancel.load(Ordering::Relaxed) => {
                kill(&mut child);
                return Err(Error::Cancelled(format!("{program} stopped")));
            }
            Ok(None) if started.elapsed() >= wall => {
                kill(&mut child);
                break Ended::TimedOut;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(Error::io(format!("bwrap ({program})"), e)),
        }
    };
    let mut lines = Vec::new();
    for r in readers {
        let bytes = r.join().unwrap_or_default();
        lines.extend(
            String::from_utf8_lossy(&bytes)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
    }
    Ok(Output { ended, lines })
}

/// Reads a pipe to its end on a thread, keeping only its last
/// [`KEEP_OUTPUT`] bytes. The pipe ends when the sandbox does.
fn keep_tail(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > 2 * KEEP_OUTPUT {
                        kept.drain(..kept.len() - KEEP_OUTPUT);
                    }
                }
            }
        }
        let cut = kept.len().saturating_sub(KEEP_OUTPUT);
        kept.split_off(cut)
    })
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe() -> Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two descriptors for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::io("pipe for bwrap", std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    Ok(unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    })
}

/// The full path of `program` in the system's directories, if installed
/// (the sandbox has no PATH of the operator's).
fn which(program: &str) -> Option<std::path::PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.is_file())
}
