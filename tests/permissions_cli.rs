//! Least privilege on the backup host: an archive directory that another
//! user owns, or that group or others may write, is refused in one line
//! (whoever can write the archive decides what a restore writes); a
//! keyring every user may read gets a warning.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::cli::{stderr, Env};
use common::{pattern, test_conf, test_ioctx, ScratchImage};

const MIB: u64 = 1 << 20;

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_shared_or_foreign_archive_is_refused_and_an_open_keyring_warned_about() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "perm", 8 * MIB);
    io.open_image(&src.name)
        .unwrap()
        .write(0, &pattern(MIB as usize, 1))
        .unwrap();
    let env = Env::new(&conf, &[("v", &src.name)]);
    env.ok(&["backup", "v"]);
    let archive = env.archive();
    let set_mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    let refused = |says: &str| {
        for args in [&["list", "v"][..], &["backup", "v"], &["verify", "v"]] {
            let out = env.fails(args);
            let err = stderr(&out);
            assert!(err.contains(says), "{args:?}: {err}");
            assert_eq!(
                err.lines().count(),
                if args[0] == "backup" { 2 } else { 1 },
                "{args:?}: {err}"
            );
        }
    };
    set_mode(&archive, 0o777);
    refused("group or others may write it (mode 777");
    set_mode(&archive, 0o700);
    set_mode(&archive.join("v"), 0o770);
    refused("group or others may write it (mode 770");
    set_mode(&archive.join("v"), 0o700);
    let chown = |uid: &str| {
        let st = Command::new("chown")
            .arg(uid)
            .arg(&archive)
            .status()
            .unwrap();
        assert!(st.success());
    };
    chown("65534");
    refused("owned by uid 65534, not by this user");
    chown("0");
    env.ok(&["list", "v"]);

    // a keyring every user can read: the commands work, and say so (a
    // copy of the test user's keyring on a cephx cluster, else any key)
    let content = match std::env::var_os("RBDELTA_TEST_CEPH_KEYRING").filter(|v| !v.is_empty()) {
        Some(k) => std::fs::read_to_string(k).unwrap(),
        None => {
            let key = Command::new("ceph-authtool")
                .arg("--gen-print-key")
                .output()
                .unwrap();
            format!(
                "[client.admin]\n\tkey = {}\n",
                String::from_utf8_lossy(&key.stdout).trim()
            )
        }
    };
    let keyring = env.dir.path().join("client.keyring");
    std::fs::write(&keyring, content).unwrap();
    let yaml: String = std::fs::read_to_string(&env.config)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("  keyring:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let yaml = yaml.replacen(
        "ceph:\n",
        &format!("ceph:\n  keyring: {}\n", keyring.display()),
        1,
    );
    std::fs::write(&env.config, yaml).unwrap();
    set_mode(&keyring, 0o644);
    let out = env.cmd().args(["backup", "v"]).output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("is readable by every user (mode 644)"),
        "{err}"
    );
    set_mode(&keyring, 0o600);
    let out = env.cmd().args(["backup", "v"]).output().unwrap();
    assert!(
        out.status.success() && !stderr(&out).contains("readable"),
        "{}",
        stderr(&out)
    );
}
