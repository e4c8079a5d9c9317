//! Restoring into an RBD image: a new image with the revision's size (and
//! the source's object size and features when known), written with pipelined
//! AIO. A new image reads as zeros, so only non-zero data is written; an
//! existing image (with `--force`) gets its zero ranges discarded too.
//! A failed restore into a new image removes that image.

use super::RestoreTarget;
use crate::ceph::{AioWriter, Image, IoCtx};
use crate::error::{Error, Result};
use crate::source::ImageLayout;

/// Writes in flight.
const DEPTH: usize = 8;

pub struct RbdTarget {
    ioctx: IoCtx,
    name: String,
    created: bool,
    writer: Option<AioWriter<Box<Image>>>,
}

impl RbdTarget {
    /// Creates `name` in `ioctx`'s pool with `size` bytes. An existing image
    /// is refused unless `force`, then resized and overwritten.
    pub fn create(
        ioctx: &IoCtx,
        name: &str,
        size: u64,
        layout: ImageLayout,
        force: bool,
    ) -> Result<RbdTarget> {
        let exists = ioctx.image_exists(name)?;
        if exists && !force {
            return Err(Error::Invalid(format!(
                "image {}/{name} already exists (use --force to overwrite it)",
                ioctx.pool()
            )));
        }
        if !exists {
            ioctx.create_image(name, size, layout.order, layout.features)?;
        }
        let opened = ioctx.open_image(name).and_then(|img| {
            if exists {
                img.resize(size)?;
            }
            Ok(img)
        });
        let image = match opened {
            Ok(i) => i,
            Err(e) => {
                if !exists {
                    let _ = ioctx.remove_image(name);
                }
                return Err(e);
            }
        };
        Ok(RbdTarget {
            ioctx: ioctx.clone(),
            name: name.to_string(),
            created: !exists,
            writer: Some(image.into_writer(DEPTH)),
        })
    }

    fn writer(&mut self) -> &mut AioWriter<Box<Image>> {
        self.writer
            .as_mut()
            .expect("writer lives until finish or abort")
    }
}

impl RestoreTarget for RbdTarget {
    fn is_fresh(&self) -> bool {
        self.created
    }

    fn write(&mut self, offset: u64, data: Vec<u8>) -> Result<()> {
        self.writer().submit(offset, data)
    }

    fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        if self.created {
            return Ok(());
        }
        self.writer().image().discard(offset, len)
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let w = self.writer.take().expect("writer lives until finish");
        match w.finish() {
            Ok(()) => Ok(()),
            Err(e) => {
                self.abort();
                Err(e)
            }
        }
    }

    fn abort(mut self: Box<Self>) {
        drop(self.writer.take()); // waits for writes in flight, closes the image
        if self.created {
            if let Err(e) = self.ioctx.remove_image(&self.name) {
                tracing::warn!("could not remove partial image {}: {e}", self.name);
            }
        }
    }

    fn describe(&self) -> String {
        format!("image {}/{}", self.ioctx.pool(), self.name)
    }
}
