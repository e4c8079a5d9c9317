//! `rbdelta export`: a revision as a raw image. To a file it is sparse and
//! byte-exact; to stdout it streams the whole image (holes as zeros), and
//! `rbdelta export | rbd import -` gives the revision byte-exact in a new
//! image. A corrupt block stops the export with the revision and byte range
//! named and a short stream; `--allow-inconsistent` writes zeros there and
//! warns. An existing file is kept unless `--force`.

mod common;

use common::cli::{read_image, stderr, Env};
use common::{flip_byte, pattern, test_conf, test_ioctx, unique_name, ScratchImage};
use std::os::unix::fs::MetadataExt;

const MIB: u64 = 1 << 20;

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn export_to_a_file_and_through_rbd_import_is_byte_exact_and_a_bad_block_stops_it() {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, "export", 16 * MIB);
    let img = io.open_image(&src.name).unwrap();
    // data, a 10 MiB hole, data at the end
    img.write(0, &pattern(3 * MIB as usize, 1)).unwrap();
    img.write(14 * MIB, &pattern(2 * MIB as usize, 2)).unwrap();
    let env = Env::new(&conf, &[("v", &src.name)]);
    env.ok(&["backup", "v"]);
    let first = read_image(&io, &src.name, None);
    img.write(MIB, &pattern(MIB as usize, 3)).unwrap();
    env.ok(&["backup", "v"]);
    let second = read_image(&io, &src.name, None);
    let ids = env.revision_ids("v");

    // a sparse file, refused when it exists unless --force
    let file = env.dir.path().join("v.raw");
    let f = file.to_str().unwrap();
    env.ok(&["export", "v", "-o", f]);
    assert!(std::fs::read(&file).unwrap() == second);
    let m = std::fs::metadata(&file).unwrap();
    assert!(
        !common::tells_holes(&file, m.len()) || m.blocks() * 512 < 8 * MIB,
        "not sparse: {} blocks",
        m.blocks()
    );
    let out = env.fails(&["export", "v", "--revision", &ids[0], "-o", f]);
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    env.ok(&["export", "v", "--revision", &ids[0], "-o", f, "--force"]);
    assert!(std::fs::read(&file).unwrap() == first);

    // a stream into `rbd import -` (client.admin: a fixture)
    let target = unique_name("imported");
    let _t = ScratchImage::adopt(&io, &target);
    let (export, import) = env.pipe_to_rbd(
        &["export", "v", "--revision", &ids[0], "-o", "-"],
        &conf,
        &["import", "--no-progress", "-", &format!("rbd/{target}")],
    );
    assert!(export.success());
    assert!(import.status.success(), "{}", stderr(&import));
    assert!(read_image(&io, &target, None) == first);

    // a bad block in the delta: the stream stops short, naming it
    let delta = env.archive().join(format!("v/data/{}.delta", ids[1]));
    flip_byte(&delta, 4096 + 100);
    let out = env.cmd().args(["export", "v", "-o", "-"]).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&ids[1]) && err.contains("checksum"), "{err}");
    assert!((out.stdout.len() as u64) < 16 * MIB);
    assert!(
        out.stdout[..] == second[..out.stdout.len()],
        "wrong bytes before the bad block"
    );
    // --allow-inconsistent: zeros there, a warning naming the range
    let out = env
        .cmd()
        .args(["export", "v", "-o", "-", "--allow-inconsistent"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let range = err
        .split("bytes ")
        .nth(1)
        .and_then(|r| r.split_once(" were corrupt"))
        .map(|(r, _)| r.to_string())
        .unwrap_or_else(|| panic!("no range in {err}"));
    let (a, b) = range.split_once("..").unwrap();
    let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
    assert_eq!(out.stdout.len(), second.len());
    assert!(out.stdout[a..b].iter().all(|&x| x == 0));
    assert!(out.stdout[..a] == second[..a] && out.stdout[b..] == second[b..]);
}
