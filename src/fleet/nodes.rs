//! The nodes of a shared fleet, seen through leases in RADOS (see
//! [`crate::ceph::lease`]): every node holds a shared lease on one object
//! as its heartbeat, so the live nodes are that lease's holders; and a
//! node holds an exclusive lease on a volume's job object while it backs
//! the volume up, so no two nodes ever run one volume's job at once.
//!
//! A node that dies stops renewing: its heartbeat lapses after
//! `nodes.lease` and the others stop counting it; a job lease it held
//! lapses too, and the volume's next owner can take it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ceph::lease::LeaseKind;
use crate::ceph::{Cluster, IoCtx};
use crate::config::Nodes;
use crate::error::{Error, Result};

/// The object whose shared lease the live nodes hold.
pub const NODES_OBJECT: &str = "rbdelta.nodes";
const NODE_LEASE: &str = "node";
const JOB_LEASE: &str = "job";

/// The object whose lease a volume's job holds.
pub fn job_object(volume: &str) -> String {
    format!("rbdelta.job.{volume}")
}

/// Whether a job lease was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This node holds it now.
    Taken,
    /// Another node does (its name, or `?` if it let go meanwhile).
    HeldBy(String),
}

/// One node's view of the shared fleet: its own leases and the others'.
pub struct NodeLeases {
    io: IoCtx,
    node: String,
    lease: Duration,
    /// The volumes whose job lease this node holds: renewed together,
    /// under this lock, so a lease just given back is never renewed (a
    /// renewal takes a lease that is not held).
    jobs: Mutex<BTreeSet<String>>,
}

impl NodeLeases {
    /// `node`'s leases in `cfg.lease_pool`, through `cluster`.
    pub fn new(cluster: &Arc<Cluster>, cfg: &Nodes, node: &str) -> Result<NodeLeases> {
        Ok(NodeLeases {
            io: cluster.ioctx(&cfg.lease_pool)?,
            node: node.to_string(),
            lease: cfg.lease,
            jobs: Mutex::new(BTreeSet::new()),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// How long a lease lasts unrenewed.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Takes or renews this node's heartbeat: it counts as live for one
    /// lease period from now.
    pub fn heartbeat(&self) -> Result<()> {
        self.io.lease(
            NODES_OBJECT,
            NODE_LEASE,
            &self.node,
            LeaseKind::Shared,
            self.lease,
        )
    }

    /// Gives the heartbeat back (on a clean stop): the others take this
    /// node's volumes at once instead of after the lease.
    pub fn leave(&self) -> Result<()> {
        match self.io.release_lease(NODES_OBJECT, NODE_LEASE, &self.node) {
            Err(Error::Ceph { errno, .. }) if errno == libc::ENOENT => Ok(()),
            r => r,
        }
    }

    /// The live nodes, sorted, each once.
    pub fn live(&self) -> Result<Vec<String>> {
        live_nodes(&self.io)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the job lease of `volume`, unless another node holds it.
    pub fn take_job(&self, volume: &str) -> Result<Claim> {
        let oid = job_object(volume);
        let mut held = self.held();
        match self.io.lease(
            &oid,
            JOB_LEASE,
            &self.node,
            LeaseKind::Exclusive,
            self.lease,
        ) {
            Ok(()) => {
                held.insert(volume.to_string());
                Ok(Claim::Taken)
            }
            Err(Error::Ceph { errno, .. }) if errno == libc::EBUSY => {
                let holders = self.io.lease_holders(&oid, JOB_LEASE)?;
                Ok(Claim::HeldBy(
                    holders
                        .first()
                        .map_or_else(|| "?".to_string(), |h| h.cookie.clone()),
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// Renews every job lease this node holds; says which could not be.
    pub fn renew_jobs(&self) -> Vec<(String, Error)> {
        let held = self.held();
        held.iter()
            .filter_map(|v| {
                self.io
                    .lease(
                        &job_object(v),
                        JOB_LEASE,
                        &self.node,
                        LeaseKind::Exclusive,
                        self.lease,
                    )
                    .err()
                    .map(|e| (v.clone(), e))
            })
            .collect()
    }

    /// Gives the job lease of `volume` back.
    pub fn release_job(&self, volume: &str) -> Result<()> {
        let mut held = self.held();
        held.remove(volume);
        match self
            .io
            .release_lease(&job_object(volume), JOB_LEASE, &self.node)
        {
            Err(Error::Ceph { errno, .. }) if errno == libc::ENOENT => Ok(()),
            r => r,
        }
    }
}

/// The live nodes of the fleet whose leases are in `io`'s pool.
pub fn live_nodes(io: &IoCtx) -> Result<Vec<String>> {
    let mut nodes: Vec<String> = io
        .lease_holders(NODES_OBJECT, NODE_LEASE)?
        .into_iter()
        .map(|h| h.cookie)
        .collect();
    nodes.sort();
    nodes.dedup();
    Ok(nodes)
}
