//! The Ceph binding and the librbd block source against a real cluster.
//!
//! Start one with `rbd-fixtures/cluster.sh start DIR` and run with
//! `RBDELTA_TEST_CEPH_CONF=DIR/ceph.conf`; without it these tests skip
//! (except the unreachable-cluster test, which needs no cluster).

mod common;

use common::{pattern, test_ioctx, unique_name, ScratchImage};
use rbdelta::buffers::AlignedBuf;
use rbdelta::ceph::{features, CephOptions, Cluster, IoCtx};
use rbdelta::error::Error;
use rbdelta::source::rbd::RbdImage;
use rbdelta::source::{Extent, SourceImage};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// Reads a whole snapshot (or head) into memory.
fn read_all(io: &IoCtx, name: &str, snap: Option<&str>) -> Vec<u8> {
    let img = io.open_image_read_only(name, snap).unwrap();
    let mut buf = vec![0u8; img.size().unwrap() as usize];
    assert_eq!(img.read(0, &mut buf).unwrap(), buf.len());
    buf
}

/// Asserts the source contract: every byte that differs between `old` and
/// `new` (bytes beyond `old`'s end count as different) lies in an extent,
/// and extents are sorted, disjoint, non-empty and within `new`.
fn assert_covers(old: &[u8], new: &[u8], extents: &[Extent]) {
    let mut prev_end = 0;
    for e in extents {
        assert!(
            e.len > 0 && e.offset >= prev_end,
            "bad order/overlap: {extents:?}"
        );
        assert!(e.end() <= new.len() as u64, "extent past end: {e:?}");
        prev_end = e.end();
    }
    let mut covered = vec![false; new.len()];
    for e in extents {
        covered[e.offset as usize..e.end() as usize].fill(true);
    }
    for (i, b) in new.iter().enumerate() {
        // Past the old end only non-zero bytes must be reported: the archive
        // reads bytes past a parent's size as zeros (source contract).
        let changed = match old.get(i) {
            Some(o) => o != b,
            None => *b != 0,
        };
        assert!(
            !changed || covered[i],
            "byte {i} changed but not reported: {extents:?}"
        );
    }
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn full_changed_extents_cover_all_data() {
    let io = test_ioctx();
    let s = ScratchImage::create(&io, "full", 64 * MIB);
    let src = RbdImage::open(&io, &s.name).unwrap();
    src.image().write(0, &pattern(MIB as usize, 1)).unwrap();
    src.image().write(10 * MIB + 7, &pattern(4096, 2)).unwrap();
    let snap = src.create_snapshot("s1").unwrap();
    assert_eq!(snap.name(), "s1");
    assert_eq!(snap.size(), 64 * MIB);
    for whole in [false, true] {
        let ext = snap.changed_extents(None, whole).unwrap();
        eprintln!("full diff (whole_object={whole}): {ext:?}");
        let zeros = vec![0u8; 64 * MIB as usize];
        assert_covers(&zeros, &read_all(&io, &s.name, Some("s1")), &ext);
        let total: u64 = ext.iter().map(|e| e.len).sum();
        assert!(total <= 8 * MIB, "sparse image reported {total} bytes");
    }
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn changed_extents_against_base_with_discard_and_grow() {
    let io = test_ioctx();
    let s = ScratchImage::create(&io, "incr", 32 * MIB);
    let src = RbdImage::open(&io, &s.name).unwrap();
    let img = src.image();
    img.write(0, &pattern(6 * MIB as usize, 3)).unwrap();
    img.write(20 * MIB, &pattern(MIB as usize, 4)).unwrap();
    drop(src.create_snapshot("base").unwrap());
    img.write(MIB + 100, &pattern(5000, 5)).unwrap(); // inside an old object
    img.write(12 * MIB, &pattern(4096, 6)).unwrap(); // a new object
    img.discard(20 * MIB, MIB).unwrap(); // data -> zeros
    img.resize(40 * MIB).unwrap(); // grown tail, never written
    let snap = src.create_snapshot("s2").unwrap();
    assert_eq!(snap.size(), 40 * MIB);
    let old = read_all(&io, &s.name, Some("base"));
    let new = read_all(&io, &s.name, Some("s2"));
    for whole in [false, true] {
        let ext = snap.changed_extents(Some("base"), whole).unwrap();
        eprintln!("incremental diff (whole_object={whole}): {ext:?}");
        assert_covers(&old, &new, &ext);
    }
    // Unchanged image: nothing (or only over-reported objects) to back up.
    let s3 = src.create_snapshot("s3").unwrap();
    let same = s3.changed_extents(Some("s2"), false).unwrap();
    assert_eq!(same, vec![], "no writes between s2 and s3");
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn shrink_then_grow_between_snapshots_reports_the_lost_data() {
    let io = test_ioctx();
    let s = ScratchImage::create(&io, "shrinkgrow", 16 * MIB);
    let src = RbdImage::open(&io, &s.name).unwrap();
    src.image()
        .write(0, &pattern(16 * MIB as usize, 9))
        .unwrap();
    drop(src.create_snapshot("base").unwrap());
    src.image().resize(6 * MIB + 100).unwrap();
    src.image().resize(16 * MIB).unwrap();
    let snap = src.create_snapshot("again").unwrap();
    let old = read_all(&io, &s.name, Some("base"));
    let new = read_all(&io, &s.name, Some("again"));
    assert!(new[6 * MIB as usize + 100..].iter().all(|&b| b == 0));
    for whole in [false, true] {
        let ext = snap.changed_extents(Some("base"), whole).unwrap();
        eprintln!("shrink+grow (whole_object={whole}): {ext:?}");
        assert_covers(&old, &new, &ext);
    }
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn changed_extents_after_shrink_are_clipped() {
    let io = test_ioctx();
    let s = ScratchImage::create(&io, "shrink", 16 * MIB);
    let src = RbdImage::open(&io, &s.name).unwrap();
    src.image()
        .write(0, &pattern(16 * MIB as usize, 7))
        .unwrap();
    drop(src.create_snapshot("base").unwrap());
    src.image().resize(6 * MIB).unwrap();
    src.image().write(MIB, &pattern(10, 8)).unwrap();
    let snap = src.create_snapshot("small").unwrap();
    let ext = snap.changed_extents(Some("base"), false).unwrap();
    eprintln!("after shrink: {ext:?}");
    let old = read_all(&io, &s.name, Some("base"));
    let new = read_all(&io, &s.name, Some("small"));
    assert_covers(&old[..new.len()], &new, &ext);
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn missing_base_snapshot_is_an_error() {
    let io = test_ioctx();
    let s = ScratchImage::create(&io, "nobase", 8 * MIB);
    let src = RbdImage::open(&io, &s.name).unwrap();
    let snap = src.create_snapshot("s1").unwrap();
    let err = snap.changed_extents(Some("gone"), false).unwrap_err();
    assert!(err.to_string().contains("gone"), "{err}");
    // The raw call reports ENOENT.
    let err = src
        .image()
        .diff_iterate2(Some("gone"), 0, 8 * MIB, true, false, |_, _, _| Ok(()))
        .unwrap_err();
    assert!(
        matches!(err, Error::Ceph { errno, .. } if errno == libc::ENOENT),
        "{err}"
    );
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn diff_callback_errors_and_panics_become_errors() {
    let io = test_ioctx();
    let s = ScratchImage::create(&io, "cb", 16 * MIB);
    let img = io.open_image(&s.name).unwrap();
    img.write(0, &[1; 4096]).unwrap();
    img.write(8 * MIB, &[1; 4096]).unwrap();
    let mut calls = 0;
    let err = img
        .diff_iterate2(None, 0, 16 * MIB, true, false, |_, _, _| {
            calls += 1;
            Err(Error::Invalid("stop here".into()))
        })
        .unwrap_err();
    assert_eq!(calls, 1, "iteration stops at the first error");
    assert!(err.to_string().contains("stop here"), "{err}");
    let err = img
        .diff_iterate2(None, 0, 16 * MIB, true, false, |_, _, _| panic!("boom"))
        .unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");
}

/// An image closes no sooner than 50 ms after its last call into librbd
/// returned (librbd may still be finishing that call's state change), even
/// when the call itself took longer than that.
#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn an_image_closes_a_grace_after_its_last_call_returned() {
    let io = test_ioctx();
    let s = ScratchImage::create(&io, "grace", 8 * MIB);
    let img = io.open_image(&s.name).unwrap();
    img.write(0, &[1; 4096]).unwrap();
    img.diff_iterate2(None, 0, 8 * MIB, true, false, |_, _, _| {
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    })
    .unwrap();
    let t = Instant::now();
    drop(img);
    assert!(
        t.elapsed() >= Duration::from_millis(45),
        "closed {:?} after a call that returned just before",
        t.elapsed()
    );
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn pipelined_reads_equal_sync_reads_in_order() {
    let io = test_ioctx();
    let s = ScratchImage::create(&io, "pipe", 24 * MIB);
    let img = io.open_image(&s.name).unwrap();
    let data = pattern(24 * MIB as usize, 9);
    img.write(0, &data).unwrap();
    img.snap_create("r").unwrap();
    let src = RbdImage::open(&io, &s.name).unwrap();
    let snap = src.open_snapshot("r").unwrap().expect("snapshot exists");
    let pool = rbdelta::buffers::BufferPool::new(4);
    let extents: Vec<Extent> = (0..24u64)
        .map(|i| Extent::new(i * MIB + i * 13 % MIB, (i * 7919 % (MIB - 1)) + 1))
        .chain([Extent::new(20 * MIB, 4 * MIB), Extent::new(3, 1)])
        .collect();
    for depth in [1, 4, 16] {
        let mut seen = Vec::new();
        snap.read_extents(&extents, depth, &pool, &mut |e, buf| {
            let (a, b) = (e.offset as usize, e.end() as usize);
            assert_eq!(&buf[..], &data[a..b], "extent {e:?} at depth {depth}");
            seen.push(e);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, extents, "sink sees each extent once, in order");
    }
    // A sink error stops the read and is returned (after draining).
    let mut n = 0;
    let err = snap
        .read_extents(&extents, 8, &pool, &mut |_, _| {
            n += 1;
            if n == 3 {
                Err(Error::Invalid("sink full".into()))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert!(err.to_string().contains("sink full"));
    assert_eq!(n, 3);
    // Reads past the end are refused up front.
    let past = [Extent::new(24 * MIB - 1, 2)];
    assert!(snap
        .read_extents(&past, 1, &pool, &mut |_, _| Ok(()))
        .is_err());
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn aio_writer_restores_into_new_image() {
    let io = test_ioctx();
    let s = ScratchImage::create(&io, "restore", 20 * MIB);
    let img = io.open_image(&s.name).unwrap();
    let mut expect = vec![0u8; 20 * MIB as usize];
    let mut w = img.writer(8);
    for i in 0..16u64 {
        let off = i * MIB + (i % 3) * 4096;
        // Writes in flight may land in any order: never overlap them.
        let buf = pattern(MIB as usize - 8192, 100 + i);
        expect[off as usize..off as usize + buf.len()].copy_from_slice(&buf);
        w.submit(off, AlignedBuf::from_slice(&buf)).unwrap();
    }
    w.finish().unwrap();
    let got = read_all(&io, &s.name, None);
    if let Some(first) = (0..expect.len()).find(|&i| got[i] != expect[i]) {
        let last = (0..expect.len())
            .rev()
            .find(|&i| got[i] != expect[i])
            .unwrap();
        panic!("written data differs in bytes {first}..={last}");
    }

    // Dropping an unfinished writer waits for its writes.
    let mut w = img.writer(4);
    for i in 0..6u64 {
        w.submit(i * MIB, AlignedBuf::from_slice(&[0xAB; 4096]))
            .unwrap();
    }
    drop(w);
    let mut buf = vec![0u8; 4096];
    img.read(5 * MIB, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0xAB));

    // A write past the end fails; the error surfaces from submit or finish.
    let mut w = img.writer(2);
    let r = w
        .submit(40 * MIB, AlignedBuf::from_slice(&[1; 10]))
        .and_then(|_| w.finish());
    assert!(r.is_err(), "write past end must fail");
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn clone_includes_parent_data() {
    let io = test_ioctx();
    let parent = ScratchImage::create(&io, "parent", 16 * MIB);
    let pimg = io.open_image(&parent.name).unwrap();
    let pdata = pattern(16 * MIB as usize, 11);
    pimg.write(0, &pdata).unwrap();
    pimg.snap_create("gold").unwrap();
    pimg.snap_protect("gold").unwrap();
    let child_name = unique_name("child");
    io.clone_image(&parent.name, "gold", &child_name).unwrap();
    let child = ScratchImage::adopt(&io, &child_name);
    let src = RbdImage::open(&io, &child.name).unwrap();
    src.image().write(5 * MIB, &[0xEE; 8192]).unwrap();
    let snap = src.create_snapshot("c1").unwrap();
    let ext = snap.changed_extents(None, false).unwrap();
    eprintln!("clone full diff: {ext:?}");
    let mut expect = pdata.clone();
    expect[5 * MIB as usize..5 * MIB as usize + 8192].fill(0xEE);
    assert_eq!(read_all(&io, &child.name, Some("c1")), expect);
    assert_covers(&vec![0; expect.len()], &expect, &ext);
    drop(snap);
    drop(src);
    drop(child); // the clone goes before its parent's snapshot
    drop(pimg);
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn snapshots_list_and_remove() {
    let io = test_ioctx();
    let s = ScratchImage::create(&io, "snaps", 8 * MIB);
    let src = RbdImage::open(&io, &s.name).unwrap();
    for n in ["a", "b", "c"] {
        src.create_snapshot(n).unwrap();
    }
    assert_eq!(src.snapshot_names().unwrap(), ["a", "b", "c"]);
    src.remove_snapshot("b").unwrap();
    src.remove_snapshot("b").unwrap(); // missing: not an error
    assert_eq!(src.snapshot_names().unwrap(), ["a", "c"]);
    assert!(src.open_snapshot("b").unwrap().is_none());
    assert!(src.open_snapshot("a").unwrap().is_some());
    assert!(!src.image().snap_exists("b").unwrap());
    assert!(src.image().snap_exists("c").unwrap());
    let list = src.image().snap_list().unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|(_, _, size)| *size == 8 * MIB));
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn images_create_list_exist_remove_and_layout() {
    let io = test_ioctx();
    let name = unique_name("layout");
    io.create_image(&name, 3 * MIB, 20, features::LAYERING)
        .unwrap();
    let s = ScratchImage::adopt(&io, &name);
    assert!(io.image_exists(&name).unwrap());
    assert!(io.list_images().unwrap().contains(&name));
    let src = RbdImage::open(&io, &name).unwrap();
    let layout = src.layout().unwrap();
    assert_eq!((layout.order, layout.features), (20, features::LAYERING));
    let st = src.image().stat().unwrap();
    assert_eq!((st.size, st.obj_size, st.num_objs), (3 * MIB, MIB, 3));
    let err = io.create_image(&name, MIB, 0, 0).unwrap_err();
    assert!(
        matches!(err, Error::Ceph { errno, .. } if errno == libc::EEXIST),
        "{err}"
    );
    drop(src);
    io.remove_image(&name).unwrap();
    assert!(!io.image_exists(&name).unwrap());
    let err = io.open_image(&name).unwrap_err();
    assert!(
        matches!(&err, Error::Ceph { errno, op, .. } if *errno == libc::ENOENT && op.contains(&name))
    );
    drop(s);
}

/// Needs no cluster: a monitor address where nobody listens must give an
/// error after about the timeout, not a hang.
#[test]
fn unreachable_cluster_fails_within_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let conf = dir.path().join("ceph.conf");
    std::fs::write(
        &conf,
        format!("[global]\nmon host = v2:127.0.0.1:{port}\nauth client required = none\n"),
    )
    .unwrap();
    let opts = CephOptions {
        conf: Some(conf),
        id: "admin".into(),
        keyring: None,
        timeout: Duration::from_secs(3),
    };
    let t = Instant::now();
    let err = Cluster::connect(&opts).unwrap_err();
    let took = t.elapsed();
    eprintln!("unreachable cluster: {err} after {took:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(matches!(err, Error::Ceph { .. }), "{err}");
    assert!(err.is_transient(), "{err}");
}

/// Needs no cluster: a conf path that does not exist is reported as such.
#[test]
fn missing_conf_file_is_an_error() {
    let opts = CephOptions {
        conf: Some("/nonexistent/rbdelta/ceph.conf".into()),
        timeout: Duration::from_secs(3),
        ..CephOptions::default()
    };
    let err = Cluster::connect(&opts).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/rbdelta/ceph.conf"),
        "{err}"
    );
    assert!(
        matches!(err, Error::Ceph { errno, .. } if errno == libc::ENOENT),
        "{err}"
    );
}

/// Leases (cls_lock with a duration): one exclusive holder at a time, who
/// renews under its cookie; a holder that stops renewing loses the lease
/// when its time is up, with nobody breaking it; a shared lease lists
/// every holder whose time is not up, which is how backup hosts will see
/// which of them are alive.
#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn leases_exclude_renew_and_lapse() {
    use rbdelta::ceph::LeaseKind::{Exclusive, Shared};
    let a = test_ioctx();
    let b = Cluster::connect(&common::test_options(common::test_conf()))
        .unwrap()
        .ioctx(&common::test_pool())
        .unwrap();
    let oid = unique_name("lease");
    let d = Duration::from_secs(3);
    let busy = |r: rbdelta::error::Result<()>| matches!(r, Err(Error::Ceph { errno, .. }) if errno == libc::EBUSY);
    let cookies = |io: &IoCtx, name: &str| -> Vec<String> {
        let mut c: Vec<String> = io
            .lease_holders(&oid, name)
            .unwrap()
            .into_iter()
            .map(|h| h.cookie)
            .collect();
        c.sort();
        c
    };
    assert!(b.lease_holders(&oid, "job").unwrap().is_empty());

    a.lease(&oid, "job", "a", Exclusive, d).unwrap();
    assert!(busy(b.lease(&oid, "job", "b", Exclusive, d)));
    let start = Instant::now();
    for _ in 0..20 {
        a.lease(&oid, "job", "a", Exclusive, d).unwrap(); // renewals
    }
    eprintln!("a lease renewal took {:?} on average", start.elapsed() / 20);
    let held = b.lease_holders(&oid, "job").unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (held[0].cookie.as_str(), &held[0].client),
        ("a", &a.client())
    );

    // a stops renewing: once its time is up, b takes the lease, and a
    // cannot take it back
    std::thread::sleep(d + Duration::from_secs(1));
    b.lease(&oid, "job", "b", Exclusive, d).unwrap();
    assert_eq!(cookies(&a, "job"), ["b"]);
    assert!(busy(a.lease(&oid, "job", "a", Exclusive, d)));
    b.release_lease(&oid, "job", "b").unwrap();
    assert!(cookies(&a, "job").is_empty());

    // shared: both are listed; the one that stops renewing drops out
    a.lease(&oid, "nodes", "n1", Shared, d).unwrap();
    b.lease(&oid, "nodes", "n2", Shared, d).unwrap();
    assert_eq!(cookies(&a, "nodes"), ["n1", "n2"]);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(1));
        b.lease(&oid, "nodes", "n2", Shared, d).unwrap();
    }
    assert_eq!(cookies(&b, "nodes"), ["n2"]);

    // a holder known to be dead is cut off at once
    a.lease(&oid, "job", "a", Exclusive, Duration::from_secs(600))
        .unwrap();
    let dead = b.lease_holders(&oid, "job").unwrap().remove(0);
    b.break_lease(&oid, "job", &dead).unwrap();
    b.lease(&oid, "job", "b", Exclusive, d).unwrap();
}
