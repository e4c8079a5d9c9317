//! EIO on reads of archive data (injected: `RBDELTA_TEST_READ_EIO` fails
//! every read of a file whose name contains the text) during a restore, a
//! verify, a synthetic full and through a mount: each says which file
//! failed, none writes or
//! returns a wrong byte, and revisions that do not need the file still
//! read; once the disk reads again, everything passes.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::{read_image, stderr, Env};
use common::{pattern, test_conf, test_ioctx, ScratchImage};

const MIB: u64 = 1 << 20;

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn eio_on_archive_reads_names_the_file_and_never_gives_wrong_bytes() {
    common::require_fault_injection();
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "eio", 16 * MIB);
    let img = io.open_image(&src.name).unwrap();
    let env = Env::new(&conf, &[("v", &src.name)]);
    img.write(0, &pattern(4 * MIB as usize, 1)).unwrap();
    env.ok(&["backup", "v"]);
    let first = read_image(&io, &src.name, None);
    img.write(6 * MIB, &pattern(2 * MIB as usize, 2)).unwrap();
    env.ok(&["backup", "v"]);
    let second = read_image(&io, &src.name, None);
    let ids = env.revision_ids("v");
    let delta = format!("{}.delta", ids[1]);
    let bad = || {
        let mut c = env.cmd();
        c.env("RBDELTA_TEST_READ_EIO", &ids[1][..16]);
        c
    };

    // restore: fails naming the delta, and leaves no file
    let out_file = env.dir.path().join("out.img");
    let out = bad()
        .args(["restore", "v", "--to-file", out_file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&delta) && err.contains("Input/output error"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("out.img"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // the first revision needs only the full: it restores
    let out = bad()
        .args(["restore", "v", "--revision", &ids[0], "--to-file"])
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(&out_file).unwrap() == first);
    std::fs::remove_file(&out_file).unwrap();

    // verify: not a pass, and the delta is named
    let out = bad().args(["verify", "v"]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(&delta), "{text}");

    // the mount: EIO for the revision on the delta, bytes for the other
    let mnt = env.dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("rbdelta"))
        .arg("-c")
        .arg(&env.config)
        .arg("mount")
        .arg(&mnt)
        .env("RBDELTA_TEST_READ_EIO", &ids[1][..16])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !mnt.join("v").exists() {
        assert!(t.elapsed() < Duration::from_secs(30), "not mounted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let e = std::fs::read(mnt.join(format!("v/{}.img", ids[1]))).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(std::fs::read(mnt.join(format!("v/{}.img", ids[0]))).unwrap() == first);
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        log.contains(&delta),
        "the mount's log names the file: {log}"
    );

    // a synthetic full of the second revision copies the first's full:
    // with that file failing, it fails naming it, and nothing changes
    let full = format!("{}.full", ids[0]);
    let before = env.revisions("v");
    let out = env
        .cmd()
        .env("RBDELTA_TEST_READ_EIO", &ids[0][..16])
        .args(["synthetic-full", "v"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&full) && err.contains("Input/output error"),
        "{err}"
    );
    assert_eq!(env.revisions("v"), before);

    // the disk reads again: all is well
    env.ok(&["synthetic-full", "v"]);
    env.ok(&["verify", "v"]);
    env.ok(&["restore", "v", "--to-file", out_file.to_str().unwrap()]);
    assert!(std::fs::read(&out_file).unwrap() == second);
}
