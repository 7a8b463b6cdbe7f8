//! Typed, read-only probes of the running cluster, reused by every command:
//! etcd (etcd-client, each endpoint on its own), Patroni (REST), HAProxy (stats CSV),
//! and a SQL round trip through the router.
//!
//! Layer 1 (an edge): imports only layer 0 (inventory, error, wait).

pub mod etcd;
pub mod exporter;
pub mod haproxy;
pub mod net;
pub mod patroni;
pub mod pgbouncer;
pub mod prometheus;
pub mod sql;
pub mod tls;

pub use net::Net;

use std::time::Duration;

/// Timeout of one probe request: probes run inside waits that retry.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
