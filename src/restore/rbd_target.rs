//! Restoring into an RBD image: a new image with the revision's size (and
//! the source's object size and features when known), written with pipelined
//! AIO. A new image reads as zeros, so only non-zero data is written; an
//! existing image (with `--force`, or in place) gets its zero ranges zeroed
//! too (`write_zeroes`, which deallocates where whole objects allow).
//! A new image is written under a name that says so and renamed into place
//! once complete ([`super::partial`]); a failed restore removes it, or
//! keeps it under a name that says it is partial.

use std::time::Duration;

use super::{partial, RestoreTarget, TargetOptions};
use crate::buffers::AlignedBuf;
use crate::ceph::{AioWriter, Image, IoCtx};
use crate::error::{Error, Result};
use crate::source::ImageLayout;

/// Writes in flight: 16 keeps a memstore OSD as busy as `rbd bench
/// --io-threads 16` does; 8 left it a third slower (bench/restore.sh).
const DEPTH: usize = 16;

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
    /// The name written under: `name` itself when overwriting (`--force`),
    /// else a partial name renamed to `name` at the end.
    work: String,
    created: bool,
    /// Rolled back where it stands ([`super::in_place`]).
    in_place: bool,
    keep_partial: bool,
    writer: Option<AioWriter<Box<Image>>>,
}

impl RbdTarget {
    /// Creates `name` in `ioctx`'s pool with `size` bytes (under a partial
    /// name until [`RestoreTarget::finish`]). An existing image is refused
    /// unless `opts.force`, then claimed (see `restore::claim`: nobody else
    /// writes it meanwhile), resized and overwritten in place.
    pub fn create(
        ioctx: &IoCtx,
        name: &str,
        size: u64,
        layout: ImageLayout,
        opts: &TargetOptions,
    ) -> Result<RbdTarget> {
        let exists = ioctx.image_exists(name)?;
        if exists && !opts.force {
            return Err(Error::Invalid(format!(
                "image {}/{name} already exists (use --force to overwrite it)",
                ioctx.pool()
            )));
        }
        let work = if exists {
            name.to_string()
        } else {
            partial::clear_images(ioctx, name)?;
            let work = partial::restoring_image(ioctx, name);
            ioctx.create_image(&work, size, layout.order, layout.features)?;
            work
        };
        let opened = ioctx.open_image(&work).and_then(|img| {
            if exists {
                let spec = format!("{}/{name}", ioctx.pool());
                super::claim::claim(&img, ioctx, &spec, opts.force_unlocked)?;
                img.resize(size)?;
            }
            Ok(img)
        });
        let image = match opened {
            Ok(i) => i,
            Err(e) => {
                if !exists {
                    let _ = ioctx.remove_image(&work);
                }
                return Err(e);
            }
        };
        Ok(RbdTarget {
            ioctx: ioctx.clone(),
            name: name.to_string(),
            work,
            created: !exists,
            in_place: false,
            keep_partial: opts.keep_partial,
            writer: Some(image.into_writer(DEPTH).with_retries(opts.retry_for)),
        })
    }

    /// Writes into `image` (image `name`, already open, sized and claimed
    /// by an in-place restore) where it stands.
    pub fn over(ioctx: &IoCtx, name: &str, image: Image, opts: &TargetOptions) -> RbdTarget {
        RbdTarget {
            ioctx: ioctx.clone(),
            name: name.to_string(),
            work: name.to_string(),
            created: false,
            keep_partial: false,
            in_place: true,
            writer: Some(image.into_writer(DEPTH).with_retries(opts.retry_for)),
        }
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

    fn read_lanes(&self) -> usize {
        super::reader::FEW_LANES
    }

    fn write(&mut self, offset: u64, data: AlignedBuf) -> Result<Option<AlignedBuf>> {
        self.writer().submit(offset, data)
    }

    fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        if self.created {
            return Ok(());
        }
        self.writer().image().write_zeroes(offset, len)
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let w = self.writer.take().expect("writer lives until finish");
        let done = w.finish().and_then(|()| {
            crate::fault::point("restore: image written");
            if self.created {
                self.ioctx.rename_image(&self.work, &self.name)?;
            }
            Ok(())
        });
        match done {
            Ok(()) => Ok(()),
            Err(e) => Err(match self.abort() {
                Some(note) => Error::Invalid(format!("{e}; {note}")),
                None => e,
            }),
        }
    }

    fn abort(mut self: Box<Self>) -> Option<String> {
        drop(self.writer.take()); // waits for writes in flight, closes the image
        let pool = self.ioctx.pool().to_string();
        if !self.created {
            return Some(format!(
                "{pool}/{} is partly overwritten: restore it again before use",
                self.name
            ));
        }
        if self.keep_partial {
            let kept = partial::kept_image(&self.name);
            return Some(match self.ioctx.rename_image(&self.work, &kept) {
                Ok(()) => format!("the partial image was kept as {pool}/{kept} (--keep-partial)"),
                Err(e) => format!(
                    "the partial image was kept as {pool}/{} (--keep-partial; {e})",
                    self.work
                ),
            });
        }
        remove_with_deadline(&self.ioctx, &self.work, CLEANUP_DEADLINE);
        None
    }

    fn describe(&self) -> String {
        let how = if self.in_place { " (in place)" } else { "" };
        format!("image {}/{}{how}", self.ioctx.pool(), self.name)
    }
}
