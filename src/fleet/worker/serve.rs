//! The worker's side: run the backups the parent sends, one at a time over
//! one cluster connection, and report progress and outcomes as lines.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::protocol::{Job, Message};
use crate::error::{Error, Result};
use crate::fleet::{backup_volume, evict_volume, Fleet, Observer, Outcome};
use crate::progress::Progress;

/// Progress is forwarded at most this often (and at each phase change).
const FORWARD_EVERY: Duration = Duration::from_millis(100);

type Out = Arc<Mutex<Box<dyn Write + Send>>>;

/// Runs every job read from `input` until it ends. `cancel` is set when the
/// worker is asked to stop (SIGTERM from its parent).
pub fn serve(
    input: impl BufRead,
    output: Box<dyn Write + Send>,
    cancel: Arc<AtomicBool>,
) -> Result<()> {
    let out: Out = Arc::new(Mutex::new(output));
    for line in input.lines() {
        let line = line.map_err(|e| Error::io("backup worker input", e))?;
        if line.trim().is_empty() {
            continue;
        }
        let job: Job = serde_json::from_str(&line)
            .map_err(|e| Error::Invalid(format!("backup worker: bad job line: {e}")))?;
        // A connection per job, shut down before the next one: librbd's
        // hangs and aborts were seen with many images over one connection.
        let mut fleet = Fleet::bare(job.ceph, job.archive, job.total_bandwidth);
        fleet.cancel = cancel.clone();
        if let Ok(c) = fleet.client() {
            // before the image opens, so the parent knows whom to cut off
            send(&out, &Message::Client { client: c.client() });
        }
        let vol = job.volume.into_volume();
        if job.evict_only {
            let outcome = evict_volume(&fleet, &vol, &job.dead_clients);
            send(&out, &Message::Outcome { outcome });
            continue;
        }
        let wire = Wire { out: out.clone() };
        backup_volume(&fleet, &vol, job.full, &job.tags, &job.dead_clients, &wire);
    }
    Ok(())
}

fn send(out: &Out, m: &Message) {
    let mut line = serde_json::to_string(m).expect("messages serialize");
    line.push('\n');
    let mut w = out.lock().unwrap_or_else(|p| p.into_inner());
    // A parent that is gone kills this process (PR_SET_PDEATHSIG); nothing
    // to do about a failed write meanwhile.
    let _ = w.write_all(line.as_bytes()).and_then(|()| w.flush());
}

/// An observer that reports to the parent.
struct Wire {
    out: Out,
}

impl Observer for Wire {
    fn started(&self, volume: &str, _op: &'static str) -> Box<dyn Progress> {
        Box::new(WireProgress {
            out: self.out.clone(),
            volume: volume.to_string(),
            pending: AtomicU64::new(0),
            sent: Mutex::new(Instant::now()),
        })
    }

    fn finished(&self, o: &Outcome) {
        send(&self.out, &Message::Outcome { outcome: o.clone() });
    }
}

struct WireProgress {
    out: Out,
    volume: String,
    /// Bytes advanced but not yet forwarded.
    pending: AtomicU64,
    sent: Mutex<Instant>,
}

impl WireProgress {
    fn forward(&self, force: bool) {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        if !force && sent.elapsed() < FORWARD_EVERY {
            return;
        }
        let bytes = self.pending.swap(0, Ordering::Relaxed);
        if bytes > 0 {
            send(&self.out, &Message::Advance { bytes });
        }
        *sent = Instant::now();
    }
}

impl Progress for WireProgress {
    fn begin(&self, phase: &str, total: u64) {
        self.forward(true);
        send(
            &self.out,
            &Message::Begin {
                phase: phase.into(),
                total,
            },
        );
        crate::fault::job_fault(&self.volume, phase);
    }

    fn advance(&self, bytes: u64) {
        self.pending.fetch_add(bytes, Ordering::Relaxed);
        self.forward(false);
    }

    fn end(&self) {
        self.forward(true);
        send(&self.out, &Message::End);
    }
}
