//! Running the operator's pre- and post-snapshot commands: `sh -c`, with the
//! volume described in environment variables (never spliced into the
//! command line), a timeout after which the command is killed, and its
//! output kept for the error message.
//!
//! A hook is bounded in time whatever it leaves behind. It runs in a
//! process group of its own; once its shell has exited (or the timeout
//! has passed) the whole group is killed, so nothing it started in the
//! background outlives it. Its stderr is read without ever waiting for an
//! end of file that a descendant holding the pipe would withhold: after
//! the shell has gone the reader drains for [`DRAIN_GRACE`] at most, then
//! closes the pipe. A descendant that left the group (`setsid`) is not
//! killed and does not hold the backup up either; it only loses its
//! stderr. No thread is left behind.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::Volume;
use crate::error::{Error, Result};

/// How long stderr is still read after the hook's shell has exited.
const DRAIN_GRACE: Duration = Duration::from_millis(200);

/// How much of the end of stderr is kept for the error message.
const KEEP: usize = 64 << 10;

/// How often the shell is checked for an exit while stderr is quiet.
const TICK: Duration = Duration::from_millis(20);

/// Runs `cmd` for `vol` in `phase` (`pre` or `post`).
pub fn run_hook(cmd: &str, vol: &Volume, phase: &str, timeout: Duration) -> Result<()> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .env("RBDELTA_VOLUME", &vol.name)
        .env("RBDELTA_POOL", &vol.pool)
        .env("RBDELTA_IMAGE", &vol.image)
        .env("RBDELTA_PHASE", phase)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so what the hook started can be killed.
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Hook(format!("{phase} hook: cannot start /bin/sh: {e}")))?;
    let mut out = Output::new(child.stderr.take().expect("piped"));
    let started = Instant::now();
    let exited = loop {
        out.read_for(TICK);
        match exited(&child) {
            Ok(true) => break true,
            Ok(false) if started.elapsed() >= timeout => break false,
            Ok(false) => {}
            Err(e) => {
                kill_group(&mut child);
                return Err(Error::Hook(format!("{phase} hook: wait: {e}")));
            }
        }
    };
    // The shell is a zombie (or still runs): its pid still names the group,
    // so the group can be killed without hitting a stranger.
    kill_group(&mut child);
    let status = child
        .wait()
        .map_err(|e| Error::Hook(format!("{phase} hook: wait: {e}")))?;
    let deadline = Instant::now() + DRAIN_GRACE;
    while !out.closed && Instant::now() < deadline {
        out.read_for(deadline.saturating_duration_since(Instant::now()));
    }
    let err = String::from_utf8_lossy(&out.tail).into_owned();
    drop(out); // a descendant that escaped the group loses its stderr here
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    match exited {
        false => Err(Error::Hook(format!(
            "{phase} hook timed out after {}s and was killed",
            timeout.as_secs()
        ))),
        true if status.success() => Ok(()),
        true => Err(Error::Hook(format!(
            "{phase} hook failed ({status}){}",
            if last.is_empty() {
                String::new()
            } else {
                format!(": {last}")
            }
        ))),
    }
}

/// Whether the hook's shell has exited, leaving it unreaped (a zombie keeps
/// its pid, and so its process group id, from being reused).
fn exited(child: &Child) -> std::io::Result<bool> {
    let pid = libc::id_t::from(child.id());
    // SAFETY: a zeroed siginfo_t is valid; waitid writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waits (without reaping, WNOWAIT) for our own child only.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    // SAFETY: waitid filled `info` (si_pid stays 0 when nothing exited).
    Ok(unsafe { info.si_pid() } != 0)
}

/// SIGKILLs the hook's process group (the shell and whatever it started
/// that did not leave the group). Call before the shell is reaped.
fn kill_group(child: &mut Child) {
    if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: signals the process group created at spawn, whose
        // leader is our unreaped child.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// The hook's stderr, read without blocking; keeps the last [`KEEP`] bytes.
struct Output {
    pipe: ChildStderr,
    tail: Vec<u8>,
    closed: bool,
}

impl Output {
    fn new(pipe: ChildStderr) -> Output {
        let fd = pipe.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
        Output {
            pipe,
            tail: Vec::new(),
            closed: false,
        }
    }

    /// Waits up to `wait` for output, then reads what there is (a bounded
    /// amount, so a hook that writes without pause cannot keep us here).
    /// A pipe that fails to read counts as closed.
    fn read_for(&mut self, wait: Duration) {
        if self.closed {
            std::thread::sleep(wait);
            return;
        }
        let mut fds = libc::pollfd {
            fd: self.pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut fds, 1, ms) };
        if rc < 0 {
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                self.closed = true;
            }
            return;
        }
        let mut buf = [0u8; 8192];
        for _ in 0..64 {
            match self.pipe.read(&mut buf) {
                Ok(0) => {
                    self.closed = true;
                    return;
                }
                Ok(n) => {
                    self.tail.extend_from_slice(&buf[..n]);
                    if self.tail.len() > 2 * KEEP {
                        let cut = self.tail.len() - KEEP;
                        self.tail.drain(..cut);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol() -> Volume {
        let c = crate::config::Config::parse(
            "archive: /a\nvolumes:\n  - pool: p\n    image: i\n    name: v\n",
            "t",
        )
        .unwrap();
        let v = c.listed().next().unwrap().clone();
        v
    }

    #[test]
    fn hooks_see_the_volume_and_report_failures() {
        let v = vol();
        let t = Duration::from_secs(10);
        run_hook(
            "test \"$RBDELTA_VOLUME/$RBDELTA_POOL/$RBDELTA_IMAGE/$RBDELTA_PHASE\" = v/p/i/pre",
            &v,
            "pre",
            t,
        )
        .unwrap();
        let e = run_hook(
            "echo noise; echo 'guest agent not responding' >&2; exit 3",
            &v,
            "pre",
            t,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("pre hook failed") && msg.contains("guest agent not responding"),
            "{msg}"
        );
        let e = run_hook("sleep 5", &v, "post", Duration::from_millis(200)).unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
    }

    /// Runs a hook on a thread and fails (instead of hanging the test run)
    /// if it has not returned within `limit`.
    fn bounded(cmd: String, timeout: Duration, limit: Duration) -> (Result<()>, Duration) {
        let (tx, rx) = std::sync::mpsc::channel();
        let t = Instant::now();
        std::thread::spawn(move || {
            let _ = tx.send(run_hook(&cmd, &vol(), "pre", timeout));
        });
        let r = rx
            .recv_timeout(limit)
            .unwrap_or_else(|_| panic!("the hook did not return within {limit:?}"));
        (r, t.elapsed())
    }

    fn pid_in(file: &std::path::Path) -> u32 {
        std::fs::read_to_string(file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Waits up to 5 s for `pid` to be gone (a SIGKILL is not instant).
    fn dies(pid: u32) -> bool {
        let t = Instant::now();
        while crate::host::alive(pid) {
            if t.elapsed() > Duration::from_secs(5) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    #[test]
    fn a_background_child_holding_stderr_neither_delays_nor_outlives_the_hook() {
        let dir = tempfile::tempdir().unwrap();
        for (exit, ok) in [(0, true), (4, false)] {
            let f = dir.path().join(format!("bg-{exit}"));
            let cmd = format!(
                "sleep 1000 & echo $! > {}; echo 'agent said no' >&2; exit {exit}",
                f.display()
            );
            let (r, took) = bounded(cmd, Duration::from_secs(60), Duration::from_secs(20));
            assert!(took < Duration::from_secs(5), "took {took:?}");
            match r {
                Ok(()) => assert!(ok),
                Err(e) => {
                    assert!(!ok, "{e}");
                    let msg = e.to_string();
                    assert!(
                        msg.contains("pre hook failed") && msg.contains("agent said no"),
                        "{msg}"
                    );
                }
            }
            let pid = pid_in(&f);
            assert!(dies(pid), "the hook's background sleep {pid} outlived it");
        }
    }

    #[test]
    fn a_setsid_descendant_holding_stderr_does_not_delay_the_hook() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("escaped");
        let cmd = format!(
            "setsid sh -c 'echo $$ > {}; exec sleep 1000' & \
             while [ ! -s {0} ]; do sleep 0.01; done; echo fine >&2",
            f.display()
        );
        let (r, took) = bounded(cmd, Duration::from_secs(60), Duration::from_secs(20));
        let pid = pid_in(&f);
        // it left the hook's group and session: documented to survive
        let escaped = crate::host::alive(pid);
        // SAFETY: the sleep this test started.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        r.unwrap();
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert!(escaped);
    }

    #[test]
    fn a_hook_that_never_exits_is_killed_with_its_group_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("stuck");
        let cmd = format!(
            "sleep 1000 & echo $! > {}; while :; do sleep 1; done",
            f.display()
        );
        let (r, took) = bounded(cmd, Duration::from_millis(500), Duration::from_secs(20));
        let e = r.unwrap_err();
        assert!(e.to_string().contains("pre hook timed out"), "{e}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        let pid = pid_in(&f);
        assert!(
            dies(pid),
            "the stuck hook's background sleep {pid} survived"
        );
    }
}
