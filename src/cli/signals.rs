//! SIGTERM and SIGINT for one-shot commands: the first asks running jobs to
//! stop cleanly (backups abort at their next read, remove their snapshot,
//! and post hooks still run); a second one exits at once, which the
//! archive survives too (it is crash-safe), but a hook may be cut short.
//!
//! The signals are blocked in every thread (set before any thread starts,
//! librados' included) and taken by one thread with `sigwait`, so no code
//! runs in signal-handler context.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Sets `flag` on the first SIGTERM/SIGINT (saying `announce` on stderr,
/// if given); exits 130 on the second. Call before starting any thread.
pub fn stop_on_terminate(flag: Arc<AtomicBool>, announce: Option<&'static str>) {
    // SAFETY: plain libc signal-set manipulation on local storage; the mask
    // applies to this thread and is inherited by threads it starts later.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || {
        let mut first = true;
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is an initialised signal set; `sig` is a valid out-pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            if first {
                if let Some(what) = announce {
                    eprintln!("rbdelta: stopping: {what} (signal again to exit at once)");
                }
                flag.store(true, Ordering::Relaxed);
                first = false;
            } else {
                std::process::exit(130);
            }
        }
    });
}
