//! Crash points for fault-injection tests. With `RBDELTA_TEST_CRASH_AT=N`
//! in the environment, the N-th point reached aborts the process on the
//! spot (like `kill -9`: no destructors, no cleanup). With
//! `RBDELTA_TEST_CRASH_COUNT=PATH`, the number of points reached is written
//! to PATH at each point, so a test learns how many there are. Without
//! either variable a point is one relaxed atomic load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static REACHED: AtomicU64 = AtomicU64::new(0);

struct Config {
    crash_at: Option<u64>,
    count_to: Option<std::path::PathBuf>,
}

fn config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| Config {
        crash_at: std::env::var("RBDELTA_TEST_CRASH_AT")
            .ok()
            .and_then(|v| v.parse().ok()),
        count_to: std::env::var_os("RBDELTA_TEST_CRASH_COUNT").map(Into::into),
    })
}

/// A place where a crash must leave the archive consistent.
pub fn point(_what: &str) {
    let c = config();
    if c.crash_at.is_none() && c.count_to.is_none() {
        return;
    }
    let n = REACHED.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(p) = &c.count_to {
        let _ = std::fs::write(p, n.to_string());
    }
    if c.crash_at == Some(n) {
        std::process::abort();
    }
}
