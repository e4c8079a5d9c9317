//! Crash points for fault-injection tests. With `RBDELTA_TEST_CRASH_AT=N`
//! in the environment, the N-th point reached aborts the process on the
//! spot (like `kill -9`: no destructors, no cleanup). With
//! `RBDELTA_TEST_HOLD_AT=N:DIR`, the N-th point reached creates
//! `DIR/held-<pid>` and waits there (at most 5 minutes) until `DIR/go`
//! exists, so a test can kill or signal the process (or its parent) at
//! that moment. With `RBDELTA_TEST_CRASH_COUNT=PATH`, the number of points
//! reached is written to PATH at each point (the most any process of the
//! run reached), so a test learns how many there are. Without any of them
//! a point is one relaxed atomic load.
//!
//! All of it exists only with the `fault-injection` cargo feature, which
//! the test suite enables: a release build (what operators install) gets
//! empty functions, and no environment variable can make it crash, hang or
//! write a file.

#[cfg(feature = "fault-injection")]
pub use imp::{direct_refused, job_fault, pause, point, read_fault};

/// An injected read error for archive file `path` (none here).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn read_fault(_path: &std::path::Path) -> Option<std::io::Error> {
    None
}

/// Whether direct I/O is refused as a filesystem would (never here).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn direct_refused() -> bool {
    false
}

/// A place where a crash must leave the archive consistent (no-op here).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_what: &str) {}

/// A place where a test may hold the process (no-op here).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn pause(_what: &str) {}

/// A failing backup worker, for tests (no-op here).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn job_fault(_volume: &str, _phase: &str) {}

#[cfg(feature = "fault-injection")]
mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static REACHED: AtomicU64 = AtomicU64::new(0);

    struct Config {
        crash_at: Option<u64>,
        hold_at: Option<(u64, std::path::PathBuf)>,
        count_to: Option<std::path::PathBuf>,
    }

    fn config() -> &'static Config {
        static C: OnceLock<Config> = OnceLock::new();
        C.get_or_init(|| Config {
            crash_at: std::env::var("RBDELTA_TEST_CRASH_AT")
                .ok()
                .and_then(|v| v.parse().ok()),
            hold_at: std::env::var("RBDELTA_TEST_HOLD_AT").ok().and_then(|v| {
                let (n, dir) = v.split_once(':')?;
                Some((n.parse().ok()?, dir.into()))
            }),
            count_to: std::env::var_os("RBDELTA_TEST_CRASH_COUNT").map(Into::into),
        })
    }

    /// Waits (at most 5 minutes) until `file` exists.
    fn wait_for(file: &std::path::Path) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(300);
        while !file.exists() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// A place where a crash must leave the archive consistent.
    pub fn point(_what: &str) {
        let c = config();
        if c.crash_at.is_none() && c.count_to.is_none() && c.hold_at.is_none() {
            return;
        }
        let n = REACHED.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(p) = &c.count_to {
            let before: u64 = std::fs::read_to_string(p)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            if n > before {
                let _ = std::fs::write(p, n.to_string());
            }
        }
        if c.crash_at == Some(n) {
            std::process::abort();
        }
        if let Some((_, dir)) = c.hold_at.as_ref().filter(|h| h.0 == n) {
            let _ = std::fs::write(dir.join(format!("held-{}", std::process::id())), b"");
            wait_for(&dir.join("go"));
        }
    }

    /// With `RBDELTA_TEST_READ_EIO=TEXT`, every read of archive data from a
    /// file whose name contains TEXT fails with EIO, as a failing disk
    /// sector would.
    pub fn read_fault(path: &std::path::Path) -> Option<std::io::Error> {
        static TEXT: OnceLock<Option<String>> = OnceLock::new();
        let text = TEXT.get_or_init(|| std::env::var("RBDELTA_TEST_READ_EIO").ok());
        let name = path.file_name()?.to_str()?;
        text.as_deref()
            .filter(|t| !t.is_empty() && name.contains(t))
            .map(|_| std::io::Error::from_raw_os_error(libc::EIO))
    }

    /// With `RBDELTA_TEST_NO_DIRECT` set, every `O_DIRECT` open is refused
    /// with EINVAL, as tmpfs and some FUSE filesystems refuse it.
    pub fn direct_refused() -> bool {
        static SET: OnceLock<bool> = OnceLock::new();
        *SET.get_or_init(|| std::env::var_os("RBDELTA_TEST_NO_DIRECT").is_some())
    }

    /// A place where a test holds the process, to run something else at a
    /// known moment. With `RBDELTA_TEST_PAUSE=NAME:DIR`, reaching the pause
    /// named NAME creates `DIR/NAME.paused` and waits (at most 5 minutes)
    /// until `DIR/NAME.go` exists (spaces in NAME become dashes in the file
    /// names; DIR must not hold a colon).
    pub fn pause(what: &str) {
        static SPEC: OnceLock<Option<(String, std::path::PathBuf)>> = OnceLock::new();
        let spec = SPEC.get_or_init(|| {
            let v = std::env::var("RBDELTA_TEST_PAUSE").ok()?;
            let (name, dir) = v.rsplit_once(':')?;
            Some((name.to_string(), dir.into()))
        });
        let Some((name, dir)) = spec else { return };
        if name != what {
            return;
        }
        let file = what.replace(' ', "-");
        let _ = std::fs::write(dir.join(format!("{file}.paused")), b"");
        wait_for(&dir.join(format!("{file}.go")));
    }

    /// A failing backup worker, for tests of the parent's handling. With
    /// `RBDELTA_TEST_JOB_FAULT=VOLUME:abort` or `VOLUME:hang`, a worker backing
    /// up VOLUME aborts (or stops answering) when the backup's data phase
    /// begins, with the volume locked and its snapshot taken; with
    /// `VOLUME:hang-snapshot` it hangs in the snapshot phase instead, and
    /// with `VOLUME:abort-opened` it aborts as soon as the image is open
    /// (its watch registered, no intent record written yet). With a third
    /// field, `VOLUME:abort:FILE`, only while FILE does not exist yet (it is
    /// created first), so a retry succeeds.
    pub fn job_fault(volume: &str, phase: &str) {
        static SPEC: OnceLock<Option<String>> = OnceLock::new();
        let Some(spec) = SPEC.get_or_init(|| std::env::var("RBDELTA_TEST_JOB_FAULT").ok()) else {
            return;
        };
        let mut parts = spec.splitn(3, ':');
        let (Some(v), Some(what)) = (parts.next(), parts.next()) else {
            return;
        };
        let at = match what {
            "hang-snapshot" => "snapshot",
            "abort-opened" => "opened",
            _ => "data",
        };
        let here = match phase {
            "snapshot" | "opened" => phase,
            _ => "data",
        };
        if v != volume || at != here {
            return;
        }
        if let Some(once) = parts.next() {
            if std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(once)
                .is_err()
            {
                return;
            }
        }
        match what {
            "abort" | "abort-opened" => std::process::abort(),
            "hang" | "hang-snapshot" => loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            },
            _ => {}
        }
    }
}
