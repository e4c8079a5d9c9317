//! Restoring into an RBD image: a new image with the revision's size (and
//! the source's object size and features when known), written with pipelined
//! AIO. A new image reads as zeros, so only non-zero data is written; an
//! existing image (with `--force`) gets its zero ranges discarded too.
//! A failed restore into a new image removes that image.

use std::time::Duration;

use super::RestoreTarget;
use crate::ceph::{AioWriter, Image, IoCtx};
use crate::error::{Error, Result};
use crate::source::ImageLayout;

/// Writes in flight.
const DEPTH: usize = 8;

/// How long a failed restore may spend removing its partial image. Removal
/// deletes every object; on a sick cluster each delete waits for the client
/// timeout, which would turn one failure into hours of waiting.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(60);

/// Removes image `name`, giving up (with a warning naming the image) after
/// `deadline`; the removal thread is left to the process's exit.
fn remove_with_deadline(ioctx: &IoCtx, name: &str, deadline: Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let (io, n) = (ioctx.clone(), name.to_string());
    std::thread::spawn(move || {
        let _ = tx.send(io.remove_image(&n));
    });
    let what = format!("{}/{name}", ioctx.pool());
    match rx.recv_timeout(deadline) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("could not remove the partial image {what}: {e}"),
        Err(_) => tracing::warn!(
            "gave up removing the partial image {what} after {deadline:?}: remove it by hand"
        ),
    }
}

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

    fn write(&mut self, offset: u64, data: Vec<u8>) -> Result<Option<Vec<u8>>> {
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
            remove_with_deadline(&self.ioctx, &self.name, CLEANUP_DEADLINE);
        }
    }

    fn describe(&self) -> String {
        format!("image {}/{}", self.ioctx.pool(), self.name)
    }
}
