//! The operations core every command stands on: the run context (hosts, SSH
//! sessions, facts, parallel per-host steps, recap), the cluster's endpoints, the
//! waits, Patroni actions, the cluster lock, the write-port probe and the final
//! verification. Commands (`crate::commands`) are short sequences of these.
//!
//! Layer 3: may import engine, install, the edges (ssh, probe, docker, pki) and layer
//! 0; never commands, cli, the lab or the benchmark.

pub mod backup;
pub mod backup_info;
pub mod converge;
pub mod dcs;
pub mod destroy;
pub mod endpoints;
pub mod etcd;
pub mod follow;
pub mod gap;
pub mod guard;
pub mod health;
pub mod images;
pub mod lock;
pub mod marks;
pub mod member;
pub mod membership;
pub mod monitoring;
pub mod patroni;
pub mod phases;
pub mod pool;
pub mod restore;
pub mod restore_plan;
pub mod rolling;
pub mod roster;
pub mod run;
pub mod stack;
pub mod switchover;
pub mod verdict;
pub mod verify;
pub mod waits;

pub use endpoints::Endpoints;
pub use run::Ctx;
