//! Turning config entries into volumes: listed images as they are, pool
//! selections by listing the pool now. Resolution never fails as a whole; an
//! entry that cannot be resolved (pool missing, name collision) becomes an
//! [`Unresolved`] that the run reports as a failed volume next to the
//! successful ones.

use super::{Config, Entry, Settings, Volume};
use crate::archive::valid_volume_name;
use crate::error::Result;

/// The volumes of a config at one moment.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub volumes: Vec<Volume>,
    pub unresolved: Vec<Unresolved>,
}

/// An entry, or one image of a selection, that yields no volume.
#[derive(Debug, Clone)]
pub struct Unresolved {
    /// The volume name when known, else a description of the entry.
    pub name: String,
    pub error: String,
    /// Config line of the entry.
    pub line: u64,
    /// Whether trying again later may help (a pool listing that timed out).
    pub transient: bool,
}

impl Config {
    /// Resolves every entry; `list_pool` lists a pool's image names.
    pub fn resolve(&self, list_pool: &mut dyn FnMut(&str) -> Result<Vec<String>>) -> Resolved {
        let mut out = Resolved::default();
        let listed: Vec<(String, String)> = self
            .listed()
            .map(|v| (v.pool.clone(), v.image.clone()))
            .collect();
        for entry in &self.entries {
            match entry {
                Entry::Image(v) => out.push(v.clone(), self),
                Entry::Pool(sel) => {
                    let images = match list_pool(&sel.pool) {
                        Ok(mut images) => {
                            images.sort();
                            images
                        }
                        Err(e) => {
                            out.unresolved.push(Unresolved {
                                name: format!(
                                    "pool {} (selection at {}:{})",
                                    sel.pool, self.origin, sel.line
                                ),
                                error: format!("cannot list pool {}: {e}", sel.pool),
                                line: sel.line,
                                transient: e.is_transient(),
                            });
                            continue;
                        }
                    };
                    for image in images {
                        let taken = listed.iter().any(|(p, i)| *p == sel.pool && *i == image);
                        let wanted = sel.include.iter().any(|g| g.matches(&image))
                            && !sel.exclude.iter().any(|g| g.matches(&image));
                        if taken || !wanted {
                            continue;
                        }
                        let name = sel
                            .name
                            .replace("{image}", &image)
                            .replace("{pool}", &sel.pool);
                        if !valid_volume_name(&name) {
                            out.unresolved.push(Unresolved {
                                error: format!(
                                    "image {}/{image} gives volume name {name:?}, which is not a safe directory name; set name: in the selection at {}:{}",
                                    sel.pool, self.origin, sel.line
                                ),
                                name,
                                line: sel.line,
                                transient: false,
                            });
                            continue;
                        }
                        let vol = Volume {
                            name,
                            pool: sel.pool.clone(),
                            image,
                            settings: sel.settings.clone(),
                            line: sel.line,
                        };
                        out.push(vol, self);
                    }
                }
            }
        }
        out
    }

    /// The settings the config applies to volume `name` (listed, or matched by
    /// a selection through its recorded source), or `None` if it no longer
    /// backs it up.
    pub fn settings_for(&self, name: &str, source: Option<&str>) -> Option<&Settings> {
        if let Some(v) = self.listed().find(|v| v.name == name) {
            return Some(&v.settings);
        }
        let selections = self.entries.iter().filter_map(|e| match e {
            Entry::Pool(s) => Some(s),
            Entry::Image(_) => None,
        });
        let mut first = None;
        for sel in selections {
            first.get_or_insert(sel);
            if let Some((pool, image)) = source.and_then(|s| s.split_once('/')) {
                let named = sel.name.replace("{image}", image).replace("{pool}", pool) == name;
                if pool == sel.pool
                    && named
                    && sel.include.iter().any(|g| g.matches(image))
                    && !sel.exclude.iter().any(|g| g.matches(image))
                {
                    return Some(&sel.settings);
                }
            }
        }
        // A volume with no revision yet (say, it failed at once): if the config
        // has selections, it most likely came from one.
        match source {
            None => first.map(|s| &s.settings),
            Some(_) => None,
        }
    }

    /// Resolves only the listed images (no cluster needed); errors if the
    /// config has selections, whose images only the cluster knows.
    pub fn resolve_listed(&self) -> Resolved {
        Resolved {
            volumes: self.listed().cloned().collect(),
            unresolved: Vec::new(),
        }
    }
}

impl Resolved {
    fn push(&mut self, v: Volume, cfg: &Config) {
        if let Some(first) = self.volumes.iter().find(|o| o.name == v.name) {
            self.unresolved.push(Unresolved {
                error: format!(
                    "image {} (entry at {}:{}) has the same volume name as image {} (entry at line {}); set name: to tell them apart",
                    v.source_name(),
                    cfg.origin,
                    v.line,
                    first.source_name(),
                    first.line
                ),
                name: v.name,
                line: v.line,
                transient: false,
            });
            return;
        }
        self.volumes.push(v);
    }

    /// The volume called `name`.
    pub fn get(&self, name: &str) -> Option<&Volume> {
        self.volumes.iter().find(|v| v.name == name)
    }
}
