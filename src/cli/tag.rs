//! `rbdelta tag VOLUME REV NAME...` and `rbdelta untag VOLUME REV NAME...`:
//! tags protect a revision from pruning.

use super::{open_volume, Ctx, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    volume: String,
    /// Revision id, unique prefix or `latest`.
    revision: String,
    /// Tag names (letters, digits, - _ . : @ +).
    #[arg(required = true)]
    names: Vec<String>,
}

/// A tag name: short, printable, no separators used in listings.
pub fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:@+".contains(c))
}

pub fn run(ctx: &Ctx, a: Args, add: bool) -> Result<(), Failure> {
    if let Some(bad) = a.names.iter().find(|t| !valid_tag(t)) {
        return Err(Failure::usage(format!(
            "{bad:?} is not a tag name (letters, digits, - _ . : @ +)"
        )));
    }
    let cfg = ctx.config()?;
    let vol = open_volume(&cfg, &a.volume)?;
    let rev = vol.find_revision(&a.revision)?;
    let tags = rbdelta::history::edit_tags(&vol, &rev.id, |tags| {
        for t in &a.names {
            if add && !tags.contains(t) {
                tags.push(t.clone());
            }
            if !add {
                tags.retain(|x| x != t);
            }
        }
    })?;
    println!(
        "{}: revision {} tags: {}",
        a.volume,
        rev.short(),
        if tags.is_empty() {
            "-".into()
        } else {
            tags.join(",")
        }
    );
    Ok(())
}
