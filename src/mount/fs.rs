//! The mounted tree, as a read-only FUSE filesystem:
//!
//! ```text
//! <volume>/<revision-id>.img         every revision, exactly its size
//! <volume>/latest.img -> <id>.img
//! <volume>/by-time/<created>.img -> ../<id>.img   (RFC 3339, to the second)
//! <volume>/tags/<tag>.img -> ../<id>.img
//! ```
//!
//! A volume's listing is re-read at most once a second, so new revisions
//! appear without a remount and removed ones disappear; a revision already
//! open keeps reading (its chain's files stay open). Nothing here writes.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, Request,
};

use super::image::RevisionImage;
use super::Access;
use crate::archive::state::VolumeState;
use crate::archive::VolumeDir;
use crate::error::Error;

/// How long the kernel may cache names and attributes, and how old a
/// volume's listing may get.
const TTL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Node {
    Root,
    Volume(String),
    ByTime(String),
    Tags(String),
    Latest(String),
    /// volume, revision id
    Image(String, String),
    /// volume, file name in by-time/
    TimeLink(String, String),
    /// volume, file name in tags/
    TagLink(String, String),
}

/// Inode numbers, stable for the mount's life and never reused.
#[derive(Default)]
struct Inodes {
    by_node: HashMap<Node, u64>,
    nodes: Vec<Node>,
}

impl Inodes {
    fn ino(&mut self, n: Node) -> INodeNo {
        if n == Node::Root {
            return INodeNo::ROOT;
        }
        if let Some(&i) = self.by_node.get(&n) {
            return INodeNo(i);
        }
        let i = self.nodes.len() as u64 + 2; // 1 is the root
        self.nodes.push(n.clone());
        self.by_node.insert(n, i);
        INodeNo(i)
    }

    fn node(&self, ino: INodeNo) -> Option<Node> {
        let i = u64::from(ino);
        if i == 1 {
            return Some(Node::Root);
        }
        self.nodes
            .get(usize::try_from(i.checked_sub(2)?).ok()?)
            .cloned()
    }
}

struct Rev {
    id: String,
    size: u64,
    time: SystemTime,
}

/// One volume as listed at `at`.
struct View {
    at: Instant,
    dir: VolumeDir,
    revisions: Vec<Rev>,
    /// by-time file name -> revision id
    by_time: BTreeMap<String, String>,
    /// tags file name -> revision id
    tags: BTreeMap<String, String>,
}

impl View {
    fn load(archive: &std::path::Path, name: &str) -> crate::error::Result<View> {
        let dir = VolumeDir::open(archive, name)?;
        let state = VolumeState::load(&dir.state_path())?;
        let mut revisions = Vec::new();
        let (mut by_time, mut tags) = (BTreeMap::new(), BTreeMap::new());
        for r in dir.revisions()? {
            let t = time::OffsetDateTime::parse(
                &r.manifest.created,
                &time::format_description::well_known::Rfc3339,
            )
            .map_err(|e| Error::Corrupt(format!("revision {}: {e}", r.id)))?;
            let secs = t.unix_timestamp();
            let stamp = t
                .replace_nanosecond(0)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_else(|| r.id.clone());
            let mut name = format!("{stamp}.img");
            if by_time.contains_key(&name) {
                name = format!("{stamp}-{}.img", r.short());
            }
            by_time.insert(name, r.id.clone());
            for tag in state.get(&r.id).tags {
                tags.insert(format!("{tag}.img"), r.id.clone());
            }
            revisions.push(Rev {
                id: r.id.clone(),
                size: r.manifest.size,
                time: UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64),
            });
        }
        Ok(View {
            at: Instant::now(),
            dir,
            revisions,
            by_time,
            tags,
        })
    }

    fn rev(&self, id: &str) -> Option<&Rev> {
        self.revisions.iter().find(|r| r.id == id)
    }

    fn latest(&self) -> Option<&Rev> {
        self.revisions.last()
    }
}

/// The filesystem.
pub struct ArchiveFs {
    archive: PathBuf,
    volumes: Vec<String>,
    inodes: Mutex<Inodes>,
    views: Mutex<HashMap<String, Arc<View>>>,
    handles: Mutex<HashMap<u64, Arc<RevisionImage>>>,
    next_fh: AtomicU64,
    started: SystemTime,
    uid: u32,
    gid: u32,
    access: Access,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn image_name(id: &str) -> String {
    format!("{id}.img")
}

impl ArchiveFs {
    pub fn new(archive: PathBuf, volumes: Vec<String>, access: Access) -> ArchiveFs {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let gid = access.gid(gid);
        ArchiveFs {
            archive,
            volumes,
            inodes: Mutex::new(Inodes::default()),
            views: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            started: SystemTime::now(),
            uid,
            gid,
            access,
        }
    }

    /// The volume's listing, re-read when older than [`TTL`].
    fn view(&self, volume: &str) -> Option<Arc<View>> {
        if let Some(v) = lock(&self.views).get(volume) {
            if v.at.elapsed() < TTL {
                return Some(v.clone());
            }
        }
        match View::load(&self.archive, volume) {
            Ok(v) => {
                let v = Arc::new(v);
                lock(&self.views).insert(volume.to_string(), v.clone());
                Some(v)
            }
            Err(e) => {
                tracing::error!(volume, "mount: cannot list the volume: {e}");
                // an older listing beats none
                lock(&self.views).get(volume).cloned()
            }
        }
    }

    fn ino(&self, n: Node) -> INodeNo {
        lock(&self.inodes).ino(n)
    }

    fn node(&self, ino: INodeNo) -> Option<Node> {
        lock(&self.inodes).node(ino)
    }

    fn attr(&self, ino: INodeNo, kind: FileType, size: u64, time: SystemTime) -> FileAttr {
        let perm = match kind {
            FileType::Directory => self.access.dir_mode(),
            FileType::Symlink => 0o777,
            _ => self.access.file_mode(),
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: 65536,
        }
    }

    /// A symlink's target.
    fn link_target(&self, n: &Node) -> Option<String> {
        match n {
            Node::Latest(v) => Some(image_name(&self.view(v)?.latest()?.id)),
            Node::TimeLink(v, name) => Some(format!(
                "../{}",
                image_name(self.view(v)?.by_time.get(name)?)
            )),
            Node::TagLink(v, name) => {
                Some(format!("../{}", image_name(self.view(v)?.tags.get(name)?)))
            }
            _ => None,
        }
    }

    /// The attributes of `n`, if it exists now (or is an open image).
    fn attr_of(&self, ino: INodeNo, n: &Node) -> Option<FileAttr> {
        let dir = |t| Some(self.attr(ino, FileType::Directory, 0, t));
        match n {
            Node::Root => dir(self.started),
            Node::Volume(v) | Node::ByTime(v) | Node::Tags(v) => {
                let view = self.view(v)?;
                dir(view.latest().map_or(self.started, |r| r.time))
            }
            Node::Image(v, id) => {
                if let Some(r) = self
                    .view(v)
                    .as_ref()
                    .and_then(|view| view.rev(id).map(|r| (r.size, r.time)))
                {
                    return Some(self.attr(ino, FileType::RegularFile, r.0, r.1));
                }
                // removed, but still open somewhere: its old size
                let open = lock(&self.handles)
                    .values()
                    .find(|h| h.revision.id == *id)
                    .map(|h| h.size())?;
                Some(self.attr(ino, FileType::RegularFile, open, self.started))
            }
            Node::Latest(_) | Node::TimeLink(..) | Node::TagLink(..) => {
                let target = self.link_target(n)?;
                Some(self.attr(ino, FileType::Symlink, target.len() as u64, self.started))
            }
        }
    }

    /// The children of a directory node: (name, node, kind).
    fn children(&self, n: &Node) -> Option<Vec<(String, Node, FileType)>> {
        let mut out = Vec::new();
        match n {
            Node::Root => {
                for v in &self.volumes {
                    out.push((v.clone(), Node::Volume(v.clone()), FileType::Directory));
                }
            }
            Node::Volume(v) => {
                let view = self.view(v)?;
                for r in &view.revisions {
                    out.push((
                        image_name(&r.id),
                        Node::Image(v.clone(), r.id.clone()),
                        FileType::RegularFile,
                    ));
                }
                if view.latest().is_some() {
                    out.push((
                        "latest.img".into(),
                        Node::Latest(v.clone()),
                        FileType::Symlink,
                    ));
                }
                out.push((
                    "by-time".into(),
                    Node::ByTime(v.clone()),
                    FileType::Directory,
                ));
                out.push(("tags".into(), Node::Tags(v.clone()), FileType::Directory));
            }
            Node::ByTime(v) => {
                for name in self.view(v)?.by_time.keys() {
                    out.push((
                        name.clone(),
                        Node::TimeLink(v.clone(), name.clone()),
                        FileType::Symlink,
                    ));
                }
            }
            Node::Tags(v) => {
                for name in self.view(v)?.tags.keys() {
                    out.push((
                        name.clone(),
                        Node::TagLink(v.clone(), name.clone()),
                        FileType::Symlink,
                    ));
                }
            }
            _ => return None,
        }
        Some(out)
    }
}

impl Filesystem for ArchiveFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (Some(p), Some(name)) = (self.node(parent), name.to_str()) else {
            return reply.error(Errno::ENOENT);
        };
        let Some(child) = self
            .children(&p)
            .and_then(|c| c.into_iter().find(|(n, _, _)| n == name))
        else {
            return reply.error(Errno::ENOENT);
        };
        let ino = self.ino(child.1.clone());
        match self.attr_of(ino, &child.1) {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino).and_then(|n| self.attr_of(ino, &n)) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino).and_then(|n| self.link_target(&n)) {
            Some(t) => reply.data(t.as_bytes()),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let Some(n) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let Some(children) = self.children(&n) else {
            return reply.error(Errno::ENOTDIR);
        };
        let mut all = vec![
            (ino, FileType::Directory, ".".to_string()),
            (INodeNo::ROOT, FileType::Directory, "..".to_string()),
        ];
        for (name, node, kind) in children {
            all.push((self.ino(node), kind, name));
        }
        super::fill_dir(reply, all, offset);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let Some(Node::Image(volume, id)) = self.node(ino) else {
            return reply.error(Errno::EISDIR);
        };
        let Some(view) = self.view(&volume) else {
            return reply.error(Errno::ENOENT);
        };
        let opened = view
            .dir
            .read_revision(&id)
            .and_then(|rev| RevisionImage::open(&view.dir, &rev));
        match opened {
            Ok(img) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                lock(&self.handles).insert(fh, Arc::new(img));
                // A revision never changes: the kernel may keep its pages
                // across opens (re-reads of a loop-mounted filesystem).
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
            }
            Err(e) if e.is_not_found() || matches!(e, Error::Removed(_)) => {
                reply.error(Errno::ENOENT)
            }
            Err(e) => {
                tracing::error!(
                    volume,
                    revision = id,
                    "mount: cannot open the revision: {e}"
                );
                reply.error(Errno::EIO)
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(img) = lock(&self.handles).get(&u64::from(fh)).cloned() else {
            return reply.error(Errno::EBADF);
        };
        // one buffer per serving thread, reused: no allocation, no page
        // faults and no zeroing of a fresh megabyte per request
        thread_local!(static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) });
        BUF.with_borrow_mut(|buf| {
            if buf.len() < size as usize {
                buf.resize(size as usize, 0);
            }
            match img.read_into(offset, &mut buf[..size as usize]) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => {
                    // never wrong bytes: the reader gets EIO, the log the why
                    tracing::error!("mount: read of {size} bytes at {offset}: {e}");
                    reply.error(Errno::EIO)
                }
            }
        })
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let Some(img) = lock(&self.handles).get(&u64::from(fh)).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::EINVAL);
        };
        if offset >= img.size() {
            return reply.error(Errno::ENXIO);
        }
        let found = match whence {
            libc::SEEK_DATA => img.seek_data(offset),
            libc::SEEK_HOLE => img.seek_hole(offset).map(Some),
            _ => return reply.error(Errno::EINVAL),
        };
        match found {
            Ok(Some(o)) => reply.offset(o as i64),
            Ok(None) => reply.error(Errno::ENXIO),
            Err(e) => {
                tracing::error!("mount: seek in revision {}: {e}", img.revision.id);
                reply.error(Errno::EIO)
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        lock(&self.handles).remove(&u64::from(fh));
        reply.ok();
    }

    crate::mount::plain_file_answers!();

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 65536, 255, 65536);
    }
}
