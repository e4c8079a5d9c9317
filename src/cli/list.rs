//! `rbdelta list VOLUME [--json]`.

use rbdelta::archive::state::{Trust, VolumeState};
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
        let kind = vol.storage_kind(&r.id)?;
        let parent = match kind {
            rbdelta::archive::StorageKind::Full => None,
            rbdelta::archive::StorageKind::Delta => Some(rbdelta::checksum::to_hex(
                &rbdelta::format::delta::read_header(&vol.delta_path(&r.id))?.base,
            )),
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
