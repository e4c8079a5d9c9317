//! A small mutation fuzzer for the parsers of on-disk files: it damages
//! real files (bit flips, cuts, inserts, splices, odd integers and JSON
//! tokens, several at a time), writes each case over the file, runs a
//! check, and fails on a panic, a hang or a broken invariant, leaving the
//! input under `target/fuzz-failures/`. Deterministic: a case is replayed
//! with `FUZZ_SEED` and its number.
//!
//! Every case also fails if it made a single allocation over
//! [`MAX_ALLOC`] (a header that talks a parser into a huge buffer), counted
//! by this binary's global allocator on the case's own thread.
//!
//! Chosen over cargo-fuzz because it needs no nightly toolchain (CI has
//! only stable) and runs inside the normal test suite; it is fast enough
//! for 10 million cases per target (`ci/fuzz.sh`).

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

/// The largest single allocation a case may make.
pub const MAX_ALLOC: usize = 64 << 20;

/// The system allocator, keeping the largest allocation made on each
/// thread since it was last reset (const thread-locals: no allocation).
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call goes straight to the system allocator; the counter
// is a plain thread-local cell that never allocates.
unsafe impl std::alloc::GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(l.size())));
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(l.size())));
        unsafe { std::alloc::System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(new)));
        unsafe { std::alloc::System.realloc(p, l, new) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// A case that runs longer than this is a hang.
const HANG: Duration = Duration::from_secs(5);

/// xorshift64*: fast, deterministic, good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-ish in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const BYTES: &[u8] = b"\x00\xff\x7f\x80\x01\"{}[],:-9\n\\e.";
const INTS: &[u64] = &[
    0,
    1,
    2,
    4095,
    4096,
    65535,
    65536,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    1 << 62,
    1 << 63,
    u64::MAX,
    u64::MAX - 1,
];
const TOKENS: &[&str] = &[
    "0",
    "-1",
    "18446744073709551616",
    "1e999",
    "null",
    "true",
    "\"\"",
    "[]",
    "{}",
    "\"../../etc/passwd\"",
    "\"\\u0000\"",
    "\"\u{1F4A5}\u{301}\"",
    "\"2026-13-45T99:99:99Z\"",
    "\"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff\"",
];

/// One damaged version of a seed: one to four stacked mutations.
pub fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let len = b.len();
        let at = if len == 0 { 0 } else { rng.below(len) };
        match rng.below(11) {
            0 | 1 if len > 0 => b[at] ^= 1 << rng.below(8),
            2 if len > 0 => b[at] = BYTES[rng.below(BYTES.len())],
            3 => b.truncate(at),
            4 => {
                let end = (at + 1 + rng.below(16)).min(len);
                b.drain(at..end);
            }
            5 => {
                let junk: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                b.splice(at..at, junk);
            }
            6 if len > 0 => {
                let n = (1 + rng.below(64)).min(len - at);
                let piece = b[at..at + n].to_vec();
                let to = rng.below(len + 1);
                b.splice(to..to, piece);
            }
            7 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                b.truncate(at);
                b.extend_from_slice(&other[from..]);
            }
            8 if len >= 8 => {
                // an odd integer over a (likely) binary field
                let v = INTS[rng.below(INTS.len())].to_le_bytes();
                let w = if rng.below(2) == 0 { 4 } else { 8 };
                let at = (at & !(w - 1)).min(len - w);
                b[at..at + w].copy_from_slice(&v[..w]);
            }
            _ => json_token(rng, &mut b),
        }
    }
    b
}

/// Replaces a JSON number, string or literal with an odd token.
fn json_token(rng: &mut Rng, b: &mut Vec<u8>) {
    let starts: Vec<usize> = (0..b.len())
        .filter(|&i| matches!(b[i], b'"' | b'0'..=b'9' | b'-' | b't' | b'f' | b'n'))
        .collect();
    if starts.is_empty() {
        return;
    }
    let s = starts[rng.below(starts.len())];
    let mut e = s + 1;
    if b[s] == b'"' {
        while e < b.len() && b[e] != b'"' {
            e += 1 + usize::from(b[e] == b'\\');
        }
        e = (e + 1).min(b.len());
    } else {
        while e < b.len() && (b[e].is_ascii_alphanumeric() || b".+-".contains(&b[e])) {
            e += 1;
        }
    }
    let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
    b.splice(s..e, t.iter().copied());
}

thread_local! {
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Panics inside a case are caught; the hook keeps their message instead
/// of printing thousands of them. Other panics print as usual.
fn quiet_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_CASE.get() {
                PANIC.with(|p| *p.borrow_mut() = Some(format!("{info}")));
            } else {
                default(info)
            }
        }))
    });
}

/// How many cases each target runs: `FUZZ_CASES`, or `default`.
pub fn cases(default: u64) -> u64 {
    std::env::var("FUZZ_CASES")
        .ok()
        .map(|v| v.parse().expect("FUZZ_CASES is a number"))
        .unwrap_or(default)
}

/// Fuzzes one file: every case writes a damaged seed to `file` and runs
/// `check` on it, which returns an error for a broken invariant (an
/// accepted file that reads wrong, an error that does not name the file).
/// `check` returns whether the file was accepted, for the report.
pub fn run(
    name: &str,
    file: &Path,
    seeds: &[Vec<u8>],
    default_cases: u64,
    mut check: impl FnMut(&Path) -> Result<bool, String>,
) {
    quiet_panics();
    let cases = cases(default_cases);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .map(|v| v.parse().expect("FUZZ_SEED is a number"))
        .unwrap_or(1);
    let started = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let clock = Instant::now();
    let watchdog = {
        let (started, done) = (started.clone(), done.clone());
        let (name, file) = (name.to_string(), file.to_path_buf());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let s = started.load(Ordering::Relaxed);
                if s != 0 && clock.elapsed().as_millis() as u64 > s + HANG.as_millis() as u64 {
                    let kept = keep(&name, "hang", &std::fs::read(&file).unwrap_or_default());
                    eprintln!(
                        "fuzz {name}: a case ran over {HANG:?}; input kept in {}",
                        kept.display()
                    );
                    std::process::abort();
                }
            }
        })
    };
    let (mut accepted, mut slowest, mut biggest) = (0u64, Duration::ZERO, 0usize);
    for case in 0..cases {
        let mut rng = Rng::new(seed ^ case.wrapping_mul(0x0123_4567_89AB_CDEF));
        let input = mutate(&mut rng, seeds);
        std::fs::write(file, &input).unwrap();
        let t = Instant::now();
        started.store(clock.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        IN_CASE.set(true);
        LARGEST.set(0);
        let outcome = catch_unwind(AssertUnwindSafe(|| check(file)));
        let largest = LARGEST.get();
        IN_CASE.set(false);
        started.store(0, Ordering::Relaxed);
        slowest = slowest.max(t.elapsed());
        biggest = biggest.max(largest);
        let fail = match outcome {
            Ok(Ok(_)) if largest > MAX_ALLOC => Some(format!(
                "allocated {largest} bytes at once (over {MAX_ALLOC})"
            )),
            Ok(Ok(ok)) => {
                accepted += u64::from(ok);
                None
            }
            Ok(Err(why)) => Some(why),
            Err(_) => Some(PANIC.with(|p| p.borrow_mut().take()).unwrap_or_default()),
        };
        if let Some(why) = fail {
            done.store(true, Ordering::Relaxed);
            let kept = keep(name, &case.to_string(), &input);
            panic!(
                "fuzz {name}: case {case} (FUZZ_SEED={seed}) failed: {why}\ninput kept in {}",
                kept.display()
            );
        }
    }
    done.store(true, Ordering::Relaxed);
    watchdog.join().unwrap();
    let secs = clock.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {name}: {cases} cases in {secs:.1} s ({:.0}/s), {accepted} accepted, 0 panics, 0 hangs, slowest case {:.1} ms, largest allocation {} KiB",
        cases as f64 / secs,
        slowest.as_secs_f64() * 1000.0,
        biggest.div_ceil(1024)
    );
}

/// Keeps a failing input where a developer finds it.
fn keep(name: &str, case: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{name}-{case}.bin"));
    let _ = std::fs::write(&path, input);
    path
}

/// Errors unless `msg` names `file` (by its file name).
pub fn names(msg: &str, file: &Path) -> Result<bool, String> {
    let n = file.file_name().unwrap().to_string_lossy();
    if msg.contains(n.as_ref()) {
        Ok(false)
    } else {
        Err(format!("the error does not name {n}: {msg}"))
    }
}
