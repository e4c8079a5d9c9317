//! Claiming an existing image before a restore writes into it (in place,
//! or over it with `--force`), so that nobody else writes meanwhile.
//!
//! What it promises: the restore is refused while another client holds
//! the image's exclusive lock or has it open (a VM, a mapping). Otherwise
//! it takes the lock and checks again under it: a client that opened the
//! image between the first check and the lock is seen then, the lock let
//! go and the restore refused. From then until the image is closed,
//! librbd refuses other clients the lock (it was taken with
//! `rbd_lock_acquire`), so their writes fail with EROFS. An image without
//! the exclusive-lock feature has no such lock: nothing would stop a VM
//! that starts during the restore from writing, so it is refused unless
//! the caller accepts that (`--force-unlocked`).

use crate::ceph::{features, Image, IoCtx};
use crate::error::{Error, Result};

/// Refuses an image another client uses, takes its exclusive lock for as
/// long as `image` stays open, and checks again under the lock. Without
/// the exclusive-lock feature, refused unless `unlocked`.
pub(crate) fn claim(image: &Image, ioctx: &IoCtx, spec: &str, unlocked: bool) -> Result<()> {
    // before locking: librbd would ask a running VM to hand its lock over
    if let Some(who) = user(image, ioctx, "")? {
        return Err(in_use(spec, &who));
    }
    if image.features()? & features::EXCLUSIVE_LOCK == 0 {
        if !unlocked {
            return Err(Error::Invalid(format!(
                "image {spec} has no exclusive-lock feature: nothing would stop a VM that starts during the restore from writing; \
                 enable it with `rbd feature enable {spec} exclusive-lock` or pass --force-unlocked"
            )));
        }
        tracing::warn!(
            "image {spec} has no exclusive-lock feature: restoring without a lock (--force-unlocked); \
             keep every VM that uses it stopped until the restore ends"
        );
        return Ok(());
    }
    crate::fault::pause("claim: checked");
    image
        .lock_acquire()
        .map_err(|e| match user(image, ioctx, "") {
            Ok(Some(who)) => in_use(spec, &who),
            _ => e,
        })?;
    // Under the lock: a client that opened the image since the first check
    // shows here, and from now on no other client can write it.
    if let Some(who) = user(image, ioctx, " while the restore was starting")? {
        let _ = image.lock_release();
        return Err(in_use(spec, &who));
    }
    Ok(())
}

fn in_use(spec: &str, who: &str) -> Error {
    Error::Invalid(format!(
        "image {spec} is in use: {who}; stop the VM (or unmap the image) before restoring into it"
    ))
}

/// Who other than this client holds the image's lock or watches it, if
/// anyone (`when` is said after "has it open").
fn user(image: &Image, ioctx: &IoCtx, when: &str) -> Result<Option<String>> {
    let me = ioctx.client();
    let watchers = image.watchers()?;
    // librbd names a lock owner by address; its watch says which client.
    let who = |addr: &str| match watchers.iter().find(|w| w.0 == addr) {
        Some((_, id)) => format!("client.{id} at {addr}"),
        None => addr.to_string(),
    };
    let mine = |id: &i64| format!("client.{id}") == me;
    if let Some(owner) = image.lock_owners()?.first() {
        let own = watchers.iter().any(|(a, id)| a == owner && mine(id));
        if !own {
            return Ok(Some(format!("{} holds its exclusive lock", who(owner))));
        }
    }
    let others: Vec<String> = watchers
        .iter()
        .filter(|(_, id)| !mine(id))
        .map(|(addr, _)| who(addr))
        .collect();
    Ok((!others.is_empty()).then(|| format!("{} has it open{when}", others.join(", "))))
}
