//! A file-backed block source for fast tests: the image is a plain file and
//! each snapshot a copy of it. Change detection compares snapshots in 4 KiB
//! units, like Ceph reporting exact extents, and "allocated" means non-zero.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::{Extent, ImageLayout, SourceImage, SourceSnapshot};
use crate::buffers::{AlignedBuf, BufferPool};
use crate::error::{Error, IoContext, Result};

const UNIT: u64 = 4096;

/// An image stored as `<dir>/image`, snapshots as `<dir>/snaps/<name>`.
pub struct FileImage {
    pub dir: PathBuf,
}

impl FileImage {
    pub fn new(dir: impl Into<PathBuf>) -> Result<FileImage> {
        let dir = dir.into();
        std::fs::create_dir_all(dir.join("snaps")).at(&dir)?;
        let image = dir.join("image");
        if !image.exists() {
            File::create(&image).at(&image)?;
        }
        Ok(FileImage { dir })
    }
    pub fn image_path(&self) -> PathBuf {
        self.dir.join("image")
    }
    fn snap_path(&self, name: &str) -> PathBuf {
        self.dir.join("snaps").join(name)
    }
}

pub struct FileSnapshot {
    name: String,
    data: Vec<u8>,
    image: PathBuf,
}

impl SourceImage for FileImage {
    fn create_snapshot(&self, name: &str) -> Result<Box<dyn SourceSnapshot + '_>> {
        let dest = self.snap_path(name);
        if dest.exists() {
            return Err(Error::Invalid(format!("snapshot {name} exists")));
        }
        std::fs::copy(self.image_path(), &dest).at(&dest)?;
        Ok(self.open_snapshot(name)?.expect("just created"))
    }

    fn open_snapshot(&self, name: &str) -> Result<Option<Box<dyn SourceSnapshot + '_>>> {
        let path = self.snap_path(name);
        match std::fs::read(&path) {
            Ok(data) => Ok(Some(Box::new(FileSnapshot {
                name: name.to_string(),
                data,
                image: self.dir.clone(),
            }))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn remove_snapshot(&self, name: &str) -> Result<()> {
        let path = self.snap_path(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
            _ => Ok(()),
        }
    }

    fn snapshot_names(&self) -> Result<Vec<String>> {
        let dir = self.dir.join("snaps");
        let mut names = Vec::new();
        for e in std::fs::read_dir(&dir).at(&dir)? {
            names.push(e.at(&dir)?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn layout(&self) -> Result<ImageLayout> {
        Ok(ImageLayout::default())
    }

    fn client(&self) -> Option<String> {
        None // no cluster, no connection to cut off
    }

    fn evict(&self, _client: &str) -> Result<bool> {
        Ok(false)
    }
}

impl SourceSnapshot for FileSnapshot {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn changed_extents(&self, base: Option<&str>, _whole_object: bool) -> Result<Vec<Extent>> {
        let base_data = match base {
            None => Vec::new(),
            Some(b) => {
                let p = self.image.join("snaps").join(b);
                std::fs::read(&p).at(&p)?
            }
        };
        let mut out: Vec<Extent> = Vec::new();
        let size = self.size();
        let mut off = 0;
        while off < size {
            let end = (off + UNIT).min(size);
            let new = &self.data[off as usize..end as usize];
            let old = base_data.get(off as usize..(end as usize).min(base_data.len()));
            let changed = match old {
                Some(old) if old.len() == new.len() => old != new,
                _ => new.iter().any(|&b| b != 0),
            };
            if changed {
                match out.last_mut() {
                    Some(last) if last.end() == off => last.len += end - off,
                    _ => out.push(Extent::new(off, end - off)),
                }
            }
            off = end;
        }
        Ok(out)
    }

    fn read_extents(
        &self,
        extents: &[Extent],
        _depth: usize,
        pool: &BufferPool,
        sink: &mut dyn FnMut(Extent, AlignedBuf) -> Result<()>,
    ) -> Result<()> {
        super::check_within(extents, self.size(), &self.name)?;
        for e in extents {
            let mut buf = pool.get_to_fill(e.len as usize);
            buf.copy_from_slice(&self.data[e.offset as usize..e.end() as usize]);
            sink(*e, buf)?;
        }
        Ok(())
    }
}

/// Writes `data` into the live image at `offset` (tests).
pub fn write_at(img: &FileImage, offset: u64, data: &[u8]) -> Result<()> {
    let p = img.image_path();
    let f = std::fs::OpenOptions::new().write(true).open(&p).at(&p)?;
    f.write_all_at(data, offset).at(&p)
}

/// Resizes the live image (tests).
pub fn resize(img: &FileImage, size: u64) -> Result<()> {
    let p = img.image_path();
    let f = std::fs::OpenOptions::new().write(true).open(&p).at(&p)?;
    f.set_len(size).at(&p)
}
