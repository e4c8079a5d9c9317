//! Archive files (fulls and deltas of a backup) and restores and exports
//! to a file go around the page cache (`O_DIRECT`, several writes in
//! flight) where the filesystem takes it, and through the cache where it
//! does not: both byte-exact for an image of an odd size with holes, both
//! leaving the holes as holes. The restore test needs no cluster (the
//! revision comes from `rbdelta import --raw`); the backup test reads a
//! real image.

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use common::cli::{read_image, stderr, Env};
use common::{pattern, tells_holes, test_conf, test_ioctx, ScratchImage};

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

/// Whether a run took the page cache instead of direct writes: the
/// direct writer logs this line (debug) when `O_DIRECT` is refused.
fn fell_back(stderr: &str) -> bool {
    stderr.contains("no direct writes")
}

/// Fails a required run (`RBDELTA_REQUIRE_CLUSTER`) whose filesystem takes
/// no `O_DIRECT`: both runs would then take the page cache, and the direct
/// path would pass untested.
fn require_direct(dir: &Path) {
    assert!(
        !common::required() || takes_direct(dir),
        "{} takes no O_DIRECT, so the direct path cannot run: put TMPDIR on a filesystem that does",
        dir.display()
    );
}

/// Whether `fell_back` is what a run with direct writes `refused` in
/// `dir` must give: the direct run really wrote direct when required.
fn check_path(name: &str, refused: bool, dir: &Path, err: &str) {
    let fell = fell_back(err);
    assert_eq!(fell, refused || !takes_direct(dir), "{name}: {err}");
    assert!(
        refused || !common::required() || !fell,
        "{name}: the direct path did not run: {err}"
    );
}

/// Runs rbdelta in `env` with debug logs, direct I/O refused if `refuse`;
/// its stderr.
fn run(env: &Env, refuse: bool, args: &[&str]) -> String {
    let mut cmd = env.cmd();
    cmd.env("RBDELTA_LOG", "debug");
    if refuse {
        cmd.env("RBDELTA_TEST_NO_DIRECT", "1");
    }
    let out = cmd.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} (refuse {refuse}): {}",
        stderr(&out)
    );
    stderr(&out)
}

#[test]
fn odd_sized_sparse_images_restore_byte_exact_with_and_without_direct_io() {
    common::require_fault_injection();
    let env = Env::with_yaml(
        Path::new("/nonexistent/ceph.conf"),
        "volumes:\n  - name: v\n    pool: rbd\n    image: v\n",
    );
    let dir = env.dir.path();
    require_direct(dir);
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
    let tells_holes = tells_holes(&raw, size);
    env.ok(&["import", "v", "--raw", raw.to_str().unwrap()]);
    let want = std::fs::read(&raw).unwrap();

    for (name, refuse) in [("direct", false), ("cached", true)] {
        let out_file = dir.join(format!("{name}.raw"));
        let exported = dir.join(format!("{name}-export.raw"));
        let run = |args: &[&str]| run(&env, refuse, args);
        let err = run(&["restore", "v", "--to-file", out_file.to_str().unwrap()]);
        check_path(name, refuse, dir, &err);
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

/// Fulls and deltas of a sparse image of an odd size (a partial last
/// block), written direct and through the cache: every revision restores
/// byte-exact, and the full keeps the image's holes.
#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn backups_write_fulls_and_deltas_byte_exact_with_and_without_direct_io() {
    common::require_fault_injection();
    let (conf, io) = (test_conf(), test_ioctx());
    let size = 350 * MIB + 12345;
    for (name, refuse) in [("direct", false), ("cached", true)] {
        let src = ScratchImage::create(&io, &format!("dio-{name}"), size);
        let img = io.open_image(&src.name).unwrap();
        let env = Env::new(&conf, &[("v", &src.name)]);
        require_direct(env.dir.path());
        let mut want = Vec::new();
        let steps: [&dyn Fn(); 2] = [
            &|| {
                img.write(0, &pattern(70_000, 1)).unwrap();
                img.write(3 * MIB, &pattern(9 * MIB as usize, 2)).unwrap();
                img.write(size - 20_000, &pattern(20_000, 3)).unwrap();
            },
            &|| {
                for i in 0..20u64 {
                    img.write(100 * MIB + i * 3_000_000, &pattern(4096, 10 + i))
                        .unwrap();
                }
                img.write(5 * MIB + 100, &pattern(MIB as usize, 4)).unwrap();
                img.write(size - 5000, &pattern(5000, 5)).unwrap();
            },
        ];
        for step in steps {
            step();
            let err = run(&env, refuse, &["backup", "v"]);
            check_path(name, refuse, env.dir.path(), &err);
            want.push(read_image(&io, &src.name, None));
        }
        for (id, want) in env.revision_ids("v").iter().zip(&want) {
            let out = env.dir.path().join(format!("{id}.raw"));
            run(
                &env,
                refuse,
                &[
                    "restore",
                    "v",
                    "--revision",
                    id,
                    "--to-file",
                    out.to_str().unwrap(),
                ],
            );
            assert!(
                std::fs::read(&out).unwrap() == *want,
                "{name}: revision {id} differs"
            );
            std::fs::remove_file(&out).unwrap();
        }
        run(&env, refuse, &["verify", "v"]);
        // the full keeps the image's holes: 9.1 MiB of data in 350 MiB
        let data = env.archive().join("v/data");
        for e in std::fs::read_dir(&data).unwrap().flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "full") && tells_holes(&path, size) {
                let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
                assert!(allocated <= 12 * MIB, "{name}: {allocated} bytes allocated");
            }
        }
    }
}
