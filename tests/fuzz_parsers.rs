//! Fuzz targets, one per parser of on-disk data and user input: the volume
//! header, manifests, full indexes, deltas, state.json, pending.json,
//! operation.json, the operation logs, the config file, `rbd diff v1`
//! streams and the partition tables fsck reads from guest disks. Each damages
//! real files made by rbdelta (see `fuzz/mod.rs`) and asserts no panic, no
//! hang, an error that names the file, and for the checksummed formats
//! that an accepted file reads as the original did. Binary files are also
//! re-sealed after damage (a valid trailer over the damaged bytes), the
//! way a hostile file would be, so the checks behind the checksum run too.
//!
//! The suite runs a short smoke of each (`FUZZ_CASES`, default 20,000);
//! `ci/fuzz.sh` runs 10 million per target.

mod fuzz;

use std::path::{Path, PathBuf};

use rbdelta::archive::state::{RevisionState, Trust, VolumeState};
use rbdelta::archive::{oplog, Pending, PendingOwner, VolumeDir};
use rbdelta::backup::{backup, BackupOptions};
use rbdelta::config::Config;
use rbdelta::format::delta::DeltaFile;
use rbdelta::format::full_index::FullIndexReader;
use rbdelta::format::manifest::Manifest;
use rbdelta::history::intent::{self, Intent, Staged};
use rbdelta::progress::NoProgress;
use rbdelta::source::file::{resize, write_at, FileImage};

const BS: u64 = 4096;
const SMOKE: u64 = 20_000;

/// A three-revision archive (a full and two deltas, with a grow), on
/// tmpfs when there is one, kept alive by the returned guard.
struct Archive {
    _dir: tempfile::TempDir,
    root: PathBuf,
    vol: VolumeDir,
    /// revision ids, oldest first
    ids: Vec<String>,
}

/// A temp dir on tmpfs when there is one (millions of small writes).
fn scratch() -> tempfile::TempDir {
    match Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm").unwrap(),
        false => tempfile::tempdir().unwrap(),
    }
}

fn archive() -> Archive {
    let dir = scratch();
    let image = FileImage::new(dir.path().join("img")).unwrap();
    let root = dir.path().join("archive");
    let vol = VolumeDir::open_or_create(&root, "vm", BS).unwrap();
    let opts = BackupOptions {
        source_name: "rbd/vm".into(),
        ..Default::default()
    };
    let mut ids = Vec::new();
    for (size, at, len) in [
        (40_000u64, 0u64, 20_000usize),
        (40_000, 8_000, 5_000),
        (70_000, 30_000, 30_000),
    ] {
        resize(&image, size).unwrap();
        write_at(&image, at, &vec![ids.len() as u8 + 1; len]).unwrap();
        ids.push(
            backup(&vol, &image, &opts, &NoProgress)
                .unwrap()
                .revision
                .id,
        );
    }
    Archive {
        _dir: dir,
        root,
        vol,
        ids,
    }
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// Errors unless an accepted checksummed file is byte-equal to a seed
/// (then it was not damaged at all, or damaged back into a seed).
fn accepted_only_intact(input: &[u8], seeds: &[Vec<u8>], what: &str) -> Result<bool, String> {
    if seeds.iter().any(|s| s == input) {
        Ok(true)
    } else {
        Err(format!("a damaged {what} was accepted"))
    }
}

/// Writes a valid BLAKE3 trailer over a damaged full index.
fn reseal_fidx(b: &mut [u8]) {
    if b.len() >= 32 {
        let n = b.len() - 32;
        let h = blake3::hash(&b[..n]);
        b[n..].copy_from_slice(h.as_bytes());
    }
}

/// Writes a valid trailer over a damaged delta (header ‖ index).
fn reseal_delta(b: &mut [u8]) {
    if b.len() < 4096 + 32 {
        return;
    }
    let x = u64::from_le_bytes(b[96..104].try_into().unwrap());
    let n = b.len() - 32;
    if x < 4096 || x > n as u64 {
        return;
    }
    let mut h = blake3::Hasher::new();
    h.update(&b[..128]);
    h.update(&b[x as usize..n]);
    let h = h.finalize();
    b[n..].copy_from_slice(h.as_bytes());
}

#[test]
fn volume_header() {
    let a = archive();
    let file = a.vol.path.join("rbdelta-volume.json");
    let seeds = vec![read(&file)];
    fuzz::run("volume-header", &file, &seeds, SMOKE, |f| {
        match VolumeDir::open(&a.root, "vm") {
            Ok(v) => {
                // what the header says is used: it must make sense
                if !(4096..=4 << 20).contains(&v.block_size) || !v.block_size.is_power_of_two() {
                    return Err(format!("block size {} accepted", v.block_size));
                }
                Ok(true)
            }
            Err(e) => fuzz::names(&e.to_string(), f),
        }
    });
}

#[test]
fn manifest() {
    let a = archive();
    let files: Vec<PathBuf> = a.ids.iter().map(|id| a.vol.manifest_path(id)).collect();
    let seeds: Vec<Vec<u8>> = files.iter().map(|p| read(p)).collect();
    let (id, file) = (&a.ids[1], &files[1]);
    fuzz::run("manifest", file, &seeds, SMOKE, |f| {
        // a hostile manifest named by its own hash gets past the name
        // check: the decoder alone must hold too
        let decoded = Manifest::decode(&read(f)).is_ok();
        match a.vol.read_revision(id) {
            // a manifest's name is the hash of its bytes
            Ok(_) => accepted_only_intact(&read(f), &seeds[1..2], "manifest"),
            Err(e) => fuzz::names(&e.to_string(), f),
        }?;
        match a.vol.revisions() {
            Ok(_) => Ok(decoded),
            Err(e) => fuzz::names(&e.to_string(), f).map(|_| decoded),
        }
    });
}

/// Checks an accepted full index from the outside: ascending entries
/// inside the image, each found by `find` and `next_at_or_after`. An index
/// whose entries all read is accepted, and then `find` failing on one of
/// its own entries is a bug, not a refusal.
fn full_index_sane(idx: &FullIndexReader) -> Result<(), String> {
    let blocks = idx.header.size.div_ceil(idx.header.block_size);
    let Ok(entries) = idx
        .entries()
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
    else {
        return Ok(()); // refused while reading: fine
    };
    let mut last = None;
    for e in &entries {
        if e.block >= blocks || last.is_some_and(|l| l >= e.block) {
            return Err(format!("entry for block {} accepted", e.block));
        }
        last = Some(e.block);
    }
    for e in &entries {
        match idx.find(e.block) {
            Ok(found) if found.as_ref().map(|f| f.block) == Some(e.block) => {}
            Ok(_) => return Err(format!("find({}) disagrees with the entries", e.block)),
            Err(err) => {
                return Err(format!(
                    "find({}) failed on an entry of an accepted index: {err}",
                    e.block
                ))
            }
        }
    }
    for b in [0, 1, blocks / 2, blocks, u64::MAX] {
        let _ = idx.next_at_or_after(b);
        let _ = idx.find(b);
    }
    Ok(())
}

#[test]
fn full_index() {
    let a = archive();
    let file = a.vol.full_index_path(&a.ids[0]);
    let seeds = vec![read(&file)];
    let mut n = 0u64;
    fuzz::run("full-index", &file, &seeds, SMOKE, |f| {
        n += 1;
        if n % 2 == 0 {
            let mut b = read(f);
            reseal_fidx(&mut b);
            std::fs::write(f, &b).unwrap();
        }
        match FullIndexReader::open(f) {
            Ok(idx) if n % 2 == 0 => full_index_sane(&idx).map(|()| true),
            Ok(_) => accepted_only_intact(&read(f), &seeds, "full index"),
            Err(e) => fuzz::names(&e.to_string(), f),
        }
    });
}

#[test]
fn delta() {
    let a = archive();
    let files: Vec<PathBuf> = a.ids[1..].iter().map(|id| a.vol.delta_path(id)).collect();
    let seeds: Vec<Vec<u8>> = files.iter().map(|p| read(p)).collect();
    let mut n = 0u64;
    fuzz::run("delta", &files[0], &seeds, SMOKE, |f| {
        n += 1;
        if n % 2 == 0 {
            let mut b = read(f);
            reseal_delta(&mut b);
            std::fs::write(f, &b).unwrap();
        }
        let d = match DeltaFile::open(f) {
            Ok(d) => d,
            Err(e) => return fuzz::names(&e.to_string(), f),
        };
        let bytes = read(f);
        let x = u64::from_le_bytes(bytes[96..104].try_into().unwrap());
        if n % 2 == 1 {
            // the trailer seals the header and the index; block data is
            // checked by block hashes as it is read, padding is ignored
            let sealed = |b: &[u8], x: usize| [&b[..128], &b[x..]].concat();
            let intact = seeds.iter().any(|s| {
                let sx = u64::from_le_bytes(s[96..104].try_into().unwrap()) as usize;
                s.len() == bytes.len() && sealed(s, sx) == sealed(&bytes, x as usize)
            });
            return match intact {
                true => Ok(true),
                false => Err("a delta with a damaged header or index was accepted".into()),
            };
        }
        let bs = d.header.block_size;
        let blocks = d.header.size.div_ceil(bs);
        for (i, e) in d.entries.iter().enumerate() {
            let ordered = i == 0 || d.entries[i - 1].block < e.block;
            let inside = e.zero
                || (e.offset >= 4096
                    && e.offset
                        .checked_add(u64::from(e.len))
                        .is_some_and(|end| end <= x));
            if !ordered || e.block >= blocks || !inside || u64::from(e.len) > bs {
                return Err(format!("entry {e:?} accepted"));
            }
        }
        Ok(true)
    });
}

#[test]
fn state() {
    let a = archive();
    let file = a.vol.state_path();
    let mut s = VolumeState {
        format: 1,
        ..Default::default()
    };
    let trusts = [
        Trust::Trusted,
        Trust::Verified {
            at: "2026-11-29T10:00:00Z".into(),
        },
        Trust::Distrusted {
            reason: "block 3 fails its checksum".into(),
        },
    ];
    for (id, trust) in a.ids.iter().zip(trusts) {
        s.revisions.insert(
            id.clone(),
            RevisionState {
                snapshot: Some(format!("rbdelta-{}", &id[..8])),
                tags: vec!["monthly".into(), "before-upgrade".into()],
                trust,
            },
        );
    }
    s.save(&file).unwrap();
    let seeds = vec![read(&file)];
    fuzz::run("state", &file, &seeds, SMOKE, |f| {
        match VolumeState::load(f) {
            Ok(_) => Ok(true),
            Err(e) => fuzz::names(&e.to_string(), f),
        }
    });
}

#[test]
fn pending() {
    let a = archive();
    let file = a.vol.pending_path();
    let mut seeds = Vec::new();
    for owner in [
        None,
        Some(PendingOwner {
            host: "backup1".into(),
            pid: 4242,
            client: Some("client.4161".into()),
        }),
    ] {
        a.vol
            .write_pending(&Pending {
                snapshot: "rbdelta-0123456789abcdef-20261129T101010Z".into(),
                started: "2026-11-29T10:10:10Z".into(),
                owner,
            })
            .unwrap();
        seeds.push(read(&file));
    }
    fuzz::run("pending", &file, &seeds, SMOKE, |f| {
        match a.vol.read_pending() {
            Ok(_) => Ok(true),
            Err(e) => fuzz::names(&e.to_string(), f),
        }
    });
}

#[test]
fn operation() {
    let a = archive();
    let file = a.vol.path.join("operation.json");
    let mut seeds = Vec::new();
    for staged in [
        Staged::None,
        Staged::Delta {
            tmp: "merge-1.delta".into(),
        },
        Staged::Full {
            full: "synthetic-1.full".into(),
            fidx: "synthetic-1.fidx".into(),
        },
    ] {
        let i = Intent {
            op: "remove".into(),
            remove: a.ids[0].clone(),
            child: Some(a.ids[1].clone()),
            staged,
            then: vec![a.ids[1].clone()],
            edit: Some(format!("merge {} {}", a.ids[0], a.ids[1])),
        };
        intent::write(&a.vol, &i).unwrap();
        seeds.push(read(&file));
    }
    fuzz::run("operation", &file, &seeds, SMOKE, |f| {
        match intent::read(&a.vol) {
            Ok(_) => Ok(true),
            Err(e) => fuzz::names(&e.to_string(), f),
        }
    });
}

#[test]
fn operation_logs() {
    let a = archive();
    let file = a.vol.log_path();
    let fleet = a.root.join(".rbdelta/log.jsonl");
    std::fs::create_dir_all(fleet.parent().unwrap()).unwrap();
    for (path, volume) in [(&file, None), (&fleet, Some("vm".to_string()))] {
        for (op, outcome) in [("backup", "ok"), ("verify", "error"), ("restore", "ok")] {
            let mut r = oplog::LogRecord {
                time: "2026-11-29T10:10:10.123456789Z".into(),
                op: op.into(),
                event: "start".into(),
                volume: volume.clone(),
                ..Default::default()
            };
            oplog::append(path, &r).unwrap();
            r.event = "end".into();
            r.outcome = Some(outcome.into());
            r.revision = Some(a.ids[2].clone());
            r.kind = Some("delta".into());
            r.bytes_read = Some(1 << 20);
            r.duration_ms = Some(1234);
            r.transient = volume.as_ref().map(|_| true);
            r.in_volume_log = volume.as_ref().map(|_| true);
            oplog::append(path, &r).unwrap();
        }
    }
    let seeds = vec![read(&file), read(&fleet)];
    let yaml = format!(
        "ceph:\n  conf: /nonexistent/ceph.conf\narchive: {}\nvolumes:\n  - pool: rbd\n    image: vm\n",
        a.root.display()
    );
    let cfg = Config::parse(&yaml, "fuzz.yaml").unwrap();
    // the volume's log first, then the fleet log (with the volume's intact)
    for (name, target) in [("volume-log", &file), ("fleet-log", &fleet)] {
        let keep = read(target);
        fuzz::run(name, target, &seeds, SMOKE, |f| {
            let log = oplog::read_all(f).map_err(|e| e.to_string())?;
            if log
                .damaged
                .iter()
                .any(|d| !d.contains(&f.display().to_string()))
            {
                return Err(format!(
                    "a damaged line is not named by file: {:?}",
                    log.damaged
                ));
            }
            if !log.damaged.is_empty() {
                return Ok(false); // the consumers skip damaged lines
            }
            // and everything that reads the records: status and check
            let s = rbdelta::status::collect(&cfg).map_err(|e| e.to_string())?;
            let now = rbdelta::status::unix_of("2026-11-30T00:00:00Z").unwrap();
            for v in &s {
                rbdelta::status::check::judge(v, now, Default::default());
            }
            let _ = rbdelta::status::prometheus::render(&s);
            Ok(true)
        });
        std::fs::write(target, keep).unwrap();
    }
}

/// A damaged summary of the fleet log (`.rbdelta/summary/`): status and
/// check never fail or panic over it, and report what the intact one
/// gives (its own hash fails, and the log is parsed whole again). Fewer
/// cases than the others: each one that is refused parses 1.5 MB of log
/// and writes a new summary.
#[test]
fn fleet_log_summary() {
    let a = archive();
    let fleet = a.root.join(".rbdelta/log.jsonl");
    std::fs::create_dir_all(fleet.parent().unwrap()).unwrap();
    for i in 0..6000u64 {
        let r = oplog::LogRecord {
            time: format!("2026-11-29T10:{:02}:{:02}.{i:09}Z", i / 3600 % 60, i % 60),
            op: "backup".into(),
            event: "end".into(),
            volume: Some("vm".into()),
            outcome: Some(if i % 7 == 3 { "error" } else { "ok" }.into()),
            detail: Some("rbd/vm ".repeat(30)),
            ..Default::default()
        };
        oplog::append(&fleet, &r).unwrap();
    }
    let yaml = format!(
        "ceph:\n  conf: /nonexistent/ceph.conf\narchive: {}\nvolumes:\n  - pool: rbd\n    image: vm\n",
        a.root.display()
    );
    let cfg = Config::parse(&yaml, "fuzz.yaml").unwrap();
    let json = |s: &[rbdelta::status::VolumeStatus]| serde_json::to_value(s).unwrap();
    let want = json(&rbdelta::status::collect(&cfg).unwrap());
    let summary = a.root.join(".rbdelta/summary/log.jsonl.json");
    let seeds = vec![read(&summary)];
    fuzz::run("fleet-log-summary", &summary, &seeds, SMOKE / 10, |f| {
        let used = std::fs::read(f).unwrap() == seeds[0];
        let s = rbdelta::status::collect(&cfg).map_err(|e| e.to_string())?;
        let now = rbdelta::status::unix_of("2026-11-30T00:00:00Z").unwrap();
        for v in &s {
            rbdelta::status::check::judge(v, now, Default::default());
        }
        if json(&s) != want {
            return Err(format!("a damaged summary changed the status: {s:?}"));
        }
        Ok(used)
    });
}

#[test]
fn rbd_diff_stream() {
    use rbdelta::format::rbd_diff::{DiffReader, DiffWriter, Record};
    let mut seeds = Vec::new();
    for from in [
        None,
        Some("rbdelta-0123456789abcdef-20261129T101010Z-1a2b3c4d"),
    ] {
        let mut w = DiffWriter::new(Vec::new()).unwrap();
        if let Some(f) = from {
            w.from_snap(f).unwrap();
        }
        w.to_snap("rbdelta-0123456789abcdef-20261130T101010Z-5e6f7a8b")
            .unwrap();
        w.size(1 << 20).unwrap();
        w.write(0, &[7; 300]).unwrap();
        w.zero(4096, 8192).unwrap();
        w.write(65536, &[9; 4096]).unwrap();
        w.zero((1 << 20) - 512, 512).unwrap();
        seeds.push(w.end().unwrap());
    }
    let tmp = scratch();
    let file = tmp.path().join("chain-0001.diff");
    fuzz::run("rbd-diff", &file, &seeds, SMOKE, |f| {
        let name = f.display().to_string();
        let read = |bytes: &[u8]| -> Result<(u64, Vec<Record>), String> {
            let (mut r, first) = DiffReader::new(bytes, &name)?;
            let mut out: Vec<Record> = first.into_iter().collect();
            while let Some(rec) = r.next_record()? {
                out.push(rec);
            }
            Ok((r.header.size, out))
        };
        match read(&std::fs::read(f).unwrap()) {
            Ok((size, records)) => {
                // what the reader lets through is in order inside the image
                let mut pos = 0;
                for rec in records {
                    let (offset, len) = match rec {
                        Record::Write { offset, data } => (offset, data.len() as u64),
                        Record::Zero { offset, len } => (offset, len),
                    };
                    if offset < pos || offset + len > size {
                        return Err(format!("record at {offset}+{len} accepted (size {size})"));
                    }
                    pos = offset + len;
                }
                Ok(true)
            }
            Err(e) if e.starts_with(&format!("{name}: ")) && e.lines().count() == 1 => Ok(false),
            Err(e) => Err(format!("an error that does not name the stream: {e}")),
        }
    });
}

#[test]
fn config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| read(&e.path()))
        .collect();
    seeds.sort();
    let tmp = scratch();
    let file = tmp.path().join("config.yaml");
    fuzz::run("config", &file, &seeds, SMOKE, |f| match Config::load(f) {
        Ok(_) => Ok(true),
        Err(e) => {
            let msg = e.to_string();
            if msg.lines().count() != 1 {
                return Err(format!("a multi-line error: {msg}"));
            }
            fuzz::names(&msg, f)
        }
    });
}

/// A small disk image: a partition table and a filesystem magic at the
/// start of each partition, `kind` being `gpt`, `mbr` or `bare`.
fn disk_seed(kind: &str) -> Vec<u8> {
    let mut img = vec![0u8; 16 << 10];
    let le = |img: &mut Vec<u8>, at: usize, v: &[u8]| img[at..at + v.len()].copy_from_slice(v);
    match kind {
        "gpt" => {
            img[446 + 4] = 0xEE;
            le(&mut img, 510, &[0x55, 0xAA]);
            le(&mut img, 512, b"EFI PART");
            le(&mut img, 512 + 72, &2u64.to_le_bytes());
            le(&mut img, 512 + 80, &4u32.to_le_bytes());
            le(&mut img, 512 + 84, &128u32.to_le_bytes());
            for (i, (first, last)) in [(4u64, 11u64), (12, 19), (20, 31)].iter().enumerate() {
                let e = 1024 + i * 128;
                img[e] = 1;
                le(&mut img, e + 32, &first.to_le_bytes());
                le(&mut img, e + 40, &last.to_le_bytes());
            }
            le(&mut img, 4 * 512 + 1024 + 56, &0xEF53u16.to_le_bytes());
            le(&mut img, 12 * 512, b"XFSB");
            le(&mut img, 20 * 512 + 512, b"LABELONE");
        }
        "mbr" => {
            le(&mut img, 510, &[0x55, 0xAA]);
            for (i, (kind, first, count)) in [(0x83u8, 4u32, 8u32), (0x82, 12, 8), (0x05, 20, 12)]
                .iter()
                .enumerate()
            {
                let e = 446 + i * 16;
                img[e + 4] = *kind;
                le(&mut img, e + 8, &first.to_le_bytes());
                le(&mut img, e + 12, &count.to_le_bytes());
            }
            le(&mut img, 4 * 512 + 1024 + 56, &0xEF53u16.to_le_bytes());
        }
        _ => {
            le(&mut img, 54, b"FAT16");
            le(&mut img, 510, &[0x55, 0xAA]);
        }
    }
    img
}

/// Partition tables a guest wrote (`fsck`'s first read of a revision): no
/// panic, no read over `layout::MAX_READ`, no allocation over 64 MiB, and
/// every partition it gives lies inside the disk. The bytes past the
/// damaged seed read as zeros up to a disk size that the case picks (the
/// seed's own, 1 TiB or 2⁶⁴ - 1 bytes), so offsets far out are tried too.
#[test]
fn partition_table() {
    use rbdelta::fsck::layout::{partitions, MAX_READ};
    let seeds: Vec<Vec<u8>> = ["gpt", "mbr", "bare"]
        .iter()
        .map(|k| disk_seed(k))
        .collect();
    let tmp = scratch();
    let file = tmp.path().join("disk.img");
    let mut n = 0u64;
    fuzz::run("partition-table", &file, &seeds, SMOKE, |f| {
        n += 1;
        let bytes = std::fs::read(f).unwrap();
        let size = [bytes.len() as u64, 1 << 40, u64::MAX][(n % 3) as usize];
        let read = |at: u64, len: usize| -> rbdelta::error::Result<Vec<u8>> {
            assert!(len <= MAX_READ, "a read of {len} bytes at {at}");
            let len = len.min(usize::try_from(size.saturating_sub(at)).unwrap_or(usize::MAX));
            let mut out = vec![0u8; len];
            if let Ok(at) = usize::try_from(at) {
                if at < bytes.len() {
                    let n = len.min(bytes.len() - at);
                    out[..n].copy_from_slice(&bytes[at..at + n]);
                }
            }
            Ok(out)
        };
        let parts = partitions(&read, size).map_err(|e| e.to_string())?;
        for p in &parts {
            if p.len == 0 || p.start.checked_add(p.len).is_none_or(|end| end > size) {
                return Err(format!("partition {p:?} outside a disk of {size} bytes"));
            }
        }
        Ok(parts.iter().any(|p| p.number > 0))
    });
}
