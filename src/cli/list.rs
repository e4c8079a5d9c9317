//! `rbdelta list VOLUME [--json]`.

use rbdelta::archive::state::{Trust, VolumeState};
use rbdelta::archive::{StorageKind, VolumeDir};
use rbdelta::error::Error;
use rbdelta::format::delta::read_header;
use rbdelta::text::prefix;
use serde::Serialize;

use super::{open_volume, Ctx, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Volume name from the config.
    volume: String,
    /// Print a JSON array.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Row {
    id: String,
    created: String,
    size: u64,
    kind: String,
    parent: Option<String>,
    previous: Option<String>,
    snapshot: Option<String>,
    checksum: String,
    tags: Vec<String>,
    trust: String,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let cfg = ctx.config()?;
    let vol = open_volume(&cfg, &a.volume)?;
    let state = VolumeState::load(&vol.state_path())?;
    let mut rows = Vec::new();
    for r in vol.revisions()? {
        // `list` takes no lock: a prune, merge or synthetic full may remove
        // or replace this revision's files while it looks.
        let Some((kind, parent)) = storage(&vol, &r.id)? else {
            continue; // removed since the listing
        };
        let st = state.get(&r.id);
        rows.push(Row {
            id: r.id.clone(),
            created: r.manifest.created.clone(),
            size: r.manifest.size,
            kind: kind.as_str().into(),
            parent,
            previous: r.manifest.previous.clone(),
            snapshot: st.snapshot.clone(),
            checksum: r.manifest.checksum.clone(),
            tags: st.tags.clone(),
            trust: match st.trust {
                Trust::Trusted => "trusted".into(),
                Trust::Verified { at } => format!("verified {at}"),
                Trust::Distrusted { reason } => format!("distrusted: {reason}"),
            },
        });
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut table = vec![[
        "ID", "CREATED", "KIND", "SIZE", "PARENT", "TRUST", "TAGS", "SNAPSHOT",
    ]
    .map(String::from)
    .to_vec()];
    for r in rows {
        table.push(vec![
            prefix(&r.id, 12).to_string(),
            prefix(&r.created, 19).to_string(),
            r.kind,
            r.size.to_string(),
            r.parent
                .as_deref()
                .map_or("-".into(), |p| prefix(p, 12).to_string()),
            match r.trust.split_once(' ') {
                Some(("distrusted:", _)) => "DISTRUSTED".into(),
                Some((state, _)) => state.to_string(),
                None => r.trust.clone(),
            },
            if r.tags.is_empty() {
                "-".into()
            } else {
                r.tags.join(",")
            },
            r.snapshot.unwrap_or_else(|| "-".into()),
        ]);
    }
    print!("{}", super::table::render(&table));
    Ok(())
}

/// How `id` is stored and, for a delta, its base; None once the revision
/// is gone. A file replaced between two looks (a delta turned into a
/// synthetic full) is looked at again.
fn storage(vol: &VolumeDir, id: &str) -> anyhow::Result<Option<(StorageKind, Option<String>)>> {
    let mut tries = 0;
    loop {
        let found = vol.storage_kind(id).and_then(|kind| match kind {
            StorageKind::Full => Ok((kind, None)),
            StorageKind::Delta => read_header(&vol.delta_path(id))
                .map(|h| (kind, Some(rbdelta::checksum::to_hex(&h.base)))),
        });
        match found {
            Ok(s) => return Ok(Some(s)),
            Err(Error::Removed(_)) => return Ok(None),
            Err(e) if e.is_not_found() && tries < 3 => tries += 1,
            Err(e) => return Err(e.into()),
        }
    }
}
