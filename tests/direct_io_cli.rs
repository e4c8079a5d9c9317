//! Restores and exports to a file go around the page cache (`O_DIRECT`,
//! several writes in flight) where the filesystem takes it, and through
//! the cache where it does not: both byte-exact for an image of an odd
//! size with holes, both leaving the holes as holes. No cluster: the
//! revision comes from `rbdelta import --raw`.

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use common::cli::{stderr, Env};
use common::pattern;

const MIB: u64 = 1 << 20;

/// Whether the filesystem of `dir` takes `O_DIRECT` writes.
fn takes_direct(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("probe");
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .is_ok();
    let _ = std::fs::remove_file(&path);
    ok
}

#[test]
fn odd_sized_sparse_images_restore_byte_exact_with_and_without_direct_io() {
    common::require_fault_injection();
    let env = Env::with_yaml(
        Path::new("/nonexistent/ceph.conf"),
        "volumes:\n  - name: v\n    pool: rbd\n    image: v\n",
    );
    let dir = env.dir.path();
    // 40 MiB + 12345 bytes: data at the start, a run longer than one
    // 4 MiB write, scattered blocks, a long hole, and the partial last block
    let raw = dir.join("disk.raw");
    let size = 40 * MIB + 12345;
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(&pattern(70_000, 1), 0).unwrap();
    f.write_all_at(&pattern(9 * MIB as usize, 2), 3 * MIB)
        .unwrap();
    for i in 0..20u64 {
        f.write_all_at(&pattern(4096, 10 + i), 14 * MIB + i * 300_000)
            .unwrap();
    }
    f.write_all_at(&pattern(20_000, 3), size - 20_000).unwrap();
    drop(f);
    let data = 70_000 + 9 * MIB + 20 * 65536 + 65536 + 20_000;
    // CephFS (ceph-fuse) keeps holes but reports none, and counts every
    // byte as allocated: the allocation is only judged where it tells
    let tells_holes = {
        use std::os::unix::io::AsRawFd;
        let f = std::fs::File::open(&raw).unwrap();
        // SAFETY: lseek on an open descriptor.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_HOLE) };
        hole >= 0 && (hole as u64) < size
    };
    env.ok(&["import", "v", "--raw", raw.to_str().unwrap()]);
    let want = std::fs::read(&raw).unwrap();

    for (name, refuse) in [("direct", false), ("cached", true)] {
        let out_file = dir.join(format!("{name}.raw"));
        let exported = dir.join(format!("{name}-export.raw"));
        // rbdelta with debug logs, where direct I/O is refused if `refuse`
        let run = |args: &[&str]| {
            let mut cmd = env.cmd();
            cmd.env("RBDELTA_LOG", "debug");
            if refuse {
                cmd.env("RBDELTA_TEST_NO_DIRECT", "1");
            }
            let out = cmd.args(args).output().unwrap();
            assert!(out.status.success(), "{name}: {args:?}: {}", stderr(&out));
            stderr(&out)
        };
        let err = run(&["restore", "v", "--to-file", out_file.to_str().unwrap()]);
        let fell_back = err.contains("no direct writes");
        assert_eq!(fell_back, refuse || !takes_direct(dir), "{name}: {err}");
        run(&["export", "v", "-o", exported.to_str().unwrap()]);
        for path in [&out_file, &exported] {
            let got = std::fs::read(path).unwrap();
            assert_eq!(got.len(), want.len(), "{}", path.display());
            assert!(got == want, "{} differs", path.display());
            // holes stay holes: what is allocated is about the data
            let allocated = std::fs::metadata(path).unwrap().blocks() * 512;
            assert!(
                !tells_holes || allocated <= data + 2 * MIB,
                "{}: {allocated} bytes allocated for {data} of data",
                path.display()
            );
        }
    }
}
