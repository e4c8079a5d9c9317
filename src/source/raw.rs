//! A raw image file as a block source: `rbd export`'s output, another
//! tool's restore, `qemu-img convert -O raw`. Holes are skipped
//! (`SEEK_DATA`/`SEEK_HOLE`), so a sparse file reads only its data;
//! `rbdelta import` turns it into a full revision.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{Extent, SourceSnapshot};
use crate::archive::sparse::next_data;
use crate::buffers::{AlignedBuf, BufferPool};
use crate::error::{Error, IoContext, Result};

pub struct RawFile {
    file: File,
    path: PathBuf,
    size: u64,
    /// The snapshot name the revision records.
    name: String,
}

impl RawFile {
    /// Opens `path`, a regular file, as the image at snapshot `name`.
    pub fn open(path: &Path, name: &str) -> Result<RawFile> {
        let file = File::open(path).at(path)?;
        let meta = file.metadata().at(path)?;
        if !meta.is_file() {
            return Err(Error::Invalid(format!(
                "{} is not a regular file (a raw image file is wanted)",
                path.display()
            )));
        }
        Ok(RawFile {
            file,
            path: path.to_path_buf(),
            size: meta.len(),
            name: name.to_string(),
        })
    }
}

impl SourceSnapshot for RawFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn changed_extents(&self, base: Option<&str>, _whole_object: bool) -> Result<Vec<Extent>> {
        if let Some(b) = base {
            return Err(Error::Invalid(format!(
                "{} is a whole image, not a change since snapshot {b}",
                self.path.display()
            )));
        }
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some((start, end)) = next_data(&self.file, pos, self.size).at(&self.path)? {
            if start >= self.size {
                break;
            }
            out.push(Extent::new(start, end - start));
            pos = end;
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
        super::check_within(extents, self.size, &self.path.display())?;
        for &e in extents {
            let mut buf = pool.get_to_fill(e.len as usize);
            self.file.read_exact_at(&mut buf, e.offset).at(&self.path)?;
            sink(e, buf)?;
        }
        Ok(())
    }
}
