//! russh's client handler: the server's host key verified against known_hosts
//! (recorded when new only under `--accept-new-host-keys`).

use std::path::PathBuf;
use std::sync::LazyLock;

use russh::client;
use russh::keys::{PublicKey, PublicKeyOrCertificate};

use super::error::SshError;
use super::known_hosts::{self, HostKeyPolicy, HostKeyStatus, KnownHosts};

/// russh client handler: verifies the server's host key against known_hosts.
pub(crate) struct Client {
    pub(super) host: String,
    pub(super) address: String,
    pub(super) port: u16,
    pub(super) known_hosts: PathBuf,
    pub(super) policy: HostKeyPolicy,
}

#[derive(Debug)]
pub(crate) enum HandlerError {
    Russh(russh::Error),
    HostKey(SshError),
}

impl From<russh::Error> for HandlerError {
    fn from(e: russh::Error) -> Self {
        HandlerError::Russh(e)
    }
}

/// Serialises known_hosts check-and-record across parallel connections.
static KNOWN_HOSTS_LOCK: LazyLock<std::sync::Mutex<()>> =
    LazyLock::new(|| std::sync::Mutex::new(()));

impl Client {
    fn verify(&self, key: &PublicKey) -> Result<(), SshError> {
        let _guard = KNOWN_HOSTS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let kh_err = |reason: String| SshError::KnownHosts {
            host: self.host.clone(),
            path: self.known_hosts.clone(),
            reason,
        };
        let kh = KnownHosts::load(&self.known_hosts)
            .map_err(|e| kh_err(format!("cannot read it: {e}")))?;
        let address = format!("{}:{}", self.address, self.port);
        let fingerprint = format!("{} {}", key.algorithm(), known_hosts::fingerprint(key));
        match kh.check(&self.address, self.port, key) {
            HostKeyStatus::Known { .. } => Ok(()),
            HostKeyStatus::Unknown => match self.policy {
                HostKeyPolicy::AcceptNew => {
                    KnownHosts::append(&self.known_hosts, &self.address, self.port, key)
                        .map_err(|e| kh_err(format!("cannot record the new host key: {e}")))?;
                    tracing::info!(
                        host = %self.host,
                        "recorded new host key of {address} ({fingerprint}) in {}",
                        self.known_hosts.display()
                    );
                    Ok(())
                }
                HostKeyPolicy::Strict => Err(SshError::HostKeyUnknown {
                    host: self.host.clone(),
                    address: self.address.clone(),
                    port: self.port,
                    fingerprint,
                    known_hosts: self.known_hosts.clone(),
                }),
            },
            HostKeyStatus::Changed { line, .. } => Err(SshError::HostKeyChanged {
                host: self.host.clone(),
                address: self.address.clone(),
                port: self.port,
                fingerprint,
                known_hosts: self.known_hosts.clone(),
                line,
            }),
            HostKeyStatus::Revoked { line } => Err(SshError::HostKeyRevoked {
                host: self.host.clone(),
                address: self.address.clone(),
                port: self.port,
                fingerprint,
                known_hosts: self.known_hosts.clone(),
                line,
            }),
        }
    }
}

impl client::Handler for Client {
    type Error = HandlerError;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                self.verify(key).map_err(HandlerError::HostKey)?;
                Ok(true)
            }
            PublicKeyOrCertificate::Certificate(_) => {
                Err(HandlerError::HostKey(SshError::Protocol {
                    host: self.host.clone(),
                    reason: "the server presented a host certificate, which pgha does not verify"
                        .into(),
                }))
            }
        }
    }
}
