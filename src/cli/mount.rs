//! `rbdelta mount MOUNTPOINT [VOLUME...] [--allow-root | --group GROUP]`:
//! the revisions of the volumes as read-only image files, until Ctrl-C or
//! SIGTERM.

use std::path::PathBuf;

use rbdelta::archive::list_volumes;
use rbdelta::mount::{group_id, run as mount, Access, MountOptions};

use super::{open_volume, Ctx, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// An empty directory.
    mountpoint: PathBuf,
    /// Volumes to show [default: every volume in the archive].
    volumes: Vec<String>,
    /// Let root read the mount as well (a VM manager running as root).
    #[arg(long, conflicts_with = "group")]
    allow_root: bool,
    /// Let the members of GROUP (a name or a number) read the mount:
    /// files 0440 and directories 0550 of that group.
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// Refused: it opened every volume to every local user. Use
    /// --allow-root or --group GROUP.
    #[arg(long, hide = true)]
    allow_other: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    if a.allow_other {
        return Err(Failure::usage(
            "--allow-other is refused: it would let every local user read every volume; \
             choose --allow-root (root too) or --group GROUP (that group's members)",
        ));
    }
    let access = match (&a.group, a.allow_root) {
        (Some(g), _) => Access::Group(group_id(g).map_err(Failure::usage)?),
        (None, true) => Access::Root,
        (None, false) => Access::Owner,
    };
    let cfg = ctx.config()?;
    let volumes = if a.volumes.is_empty() {
        list_volumes(&cfg.archive)
    } else {
        for v in &a.volumes {
            open_volume(&cfg, v).map_err(Failure::usage)?;
        }
        a.volumes.clone()
    };
    let opts = MountOptions { access };
    let shown = a.mountpoint.display().to_string();
    let n = volumes.len();
    mount(&cfg.archive, volumes, &a.mountpoint, &opts, || {
        eprintln!(
            "rbdelta: {n} volume(s) mounted read-only at {shown}; Ctrl-C or SIGTERM unmounts"
        );
    })
    .map_err(|e| match e {
        rbdelta::error::Error::Invalid(_) => Failure::usage(e),
        e => e.into(),
    })?;
    eprintln!("rbdelta: {shown} unmounted");
    Ok(())
}
