//! The cluster's TLS material as a client uses it: the CA every server is verified
//! against (nothing is "insecure") and pgha's client certificate (etcd requires
//! one), turned into rustls, reqwest, etcd-client and tokio-postgres settings. It
//! travels in a `Net` from where a run starts to every probe.

use std::sync::{Arc, Once};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The CA to verify a cluster's servers against, and the client certificate pgha
/// presents.
#[derive(Clone)]
pub struct Tls {
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls { .. }")
    }
}

static PROVIDER: Once = Once::new();

/// rustls' process-wide crypto provider (ring), installed once.
pub fn init_provider() {
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Tls {
    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()).flatten() {
            let _ = roots.add(c);
        }
        roots
    }

    /// A rustls client configuration that verifies servers against the cluster CA
    /// and presents pgha's client certificate.
    pub fn client_config(&self) -> rustls::ClientConfig {
        init_provider();
        let builder = rustls::ClientConfig::builder().with_root_certificates(self.roots());
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.client_cert_pem.as_bytes())
                .flatten()
                .collect();
        match PrivateKeyDer::from_pem_slice(self.client_key_pem.as_bytes()) {
            Ok(key) if !certs.is_empty() => builder
                .with_client_auth_cert(certs, key)
                .unwrap_or_else(|_| {
                    rustls::ClientConfig::builder()
                        .with_root_certificates(self.roots())
                        .with_no_client_auth()
                }),
            _ => builder.with_no_client_auth(),
        }
    }

    /// An HTTPS client verifying the cluster CA.
    pub fn http_client(&self, timeout: Duration) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(super::PROBE_TIMEOUT))
            .tls_backend_preconfigured(self.client_config())
            .build()
            .expect("https client")
    }

    /// etcd-client's TLS options (CA and client identity).
    pub fn etcd_options(&self) -> etcd_client::TlsOptions {
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(self.ca_pem.as_bytes()))
            .identity(etcd_client::Identity::from_pem(
                self.client_cert_pem.as_bytes(),
                self.client_key_pem.as_bytes(),
            ))
    }

    /// A PostgreSQL TLS connector verifying the server (the equivalent of
    /// libpq's sslmode=verify-full).
    pub fn pg_connector(&self) -> tokio_postgres_rustls::MakeRustlsConnect {
        tokio_postgres_rustls::MakeRustlsConnect::new(self.client_config())
    }
}

/// The certificate an HTTPS server presents at `host:port` (verified against the
/// cluster CA), as PEM: what is really in use, for `status` to show its expiry.
/// A whole request for `path` is made and its answer read on that connection: a
/// connection closed right after the handshake makes Patroni's REST API log a
/// traceback (its TLS 1.3 session tickets meet a closed socket).
pub async fn served_certificate(
    tls: &Tls,
    host: &str,
    port: u16,
    path: &str,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls.client_config()));
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host}: {e}"))?;
    let fut = async {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("{host}:{port}: {e}"))?;
        let mut stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("{host}:{port}: TLS: {e}"))?;
        let (_, conn) = stream.get_ref();
        let der = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| format!("{host}:{port}: no certificate"))?;
        let pem = der_to_pem(der.as_ref());
        // The answer itself does not matter, only that the exchange completes;
        // a server that keeps the connection open does not cost the certificate.
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
        if stream.write_all(request.as_bytes()).await.is_ok() {
            let mut answer = Vec::new();
            let mut limited = (&mut stream).take(1 << 16);
            let read = limited.read_to_end(&mut answer);
            let _ = tokio::time::timeout(super::PROBE_TIMEOUT / 2, read).await;
            let _ = stream.shutdown().await;
        }
        Ok::<_, String>(pem)
    };
    tokio::time::timeout(super::PROBE_TIMEOUT, fut)
        .await
        .map_err(|_| format!("{host}:{port}: no answer"))?
}

fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}
