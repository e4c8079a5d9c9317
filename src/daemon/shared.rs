//! A daemon's part in a fleet shared by several nodes (`nodes:` in the
//! config): it keeps its heartbeat lease and its job leases renewed, reads
//! which nodes are live, and works out which volumes are its own by
//! rendezvous hashing over the live nodes ([`crate::fleet::assign`]).
//!
//! Every node runs the same schedule for every volume. When a job is due,
//! the node that owns the volume runs it and the others let that slot
//! pass. Views of who is live can differ for a moment (a node joined or
//! died between two reads), so a job also takes the volume's job lease
//! first, and a backup is skipped if the volume already has a revision
//! made since the slot began: two nodes never back up one volume at once,
//! nor twice in one slot.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fleet::assign::assign;
use crate::fleet::nodes::NodeLeases;

pub struct Shared {
    pub leases: Arc<NodeLeases>,
    live: Vec<String>,
    /// The volumes `mine` was worked out for (with `live` and `alive`):
    /// the assignment is redone only when one of them changed, not every
    /// tick (10 000 volumes on 50 nodes take tens of milliseconds).
    assigned_for: Option<(Vec<String>, Vec<String>)>,
    mine: BTreeSet<String>,
    /// When the heartbeat was last renewed.
    beat: Option<Instant>,
    /// When the live nodes were last read.
    read: Option<Instant>,
    /// When this node first counted as live: its first jobs wait a third
    /// of a lease, so nodes that start together see each other first.
    joined: Option<Instant>,
    /// When a failing lease operation was last logged: a cluster that
    /// refuses them (no caps on the pool, say) gets a line a minute, not
    /// one a second.
    complained: Option<Instant>,
}

/// How often a lease operation that keeps failing is logged.
const COMPLAIN_EVERY: Duration = Duration::from_secs(60);

impl Shared {
    pub fn new(leases: NodeLeases) -> Shared {
        Shared::new_from(Arc::new(leases))
    }

    /// A fresh start over leases already held (a refresh that a stop cut
    /// short keeps only what is needed to give them back).
    pub fn new_from(leases: Arc<NodeLeases>) -> Shared {
        Shared {
            leases,
            live: Vec::new(),
            assigned_for: None,
            mine: BTreeSet::new(),
            beat: None,
            read: None,
            joined: None,
            complained: None,
        }
    }

    /// How often leases are renewed and the live nodes read: every
    /// second, or every third of a lease if that is shorter, so one late
    /// renewal never lets a lease lapse, and a dead node's volumes move
    /// at most a second after its lease lapsed. (A read or a renewal is
    /// one small OSD op: 50 nodes make 50 a second, plus one per job.)
    pub fn tick(&self) -> Duration {
        (self.leases.lease() / 3).min(Duration::from_secs(1))
    }

    /// Whether a tick is due.
    pub fn due(&self) -> bool {
        self.read.is_none_or(|t| t.elapsed() >= self.tick())
    }

    /// Time until the next tick.
    pub fn until_next(&self) -> Duration {
        self.read
            .map_or(Duration::ZERO, |t| self.tick().saturating_sub(t.elapsed()))
    }

    /// Renews the heartbeat and the job leases, reads the live nodes and
    /// recomputes which of `volumes` are this node's. A node whose
    /// heartbeat has not been renewed for a lease owns nothing: the others
    /// may already have taken its volumes.
    pub fn refresh(&mut self, volumes: &[&str]) {
        let node = self.leases.node().to_string();
        let mut failed = Vec::new();
        match self.leases.heartbeat() {
            Ok(()) => {
                self.beat = Some(Instant::now());
                self.joined.get_or_insert_with(Instant::now);
            }
            Err(e) => failed.push(format!("heartbeat lease not renewed: {e}")),
        }
        for (v, e) in self.leases.renew_jobs() {
            failed.push(format!("job lease of {v} not renewed: {e}"));
        }
        match self.leases.live() {
            Ok((live, namesakes)) => {
                if live != self.live {
                    tracing::info!("live nodes: {}", live.join(", "));
                }
                self.live = live;
                // A run of this node that died lapses within a lease of
                // this one's start; a holder still there after that is
                // another daemon with this name. Its jobs and this one's
                // still never overlap (job leases are per client).
                let up_for = self.joined.map_or(Duration::ZERO, |t| t.elapsed());
                if up_for > self.leases.lease() + self.tick() {
                    for h in namesakes {
                        failed.push(format!(
                            "another daemon runs under this node name ({} at {}): give each host a name of its own (--node)",
                            h.client, h.addr
                        ));
                    }
                }
            }
            Err(e) => failed.push(format!("cannot read the live nodes: {e}")),
        }
        self.read = Some(Instant::now());
        if failed.is_empty() {
            if self.complained.take().is_some() {
                tracing::info!("node {node}: leases renewed again");
            }
        } else if self
            .complained
            .is_none_or(|t| t.elapsed() >= COMPLAIN_EVERY)
        {
            for f in &failed {
                tracing::error!("node {node}: {f}");
            }
            self.complained = Some(Instant::now());
        }
        let alive = self.beat.is_some_and(|t| t.elapsed() < self.leases.lease())
            && self.live.contains(&node);
        if !alive {
            self.mine.clear();
            self.assigned_for = None;
            return;
        }
        let same = self.assigned_for.as_ref().is_some_and(|(v, l)| {
            *l == self.live && v.iter().map(String::as_str).eq(volumes.iter().copied())
        });
        if same {
            return;
        }
        let live: Vec<&str> = self.live.iter().map(String::as_str).collect();
        self.mine = assign(volumes, &live)
            .into_iter()
            .filter(|(_, n)| *n == node)
            .map(|(v, _)| v.to_string())
            .collect();
        self.assigned_for = Some((
            volumes.iter().map(|v| v.to_string()).collect(),
            self.live.clone(),
        ));
    }

    /// Whether this node may start jobs yet: it has been live for a third
    /// of a lease, long enough for the nodes started with it to show.
    pub fn settled(&self) -> bool {
        self.joined
            .is_some_and(|t| t.elapsed() >= self.leases.lease() / 3)
    }

    /// Whether `volume`'s jobs are this node's.
    pub fn owns(&self, volume: &str) -> bool {
        self.mine.contains(volume)
    }

    /// How many volumes are this node's.
    pub fn owned(&self) -> usize {
        self.mine.len()
    }
}
