//! `rbdelta import`: adopting a chain made by `rbd export` and
//! `rbd export-diff` (a cron script's backups). The raw image becomes a
//! full, each diff a delta named by its end snapshot; every step reads back
//! byte-exact, across a grow, a discard, a shrink to a size that is not a
//! whole number of blocks and a grow again; and the next `rbdelta backup`
//! of the image continues the chain incrementally from the last diff's
//! snapshot. Bad streams (truncated, a wrong magic, records out of order
//! or past the end, a diff applied to the wrong base) are refused with an
//! error naming the file, and nothing is committed. An import that stops
//! half-way (a diff damaged after the check, `kill -9`) keeps its first
//! revisions, and the same import run again goes on from there.

mod common;

use std::path::{Path, PathBuf};

use common::cli::{read_image, stderr, Env};
use common::{pattern, test_conf, test_ioctx, ScratchImage};
use rbdelta::format::rbd_diff::DiffWriter;

const MIB: u64 = 1 << 20;

/// `rbd ARGS` as client.admin (a fixture, not the product).
fn rbd(conf: &Path, args: &[&str]) {
    let out = std::process::Command::new("rbd")
        .arg("-c")
        .arg(conf)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "rbd {args:?}: {}", stderr(&out));
}

/// The bytes of revision `rev` of volume `v`, through `rbdelta export`.
fn exported(env: &Env, rev: &str) -> Vec<u8> {
    let out = env.dir.path().join(format!("{rev}.raw"));
    env.ok(&[
        "export",
        "v",
        "--revision",
        rev,
        "-o",
        out.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    bytes
}

/// An image taken through five snapshots s1..s5 (grow, discard, shrink to
/// an odd size, grow), exported as s1.raw plus s2.diff..s5.diff; returns
/// the files and the image's bytes at each snapshot.
fn cron_chain(conf: &Path, src: &ScratchImage, dir: &Path) -> (Vec<PathBuf>, Vec<Vec<u8>>) {
    let io = test_ioctx();
    let img = io.open_image(&src.name).unwrap();
    let spec = format!("rbd/{}", src.name);
    let steps: [&dyn Fn(); 5] = [
        &|| img.write(0, &pattern(3 * MIB as usize, 1)).unwrap(),
        &|| img.write(MIB + 4096, &pattern(8192, 2)).unwrap(),
        &|| {
            img.resize(12 * MIB).unwrap();
            img.write(10 * MIB, &pattern(MIB as usize, 3)).unwrap();
        },
        &|| {
            img.discard(0, MIB).unwrap();
            img.resize(5 * MIB + 1000).unwrap();
        },
        &|| {
            img.resize(9 * MIB).unwrap();
            img.write(7 * MIB, &pattern(4096, 4)).unwrap();
        },
    ];
    let (mut files, mut want) = (Vec::new(), Vec::new());
    for (i, step) in steps.iter().enumerate() {
        step();
        let snap = format!("s{}", i + 1);
        img.snap_create(&snap).unwrap();
        want.push(read_image(&io, &src.name, Some(&snap)));
        let at = format!("{spec}@{snap}");
        let file = if i == 0 {
            let f = dir.join("s1.raw");
            rbd(conf, &["export", "--no-progress", &at, f.to_str().unwrap()]);
            f
        } else {
            let f = dir.join(format!("{snap}.diff"));
            let from = format!("s{i}");
            rbd(
                conf,
                &[
                    "export-diff",
                    "--no-progress",
                    "--from-snap",
                    &from,
                    &at,
                    f.to_str().unwrap(),
                ],
            );
            f
        };
        files.push(file);
    }
    (files, want)
}

fn import_args(files: &[PathBuf]) -> Vec<String> {
    let mut args = vec!["import".into(), "v".into(), "--raw".into()];
    args.push(files[0].display().to_string());
    if files.len() > 1 {
        args.push("--diff".into());
        args.extend(files[1..].iter().map(|f| f.display().to_string()));
    }
    args
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn an_export_and_export_diff_chain_imports_byte_exact_and_backups_continue_it() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "import", 8 * MIB);
    let env = Env::new(&conf, &[("v", &src.name)]);
    let (files, want) = cron_chain(&conf, &src, env.dir.path());

    let args = import_args(&files);
    let out = env.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.lines().count(), 5, "{out}");
    let revs = env.revisions("v");
    assert_eq!(revs.len(), 5);
    for (i, rev) in revs.iter().enumerate() {
        let id = rev["id"].as_str().unwrap();
        assert!(exported(&env, id) == want[i], "step {} differs", i + 1);
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(env.archive().join(format!("v/revisions/{id}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(manifest["snapshot"], format!("s{}", i + 1));
    }
    env.ok(&["verify", "v"]);

    // Run again, the same import has nothing left to do.
    let out = env.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.matches("already imported").count(), 5, "{out}");
    assert_eq!(env.revisions("v").len(), 5);

    // The image moves on; rbdelta's first backup diffs from s5.
    let img = io.open_image(&src.name).unwrap();
    img.write(2 * MIB, &pattern(4096, 5)).unwrap();
    drop(img);
    let out = env.ok(&["backup", "v"]);
    assert!(out.contains("delta") && !out.contains("compare"), "{out}");
    let now = read_image(&io, &src.name, None);
    let newest = env.revision_ids("v").pop().unwrap();
    assert!(exported(&env, &newest) == now);

    // A volume with history takes no import.
    let out = env.fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        stderr(&out).contains("already has revisions"),
        "{}",
        stderr(&out)
    );
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn bad_streams_are_refused_and_nothing_is_committed() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "import-bad", 8 * MIB);
    let env = Env::new(&conf, &[("v", &src.name)]);
    let dir = env.dir.path();
    let (files, _) = cron_chain(&conf, &src, dir);
    let good = std::fs::read(&files[2]).unwrap();
    let write = |name: &str, bytes: &[u8]| -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let made = |name: &str, f: &dyn Fn(&mut DiffWriter<Vec<u8>>)| -> PathBuf {
        let mut w = DiffWriter::new(Vec::new()).unwrap();
        w.from_snap("s2").unwrap();
        w.to_snap("s3").unwrap();
        w.size(12 * MIB).unwrap();
        f(&mut w);
        write(name, &w.end().unwrap())
    };
    let cases: Vec<(PathBuf, &str)> = vec![
        (write("cut.diff", &good[..good.len() / 2]), "truncated"),
        (
            write("magic.diff", &[b"rbd diff v9\n", &good[12..]].concat()),
            "wrong magic",
        ),
        (
            made("order.diff", &|w| {
                w.write(2 * MIB, &[1; 4096]).unwrap();
                w.write(MIB, &[1; 4096]).unwrap();
            }),
            "precedes",
        ),
        (
            made("past.diff", &|w| w.zero(12 * MIB - 4096, 8192).unwrap()),
            "past the image end",
        ),
    ];
    for (bad, says) in &cases {
        let chain = [
            files[0].clone(),
            files[1].clone(),
            bad.clone(),
            files[3].clone(),
        ];
        let args = import_args(&chain);
        let out = env.fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let err = stderr(&out);
        assert!(
            err.contains(says) && err.contains(bad.to_str().unwrap()),
            "{says}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // diffs out of order, and a diff on the wrong base
    for (chain, says) in [
        (
            vec![files[0].clone(), files[2].clone(), files[1].clone()],
            "not a chain",
        ),
        (
            vec![files[0].clone(), files[1].clone(), files[3].clone()],
            "applies to snapshot s3",
        ),
    ] {
        let args = import_args(&chain);
        let out = env.fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(stderr(&out).contains(says), "{says}: {}", stderr(&out));
    }
    // a raw file that is not one
    let out = env.fails(&["import", "v", "--raw", dir.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("not a regular file"),
        "{}",
        stderr(&out)
    );
    assert!(
        !env.archive().join("v/revisions").exists()
            || std::fs::read_dir(env.archive().join("v/revisions"))
                .unwrap()
                .count()
                == 0,
        "a refused import committed something"
    );
    // and the good chain still imports
    let args = import_args(&files);
    env.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(env.revisions("v").len(), 5);
    env.ok(&["verify", "v"]);
}

/// `rbdelta import ARGS` on `env`, as a std Command.
fn import_cmd(env: &Env, files: &[PathBuf]) -> std::process::Command {
    let mut c = env.std_cmd();
    c.args(import_args(files))
        .stdout(std::process::Stdio::null());
    c
}

/// The names in a volume directory's `sub` directory.
fn names_in(env: &Env, sub: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(env.archive().join("v").join(sub))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// After an import that stopped half-way, the volume holds its first
/// steps, each readable; run again, the import skips them and goes on.
/// A diff damaged after the chain was checked (here: cut to nothing while
/// the import is held at its first crash point) fails its own step only;
/// and `kill -9` in the middle leaves nothing the rerun trips over.
#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn an_import_that_stopped_half_way_resumes_where_it_stopped() {
    common::require_fault_injection();
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "import-resume", 8 * MIB);
    let env = Env::new(&conf, &[("v", &src.name)]);
    let (files, want) = cron_chain(&conf, &src, env.dir.path());
    let check_all = |env: &Env| {
        let revs = env.revision_ids("v");
        assert_eq!(revs.len(), 5);
        for (i, id) in revs.iter().enumerate() {
            assert!(exported(env, id) == want[i], "step {} differs", i + 1);
        }
        env.ok(&["verify", "v"]);
        // a full is two files, a delta one; nothing else is left
        assert_eq!(
            names_in(env, "data").len(),
            6,
            "{:?}",
            names_in(env, "data")
        );
        assert_eq!(names_in(env, "tmp"), Vec::<String>::new());
    };

    // s3.diff is cut to nothing once the whole chain has been checked
    let s3 = std::fs::read(&files[2]).unwrap();
    let (child, hold) = common::cli::spawn_held(import_cmd(&env, &files), 1, env.dir.path());
    assert_eq!(env.revisions("v").len(), 0, "held at the first point");
    std::fs::write(&files[2], b"").unwrap();
    std::fs::write(hold.join("go"), b"").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(files[2].to_str().unwrap())
            && err.contains("2 of 5 committed before it")
            && err.contains("goes on from here"),
        "{err}"
    );
    let revs = env.revisions("v");
    assert_eq!(revs.len(), 2, "{revs:?}");
    env.ok(&["verify", "v"]);

    // fixed, the same import resumes with s3
    std::fs::write(&files[2], &s3).unwrap();
    let args = import_args(&files);
    let out = env.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.matches("already imported").count(), 2, "{out}");
    assert_eq!(out.matches("imported ").count() - 2, 3, "{out}");
    check_all(&env);

    // kill -9 half-way through a fresh import of the chain
    let count = env.dir.path().join("points");
    std::fs::remove_dir_all(env.archive().join("v")).unwrap();
    let out = import_cmd(&env, &files)
        .env("RBDELTA_TEST_CRASH_COUNT", &count)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let n: u64 = std::fs::read_to_string(&count)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // at the first point after the middle where a data file is in place
    // but its manifest not yet written
    let orphans = |env: &Env| {
        let ids = env.revision_ids("v");
        names_in(env, "data")
            .into_iter()
            .filter(|f| !ids.iter().any(|id| f.starts_with(id.as_str())))
            .count()
    };
    let mut k = 0;
    for at in n / 2..=n {
        std::fs::remove_dir_all(env.archive().join("v")).unwrap();
        let (mut child, hold) =
            common::cli::spawn_held(import_cmd(&env, &files), at, env.dir.path());
        child.kill().unwrap();
        child.wait().unwrap();
        std::fs::write(hold.join("go"), b"").unwrap();
        k = env.revisions("v").len();
        if orphans(&env) > 0 {
            break;
        }
        assert!(at < n, "no point leaves a data file without its manifest");
    }
    assert!((1..5).contains(&k), "{k} committed");
    // the step it was in, touched: its revision is not the one it left
    std::fs::File::options()
        .write(true)
        .open(&files[k])
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    let out = env.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.matches("already imported").count(), k, "{out}");
    check_all(&env);

    // a volume whose revisions are not the chain's first steps is refused
    let other = [files[0].clone(), files[1].clone()];
    std::fs::remove_dir_all(env.archive().join("v")).unwrap();
    let mut renamed = import_args(&other[..1]);
    renamed.extend(["--raw-snapshot".into(), "elsewhere".into()]);
    env.ok(&renamed.iter().map(String::as_str).collect::<Vec<_>>());
    let out = env.fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = stderr(&out);
    assert!(
        err.contains("already has revisions") && err.contains("is not step 1 of the chain"),
        "{err}"
    );
    assert_eq!(env.revisions("v").len(), 1);
}

/// Needs no cluster: a sparse raw file imports as a full, and restores and
/// exports into bare file names in the working directory byte-exact (a
/// bare name's parent is the empty path, which once failed the final
/// directory fsync after the whole restore was written).
#[test]
fn a_raw_file_imports_and_restores_to_a_bare_name_in_the_working_directory() {
    let env = Env::with_yaml(
        Path::new("/nonexistent/ceph.conf"),
        "volumes:\n  - name: v\n    pool: rbd\n    image: v\n",
    );
    let dir = env.dir.path();
    let raw = dir.join("disk.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(6 * MIB + 512).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&pattern(MIB as usize, 1), 2 * MIB).unwrap();
    f.write_all_at(&pattern(512, 2), 6 * MIB).unwrap();
    let out = env.ok(&["import", "v", "--raw", raw.to_str().unwrap()]);
    assert!(out.contains("snapshot import-disk.raw"), "{out}");
    let want = std::fs::read(&raw).unwrap();
    let run = |args: &[&str]| {
        let out = env.cmd().current_dir(dir).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    };
    run(&["restore", "v", "--to-file", "restored.raw"]);
    run(&["export", "v", "-o", "exported.raw"]);
    assert!(std::fs::read(dir.join("restored.raw")).unwrap() == want);
    assert!(std::fs::read(dir.join("exported.raw")).unwrap() == want);
}
