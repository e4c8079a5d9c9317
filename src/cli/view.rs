//! How a fleet run looks: live bars on a terminal, periodic plain lines
//! under cron or systemd, JSON lines for other tools, or only the result
//! lines. Each is a [`rbdelta::fleet::Observer`]; the library never knows
//! which one it talks to.

use rbdelta::text::prefix;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rbdelta::fleet::{Observer, Outcome};
use rbdelta::progress::Progress;
use serde_json::json;

use super::human;

/// The one-line result of a job, as printed when it ends.
pub fn result_line(o: &Outcome) -> String {
    match (&o.error, o.op.as_str()) {
        (Some(e), op) => format!("{}: {op} failed: {e}", o.volume),
        (None, "backup") => format!(
            "{}: {} {}, image {}, read {}, stored {}, {:.1}s",
            o.volume,
            o.kind.as_deref().unwrap_or("?"),
            o.revision.as_deref().map_or("?", |r| prefix(r, 12)),
            human(o.size.unwrap_or(0)),
            human(o.bytes_read),
            human(o.bytes_written),
            o.duration.as_secs_f64()
        ),
        (None, op) => format!(
            "{}: {op} ok, read {}, {:.1}s",
            o.volume,
            human(o.bytes_read),
            o.duration.as_secs_f64()
        ),
    }
}

fn print_result(o: &Outcome) {
    if o.ok {
        println!("{}", result_line(o));
    } else {
        eprintln!("rbdelta: error: {}", result_line(o));
    }
}

/// Only result lines (`--no-progress`).
pub struct Lines;

impl Observer for Lines {
    fn started(&self, _: &str, _: &'static str) -> Box<dyn Progress> {
        Box::new(rbdelta::progress::NoProgress)
    }
    fn finished(&self, o: &Outcome) {
        print_result(o);
    }
}

/// One bar per running job and a total bar (`--progress bars`).
pub struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
}

impl Bars {
    pub fn new(jobs: usize) -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let total = multi.add(ProgressBar::new(jobs as u64));
        total.set_style(
            ProgressStyle::with_template(
                "{prefix:>16.bold} {pos}/{len} volumes done [{bar:30}] {elapsed_precise}  {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        total.set_prefix("total");
        Bars { multi, total }
    }
}

impl Observer for Bars {
    fn started(&self, volume: &str, op: &'static str) -> Box<dyn Progress> {
        let bar = self.multi.insert_before(&self.total, ProgressBar::new(0));
        // No bar until the job knows how much it will read.
        bar.set_style(
            ProgressStyle::with_template("{prefix:>16} {msg:8} starting").expect("valid template"),
        );
        bar.set_prefix(volume.to_string());
        bar.set_message(op);
        bar.tick();
        Box::new(VolumeBar(bar))
    }
    fn finished(&self, o: &Outcome) {
        let line = if o.ok {
            result_line(o)
        } else {
            format!("rbdelta: error: {}", result_line(o))
        };
        let _ = self.multi.println(line);
        self.total.inc(1);
        if self.total.position() >= self.total.length().unwrap_or(0) {
            self.total.finish();
        }
    }
}

struct VolumeBar(ProgressBar);

impl Progress for VolumeBar {
    fn begin(&self, phase: &str, total: u64) {
        self.0.set_style(
            ProgressStyle::with_template(
                "{prefix:>16} {msg:8} [{bar:30}] {binary_bytes:>10}/{binary_total_bytes:10} {binary_bytes_per_sec:>12} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.set_message(phase.to_string());
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn end(&self) {}
}

impl Drop for VolumeBar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// A running job's counters, shared by the plain and JSON views.
#[derive(Default)]
struct Counter {
    phase: Mutex<String>,
    total: AtomicU64,
    done: AtomicU64,
}

/// Called on every advance (the JSON view rate-limits inside).
type OnAdvance = Arc<dyn Fn(&Counter) + Send + Sync>;

struct CounterProgress(Arc<Counter>, Option<OnAdvance>);

impl Progress for CounterProgress {
    fn begin(&self, phase: &str, total: u64) {
        *self.0.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase.to_string();
        self.0.total.store(total, Ordering::Relaxed);
        self.0.done.store(0, Ordering::Relaxed);
    }
    fn advance(&self, bytes: u64) {
        self.0.done.fetch_add(bytes, Ordering::Relaxed);
        if let Some(f) = &self.1 {
            f(&self.0);
        }
    }
    fn end(&self) {}
}

/// Running jobs by volume: start time and counters.
type Running = Arc<Mutex<BTreeMap<String, (Instant, Arc<Counter>)>>>;

/// Periodic log lines for every running job (`--progress plain`).
pub struct Plain {
    running: Running,
    stop: Arc<AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Plain {
    pub fn new(every: Duration) -> Plain {
        let running: Running = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (running.clone(), stop.clone());
        let ticker = std::thread::spawn(move || {
            let mut last = Instant::now();
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last.elapsed() < every {
                    continue;
                }
                last = Instant::now();
                for (name, (started, c)) in r.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    eprintln!("rbdelta: {}", plain_line(name, started.elapsed(), c));
                }
            }
        });
        Plain {
            running,
            stop,
            ticker: Some(ticker),
        }
    }
}

fn plain_line(name: &str, elapsed: Duration, c: &Counter) -> String {
    let phase = c.phase.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (done, total) = (
        c.done.load(Ordering::Relaxed),
        c.total.load(Ordering::Relaxed),
    );
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
    let pct = if total > 0 {
        done as f64 * 100.0 / total as f64
    } else {
        0.0
    };
    let eta = if rate > 0.0 && total > done {
        format!(", eta {:.0}s", (total - done) as f64 / rate)
    } else {
        String::new()
    };
    format!(
        "{name}: {phase} {pct:.0}% ({} of {}, {}/s{eta})",
        human(done),
        human(total),
        human(rate as u64)
    )
}

impl Observer for Plain {
    fn started(&self, volume: &str, op: &'static str) -> Box<dyn Progress> {
        eprintln!("rbdelta: {volume}: {op} started");
        let c = Arc::new(Counter::default());
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(volume.to_string(), (Instant::now(), c.clone()));
        Box::new(CounterProgress(c, None))
    }
    fn finished(&self, o: &Outcome) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&o.volume);
        print_result(o);
    }
}

impl Drop for Plain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

/// JSON lines on stdout (`--progress json`): `start`, `progress` (at most
/// one per second per job), `end` and, from the caller, `summary`.
pub struct Json {
    out: Arc<Mutex<()>>,
}

impl Json {
    pub fn new() -> Json {
        Json {
            out: Arc::new(Mutex::new(())),
        }
    }
}

/// Writes one JSON line to stdout, whole.
pub fn json_line(v: &serde_json::Value) {
    let mut s = v.to_string();
    s.push('\n');
    let _ = std::io::stdout().lock().write_all(s.as_bytes());
}

fn now() -> String {
    rbdelta::archive::now_rfc3339()
}

impl Observer for Json {
    fn started(&self, volume: &str, op: &'static str) -> Box<dyn Progress> {
        let _g = self.out.lock();
        json_line(&json!({"event": "start", "time": now(), "volume": volume, "op": op}));
        let (name, lock) = (volume.to_string(), self.out.clone());
        let last = Mutex::new(Instant::now());
        let emit = move |c: &Counter| {
            let mut l = last.lock().unwrap_or_else(|p| p.into_inner());
            if l.elapsed() < Duration::from_secs(1) {
                return;
            }
            *l = Instant::now();
            let phase = c.phase.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let _g = lock.lock();
            json_line(&json!({
                "event": "progress", "time": now(), "volume": name, "phase": phase,
                "done": c.done.load(Ordering::Relaxed), "total": c.total.load(Ordering::Relaxed),
            }));
        };
        Box::new(CounterProgress(
            Arc::new(Counter::default()),
            Some(Arc::new(emit)),
        ))
    }
    fn finished(&self, o: &Outcome) {
        let _g = self.out.lock();
        let mut v = serde_json::to_value(o).expect("outcome serializes");
        v["event"] = "end".into();
        v["time"] = now().into();
        json_line(&v);
    }
}
