//! The nodes of a shared fleet, seen through leases in RADOS (see
//! [`crate::ceph::lease`]): every node holds a shared lease on one object
//! as its heartbeat, so the live nodes are that lease's holders; and a
//! node holds an exclusive lease on a volume's job object while it backs
//! the volume up, so no two nodes ever run one volume's job at once.
//!
//! The heartbeat's cookie says which fleet and which config the node
//! runs ([`crate::fleet::members`]): holders with anything else are not
//! counted, and are logged once a minute each.
//!
//! A node that dies stops renewing: its heartbeat lapses after
//! `nodes.lease` and the others stop counting it; a job lease it held
//! lapses too, and the volume's next owner can take it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ceph::lease::LeaseKind;
use crate::ceph::{Cluster, IoCtx};
use crate::config::Nodes;
use crate::error::{Error, Result};
use crate::fleet::members::{self, Members, StrayLog};

const NODE_LEASE: &str = "node";
const JOB_LEASE: &str = "job";

/// The object whose shared lease the live nodes of fleet `fleet` (the
/// archive's fleet id) hold.
pub fn nodes_object(fleet: &str) -> String {
    format!("rbdelta.nodes.{fleet}")
}

/// The object whose lease a volume's job holds.
fn job_object(fleet: &str, volume: &str) -> String {
    format!("rbdelta.job.{fleet}.{volume}")
}

/// Whether a job lease was taken.
#[derive(Debug, Clone)]
pub enum Claim {
    /// This node holds it now; the flag is set if it goes a whole lease
    /// unrenewed (the job must then stop).
    Taken(Arc<AtomicBool>),
    /// Another node does (its name, or `?` if it let go meanwhile).
    HeldBy(String),
}

/// One node's view of the shared fleet: its own leases and the others'.
pub struct NodeLeases {
    io: IoCtx,
    /// The archive's fleet id: fleets that share a lease pool keep apart.
    fleet: String,
    node: String,
    /// The config digest this node's heartbeat carries.
    digest: String,
    lease: Duration,
    /// When each holder that does not count was last logged.
    strays: Mutex<StrayLog>,
    /// The volumes whose job lease this node holds: renewed together,
    /// under this lock, so a lease just given back is never renewed (a
    /// renewal takes a lease that is not held).
    jobs: Mutex<BTreeMap<String, HeldJob>>,
}

/// A job lease this node holds.
struct HeldJob {
    /// When it was last taken or renewed.
    renewed: Instant,
    /// Set once it went a whole lease unrenewed: the job must stop, since
    /// another node may have taken the volume.
    lapsed: Arc<AtomicBool>,
}

impl NodeLeases {
    /// `node`'s leases in `cfg.lease_pool`, through `cluster`, in the
    /// fleet `fleet` (the archive's fleet id).
    pub fn new(cluster: &Arc<Cluster>, cfg: &Nodes, fleet: &str, node: &str) -> Result<NodeLeases> {
        Ok(NodeLeases {
            io: cluster.ioctx(&cfg.lease_pool)?,
            fleet: fleet.to_string(),
            node: node.to_string(),
            digest: cfg.config_digest.clone(),
            lease: cfg.lease,
            strays: Mutex::new(StrayLog::default()),
            jobs: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The cookie of this node's heartbeat.
    fn cookie(&self) -> String {
        members::cookie(&self.fleet, &self.digest, &self.node)
    }

    /// How long a lease lasts unrenewed.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Takes or renews this node's heartbeat: it counts as live for one
    /// lease period from now.
    pub fn heartbeat(&self) -> Result<()> {
        self.io.lease(
            &nodes_object(&self.fleet),
            NODE_LEASE,
            &self.cookie(),
            LeaseKind::Shared,
            self.lease,
        )
    }

    /// Gives the heartbeat back (on a clean stop): the others take this
    /// node's volumes at once instead of after the lease.
    pub fn leave(&self) -> Result<()> {
        match self
            .io
            .release_lease(&nodes_object(&self.fleet), NODE_LEASE, &self.cookie())
        {
            Err(Error::Ceph { errno, .. }) if errno == libc::ENOENT => Ok(()),
            r => r,
        }
    }

    /// The live nodes (holders of this fleet's heartbeat with this
    /// node's config digest), sorted, each once, and the other clients
    /// that hold a heartbeat under this node's name: a previous run of
    /// this node that died less than a lease ago, or another daemon that
    /// was given the same name. Holders that do not count are logged
    /// (a warning once a minute each, with their address).
    pub fn live(&self) -> Result<(Vec<String>, Vec<crate::ceph::Holder>)> {
        let m = members(&self.io, &self.fleet, &self.digest)?;
        let me = self.io.client();
        let namesakes = m
            .named
            .iter()
            .filter(|(name, h)| *name == self.node && h.client != me)
            .map(|(_, h)| h.clone())
            .collect();
        let mut log = self.strays.lock().unwrap_or_else(|p| p.into_inner());
        for s in log.due(&m.strays, std::time::Instant::now()) {
            tracing::warn!("node {}: {s}", self.node);
        }
        Ok((m.nodes, namesakes))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, HeldJob>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the job lease of `volume`, unless another node holds it.
    pub fn take_job(&self, volume: &str) -> Result<Claim> {
        let oid = job_object(&self.fleet, volume);
        let mut held = self.held();
        match self.io.lease(
            &oid,
            JOB_LEASE,
            &self.node,
            LeaseKind::Exclusive,
            self.lease,
        ) {
            Ok(()) => {
                let lapsed = Arc::new(AtomicBool::new(false));
                held.insert(
                    volume.to_string(),
                    HeldJob {
                        renewed: Instant::now(),
                        lapsed: lapsed.clone(),
                    },
                );
                Ok(Claim::Taken(lapsed))
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
        let mut held = self.held();
        let mut failed = Vec::new();
        for (v, job) in held.iter_mut() {
            let renewed = self.io.lease(
                &job_object(&self.fleet, v),
                JOB_LEASE,
                &self.node,
                LeaseKind::Exclusive,
                self.lease,
            );
            match renewed {
                Ok(()) => job.renewed = Instant::now(),
                Err(e) => {
                    if job.renewed.elapsed() >= self.lease
                        && !job.lapsed.swap(true, Ordering::Relaxed)
                    {
                        tracing::error!(
                            "{v}: job lease not renewed for a whole lease ({} s): the job is stopped, as another node may have taken the volume",
                            self.lease.as_secs()
                        );
                    }
                    failed.push((v.clone(), e));
                }
            }
        }
        failed
    }

    /// Gives the job lease of `volume` back.
    pub fn release_job(&self, volume: &str) -> Result<()> {
        let mut held = self.held();
        held.remove(volume);
        match self
            .io
            .release_lease(&job_object(&self.fleet, volume), JOB_LEASE, &self.node)
        {
            Err(Error::Ceph { errno, .. }) if errno == libc::ENOENT => Ok(()),
            r => r,
        }
    }
}

/// The holders of fleet `fleet`'s heartbeat, whose leases are in `io`'s
/// pool, sorted into the nodes with config digest `digest` and the rest.
pub fn members(io: &IoCtx, fleet: &str, digest: &str) -> Result<Members> {
    Ok(members::sort(
        io.lease_holders(&nodes_object(fleet), NODE_LEASE)?,
        fleet,
        digest,
    ))
}
