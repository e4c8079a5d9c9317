//! Pipelined asynchronous reads and writes.
//!
//! One synchronous 4 MiB request at a time leaves a cluster idle most of the
//! time; backups and restores keep a window of `depth` requests in flight
//! instead. The memory rule this module exists to enforce: a buffer handed
//! to librbd is never freed or moved while librbd may still touch it. Each
//! request is an [`InFlight`] that owns its buffer and whose `Drop` waits for
//! the completion, so early returns, errors and panics all drain safely.

use super::image::short_io;
use super::{ceph_error, check, sys, Image};
use crate::buffers::AlignedBuf;
use crate::error::{Error, Result};
use std::collections::VecDeque;
use std::ptr;
use std::time::{Duration, Instant};

/// One submitted request: its completion and the buffer librbd uses.
struct InFlight {
    comp: sys::rbd_completion_t,
    buf: AlignedBuf,
    offset: u64,
    /// Caller's tag (the extent index for reads).
    tag: usize,
}

// No callback: we always wait for completions explicitly.
fn new_completion(op: &str) -> Result<sys::rbd_completion_t> {
    let mut c: sys::rbd_completion_t = ptr::null_mut();
    // SAFETY: valid out-pointer; NULL callback and argument are allowed.
    let rc = unsafe { sys::rbd_aio_create_completion(ptr::null_mut(), None, &mut c) };
    check(|| format!("rbd_aio_create_completion ({op})"), rc)?;
    Ok(c)
}

impl InFlight {
    /// Submits a read into `buf` (its length is the read's length).
    fn read(image: &Image, offset: u64, mut buf: AlignedBuf, tag: usize) -> Result<InFlight> {
        let comp = new_completion("read")?;
        let len = buf.len();
        // SAFETY: open image; `buf` is valid for `len` bytes and, once
        // submitted, is kept alive and unmoved (a Vec's heap block does not
        // move when the Vec does) until `Drop` has waited.
        let rc =
            unsafe { sys::rbd_aio_read(image.raw().0, offset, len, buf.as_mut_ptr().cast(), comp) };
        Self::submitted(image, "rbd_aio_read", comp, rc, buf, offset, tag)
    }

    fn write(image: &Image, offset: u64, buf: AlignedBuf) -> Result<InFlight> {
        let comp = new_completion("write")?;
        // SAFETY: as for reads; librbd only reads from `buf`.
        let rc = unsafe {
            sys::rbd_aio_write(image.raw().0, offset, buf.len(), buf.as_ptr().cast(), comp)
        };
        Self::submitted(image, "rbd_aio_write", comp, rc, buf, offset, 0)
    }

    fn submitted(
        image: &Image,
        op: &str,
        comp: sys::rbd_completion_t,
        rc: i32,
        buf: AlignedBuf,
        offset: u64,
        tag: usize,
    ) -> Result<InFlight> {
        if rc < 0 {
            // Never submitted: nothing will complete it, just release it.
            // SAFETY: created above, not in use by librbd.
            unsafe { sys::rbd_aio_release(comp) };
            return Err(ceph_error(
                format!("{op} {} at {offset}", image.name()),
                rc.into(),
            ));
        }
        Ok(InFlight {
            comp,
            buf,
            offset,
            tag,
        })
    }

    /// Waits, then checks that exactly the whole buffer was transferred
    /// (writes may report 0 for success).
    fn finish(mut self, image: &Image, op: &str) -> Result<(usize, AlignedBuf)> {
        self.outcome(image, op)?;
        // Completed: the buffer is ours again. `Drop` re-waits (instant).
        Ok((self.tag, std::mem::take(&mut self.buf)))
    }

    /// Waits for the request and checks it, keeping the buffer.
    fn outcome(&mut self, image: &Image, op: &str) -> Result<()> {
        // SAFETY: a submitted completion, not yet released.
        let ret = unsafe {
            sys::rbd_aio_wait_for_complete(self.comp);
            sys::rbd_aio_get_return_value(self.comp)
        };
        image.touch();
        let want = self.buf.len();
        let what = || format!("{op} {} at {}", image.name(), self.offset);
        if ret < 0 {
            return Err(ceph_error(what(), ret as i64));
        }
        let ok = ret as usize == want || (op == "rbd_aio_write" && ret == 0);
        if !ok {
            return Err(short_io(what(), ret as usize, want));
        }
        Ok(())
    }

    /// A completed request's buffer and offset, to submit it again.
    fn into_retry(mut self) -> (u64, AlignedBuf) {
        // `outcome` has waited: librbd is done with the buffer.
        (self.offset, std::mem::take(&mut self.buf))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // SAFETY: a submitted completion. Waiting first guarantees librbd is
        // done with `buf` before the field is freed; then it is released
        // exactly once.
        unsafe {
            sys::rbd_aio_wait_for_complete(self.comp);
            sys::rbd_aio_release(self.comp);
        }
    }
}

impl Image {
    /// Reads `extents` (`(offset, len)` pairs) with up to `depth` reads in
    /// flight, calling `sink(index, bytes)` in submission order, each extent
    /// exactly once. Every read must return its full length. On any error
    /// (including one from `sink`) all reads in flight are waited for before
    /// this returns.
    /// Buffers come from `alloc(len)`, which must return `len` bytes.
    pub fn read_pipelined<F, A>(
        &self,
        extents: &[(u64, u64)],
        depth: usize,
        mut alloc: A,
        mut sink: F,
    ) -> Result<()>
    where
        F: FnMut(usize, AlignedBuf) -> Result<()>,
        A: FnMut(usize) -> AlignedBuf,
    {
        let depth = depth.max(1);
        let mut window: VecDeque<InFlight> = VecDeque::with_capacity(depth);
        for (i, &(offset, len)) in extents.iter().enumerate() {
            if window.len() == depth {
                let oldest = window.pop_front().expect("window is full");
                let (tag, buf) = oldest.finish(self, "rbd_aio_read")?;
                sink(tag, buf)?;
            }
            let len = usize::try_from(len)
                .map_err(|_| Error::Invalid(format!("extent too large: {len} bytes")))?;
            let buf = alloc(len);
            if buf.len() != len {
                return Err(Error::Invalid(format!(
                    "read buffer of {} bytes for {len}",
                    buf.len()
                )));
            }
            window.push_back(InFlight::read(self, offset, buf, i)?);
        }
        while let Some(oldest) = window.pop_front() {
            let (tag, buf) = oldest.finish(self, "rbd_aio_read")?;
            sink(tag, buf)?;
        }
        Ok(())
    }

    /// A pipelined writer keeping up to `depth` writes in flight.
    pub fn writer(&self, depth: usize) -> AioWriter<&Image> {
        AioWriter::new(self, depth)
    }

    /// A pipelined writer that owns the image (for restore targets that
    /// outlive the caller's borrow).
    pub fn into_writer(self, depth: usize) -> AioWriter<Box<Image>> {
        AioWriter::new(Box::new(self), depth)
    }
}

/// Pipelined writes for restores. Call [`AioWriter::finish`] to learn whether
/// everything was written; dropping an unfinished writer still waits for all
/// writes in flight (but reports nothing). Writes in flight may land in any
/// order (there is no librbd cache to order them): never submit overlapping
/// ranges.
pub struct AioWriter<I: std::ops::Deref<Target = Image>> {
    // Field order matters: `window` drops (waiting for every write) before
    // an owned `image` is closed.
    window: VecDeque<InFlight>,
    image: I,
    depth: usize,
    /// How long a write (or the final flush) may keep failing with a
    /// transient error before that is final (zero: no retries).
    retry_for: Duration,
}

/// The first pause before a retry; doubled for each further one, up to
/// [`RETRY_MAX_DELAY`].
const RETRY_FIRST_DELAY: Duration = Duration::from_secs(1);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(30);

/// Retries `attempt` while it fails with a transient error and has been
/// failing for less than `retry_for`, pausing 1, 2, 4 … 30 s in between.
fn with_retries<T>(
    retry_for: Duration,
    what: impl Fn() -> String,
    mut attempt: impl FnMut() -> Result<T>,
) -> Result<T> {
    let mut first_failure: Option<Instant> = None;
    let mut delay = RETRY_FIRST_DELAY;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() => {
                let since = *first_failure.get_or_insert_with(Instant::now);
                if since.elapsed() + delay > retry_for {
                    return Err(e);
                }
                tracing::warn!("{e}; retrying {} in {delay:?}", what());
                std::thread::sleep(delay);
                delay = (delay * 2).min(RETRY_MAX_DELAY);
            }
            Err(e) => return Err(e),
        }
    }
}

impl<I: std::ops::Deref<Target = Image>> AioWriter<I> {
    fn new(image: I, depth: usize) -> Self {
        AioWriter {
            image,
            depth: depth.max(1),
            window: VecDeque::new(),
            retry_for: Duration::ZERO,
        }
    }

    /// Retries a write that fails with a transient error (the cluster did
    /// not answer, or asked to try again) until it has failed for
    /// `retry_for`, pausing 1, 2, 4 … 30 s in between.
    pub fn with_retries(mut self, retry_for: Duration) -> Self {
        self.retry_for = retry_for;
        self
    }

    /// The image written to.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// Submits a write of `data` at `offset`, first waiting for the oldest
    /// write when `depth` are in flight. Returns the first error seen.
    /// Returns the buffer of a write that completed meanwhile, for reuse.
    pub fn submit(&mut self, offset: u64, data: AlignedBuf) -> Result<Option<AlignedBuf>> {
        let mut done = None;
        while self.window.len() >= self.depth {
            done = self.complete_oldest()?;
        }
        self.window
            .push_back(InFlight::write(&self.image, offset, data)?);
        Ok(done)
    }

    fn complete_oldest(&mut self) -> Result<Option<AlignedBuf>> {
        let Some(first) = self.window.pop_front() else {
            return Ok(None);
        };
        let image: &Image = &self.image;
        // the write in flight, or the one to submit again (after the pause)
        let (mut cur, mut again) = (Some(first), None);
        let what = || format!("the write to {}", image.name());
        with_retries(self.retry_for, what, || {
            let mut w = match (cur.take(), again.take()) {
                (Some(w), _) => w,
                (None, Some((offset, buf))) => InFlight::write(image, offset, buf)?,
                // a failed submission consumed the buffer: that is final
                (None, None) => {
                    return Err(Error::Invalid("a write could not be resubmitted".into()))
                }
            };
            match w.outcome(image, "rbd_aio_write") {
                Ok(()) => Ok(w.into_retry().1),
                Err(e) => {
                    again = Some(w.into_retry());
                    Err(e)
                }
            }
        })
        .map(Some)
    }

    /// Waits for every write, then flushes the image.
    pub fn finish(mut self) -> Result<()> {
        while !self.window.is_empty() {
            self.complete_oldest()?;
        }
        let image: &Image = &self.image;
        with_retries(
            self.retry_for,
            || format!("the flush of {}", image.name()),
            || image.flush(),
        )
    }
}
