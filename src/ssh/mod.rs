//! SSH transport over russh: one authenticated connection per host for a whole run,
//! a bounded number of channels on it, host keys verified against known_hosts.
//!
//! PUBLIC API CONTRACT (the engine, lab and probes are written against it):
//!
//! ```ignore
//! let s = Session::connect(&target, &opts).await?;          // retries with backoff
//! let out = s.exec(&Cmd::root("systemctl is-active etcd")).await?;  // sudo -n when needed
//! out.ok()?;                                                  // non-zero exit -> SshError::Failed
//! s.upload(&Upload { path, content, owner, group, mode, validate: None }).await?;
//! let sum = s.sha256("/etc/haproxy/haproxy.cfg").await?;    // None when absent
//! ```
//!
//! Layer 1 (an edge): imports only layer 0 (inventory for `SshTarget`, error).

mod auth;
mod client;
mod cmd;
mod error;
pub mod known_hosts;
mod script;
mod session;

pub use cmd::{Cmd, Output, SshOptions, StdinProgress, Upload};
pub use error::SshError;
pub use known_hosts::{HostKeyPolicy, HostKeyStatus, KnownHosts};
pub use script::DEFAULT_MAX_OUTPUT;
pub use session::Session;

use crate::inventory::SshTarget;

/// Connect to all targets concurrently (a slow or dead host does not hold up the
/// others). Results come back in the order of `targets`, paired with the host name.
pub async fn connect_all(
    targets: &[SshTarget],
    opts: &SshOptions,
) -> Vec<(String, Result<Session, SshError>)> {
    let futs = targets.iter().map(|t| async move {
        let r = Session::connect(t, opts).await;
        (t.host.clone(), r)
    });
    futures_util::future::join_all(futs).await
}

/// Quote a string for POSIX sh, so it passes through as one word.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@+%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quotes_only_when_needed() {
        assert_eq!(shell_quote("/etc/x.conf"), "/etc/x.conf");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
