//! Progress reporting as a library trait. The engine only counts bytes; the
//! CLI decides how to show them (terminal bars, log lines, nothing).

/// Receives progress of one long operation.
pub trait Progress: Send + Sync {
    /// A phase starts; `total` bytes are expected (0 when unknown).
    fn begin(&self, phase: &str, total: u64);
    /// `bytes` more are done.
    fn advance(&self, bytes: u64);
    /// The phase ended (successfully or not).
    fn end(&self);
}

/// Progress that shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&self, _phase: &str, _total: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn end(&self) {}
}
