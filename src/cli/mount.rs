//! `rbdelta mount MOUNTPOINT [VOLUME...] [--allow-other]`: the revisions
//! of the volumes as read-only image files, until Ctrl-C or SIGTERM.

use std::path::PathBuf;

use rbdelta::archive::list_volumes;
use rbdelta::mount::{run as mount, MountOptions};

use super::{open_volume, Ctx, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// An empty directory.
    mountpoint: PathBuf,
    /// Volumes to show [default: every volume in the archive].
    volumes: Vec<String>,
    /// Let other users (root, a VM manager) read the mount.
    #[arg(long)]
    allow_other: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let cfg = ctx.config()?;
    let volumes = if a.volumes.is_empty() {
        list_volumes(&cfg.archive)
    } else {
        for v in &a.volumes {
            open_volume(&cfg, v).map_err(Failure::usage)?;
        }
        a.volumes.clone()
    };
    let opts = MountOptions {
        allow_other: a.allow_other,
    };
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
