//! `rbdelta restore --in-place`: rolling an existing image back by writing
//! only the blocks that differ. On the volume's own source image it is
//! byte-exact onto every revision, across a grow and a shrink to a size
//! that is not a whole number of blocks, both from the image's snapshot of
//! the last backup and by reading and hashing (`--no-snapshot`); onto an
//! image without snapshots it hashes. It writes only what differs, and it
//! is refused, touching nothing, while another client holds the image,
//! when one opens it between the check and the lock, and on an image
//! without the exclusive-lock feature unless `--force-unlocked` (and so is
//! `--force` over an existing image); while it runs, another client can
//! neither take the lock nor write.

mod common;

use common::cli::{read_image, stderr, Env, Paused};
use common::{pattern, require_fault_injection, test_conf, test_ioctx, unique_name, ScratchImage};
use rbdelta::ceph::features;

const MIB: u64 = 1 << 20;

/// "N of M blocks written" from an in-place restore's summary.
fn blocks_written(out: &str) -> (u64, u64) {
    let words: Vec<&str> = out.split_whitespace().collect();
    let at = words
        .windows(4)
        .position(|w| w[1] == "of" && w[3] == "blocks")
        .unwrap_or_else(|| panic!("no block count in {out:?}"));
    (words[at].parse().unwrap(), words[at + 2].parse().unwrap())
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn in_place_restore_rolls_the_source_image_back_byte_exact() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "inplace", 8 * MIB);
    let img = io.open_image(&src.name).unwrap();
    let env = Env::new(&conf, &[("v", &src.name)]);
    let mut want = Vec::new();
    let mut step = |what: &dyn Fn()| {
        what();
        env.ok(&["backup", "v"]);
        want.push(read_image(&io, &src.name, None));
    };
    step(&|| img.write(0, &pattern(6 * MIB as usize, 1)).unwrap());
    step(&|| img.write(3 * MIB, &pattern(4096, 2)).unwrap());
    step(&|| {
        img.resize(12 * MIB).unwrap();
        img.write(10 * MIB, &pattern(MIB as usize, 3)).unwrap();
    });
    step(&|| {
        img.discard(MIB, MIB).unwrap();
        img.resize(5 * MIB + 1000).unwrap();
    });
    // the VM writes on after the last backup
    img.write(4 * MIB, &pattern(8192, 4)).unwrap();
    drop(img);
    let ids = env.revision_ids("v");
    let image = format!("rbd/{}", src.name);
    let restore = |rev: usize, extra: &[&str]| -> String {
        let mut args = vec![
            "restore",
            "v",
            "--revision",
            &ids[rev],
            "--to-image",
            &image,
        ];
        args.extend(["--in-place", "--force", "--verify-target"]);
        args.extend(extra);
        let out = env.ok(&args);
        assert!(
            read_image(&io, &src.name, None) == want[rev],
            "revision {rev} ({extra:?}) differs after the in-place restore: {out}"
        );
        assert!(out.contains("matches revision"), "{out}");
        out
    };

    // From the snapshot of the last backup: only what differs is written.
    let out = restore(2, &[]);
    assert!(out.contains("found from snapshot"), "{out}");
    let (written, blocks) = blocks_written(&out);
    assert!(written > 0 && written < blocks, "{out}");
    // (the blocks just written differ from the snapshot: written again)
    let again = restore(2, &[]);
    assert!(blocks_written(&again).0 <= written, "{again}");
    for rev in [0, 3, 1, 2] {
        assert!(restore(rev, &[]).contains("found from snapshot"));
    }
    // By reading and hashing every block.
    for rev in [3, 0, 2, 1] {
        let out = restore(rev, &["--no-snapshot"]);
        assert!(out.contains("found by reading and hashing"), "{out}");
    }
    let out = restore(1, &["--no-snapshot"]);
    assert_eq!(blocks_written(&out).0, 0, "nothing differs now: {out}");

    // An image that never had snapshots (a copy) is compared by hashing;
    // it does not need --force, not being the source.
    let copy = ScratchImage::create(&io, "inplace-copy", MIB);
    io.open_image(&copy.name)
        .unwrap()
        .write(0, &pattern(MIB as usize, 9))
        .unwrap();
    let out = env.ok(&[
        "restore",
        "v",
        "--revision",
        &ids[2],
        "--to-image",
        &format!("rbd/{}", copy.name),
        "--in-place",
    ]);
    assert!(out.contains("found by reading and hashing"), "{out}");
    assert!(read_image(&io, &copy.name, None) == want[2]);
    // The source image still needs --force.
    let out = env.fails(&["restore", "v", "--to-image", &image, "--in-place"]);
    assert!(stderr(&out).contains("use --force"), "{}", stderr(&out));
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn in_place_restore_is_refused_while_another_client_uses_the_image() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "inplace-busy", 4 * MIB);
    let env = Env::new(&conf, &[("v", &src.name)]);
    {
        let img = io.open_image(&src.name).unwrap();
        img.write(0, &pattern(2 * MIB as usize, 1)).unwrap();
    }
    env.ok(&["backup", "v"]);
    let image = format!("rbd/{}", src.name);
    let args = [
        "restore",
        "v",
        "--to-image",
        &image,
        "--in-place",
        "--force",
    ];

    // The VM: this test's client writes, so it holds the exclusive lock.
    let vm = io.open_image(&src.name).unwrap();
    vm.write(MIB, &pattern(4096, 2)).unwrap();
    let before = read_image(&io, &src.name, None);
    // in place, and overwriting it whole (--force alone)
    let whole = [&args[..4], &["--force"]].concat();
    for args in [&args[..], &whole] {
        let out = env.fails(args);
        let err = stderr(&out);
        assert!(
            err.contains("is in use")
                && err.contains(&format!("{} at ", io.client()))
                && err.contains("holds its exclusive lock"),
            "{args:?}: {err}"
        );
        assert!(
            read_image(&io, &src.name, None) == before,
            "a refused restore wrote ({args:?})"
        );
    }
    drop(vm);

    // Open without writing: a watcher, no lock; refused as well.
    let open = io.open_image(&src.name).unwrap();
    let out = env.fails(&args);
    assert!(stderr(&out).contains("has it open"), "{}", stderr(&out));
    drop(open);

    // Closed: the roll-back proceeds, and undoes the VM's write.
    env.ok(&args);
    assert!(read_image(&io, &src.name, None) != before);
}

/// A volume `v` over a 4 MiB image with `feats`, backed up once, then
/// written to (the VM's change a roll-back undoes); the bytes backed up.
fn rolled_on(prefix: &str, feats: u64) -> (Env, ScratchImage, Vec<u8>) {
    let (conf, io) = (test_conf(), test_ioctx());
    let name = unique_name(prefix);
    io.create_image(&name, 4 * MIB, 0, feats).unwrap();
    let src = ScratchImage::adopt(&io, &name);
    let env = Env::new(&conf, &[("v", &src.name)]);
    let img = io.open_image(&src.name).unwrap();
    img.write(0, &pattern(2 * MIB as usize, 1)).unwrap();
    env.ok(&["backup", "v"]);
    let backed_up = read_image(&io, &src.name, None);
    img.write(MIB, &pattern(8192, 2)).unwrap();
    drop(img);
    (env, src, backed_up)
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn without_exclusive_lock_a_restore_into_the_image_is_refused_unless_force_unlocked() {
    let io = test_ioctx();
    let (env, src, backed_up) = rolled_on("inplace-nolock", features::LAYERING);
    let image = format!("rbd/{}", src.name);
    let to = ["restore", "v", "--to-image", &image];
    // in place, and overwriting it whole (--force)
    for how in [&["--in-place", "--force"][..], &["--force"]] {
        let before = read_image(&io, &src.name, None);
        let out = env.fails(&[&to[..], how].concat());
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{how:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{how:?}: {err}");
        for says in [
            format!("image {image} has no exclusive-lock feature"),
            "nothing would stop a VM".to_string(),
            format!("rbd feature enable {image} exclusive-lock"),
            "--force-unlocked".to_string(),
        ] {
            assert!(err.contains(&says), "{how:?}: {says:?} not in {err}");
        }
        assert!(
            read_image(&io, &src.name, None) == before,
            "a refused restore wrote ({how:?})"
        );
    }
    // accepted: restores and verifies, both ways
    for how in [&["--in-place", "--force"][..], &["--force"]] {
        io.open_image(&src.name)
            .unwrap()
            .write(MIB, &pattern(8192, 3))
            .unwrap();
        let extra = ["--force-unlocked", "--verify-target"];
        let out = env.ok(&[&to[..], how, &extra].concat());
        assert!(out.contains("matches revision"), "{how:?}: {out}");
        assert!(read_image(&io, &src.name, None) == backed_up, "{how:?}");
    }
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_client_that_opens_the_image_between_the_check_and_the_lock_is_caught() {
    require_fault_injection();
    let io = test_ioctx();
    let (env, src, _) = rolled_on(
        "inplace-window",
        features::LAYERING | features::EXCLUSIVE_LOCK,
    );
    let image = format!("rbd/{}", src.name);
    let args = [
        "restore",
        "v",
        "--to-image",
        &image,
        "--in-place",
        "--force",
    ];
    // a VM starts after the check: opens the image, and then also writes
    for writes in [false, true] {
        let before = read_image(&io, &src.name, None);
        let held = Paused::start(&env, &args, "claim: checked");
        let vm = io.open_image(&src.name).unwrap();
        if writes {
            vm.write(3 * MIB, &pattern(4096, 5)).unwrap();
        }
        let out = held.finish();
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "restored under a VM (writes: {writes})"
        );
        assert!(
            err.contains("is in use") && err.contains(&format!("{} at ", io.client())),
            "{err}"
        );
        let mut want = before;
        if writes {
            want[3 * MIB as usize..][..4096].copy_from_slice(&pattern(4096, 5));
        }
        assert!(
            read_image(&io, &src.name, None) == want,
            "a refused restore wrote"
        );
        drop(vm);
    }
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn while_it_restores_no_other_client_takes_the_lock_or_writes() {
    require_fault_injection();
    let io = test_ioctx();
    let (env, src, backed_up) = rolled_on(
        "inplace-held",
        features::LAYERING | features::EXCLUSIVE_LOCK,
    );
    let image = format!("rbd/{}", src.name);
    let held = Paused::start(
        &env,
        &[
            "restore",
            "v",
            "--to-image",
            &image,
            "--in-place",
            "--force",
            "--verify-target",
        ],
        "restore: chain open",
    );
    let other = io.open_image(&src.name).unwrap();
    assert!(
        other.lock_acquire().is_err(),
        "another client took the lock"
    );
    assert!(
        other.write(0, &pattern(4096, 7)).is_err(),
        "another client wrote during the restore"
    );
    let out = held.finish();
    assert!(out.status.success(), "{}", stderr(&out));
    drop(other);
    assert!(read_image(&io, &src.name, None) == backed_up);
}
