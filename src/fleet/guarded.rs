//! A [`SourceImage`] decorator that adds what a fleet run needs around any
//! block source without the backup engine knowing: the hooks around the
//! snapshot, bandwidth limits on every read, and a cancel flag checked
//! between reads so a daemon shutdown aborts a backup cleanly (the engine
//! then removes its snapshot and temp files, and no revision appears).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::hooks::run_hook;
use crate::buffers::{AlignedBuf, BufferPool};
use crate::config::Volume;
use crate::error::{Error, Result};
use crate::source::{Extent, ImageLayout, SourceImage, SourceSnapshot};
use crate::throttle::Throttle;

/// Controls shared by the source and its snapshots.
#[derive(Clone, Default)]
pub struct Guards {
    pub throttles: Vec<Arc<Throttle>>,
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Guards {
    fn check(&self) -> Result<()> {
        match &self.cancel {
            Some(c) if c.load(Ordering::Relaxed) => Err(Error::Cancelled("shutting down".into())),
            _ => Ok(()),
        }
    }
}

pub struct Guarded<'a, I> {
    pub inner: I,
    pub volume: &'a Volume,
    pub guards: Guards,
}

impl<I: SourceImage> SourceImage for Guarded<'_, I> {
    fn create_snapshot(&self, name: &str) -> Result<Box<dyn SourceSnapshot + '_>> {
        self.guards.check()?;
        let hooks = &self.volume.settings.hooks;
        let pre = match &hooks.pre {
            Some(cmd) => run_hook(cmd, self.volume, "pre", hooks.timeout),
            None => Ok(()),
        };
        let snap = pre.and_then(|()| self.inner.create_snapshot(name));
        // The post hook runs whenever the pre hook ran, even after a
        // failure: a guest left frozen is worse than a failed backup.
        if let Some(cmd) = &hooks.post {
            let post = run_hook(cmd, self.volume, "post", hooks.timeout);
            if let (Ok(_), Err(e)) = (&snap, post) {
                return Err(e);
            }
        }
        Ok(Box::new(GuardedSnapshot {
            inner: snap?,
            guards: self.guards.clone(),
        }))
    }

    fn open_snapshot(&self, name: &str) -> Result<Option<Box<dyn SourceSnapshot + '_>>> {
        Ok(self.inner.open_snapshot(name)?.map(|s| {
            Box::new(GuardedSnapshot {
                inner: s,
                guards: self.guards.clone(),
            }) as Box<dyn SourceSnapshot + '_>
        }))
    }

    fn remove_snapshot(&self, name: &str) -> Result<()> {
        self.inner.remove_snapshot(name)
    }

    fn snapshot_names(&self) -> Result<Vec<String>> {
        self.inner.snapshot_names()
    }

    fn client(&self) -> Option<String> {
        self.inner.client()
    }

    fn evict(&self, client: &str) -> Result<bool> {
        self.inner.evict(client)
    }

    fn layout(&self) -> Result<ImageLayout> {
        self.inner.layout()
    }
}

struct GuardedSnapshot<'a> {
    inner: Box<dyn SourceSnapshot + 'a>,
    guards: Guards,
}

impl SourceSnapshot for GuardedSnapshot<'_> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn changed_extents(&self, base: Option<&str>, whole_object: bool) -> Result<Vec<Extent>> {
        self.guards.check()?;
        self.inner.changed_extents(base, whole_object)
    }
    fn read_extents(
        &self,
        extents: &[Extent],
        depth: usize,
        pool: &BufferPool,
        sink: &mut dyn FnMut(Extent, AlignedBuf) -> Result<()>,
    ) -> Result<()> {
        self.inner
            .read_extents(extents, depth, pool, &mut |e, buf| {
                self.guards.check()?;
                for t in &self.guards.throttles {
                    t.take(e.len);
                }
                sink(e, buf)
            })
    }
}
