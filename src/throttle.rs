//! Bandwidth limits: a token bucket that readers draw from before handing
//! data on. One bucket per volume (its own limit) and one shared by every
//! running backup (the fleet-wide limit); a read waits for both.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes per second, with up to one second of burst.
#[derive(Debug)]
pub struct Throttle {
    rate: u64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Bytes that may pass now; negative after a large take (a debt that
    /// later callers wait out).
    tokens: f64,
    at: Instant,
}

impl Throttle {
    pub fn new(bytes_per_second: u64) -> Throttle {
        Throttle {
            rate: bytes_per_second.max(1),
            state: Mutex::new(Bucket {
                tokens: 0.0,
                at: Instant::now(),
            }),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Takes `bytes`, sleeping as long as the rate requires.
    pub fn take(&self, bytes: u64) {
        let wait = {
            let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let rate = self.rate as f64;
            b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(rate);
            b.at = now;
            b.tokens -= bytes as f64;
            if b.tokens >= 0.0 {
                return;
            }
            Duration::from_secs_f64(-b.tokens / rate)
        };
        std::thread::sleep(wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_rate_across_threads() {
        let t = std::sync::Arc::new(Throttle::new(4 << 20));
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                let t = t.clone();
                s.spawn(move || {
                    for _ in 0..8 {
                        t.take(256 << 10);
                    }
                });
            }
        });
        // 4 MiB at 4 MiB/s, no initial burst: about one second.
        let secs = start.elapsed().as_secs_f64();
        assert!((0.9..10.0).contains(&secs), "{secs}");
    }
}
