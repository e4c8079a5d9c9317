//! Who counts as a node of a shared fleet. Any client that may take locks
//! in the lease pool can hold the heartbeat lease on
//! `rbdelta.nodes.<fleet id>`, and every holder the nodes count takes a
//! share of the volumes that the real nodes then skip. So a node's lease
//! says what it is: its cookie is `rbdelta-node/1 <fleet id> <config
//! digest> <node name>` ([`cookie`]), and a node counts as its peers only
//! the holders whose cookie names this fleet and this node's own config
//! digest ([`crate::config::Nodes::config_digest`]). Everything else
//! holding the lease (a stray client, a node of another fleet, a node
//! started with another volume list) is left out of the assignment and
//! reported ([`Stray`]); [`StrayLog`] says when to log each again.
//!
//! This keeps out mistakes and clients that do not know the format; it is
//! no authentication: a client that copies a node's cookie is counted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::ceph::Holder;
use crate::format::NODE_LEASE_FORMAT;

/// The cookie of node `node`'s heartbeat lease in fleet `fleet` with
/// config digest `digest`.
pub fn cookie(fleet: &str, digest: &str, node: &str) -> String {
    format!("{NODE_LEASE_FORMAT} {fleet} {digest} {node}")
}

/// What a node lease cookie says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLease<'a> {
    pub fleet: &'a str,
    pub digest: &'a str,
    pub node: &'a str,
}

/// The parts of `cookie`, if it is a node lease cookie with a valid node
/// name.
pub fn parse(cookie: &str) -> Option<NodeLease<'_>> {
    let mut parts = cookie.split(' ');
    let (Some(format), Some(fleet), Some(digest), Some(node), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    (format == NODE_LEASE_FORMAT && crate::host::valid_node_name(node)).then_some(NodeLease {
        fleet,
        digest,
        node,
    })
}

/// Why a holder of the heartbeat lease is not counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Its cookie is no node lease cookie.
    NotANode,
    /// It says it belongs to another fleet.
    OtherFleet(String),
    /// A node of this fleet whose config has another digest.
    OtherConfig { node: String, digest: String },
}

/// A holder of the heartbeat lease that is not counted, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stray {
    pub holder: Holder,
    pub why: Refused,
}

impl std::fmt::Display for Stray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = &self.holder;
        let (client, addr) = (
            crate::text::printable(&h.client, 64),
            crate::text::printable(&h.addr, 80),
        );
        write!(f, "lease holder {client} at {addr} not counted as a node: ")?;
        match &self.why {
            Refused::NotANode => write!(
                f,
                "it holds no rbdelta node lease (cookie {:?})",
                crate::text::printable(&h.cookie, 80)
            ),
            Refused::OtherFleet(id) => {
                write!(f, "it is of fleet {}", crate::text::printable(id, 40))
            }
            Refused::OtherConfig { node, digest } => write!(
                f,
                "node {node} runs with another config (digest {}): give every node the same volumes: and nodes: sections",
                crate::text::printable(digest, 40)
            ),
        }
    }
}

/// The holders of a fleet's heartbeat lease, sorted out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// The names of the nodes that count, sorted, each once.
    pub nodes: Vec<String>,
    /// The holders that hold under a name (counted or not), with the name.
    pub named: Vec<(String, Holder)>,
    /// The holders that do not count.
    pub strays: Vec<Stray>,
}

/// Sorts `holders` of fleet `fleet`'s heartbeat lease into the nodes that
/// count (cookie of this fleet with config digest `digest`) and strays.
pub fn sort(holders: Vec<Holder>, fleet: &str, digest: &str) -> Members {
    let mut m = Members::default();
    for h in holders {
        let why = match parse(&h.cookie) {
            None => Some(Refused::NotANode),
            Some(l) => {
                m.named.push((l.node.to_string(), h.clone()));
                if l.fleet != fleet {
                    Some(Refused::OtherFleet(l.fleet.to_string()))
                } else if l.digest != digest {
                    Some(Refused::OtherConfig {
                        node: l.node.to_string(),
                        digest: l.digest.to_string(),
                    })
                } else {
                    m.nodes.push(l.node.to_string());
                    None
                }
            }
        };
        if let Some(why) = why {
            m.strays.push(Stray { holder: h, why });
        }
    }
    m.nodes.sort();
    m.nodes.dedup();
    m
}

/// How often one stray is logged while it stays.
pub const STRAY_LOG_EVERY: Duration = Duration::from_secs(60);

/// When each stray was last logged, so each is logged once a minute while
/// it stays, however often the holders are read.
#[derive(Debug, Default)]
pub struct StrayLog {
    last: HashMap<(String, String), Instant>,
}

impl StrayLog {
    /// The strays of `strays` to log now (those not logged in the last
    /// [`STRAY_LOG_EVERY`]); forgets the ones gone.
    pub fn due<'a>(&mut self, strays: &'a [Stray], now: Instant) -> Vec<&'a Stray> {
        let key = |s: &Stray| (s.holder.client.clone(), s.holder.cookie.clone());
        self.last.retain(|k, _| strays.iter().any(|s| key(s) == *k));
        strays
            .iter()
            .filter(|s| {
                let k = key(s);
                match self.last.get(&k) {
                    Some(t) if now.duration_since(*t) < STRAY_LOG_EVERY => false,
                    _ => {
                        self.last.insert(k, now);
                        true
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(client: &str, cookie: &str) -> Holder {
        Holder {
            client: client.into(),
            cookie: cookie.into(),
            addr: "10.0.0.1:0/1".into(),
        }
    }

    /// Only holders with this fleet's id and this config's digest count;
    /// a made-up cookie, another fleet and another config are strays, each
    /// with its reason.
    #[test]
    fn only_holders_of_this_fleet_and_config_count() {
        let (fleet, digest) = ("f".repeat(32), "0123456789abcdef");
        let holders = vec![
            holder("client.1", &cookie(&fleet, digest, "n1")),
            holder("client.2", &cookie(&fleet, digest, "n2")),
            holder("client.3", "n3"),
            holder("client.4", &cookie(&"e".repeat(32), digest, "n4")),
            holder("client.5", &cookie(&fleet, "fedcba9876543210", "n5")),
            holder("client.6", &format!("{} x", cookie(&fleet, digest, "n6"))),
            holder("client.7", &cookie(&fleet, digest, "../n7")),
            holder("client.8", &cookie(&fleet, digest, "n1")),
        ];
        let m = sort(holders, &fleet, digest);
        assert_eq!(m.nodes, ["n1", "n2"]);
        let why: Vec<(&str, &Refused)> = m
            .strays
            .iter()
            .map(|s| (s.holder.client.as_str(), &s.why))
            .collect();
        assert_eq!(
            why,
            [
                ("client.3", &Refused::NotANode),
                ("client.4", &Refused::OtherFleet("e".repeat(32))),
                (
                    "client.5",
                    &Refused::OtherConfig {
                        node: "n5".into(),
                        digest: "fedcba9876543210".into()
                    }
                ),
                ("client.6", &Refused::NotANode),
                ("client.7", &Refused::NotANode),
            ]
        );
        let named: Vec<&str> = m.named.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(named, ["n1", "n2", "n4", "n5", "n1"]);
        let line = m.strays[2].to_string();
        assert!(
            line.contains("client.5 at 10.0.0.1:0/1") && line.contains("another config"),
            "{line}"
        );
    }

    /// Each stray is logged once a minute, whatever the read rate, and
    /// again at once after it left and came back.
    #[test]
    fn each_stray_is_logged_once_a_minute() {
        let s = |c: &str| Stray {
            holder: holder(c, "x"),
            why: Refused::NotANode,
        };
        let (a, b) = (s("client.1"), s("client.2"));
        let (only_a, only_b, both) = ([a.clone()], [b.clone()], [a.clone(), b.clone()]);
        let mut log = StrayLog::default();
        let t = Instant::now();
        assert_eq!(log.due(&only_a, t).len(), 1);
        assert_eq!(log.due(&both, t + Duration::from_secs(1)), [&b]);
        assert!(log.due(&both, t + Duration::from_secs(59)).is_empty());
        assert_eq!(log.due(&only_a, t + Duration::from_secs(60)), [&a]);
        assert!(log.due(&[], t + Duration::from_secs(61)).is_empty());
        assert_eq!(log.due(&only_b, t + Duration::from_secs(62)), [&b]);
    }
}
