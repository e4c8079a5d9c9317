//! fsck in a child process, so that nothing a guest's filesystem does to
//! it (a checker that hangs, an overlay that stalls, a crash) can take down
//! the CLI or the daemon that asked.
//!
//! The parent ([`isolated`]) makes a private scratch directory, starts this
//! same binary's hidden `fsck-worker` subcommand with one JSON request on
//! its stdin, and reads JSON lines from its stdout: a `check` line before
//! each filesystem, then the `report`. The worker parses the partition
//! table, mounts the overlay in the scratch directory and runs each
//! checker in the sandbox. A worker that says nothing for a checker's
//! timeout plus [`GRACE`] is killed; so is one asked to stop (SIGTERM
//! first, SIGKILL after [`GRACE`]). Whatever the worker left, the parent
//! clears: a loop device over the overlay (kernel replay only), the FUSE
//! mount (lazily unmounted), the scratch directory. Workers die with their
//! parent (`PR_SET_PDEATHSIG`).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::FsResult;
use crate::archive::VolumeDir;
use crate::config::FsckSettings;
use crate::error::{Error, Result};

/// How long past a checker's timeout a silent worker lives, and how long a
/// worker asked to stop gets before it is killed.
pub const GRACE: Duration = Duration::from_secs(10);
/// How long a worker asked to stop gets before it is killed (well inside
/// the daemon's own stop budget).
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often the parent looks at the clock and its cancel flag.
const TICK: Duration = Duration::from_millis(100);

/// What the parent asks of a worker.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub archive: PathBuf,
    pub volume: String,
    pub revision: String,
    pub settings: FsckSettings,
    /// The private directory to mount the overlay in.
    pub scratch: PathBuf,
}

/// A line from the worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
enum Message {
    /// A checker starts on partition `part` (0: the whole disk).
    Check {
        part: u32,
    },
    Report {
        results: Vec<FsResult>,
    },
    Failed {
        error: String,
    },
}

/// The worker's side: one request from `input`, its lines to `output`.
pub fn serve(input: impl BufRead, mut output: impl Write, cancel: &AtomicBool) -> Result<()> {
    let mut send = |m: &Message| {
        let mut line = serde_json::to_string(m).expect("messages serialize");
        line.push('\n');
        // a parent that is gone kills this process (PR_SET_PDEATHSIG)
        let _ = output
            .write_all(line.as_bytes())
            .and_then(|()| output.flush());
    };
    let mut text = String::new();
    input
        .take(1 << 20)
        .read_line(&mut text)
        .map_err(|e| Error::io("fsck worker input", e))?;
    let req: Request = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("fsck worker: bad request: {e}")))?;
    let mut run = || -> Result<Vec<FsResult>> {
        let vol = VolumeDir::open(&req.archive, &req.volume)?;
        let rev = vol.find_revision(&req.revision)?;
        super::check_revision(&vol, &rev, &req.settings, &req.scratch, cancel, &mut |p| {
            send(&Message::Check { part: p })
        })
    };
    let m = match run() {
        Ok(results) => Message::Report { results },
        Err(e) => Message::Failed {
            error: e.to_string(),
        },
    };
    send(&m);
    Ok(())
}

/// The parent's side: checks revision `revision` of `vol` in a worker
/// started as `program args…` (this binary's `fsck-worker`).
pub fn isolated(
    program: &Path,
    args: &[String],
    vol: &VolumeDir,
    revision: &str,
    settings: &FsckSettings,
    cancel: &AtomicBool,
) -> Result<Vec<FsResult>> {
    let scratch = Scratch::new()?;
    let req = Request {
        archive: vol.path.parent().unwrap_or(Path::new("/")).to_path_buf(),
        volume: vol.name.clone(),
        revision: revision.to_string(),
        settings: *settings,
        scratch: scratch.0.clone(),
    };
    let mut child = crate::host::spawn_worker(program, args)?;
    let mut line = serde_json::to_string(&req).expect("requests serialize");
    line.push('\n');
    let mut stdin = child.stdin.take().expect("piped");
    let _ = stdin.write_all(line.as_bytes());
    drop(stdin);
    let outcome = relay(&mut child, settings.timeout + GRACE, cancel);
    scratch.clear();
    outcome
}

/// Reads the worker's lines until its report, killing it when it is
/// silent for `silence` or `cancel` is set.
fn relay(child: &mut Child, silence: Duration, cancel: &AtomicBool) -> Result<Vec<FsResult>> {
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout.take(64 << 20)).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut heard = Instant::now();
    let mut stopping: Option<Instant> = None;
    let stop = |child: &mut Child, sig: i32| {
        // SAFETY: signals the worker's own process group.
        unsafe { libc::kill(-(child.id() as i32), sig) };
    };
    let result = loop {
        match rx.recv_timeout(TICK) {
            Ok(line) => {
                heard = Instant::now();
                match serde_json::from_str::<Message>(&line) {
                    Ok(Message::Report { results }) => break Ok(results),
                    Ok(Message::Failed { error }) if stopping.is_some() => {
                        break Err(Error::Cancelled(error))
                    }
                    Ok(Message::Failed { error }) => break Err(Error::Invalid(error)),
                    Ok(Message::Check { .. }) => {}
                    Err(e) => break Err(Error::Invalid(format!("fsck worker said: {e}"))),
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().map_err(|e| Error::io("fsck worker", e))?;
                break Err(match stopping {
                    Some(_) => Error::Cancelled("fsck stopped".into()),
                    None => Error::Invalid(format!("the fsck worker died ({status})")),
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        match stopping {
            None if cancel.load(Ordering::Relaxed) => {
                stop(child, libc::SIGTERM);
                stopping = Some(Instant::now());
            }
            None if heard.elapsed() > silence => {
                stop(child, libc::SIGKILL);
                let _ = child.wait();
                break Err(Error::Invalid(format!(
                    "the fsck worker said nothing for {} s and was killed",
                    silence.as_secs()
                )));
            }
            Some(t) if t.elapsed() > STOP_GRACE => {
                stop(child, libc::SIGKILL);
                let _ = child.wait();
                break Err(Error::Cancelled("fsck stopped (killed)".into()));
            }
            _ => {}
        }
    };
    if result.is_ok() {
        let _ = child.wait();
    }
    result
}

/// A private scratch directory under the temp dir for the overlay.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "rbdelta-fsck-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        // must not exist: a directory someone else made in a shared /tmp
        // would be theirs
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&p)
            .map_err(|e| Error::io(&p, e))?;
        Ok(Scratch(p))
    }

    /// Clears what a worker may have left: loop devices over the overlay's
    /// files, the overlay's mount, then the directory.
    fn clear(self) {
        let mnt = self.0.join("mnt");
        if mounted(&mnt) {
            if let Ok(files) = std::fs::read_dir(&mnt) {
                for f in files.flatten() {
                    detach_loops(&f.path());
                }
            }
            lazy_unmount(&mnt);
        }
        // only what is left once nothing is mounted there
        if !mounted(&mnt) {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            tracing::warn!("fsck: {} is still mounted", mnt.display());
        }
    }
}

/// Whether `dir` is a mount point now.
fn mounted(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = dir.to_string_lossy();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m == want)
}

fn detach_loops(file: &Path) {
    let Ok(out) = Command::new("losetup").arg("-j").arg(file).output() else {
        return;
    };
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(dev) = l.split(':').next() {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
    }
}

fn lazy_unmount(dir: &Path) {
    let r = Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(dir)
        .stderr(Stdio::null())
        .status();
    if !r.is_ok_and(|s| s.success()) {
        let _ = Command::new("umount").arg("-l").arg(dir).status();
    }
}
