//! `rbdelta export-diff`: a chain of revisions as `rbd diff v1` streams.
//! Applied in order with `rbd import-diff` to one image (first from an
//! empty image, then each from the revision before), they reproduce every
//! revision byte-exact, across a grow, a discard, a shrink to a size that
//! is not a whole number of blocks, and a grow again; the image ends with
//! each revision's snapshot, under the revision's own snapshot name.

mod common;

use common::cli::{read_image, stderr, Env};
use common::{pattern, test_conf, test_ioctx, unique_name, ScratchImage};

const MIB: u64 = 1 << 20;

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_chain_of_export_diffs_applied_with_rbd_import_diff_reproduces_every_revision() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "xdiff", 8 * MIB);
    let img = io.open_image(&src.name).unwrap();
    let env = Env::new(&conf, &[("v", &src.name)]);
    let mut want = Vec::new();
    let mut step = |what: &dyn Fn()| {
        what();
        env.ok(&["backup", "v"]);
        want.push(read_image(&io, &src.name, None));
    };
    step(&|| img.write(MIB, &pattern(3 * MIB as usize, 1)).unwrap());
    step(&|| {
        img.resize(12 * MIB).unwrap();
        img.write(10 * MIB, &pattern(MIB as usize, 2)).unwrap();
        img.write(2 * MIB, &pattern(4096, 3)).unwrap();
    });
    step(&|| {
        img.discard(MIB, 2 * MIB).unwrap();
        img.resize(6 * MIB + 1000).unwrap();
    });
    step(&|| {
        img.resize(10 * MIB).unwrap();
        img.write(6 * MIB, &pattern(2 * MIB as usize, 4)).unwrap();
    });
    let revs = env.revisions("v");
    assert_eq!(revs.len(), 4);

    // the copy: any image; the first diff resizes it
    let copy = unique_name("xdiff-copy");
    io.create_image(&copy, MIB, 0, 0).unwrap();
    let _c = ScratchImage::adopt(&io, &copy);
    for (i, rev) in revs.iter().enumerate() {
        let id = rev["id"].as_str().unwrap();
        let mut args = vec!["export-diff", "v", "--revision", id, "-o", "-"];
        let prev;
        if i > 0 {
            prev = revs[i - 1]["id"].as_str().unwrap().to_string();
            args.extend(["--from", prev.as_str()]);
        }
        let (export, import) = env.pipe_to_rbd(
            &args,
            &conf,
            &["import-diff", "--no-progress", "-", &format!("rbd/{copy}")],
        );
        assert!(export.success(), "export-diff {i}");
        assert!(
            import.status.success(),
            "import-diff {i}: {}",
            stderr(&import)
        );
        assert!(
            read_image(&io, &copy, None) == want[i],
            "revision {i} differs"
        );
        let snaps: Vec<String> = io
            .open_image(&copy)
            .unwrap()
            .snap_list()
            .unwrap()
            .into_iter()
            .map(|s| s.0)
            .collect();
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(env.archive().join(format!("v/revisions/{id}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(snaps.len(), i + 1);
        assert_eq!(
            Some(&snaps[i]),
            manifest["snapshot"].as_str().map(str::to_string).as_ref()
        );
    }

    // a diff from a revision to an older one is refused
    let out = env.fails(&[
        "export-diff",
        "v",
        "--from",
        revs[2]["id"].as_str().unwrap(),
        "--revision",
        revs[1]["id"].as_str().unwrap(),
        "-o",
        env.dir.path().join("x.diff").to_str().unwrap(),
    ]);
    assert!(
        stderr(&out).contains("is not older than"),
        "{}",
        stderr(&out)
    );
}
