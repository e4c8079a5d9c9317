//! `rbdelta config check [--cluster]`: validate the config file and, with
//! `--cluster`, that every pool and image it names exists; in a fleet
//! shared by several nodes, also which nodes are live and which volumes
//! each one backs up.

use rbdelta::config::Entry;
use rbdelta::fleet::Fleet;

use super::{table, Ctx, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Validate the config; errors name the file, line and key.
    Check {
        /// Also resolve pool selections and check every pool and image exists.
        #[arg(long)]
        cluster: bool,
    },
}

pub fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let Command::Check { cluster } = a.command;
    let cfg = ctx.config()?;
    let images = cfg.listed().count();
    let selections = cfg.entries.len() - images;
    let origin = &cfg.origin;
    if !cluster {
        println!(
            "{origin}: ok: {images} image(s), {selections} pool selection(s), archive {}",
            cfg.archive.display()
        );
        return Ok(());
    }
    let fleet = Fleet::new(&cfg);
    let client = fleet.client()?;
    let resolved = fleet.resolve(&cfg);
    let mut problems: Vec<String> = resolved
        .unresolved
        .iter()
        .map(|u| format!("{}: {}", u.name, u.error))
        .collect();
    // In a shared fleet: the live nodes, and who backs up what.
    let live: Option<Vec<String>> = match &cfg.nodes {
        None => None,
        // an archive no node has used yet has no fleet id: nobody is live
        Some(n) => match rbdelta::archive::global::read_fleet_id(&cfg.archive).and_then(|id| {
            let Some(id) = id else { return Ok(Vec::new()) };
            client
                .ioctx(&n.lease_pool)
                .and_then(|io| rbdelta::fleet::nodes::members(&io, &id, &n.config_digest))
                .map(|m| {
                    for s in &m.strays {
                        eprintln!("rbdelta: warning: {s}");
                    }
                    m.nodes
                })
        }) {
            Ok(live) => Some(live),
            Err(e) => {
                problems.push(format!("{origin}: nodes.lease-pool {}: {e}", n.lease_pool));
                Some(Vec::new())
            }
        },
    };
    let names: Vec<&str> = resolved.volumes.iter().map(|v| v.name.as_str()).collect();
    let live_refs: Vec<&str> = live.iter().flatten().map(String::as_str).collect();
    let owners = rbdelta::fleet::assign::assign(&names, &live_refs);
    let mut header = vec!["VOLUME", "SOURCE", "SCHEDULE", "FROM"];
    if live.is_some() {
        header.push("NODE");
    }
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    // One listing per pool, rather than opening every image: opening and
    // closing many images over one connection is what upsets librbd 16.2
    // (see rbdelta::fleet::worker).
    let mut listed: std::collections::HashMap<&str, Result<Vec<String>, String>> =
        Default::default();
    for v in &resolved.volumes {
        let images = listed.entry(&v.pool).or_insert_with(|| {
            client
                .ioctx(&v.pool)
                .and_then(|io| io.list_images())
                .map_err(|e| e.to_string())
        });
        let exists = match images {
            Ok(names) => Ok(names.binary_search(&v.image).is_ok()),
            Err(e) => Err(e.clone()),
        };
        match exists {
            Ok(true) => {}
            Ok(false) => problems.push(format!(
                "{origin}:{}: image {} does not exist",
                v.line,
                v.source_name()
            )),
            Err(e) => problems.push(format!("{origin}:{}: pool {}: {e}", v.line, v.pool)),
        }
        let mut row = vec![
            v.name.clone(),
            v.source_name(),
            v.settings
                .schedule
                .as_ref()
                .map_or("-".into(), |s| s.pattern().to_string()),
            format!("line {}", v.line),
        ];
        if live.is_some() {
            row.push(owners.get(v.name.as_str()).unwrap_or(&"-").to_string());
        }
        rows.push(row);
    }
    for e in &cfg.entries {
        if let Entry::Pool(sel) = e {
            if !resolved.volumes.iter().any(|v| v.line == sel.line)
                && !resolved.unresolved.iter().any(|u| u.line == sel.line)
            {
                eprintln!(
                    "rbdelta: warning: {origin}:{}: the selection in pool {} matches no image",
                    sel.line, sel.pool
                );
            }
        }
    }
    print!("{}", table::render(&rows));
    if let Some(live) = &live {
        if live.is_empty() {
            problems.push(format!(
                "{origin}: no node is live: no daemon backs these volumes up"
            ));
        } else {
            let loads = rbdelta::fleet::assign::loads(&owners, &live_refs);
            let each: Vec<String> = loads.iter().map(|(n, c)| format!("{n} {c}")).collect();
            println!(
                "{} live node(s), volumes each: {}",
                live.len(),
                each.join(", ")
            );
        }
    }
    if problems.is_empty() {
        println!(
            "{origin}: ok: {} volume(s) on the cluster",
            resolved.volumes.len()
        );
        return Ok(());
    }
    for p in &problems {
        eprintln!("rbdelta: error: {p}");
    }
    Err(Failure {
        code: 2,
        error: anyhow::anyhow!("{origin}: {} problem(s) with the cluster", problems.len()),
    })
}
