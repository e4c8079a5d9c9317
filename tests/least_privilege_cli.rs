//! Least privilege. On the cephx test cluster (ci/test.sh) every command
//! line test runs rbdelta as `client.rbdelta`, with the caps docs/CONFIG.md
//! tells operators to create. This file checks that those are exactly the
//! caps the user has, that the user does the whole job on its pool, and
//! that a restore into a pool outside its caps is refused in one clear line
//! and works once the documented extra caps are added.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cli::{read_image, stderr, Env};
use common::{pattern, skip, test_conf, test_ioctx, unique_name, ScratchImage};

/// The user the command line tests run as, if the cluster runs cephx.
fn cephx_user() -> Option<String> {
    std::env::var("RBDELTA_TEST_CEPH_ID")
        .ok()
        .filter(|v| !v.is_empty())
}

/// `ceph ARGS` as client.admin (a fixture: the product never runs it).
fn ceph(args: &[&str]) -> String {
    let conf = test_conf();
    let out = Command::new("timeout")
        .args(["60", "ceph", "-c"])
        .arg(&conf)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ceph {args:?}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A pool and a user made for one test, removed on drop.
struct Scratch {
    pool: String,
    user: String,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("ceph")
            .arg("-c")
            .arg(test_conf())
            .args(["auth", "del", &format!("client.{}", self.user)])
            .output();
        let _ = Command::new("ceph")
            .arg("-c")
            .arg(test_conf())
            .args(["osd", "pool", "rm", &self.pool, &self.pool])
            .arg("--yes-i-really-really-mean-it")
            .output();
    }
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn the_command_line_tests_run_as_the_documented_user() {
    let Some(user) = cephx_user() else {
        return skip("the test cluster runs without cephx");
    };
    let got = ceph(&["auth", "get", &format!("client.{user}")]);
    // exactly the two caps of docs/CONFIG.md, nothing more
    let caps: Vec<&str> = got
        .lines()
        .filter(|l| l.contains("caps"))
        .map(str::trim)
        .collect();
    assert_eq!(
        caps,
        [
            "caps mon = \"profile rbd\"",
            "caps osd = \"profile rbd pool=rbd\""
        ],
        "{got}"
    );
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/CONFIG.md"))
        .unwrap();
    assert!(
        doc.contains(
            "ceph auth get-or-create client.rbdelta mon 'profile rbd' osd 'profile rbd pool=rbd'"
        ),
        "docs/CONFIG.md no longer gives the caps this cluster uses"
    );

    // the whole job on its own pool: backups, a check against Ceph, a restore
    let io = test_ioctx();
    let img = ScratchImage::create(&io, "lp", 8 << 20);
    let image = io.open_image(&img.name).unwrap();
    image.write(0, &pattern(3 << 20, 1)).unwrap();
    let env = Env::new(&test_conf(), &[("v", &img.name)]);
    env.ok(&["backup", "v"]);
    image.write(5 << 20, &pattern(1 << 20, 2)).unwrap();
    env.ok(&["backup", "v"]);
    env.ok(&["verify", "v", "--source"]);
    let want = read_image(&io, &img.name, None);
    let target = unique_name("lp-restored");
    let _t = ScratchImage::adopt(&io, &target);
    env.ok(&["restore", "v", "--to-image", &format!("rbd/{target}")]);
    assert!(read_image(&io, &target, None) == want);
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_restore_into_a_pool_outside_the_caps_is_refused_until_the_documented_caps_are_added() {
    if cephx_user().is_none() {
        return skip("the test cluster runs without cephx");
    }
    let io = test_ioctx();
    let img = ScratchImage::create(&io, "lp", 4 << 20);
    io.open_image(&img.name)
        .unwrap()
        .write(0, &pattern(1 << 20, 3))
        .unwrap();
    let env = Env::new(&test_conf(), &[("v", &img.name)]);
    env.ok(&["backup", "v"]);

    // a user of its own, so the shared client.rbdelta's caps never change
    let s = Scratch {
        pool: unique_name("lp-pool"),
        user: unique_name("lp-user"),
    };
    ceph(&["osd", "pool", "create", &s.pool, "8"]);
    ceph(&["osd", "pool", "application", "enable", &s.pool, "rbd"]);
    let keyring: PathBuf = env.dir.path().join("user.keyring");
    ceph(&[
        "auth",
        "get-or-create",
        &format!("client.{}", s.user),
        "mon",
        "profile rbd",
        "osd",
        "profile rbd pool=rbd",
        "-o",
        keyring.to_str().unwrap(),
    ]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&keyring, std::fs::Permissions::from_mode(0o600)).unwrap();
    let yaml = std::fs::read_to_string(&env.config)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("  id:") && !l.starts_with("  keyring:"))
        .collect::<Vec<_>>()
        .join("\n")
        .replacen(
            "ceph:\n",
            &format!(
                "ceph:\n  id: {}\n  keyring: {}\n",
                s.user,
                keyring.display()
            ),
            1,
        );
    std::fs::write(&env.config, yaml + "\n").unwrap();

    let to = format!("{}/restored", s.pool);
    let out = env.fails(&["restore", "v", "--to-image", &to]);
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("Operation not permitted: the Ceph user's caps do not allow this"),
        "{err}"
    );
    assert!(err.contains(&to), "{err}");

    // the extra caps docs/CONFIG.md gives for a restore into another pool
    ceph(&[
        "auth",
        "caps",
        &format!("client.{}", s.user),
        "mon",
        "profile rbd",
        "osd",
        &format!("profile rbd pool=rbd, profile rbd pool={}", s.pool),
    ]);
    env.ok(&["restore", "v", "--to-image", &to]);
    let other = common::test_cluster().ioctx(&s.pool).unwrap();
    let _r = ScratchImage::adopt(&other, "restored");
    assert!(read_image(&other, "restored", None) == read_image(&io, &img.name, None));
}
