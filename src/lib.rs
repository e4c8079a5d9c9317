//! rbdelta: incremental, verifiable backups of Ceph RBD images.
//!
//! The library holds all logic; the `rbdelta` binary is a thin shell over it.
//! Reading order: [`source`] (what a backup reads from), [`format`] (what is
//! written), [`archive`] (where and how crash-safely), [`chain`] (how a
//! revision's blocks are found), then the operations [`backup`],
//! [`restore`] and [`verify`].

pub mod archive;
pub mod backup;
pub mod buffers;
pub mod ceph;
pub mod chain;
pub mod checksum;
pub mod config;
pub mod daemon;
pub mod error;
pub mod export_diff;
pub mod fault;
pub mod fleet;
pub mod format;
pub mod fsck;
pub mod history;
pub mod host;
pub mod mount;
pub mod ordered;
pub mod progress;
pub mod repair;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod source;
pub mod status;
pub mod text;
pub mod throttle;
pub mod verify;
