//! Typed, read-only probes of the running cluster, reused by every command:
//! etcd (etcd-client, each endpoint on its own), Patroni (REST), HAProxy (stats CSV),
//! and a SQL round trip through the router.

pub mod etcd;
pub mod haproxy;
pub mod patroni;
pub mod sql;

use std::time::Duration;

/// Timeout of one probe request: probes run inside waits that retry.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .connect_timeout(PROBE_TIMEOUT)
        .build()
        .expect("http client")
}
