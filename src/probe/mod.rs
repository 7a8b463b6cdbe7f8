//! Typed, read-only probes of the running cluster, reused by every command:
//! etcd (etcd-client, each endpoint on its own), Patroni (REST), HAProxy (stats CSV),
//! and a SQL round trip through the router.

pub mod etcd;
pub mod haproxy;
pub mod patroni;
pub mod sql;
pub mod tls;

use std::time::Duration;

/// Timeout of one probe request: probes run inside waits that retry.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A client for `url`: HTTPS verified against the cluster CA when the host is a
/// registered TLS host, plain otherwise (HAProxy's stats, the exporters).
pub fn http_for(url: &str, timeout: Duration) -> reqwest::Client {
    // reqwest builds on rustls even for plain HTTP: it needs the crypto provider.
    tls::init_provider();
    match tls::for_host(tls::url_host(url)) {
        Some(t) if url.starts_with("https://") => t.http_client(timeout),
        _ => reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(PROBE_TIMEOUT))
            .build()
            .expect("http client"),
    }
}

pub fn http() -> reqwest::Client {
    tls::init_provider();
    reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .connect_timeout(PROBE_TIMEOUT)
        .build()
        .expect("http client")
}
