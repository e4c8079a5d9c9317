//! Helpers shared by the integration tests that need a real Ceph cluster.
//!
//! Cluster tests are marked `#[ignore]`, so a plain `cargo test` runs only
//! the tests that need nothing and shows the others as ignored, never as
//! passed. `ci/test.sh` starts a throwaway cluster, sets
//! `RBDELTA_TEST_CEPH_CONF` and runs them all with `--include-ignored`. A
//! cluster test that runs without that variable fails. Pool: `rbd`, or
//! `RBDELTA_TEST_POOL`.
//!
//! A test that cannot do its job in this environment (no tmpfs mount, say)
//! calls [`skip`]: a message and a pass, unless `RBDELTA_REQUIRE_CLUSTER`
//! is true (CI), where every skip is a failure.
#![allow(dead_code)]

pub mod cli;

use rbdelta::ceph::{CephOptions, Cluster, IoCtx};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The test cluster's ceph.conf. Panics when it is not configured: only
/// cluster tests call this, and they are ignored unless asked for.
pub fn test_conf() -> PathBuf {
    match std::env::var_os("RBDELTA_TEST_CEPH_CONF") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "RBDELTA_TEST_CEPH_CONF is not set: cluster tests need a running test \
             cluster (ci/test.sh starts one)"
        ),
    }
}

/// Whether every test must really run (`RBDELTA_REQUIRE_CLUSTER`): the usual
/// true and false words are accepted, anything else is a loud error.
pub fn required() -> bool {
    let v = std::env::var("RBDELTA_REQUIRE_CLUSTER").unwrap_or_default();
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => true,
        "" | "0" | "false" | "no" | "off" => false,
        _ => panic!("RBDELTA_REQUIRE_CLUSTER={v:?}: use 1/true/yes/on or 0/false/no/off"),
    }
}

/// A test that cannot run here: a failure where every test must run,
/// otherwise a visible message (the test then returns and passes).
pub fn skip(why: &str) {
    assert!(!required(), "RBDELTA_REQUIRE_CLUSTER is set, but: {why}");
    eprintln!("SKIPPED: {why}");
}

/// Fault-injection tests drive crash points and job faults compiled in only
/// with the `fault-injection` feature (never into the released binary).
pub fn require_fault_injection() {
    #[cfg(not(feature = "fault-injection"))]
    panic!("this test needs `cargo test --features fault-injection` (ci/test.sh passes it)");
}

/// Options for the test cluster (client.admin, 30 s timeout).
pub fn test_options(conf: PathBuf) -> CephOptions {
    CephOptions {
        conf: Some(conf),
        id: "admin".into(),
        keyring: None,
        timeout: Duration::from_secs(30),
    }
}

/// One connection per test binary, shared by its tests.
pub fn test_cluster() -> Arc<Cluster> {
    static CLUSTER: OnceLock<Arc<Cluster>> = OnceLock::new();
    let conf = test_conf();
    Arc::clone(CLUSTER.get_or_init(|| {
        Cluster::connect(&test_options(conf)).expect("connect to the test cluster")
    }))
}

/// The pool tests use.
pub fn test_pool() -> String {
    std::env::var("RBDELTA_TEST_POOL").unwrap_or_else(|_| "rbd".into())
}

/// An I/O context on the test pool.
pub fn test_ioctx() -> IoCtx {
    test_cluster()
        .ioctx(&test_pool())
        .expect("open the test pool")
}

/// A name no other test (in this or any concurrent run) uses.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000_000)
        .unwrap_or(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// Removes an image and its snapshots (unprotecting them) on drop, so
/// failed tests do not leave images behind. Drop clones before parents.
pub struct ScratchImage {
    pub ioctx: IoCtx,
    pub name: String,
}

impl ScratchImage {
    /// Creates a fresh image with a unique name (default order/features).
    pub fn create(ioctx: &IoCtx, prefix: &str, size: u64) -> ScratchImage {
        let name = unique_name(prefix);
        ioctx
            .create_image(&name, size, 0, 0)
            .expect("create scratch image");
        ScratchImage::adopt(ioctx, &name)
    }

    /// Takes over cleanup of an image created some other way.
    pub fn adopt(ioctx: &IoCtx, name: &str) -> ScratchImage {
        ScratchImage {
            ioctx: ioctx.clone(),
            name: name.to_string(),
        }
    }
}

impl Drop for ScratchImage {
    fn drop(&mut self) {
        if let Ok(img) = self.ioctx.open_image(&self.name) {
            for (snap, _, _) in img.snap_list().unwrap_or_default() {
                let _ = img.snap_unprotect(&snap);
                let _ = img.snap_remove(&snap);
            }
        }
        let _ = self.ioctx.remove_image(&self.name);
    }
}

/// Deterministic pseudo-random bytes (xorshift), different per `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Flips one byte of a file in place (damage for verify and repair tests).
pub fn flip_byte(path: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0xff;
    f.write_all_at(&b, at).unwrap();
}

/// Restores revision `id` of `vol` into a file in `scratch` and returns
/// its bytes (the restore checks every block and the image checksum).
pub fn restore_to_vec(
    vol: &rbdelta::archive::VolumeDir,
    id: &str,
    scratch: &std::path::Path,
) -> Vec<u8> {
    use rbdelta::restore::{file_target::FileTarget, restore, RestoreOptions};
    let rev = vol.find_revision(id).unwrap();
    let out = scratch.join(format!("restored-{id}"));
    let _ = std::fs::remove_file(&out);
    let target = FileTarget::create(
        &out,
        rev.manifest.size,
        &rbdelta::restore::TargetOptions {
            force: true,
            ..Default::default()
        },
    )
    .unwrap();
    restore(
        vol,
        &rev,
        Box::new(target),
        &RestoreOptions::default(),
        &rbdelta::progress::NoProgress,
    )
    .unwrap();
    std::fs::read(&out).unwrap()
}

/// A tmpfs of `mib` MiB mounted on `dir`, unmounted on drop (needs root).
pub struct SmallDisk(PathBuf);

impl SmallDisk {
    pub fn mount(dir: &Path, mib: u64) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            skip("cannot mount a tmpfs (not root?)");
            return None;
        }
        Some(SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Replaces directory `to` with a copy of `from` (`cp -a`).
pub fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Whether `path`'s file system reports the holes of a file `size` long
/// (CephFS through ceph-fuse keeps them but reports none, and counts every
/// byte as allocated): sparseness can only be judged where it does.
pub fn tells_holes(path: &std::path::Path, size: u64) -> bool {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: lseek on an open descriptor.
    let hole = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_HOLE) };
    hole >= 0 && (hole as u64) < size
}
