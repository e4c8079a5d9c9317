//! This host and its processes: how rbdelta tells that what a process left
//! behind (a backup's intent and image lock, a restore's partial image or
//! file) belongs to one that is gone, rather than to one still running;
//! and, when several backup hosts share one fleet, this host's node name.

use std::sync::OnceLock;

static NODE: OnceLock<String> = OnceLock::new();

/// Names this process's node (once, at start; a later call with another
/// name fails). From then on the logs it appends to and the daemon's
/// files are the node's own (see [`crate::archive::oplog::own_path`]).
pub fn set_node(name: &str) -> crate::error::Result<()> {
    if !valid_node_name(name) {
        return Err(crate::error::Error::Invalid(format!(
            "node name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
        )));
    }
    let set = NODE.get_or_init(|| name.to_string());
    if set != name {
        return Err(crate::error::Error::Invalid(format!(
            "node name {name:?}: this process is already node {set:?}"
        )));
    }
    Ok(())
}

/// This process's node, if the fleet is shared by several hosts.
pub fn node() -> Option<&'static str> {
    NODE.get().map(String::as_str)
}

/// Whether `name` can name a node (and so be part of a file name).
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Starts `program args…` as one of rbdelta's own worker processes (this
/// binary's hidden subcommands): stdin and stdout piped, stderr shared, in
/// a process group of its own (a terminal's Ctrl-C reaches the parent only,
/// which tells the worker itself), as this node (`RBDELTA_NODE`), and
/// dying with this process (`PR_SET_PDEATHSIG`), even if this process died
/// while it started.
pub fn spawn_worker(
    program: &std::path::Path,
    args: &[String],
) -> crate::error::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let mut cmd = std::process::Command::new(program);
    cmd.arg0("rbdelta")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    if let Some(n) = node() {
        cmd.env("RBDELTA_NODE", n); // it logs as this node
    }
    let parent = std::process::id();
    // SAFETY: runs in the forked child before exec; prctl and getppid
    // are async-signal-safe and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                // The parent died before the line above took effect.
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| crate::error::Error::io(program.display().to_string(), e))
}

/// This host's name, as it may appear in an image name.
pub fn host() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

/// The name this process puts in the names of what it leaves behind in a
/// shared place: its node name when it has one, else the host name.
pub fn here() -> String {
    node().map_or_else(host, str::to_string)
}

/// What became of the process `pid` of host `host` that left something
/// behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A process of this host that no longer runs: its leftovers may go.
    Gone,
    /// It still runs here (this process included).
    Running,
    /// It ran on another host: from here, nobody can tell.
    Elsewhere,
}

/// What became of process `pid` of `host_name`: this host's name, or this
/// process's node name (see [`here`]), mean this host.
pub fn owner(host_name: &str, pid: u32) -> Owner {
    if host_name != host() && Some(host_name) != node() {
        Owner::Elsewhere
    } else if alive(pid) {
        Owner::Running
    } else {
        Owner::Gone
    }
}

/// Whether process `pid` runs (on this host). A zombie does not: it is
/// dead, only not yet reaped (by a parent that died too, or a subreaper
/// that waits for something else).
pub fn alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(p, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    // "pid (comm) S ...": the state follows the last ')'
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zombie_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // not reaped yet: a zombie once it has exited
        let t = std::time::Instant::now();
        while alive(pid) {
            assert!(t.elapsed().as_secs() < 10, "{pid} still alive");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap()
            .contains(") Z"));
        child.wait().unwrap();
        assert!(!alive(pid));
        assert!(alive(std::process::id()));
    }

    #[test]
    fn owners_here_elsewhere_and_gone() {
        let me = std::process::id();
        assert_eq!(owner(&host(), me), Owner::Running);
        assert_eq!(owner("another-host.example", me), Owner::Elsewhere);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(owner(&host(), pid), Owner::Gone);
    }
}
