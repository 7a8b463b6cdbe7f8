//! Everything that goes wrong over SSH, with the exit code each maps to (2 a host
//! failed, 3 unreachable), and the conversions into the command's `Failure`.

use std::path::PathBuf;
use std::time::Duration;

use super::known_hosts;

use crate::error::{Exit, Failure};

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{host}: unreachable at {address}: {reason}")]
    Unreachable {
        host: String,
        address: String,
        reason: String,
    },
    #[error(
        "{host}: host key of {address}:{port} is unknown: the server offers {fingerprint}, \
         and {} has no entry for it. Check that fingerprint on the host \
         (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then re-run with --accept-new-host-keys \
         to record it",
        .known_hosts.display()
    )]
    HostKeyUnknown {
        host: String,
        address: String,
        port: u16,
        /// Key type and SHA-256 fingerprint, e.g. `ssh-ed25519 SHA256:...`.
        fingerprint: String,
        known_hosts: PathBuf,
    },
    #[error(
        "{host}: HOST KEY CHANGED for {address}:{port}: the server offers {fingerprint}, \
         but {}:{line} records a different key for it. Someone may be intercepting \
         the connection, or the host was reinstalled. If the change is expected, remove the old \
         entry (ssh-keygen -R '{}' -f {}) and connect again; --accept-new-host-keys never \
         overrides a changed key",
        .known_hosts.display(), known_hosts::lookup_name(.address, *.port), .known_hosts.display()
    )]
    HostKeyChanged {
        host: String,
        address: String,
        port: u16,
        /// Key type and SHA-256 fingerprint of the key the server offers.
        fingerprint: String,
        known_hosts: PathBuf,
        /// Line of the recorded entry that differs.
        line: usize,
    },
    #[error(
        "{host}: the host key of {address}:{port} ({fingerprint}) is marked @revoked in {}:{line}",
        .known_hosts.display()
    )]
    HostKeyRevoked {
        host: String,
        address: String,
        port: u16,
        fingerprint: String,
        known_hosts: PathBuf,
        line: usize,
    },
    #[error("{host}: known_hosts file {}: {reason}", .path.display())]
    KnownHosts {
        host: String,
        path: PathBuf,
        reason: String,
    },
    #[error("{host}: authentication failed for user {user} at {address}; tried: {tried}")]
    Auth {
        host: String,
        user: String,
        address: String,
        tried: String,
    },
    #[error(
        "{host}: sudo asks user {user} for a password; pgha needs passwordless sudo \
         (e.g. '{user} ALL=(ALL) NOPASSWD: ALL' in /etc/sudoers.d/), or connect as root"
    )]
    SudoPassword { host: String, user: String },
    #[error("{host}: sudo refused for user {user}: {message}")]
    Sudo {
        host: String,
        user: String,
        message: String,
    },
    #[error("{host}: command timed out after {after:?}: {command}")]
    Timeout {
        host: String,
        command: String,
        after: Duration,
    },
    #[error("{host}: command failed with exit status {status}: {command}\n{stderr_tail}")]
    Failed {
        host: String,
        command: String,
        status: u32,
        stderr_tail: String,
    },
    #[error("{host}: SSH connection lost: {reason}")]
    ConnectionLost { host: String, reason: String },
    /// Anything else that went wrong on a host (protocol surprises, bad requests).
    #[error("{host}: {reason}")]
    Protocol { host: String, reason: String },
    #[error("{0}")]
    Other(String),
}

impl SshError {
    /// The exit code category: unreachable (3) for hosts that cannot be reached or whose
    /// connection broke, host failed (2) for anything else that happened on a host.
    pub fn exit(&self) -> Exit {
        match self {
            SshError::Unreachable { .. } | SshError::ConnectionLost { .. } => Exit::Unreachable,
            SshError::Other(_) => Exit::Error,
            _ => Exit::HostFailed,
        }
    }
    pub fn exit_code(&self) -> i32 {
        self.exit() as i32
    }
    /// The inventory host this error is about (None for `Other`).
    pub fn host(&self) -> Option<&str> {
        match self {
            SshError::Unreachable { host, .. }
            | SshError::HostKeyUnknown { host, .. }
            | SshError::HostKeyChanged { host, .. }
            | SshError::HostKeyRevoked { host, .. }
            | SshError::KnownHosts { host, .. }
            | SshError::Auth { host, .. }
            | SshError::SudoPassword { host, .. }
            | SshError::Sudo { host, .. }
            | SshError::Timeout { host, .. }
            | SshError::Failed { host, .. }
            | SshError::ConnectionLost { host, .. }
            | SshError::Protocol { host, .. } => Some(host),
            SshError::Other(_) => None,
        }
    }
}

impl From<SshError> for Failure {
    fn from(e: SshError) -> Self {
        Failure::new(e.exit(), e.to_string())
    }
}

/// The conversion from anyhow that keeps the exit code of an SSH error carried
/// inside it (the engine's steps return anyhow errors). It lives here, beside the
/// type it knows, so `error` on the ground floor names nothing above it.
impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        // Keep typed categories that travelled through anyhow.
        let e = match e.downcast::<Failure>() {
            Ok(f) => return f,
            Err(e) => e,
        };
        match e.downcast_ref::<SshError>() {
            // A failed command or lost host keeps its exit code (2 or 3), with the
            // context anyhow added on the way up.
            Some(ssh) => Failure::new(ssh.exit(), format!("{e:#}")),
            None => Failure::error(format!("{e:#}")),
        }
    }
}
