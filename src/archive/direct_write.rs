//! Writing a large file around the page cache (`O_DIRECT`), several writes
//! in flight, for the bulk writers whose speed is the disk's: fulls and
//! deltas of a backup, restores and exports to a file.
//!
//! This project's disk takes 288 MiB/s of buffered writes ended by an
//! fsync and 806 MiB/s of direct writes 16 at a time (fio, 2026-11); and
//! buffered writes fill the backup host's page cache with pages nobody
//! reads again. The caller hands in bytes at aligned offsets, in ascending
//! order; they are copied into aligned buffers (a write that continues the
//! one before fills the same buffer, up to 4 MiB) and written by a few
//! threads, or, when the caller hands over a whole aligned buffer
//! ([`DirectWriter::write_owned`]), that buffer is written as it is. A buffer whose length is not aligned is padded with zeros when
//! it goes out: whatever lies past its end is the caller's to write after
//! [`DirectWriter::finish`], or to cut with `set_len`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::direct::{AlignedBuf, ALIGN};
use crate::buffers::BufferPool;
use crate::error::{Error, Result};

/// Bytes per write.
const PIECE: usize = 4 << 20;
/// Writes in flight: the queue depth the disk sees.
const THREADS: usize = 8;
/// Buffers: one per thread, and two being filled.
const BUFFERS: usize = THREADS + 2;
/// Writes queued behind those in flight. With 10 instead of 4, a full
/// backup kept 6 more of its 4 MiB buffers here (peak RSS 220-264 MiB
/// against 199-252) for no measurable speed; with 2, about as fast again
/// but slower in its slowest runs (2026-11-30).
const QUEUED: usize = 4;

pub struct DirectWriter {
    path: PathBuf,
    jobs: Option<Sender<Job>>,
    free: Receiver<AlignedBuf>,
    /// Where buffers handed over by the caller go once written, if set
    /// ([`DirectWriter::recycle_into`]).
    recycle: Arc<OnceLock<BufferPool>>,
    threads: Vec<JoinHandle<()>>,
    /// The first error of any write.
    failed: Arc<Mutex<Option<std::io::Error>>>,
    /// Buffers made so far (at most [`BUFFERS`]).
    made: usize,
    /// The buffer being filled, and the file offset of its first byte.
    pending: Option<(u64, AlignedBuf)>,
}

impl DirectWriter {
    /// Writes to `file` (at `path`) through a second, direct descriptor of
    /// it; the filesystem's refusal (tmpfs, some FUSE filesystems) is the
    /// caller's cue to write through the cache.
    pub fn new(file: &File, path: &Path) -> std::io::Result<DirectWriter> {
        let direct = Arc::new(super::direct::reopen(file)?);
        // a filesystem may take the flag at open and refuse the writes:
        // one aligned write of zeros at the start of the (new) file finds
        // out, and the hole is punched back (zeros either way)
        direct.write_all_at(&AlignedBuf::zeroed(ALIGN), 0)?;
        let _ = super::sparse::punch_hole(file, 0, ALIGN as u64);
        let (jobs, rx) = bounded::<Job>(QUEUED);
        let (free_tx, free) = bounded(BUFFERS);
        let recycle = Arc::new(OnceLock::new());
        let failed = Arc::new(Mutex::new(None));
        let threads = (0..THREADS)
            .map(|i| {
                let (rx, failed, direct) = (rx.clone(), failed.clone(), direct.clone());
                let back = Back {
                    free: free_tx.clone(),
                    recycle: recycle.clone(),
                };
                std::thread::Builder::new()
                    .name(format!("write-{i}"))
                    .spawn(move || write_loop(&direct, rx, back, &failed))
                    .expect("a thread for direct writes")
            })
            .collect();
        Ok(DirectWriter {
            path: path.to_path_buf(),
            jobs: Some(jobs),
            free,
            recycle,
            threads,
            failed,
            made: 0,
            pending: None,
        })
    }

    /// A writer for `file` (at `path`), or None where the filesystem
    /// refuses direct I/O: the caller then writes through the page cache.
    /// The first refusal in a process is said at debug level.
    pub fn or_cache(file: &File, path: &Path) -> Option<DirectWriter> {
        static SAID: std::sync::Once = std::sync::Once::new();
        DirectWriter::new(file, path)
            .inspect_err(|e| {
                SAID.call_once(|| {
                    tracing::debug!(
                        "{}: no direct writes ({e}); writing through the page cache",
                        path.display()
                    )
                })
            })
            .ok()
    }

    /// Whether a write at `offset` can go this way: at an aligned offset,
    /// or right after the bytes written last (any length; see the module's
    /// note on padding).
    pub fn takes(&self, offset: u64) -> bool {
        offset % ALIGN as u64 == 0
            || matches!(&self.pending, Some((at, b)) if at + b.len() as u64 == offset)
    }

    /// Queues `data` for writing at `offset` (see [`DirectWriter::takes`]);
    /// waits while every buffer is in flight. An earlier write's error is
    /// returned here or by [`DirectWriter::finish`].
    pub fn write(&mut self, mut offset: u64, mut data: &[u8]) -> Result<()> {
        self.check()?;
        while !data.is_empty() {
            let follows = matches!(&self.pending,
                Some((at, b)) if at + b.len() as u64 == offset && b.len() < PIECE);
            if !follows {
                self.send_pending()?;
                let mut buf = self.buffer()?;
                buf.set_len(0);
                self.pending = Some((offset, buf));
            }
            let (_, buf) = self.pending.as_mut().expect("a buffer being filled");
            let have = buf.len();
            let n = (PIECE - have).min(data.len());
            buf.set_len(have + n);
            buf[have..].copy_from_slice(&data[..n]);
            (offset, data) = (offset + n as u64, &data[n..]);
            if have + n == PIECE {
                self.send_pending()?;
            }
        }
        Ok(())
    }

    /// Queues `buf` for writing at `offset` as it is, with no copy, when
    /// both are aligned (see [`DirectWriter::takes`] otherwise), and hands
    /// back a buffer the writers are done with, if one is idle, for the
    /// caller's next read. A buffer that cannot go as it is (an unaligned
    /// offset or length) is copied as by [`DirectWriter::write`] and
    /// handed back.
    pub fn write_owned(&mut self, offset: u64, buf: AlignedBuf) -> Result<Option<AlignedBuf>> {
        let aligned = offset % ALIGN as u64 == 0 && buf.len() % ALIGN == 0;
        if !aligned || buf.is_empty() {
            self.write(offset, &buf)?;
            return Ok(Some(buf));
        }
        self.check()?;
        self.send_pending()?;
        let jobs = self.jobs.as_ref().expect("jobs open until finish");
        jobs.send(Job {
            at: offset,
            buf,
            owned: true,
        })
        .map_err(|_| self.stopped())?;
        if self.recycle.get().is_some() {
            return Ok(None); // it goes back to the caller's pool
        }
        // (Tried: waiting for a written buffer once two writes were
        // queued, so the caller reuses rather than allocates: full backups
        // of 2 GiB took 1.85-1.94 s instead of 1.62-1.81 s, since Ceph's
        // reads then stall whenever the disk does; and the peak RSS did
        // not drop. 2026-11-30.)
        Ok(self.free.try_recv().ok())
    }

    /// Sends buffers handed over by [`DirectWriter::write_owned`] back to
    /// `pool` once written (write_owned then hands none back), so a reader
    /// that takes its buffers from `pool` reuses them rather than
    /// allocating while written ones sit idle here. Set once; later calls
    /// are ignored.
    pub fn recycle_into(&self, pool: &BufferPool) {
        let _ = self.recycle.set(pool.clone());
    }

    /// Sends the buffer being filled to the writers, padded with zeros to
    /// the alignment.
    fn send_pending(&mut self) -> Result<()> {
        let Some((at, mut buf)) = self.pending.take() else {
            return Ok(());
        };
        let len = buf.len();
        buf.set_len(len.div_ceil(ALIGN) * ALIGN);
        buf[len..].fill(0);
        let jobs = self.jobs.as_ref().expect("jobs open until finish");
        jobs.send(Job {
            at,
            buf,
            owned: false,
        })
        .map_err(|_| self.stopped())
    }

    /// Waits for every write; the first error of any. The data is on the
    /// disk but not yet durable: the caller's fsync makes it so.
    pub fn finish(mut self) -> Result<()> {
        self.send_pending()?;
        self.stop();
        self.check()
    }

    /// Closes the queue and waits for the threads to write what is in it.
    fn stop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// An idle buffer, or a new one while fewer than [`BUFFERS`] exist.
    fn buffer(&mut self) -> Result<AlignedBuf> {
        let mut b = match self.free.try_recv() {
            Ok(b) => b,
            Err(_) if self.made < BUFFERS => {
                self.made += 1;
                AlignedBuf::zeroed(PIECE)
            }
            Err(_) => self.free.recv().map_err(|_| self.stopped())?,
        };
        // (one the caller handed over may be smaller)
        b.clear();
        b.reserve(PIECE);
        Ok(b)
    }

    fn check(&self) -> Result<()> {
        match lock(&self.failed).take() {
            Some(e) => Err(Error::io(&self.path, e)),
            None => Ok(()),
        }
    }

    fn stopped(&self) -> Error {
        self.check().err().unwrap_or_else(|| {
            Error::Invalid(format!("{}: the writers stopped", self.path.display()))
        })
    }
}

impl Drop for DirectWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes `data` at `offset` of `file` (at `path`): through `direct`
/// where it takes the write (see [`DirectWriter::takes`]), else through
/// the page cache.
pub fn write_at(
    direct: &mut Option<DirectWriter>,
    file: &File,
    path: &Path,
    offset: u64,
    data: &[u8],
) -> Result<()> {
    match direct.as_mut().filter(|d| d.takes(offset)) {
        Some(d) => d.write(offset, data),
        None => file
            .write_all_at(data, offset)
            .map_err(|e| Error::io(path, e)),
    }
}

/// Writes `buf` at `offset` of `file` (at `path`) as [`write_at`] does,
/// handing the buffer itself to `direct` where it takes it
/// ([`DirectWriter::write_owned`]); returns a buffer for the caller's
/// next read, if one is idle.
pub fn write_owned_at(
    direct: &mut Option<DirectWriter>,
    file: &File,
    path: &Path,
    offset: u64,
    buf: AlignedBuf,
) -> Result<Option<AlignedBuf>> {
    match direct.as_mut().filter(|d| d.takes(offset)) {
        Some(d) => d.write_owned(offset, buf),
        None => {
            file.write_all_at(&buf, offset)
                .map_err(|e| Error::io(path, e))?;
            Ok(Some(buf))
        }
    }
}

/// A write for the threads: `buf` at file offset `at`; `owned` if the
/// caller handed the buffer over.
struct Job {
    at: u64,
    buf: AlignedBuf,
    owned: bool,
}

/// Where a writing thread puts a written buffer: the caller's pool for
/// one it handed over (if it gave one), else the writer's idle list.
struct Back {
    free: Sender<AlignedBuf>,
    recycle: Arc<OnceLock<BufferPool>>,
}

/// A writing thread: writes what it is given, hands the buffer back; after
/// the first error (kept for the caller) it only hands buffers back.
fn write_loop(
    file: &File,
    jobs: Receiver<Job>,
    back: Back,
    failed: &Mutex<Option<std::io::Error>>,
) {
    for Job { at, buf, owned } in jobs {
        let broken = lock(failed).is_some();
        if !broken {
            if let Err(e) = file.write_all_at(&buf, at) {
                lock(failed).get_or_insert(e);
            }
        }
        match back.recycle.get().filter(|_| owned) {
            Some(pool) => pool.put(buf),
            None => {
                let _ = back.free.try_send(buf);
            }
        }
    }
}

/// The first error, whatever a panicking writer left.
fn lock(m: &Mutex<Option<std::io::Error>>) -> std::sync::MutexGuard<'_, Option<std::io::Error>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new file in a temporary directory and a direct writer for it, or
    /// None where the filesystem refuses direct I/O.
    fn direct_file() -> Option<(tempfile::TempDir, PathBuf, File, DirectWriter)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let w = DirectWriter::new(&file, &path).ok()?;
        Some((dir, path, file, w))
    }

    /// Pieces at aligned offsets, one longer than a buffer and a short last
    /// one, land where they belong; the gaps stay holes of zeros.
    #[test]
    fn writes_land_in_place() {
        let Some((_dir, path, file, mut w)) = direct_file() else {
            return; // no direct I/O here: FileTarget writes through the cache
        };
        let big: Vec<u8> = (0..PIECE + 3 * ALIGN).map(|i| (i % 253) as u8).collect();
        let tail = vec![7u8; 1000];
        let tail_at = (3 * PIECE) as u64;
        w.write(ALIGN as u64, &big).unwrap();
        w.write(tail_at, &tail).unwrap();
        w.finish().unwrap();
        file.set_len(tail_at + tail.len() as u64).unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), 3 * PIECE + 1000);
        assert!(got[..ALIGN].iter().all(|&b| b == 0));
        assert_eq!(&got[ALIGN..ALIGN + big.len()], &big[..]);
        assert!(got[ALIGN + big.len()..tail_at as usize]
            .iter()
            .all(|&b| b == 0));
        assert_eq!(&got[tail_at as usize..], &tail[..]);
    }

    /// Whole aligned buffers are written as they are, between copied
    /// pieces; an unaligned one is copied and handed back; what comes back
    /// for reuse is a buffer the writers are done with.
    #[test]
    fn owned_buffers_land_in_place() {
        let Some((_dir, path, file, mut w)) = direct_file() else {
            return; // no direct I/O here: FileTarget writes through the cache
        };
        let pattern = |n: usize, seed: usize| -> Vec<u8> {
            (0..n).map(|i| ((i * 7 + seed) % 251) as u8).collect()
        };
        let mut expect = vec![0u8; 40 * ALIGN + 100];
        let mut put = |at: usize, d: &[u8]| expect[at..at + d.len()].copy_from_slice(d);
        let a = pattern(8 * ALIGN, 1);
        w.write(0, &a[..3 * ALIGN]).unwrap(); // copied, left pending
        put(0, &a[..3 * ALIGN]);
        let owned = AlignedBuf::from_slice(&a[3 * ALIGN..]);
        w.write_owned(3 * ALIGN as u64, owned).unwrap(); // sends the pending first
        put(3 * ALIGN, &a[3 * ALIGN..]);
        let mut back = 0;
        for i in 0..30 {
            let d = pattern(ALIGN, 10 + i);
            let at = (8 + i) * ALIGN;
            back += w
                .write_owned(at as u64, AlignedBuf::from_slice(&d))
                .unwrap()
                .is_some() as usize;
            put(at, &d);
        }
        let tail = pattern(100, 99);
        let at = 40 * ALIGN;
        let again = w
            .write_owned(at as u64, AlignedBuf::from_slice(&tail))
            .unwrap();
        assert_eq!(
            again.as_deref(),
            Some(&tail[..]),
            "an unaligned length is handed back"
        );
        put(at, &tail);
        w.finish().unwrap();
        file.set_len(expect.len() as u64).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expect);
        assert!(back > 0, "written buffers come back for reuse");
    }

    /// With a pool to recycle into, written buffers handed over go back
    /// to that pool, and none comes back from write_owned.
    #[test]
    fn handed_over_buffers_go_back_to_the_pool() {
        let Some((_dir, path, _file, mut w)) = direct_file() else {
            return; // no direct I/O here: FileTarget writes through the cache
        };
        let pool = BufferPool::new(64);
        w.recycle_into(&pool);
        for i in 0..20u8 {
            let buf = AlignedBuf::from_slice(&[i + 1; ALIGN]);
            assert!(w
                .write_owned(u64::from(i) * ALIGN as u64, buf)
                .unwrap()
                .is_none());
        }
        w.finish().unwrap();
        let mut back = 0;
        while pool.idle() > 0 {
            assert_eq!(pool.get_empty(0).capacity(), ALIGN);
            back += 1;
        }
        assert_eq!(back, 20);
        let got = std::fs::read(&path).unwrap();
        assert!((0..20).all(|i| got[i * ALIGN..(i + 1) * ALIGN]
            .iter()
            .all(|&b| b == i as u8 + 1)));
    }
}
