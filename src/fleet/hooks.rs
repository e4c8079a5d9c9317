//! Running the operator's pre- and post-snapshot commands: `sh -c`, with the
//! volume described in environment variables (never spliced into the
//! command line), a timeout after which the command is killed, and its
//! output kept for the error message.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::Volume;
use crate::error::{Error, Result};

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
        // Its own process group, so a timeout kills what the hook started.
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Hook(format!("{phase} hook: cannot start /bin/sh: {e}")))?;
    // Read stderr on a thread so a chatty hook cannot block on a full pipe.
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.by_ref().take(64 << 10).read_to_end(&mut buf);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        buf
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if started.elapsed() >= timeout => {
                // SAFETY: signals the process group we created above.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(Error::Hook(format!("{phase} hook: wait: {e}"))),
        }
    };
    let err = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    match status {
        None => Err(Error::Hook(format!(
            "{phase} hook timed out after {}s and was killed",
            timeout.as_secs()
        ))),
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(Error::Hook(format!(
            "{phase} hook failed ({s}){}",
            if last.is_empty() {
                String::new()
            } else {
                format!(": {last}")
            }
        ))),
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
}
