//! How pgha reaches the cluster's endpoints: plain, or over TLS verified against
//! the cluster's CA with pgha's client certificate. Made once where a run starts
//! (from the cluster's PKI) and handed to every probe and client that needs it;
//! there is no process-wide registry of TLS hosts.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::ConnectOptions;

use super::PROBE_TIMEOUT;
use super::tls::{self, Tls};

/// The cluster's TLS material (None: plain) and HTTP clients built from it once.
#[derive(Clone)]
pub struct Net {
    tls: Option<Arc<Tls>>,
    plain: reqwest::Client,
    https: Option<reqwest::Client>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Net {{ tls: {} }}", self.tls.is_some())
    }
}

impl Default for Net {
    fn default() -> Net {
        Net::plain()
    }
}

fn builder() -> reqwest::ClientBuilder {
    // No pooled connections: members restart and fail over under us, and a probe
    // must see the endpoint as it is now.
    reqwest::Client::builder()
        .connect_timeout(PROBE_TIMEOUT)
        .pool_max_idle_per_host(0)
}

impl Net {
    /// Plain HTTP, etcd and PostgreSQL (a cluster without TLS).
    pub fn plain() -> Net {
        Net::new(None)
    }

    /// With the cluster's TLS material when it has TLS.
    pub fn new(tls: Option<Tls>) -> Net {
        // reqwest builds on rustls even for plain HTTP: it needs the crypto provider.
        tls::init_provider();
        let https = tls.as_ref().map(|t| {
            builder()
                .tls_backend_preconfigured(t.client_config())
                .build()
                .expect("https client")
        });
        Net {
            tls: tls.map(Arc::new),
            plain: builder().build().expect("http client"),
            https,
        }
    }

    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_deref()
    }

    /// The client for `url` (HTTPS verified against the cluster CA for `https://`).
    fn client(&self, url: &str) -> &reqwest::Client {
        match &self.https {
            Some(c) if url.starts_with("https://") => c,
            _ => &self.plain,
        }
    }

    /// GET `url`, the whole request bounded by `timeout`.
    pub fn get(&self, url: &str, timeout: Duration) -> reqwest::RequestBuilder {
        self.client(url).get(url).timeout(timeout)
    }

    /// POST to `url`, bounded by `timeout`.
    pub fn post(&self, url: &str, timeout: Duration) -> reqwest::RequestBuilder {
        self.client(url).post(url).timeout(timeout)
    }

    /// PATCH `url`, bounded by `timeout`.
    pub fn patch(&self, url: &str, timeout: Duration) -> reqwest::RequestBuilder {
        self.client(url).patch(url).timeout(timeout)
    }

    /// etcd-client options for `endpoint`: TLS with the cluster CA and pgha's client
    /// certificate for `https://` endpoints.
    pub fn etcd_options(&self, endpoint: &str, timeout: Duration) -> ConnectOptions {
        let o = ConnectOptions::new()
            .with_connect_timeout(PROBE_TIMEOUT)
            .with_timeout(timeout);
        match &self.tls {
            Some(t) if endpoint.starts_with("https://") => o.with_tls(t.etcd_options()),
            _ => o,
        }
    }
}
