//! Connection, exec and upload. (Skeleton: the contract the rest of pgha codes against.)

use std::path::PathBuf;
use std::time::Duration;

use crate::inventory::SshTarget;

#[derive(Debug, Clone)]
pub struct SshOptions {
    /// known_hosts file to verify against (default ~/.ssh/known_hosts).
    pub known_hosts: PathBuf,
    /// Trust-on-first-use: record unknown host keys instead of refusing.
    pub accept_new_host_keys: bool,
    pub connect_timeout: Duration,
    /// Attempts before a host is reported unreachable (backoff between).
    pub connect_attempts: u32,
    /// Channels open at once on one connection (sshd's MaxSessions defaults to 10).
    pub max_channels: usize,
    /// Whether a passphrase may be asked on the terminal.
    pub interactive: bool,
}

/// A command to run on a host.
#[derive(Debug, Clone)]
pub struct Cmd {
    /// A POSIX sh script (run with `sh -c`).
    pub script: String,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    /// Run as root: through `sudo -n` when the SSH user is not root and become is on.
    pub as_root: bool,
}

impl Cmd {
    /// Run as root with the default timeout (10 minutes: apt can be slow and silent).
    pub fn root(script: impl Into<String>) -> Self {
        Cmd {
            script: script.into(),
            stdin: None,
            timeout: Duration::from_secs(600),
            as_root: true,
        }
    }
    /// Run as the SSH user.
    pub fn user(script: impl Into<String>) -> Self {
        Cmd {
            as_root: false,
            ..Cmd::root(script)
        }
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }
}

/// Result of a command. stdout/stderr are bounded; `*_truncated` tell when cut.
#[derive(Debug, Clone)]
pub struct Output {
    pub host: String,
    pub script: String,
    pub status: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

impl Output {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    pub fn success(&self) -> bool {
        self.status == 0
    }
    /// Ok(self) on exit 0, else SshError::Failed with the stderr tail.
    pub fn ok(self) -> Result<Output, SshError> {
        todo!()
    }
}

/// A file to put in place atomically (temp file in the same directory, then rename).
#[derive(Debug, Clone)]
pub struct Upload {
    pub path: String,
    pub content: Vec<u8>,
    pub owner: String,
    pub group: String,
    /// e.g. 0o640
    pub mode: u32,
    /// Optional validation command run on the temp file before it replaces the real one;
    /// `%s` is replaced by the temp path (like Ansible's `validate`).
    pub validate: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{host}: unreachable at {address}: {reason}")]
    Unreachable {
        host: String,
        address: String,
        reason: String,
    },
    #[error("placeholder")]
    Other(String),
}

#[derive(Clone)]
pub struct Session {}

impl Session {
    pub async fn connect(_target: &SshTarget, _opts: &SshOptions) -> Result<Session, SshError> {
        todo!()
    }
    pub fn host(&self) -> &str {
        todo!()
    }
    pub async fn exec(&self, _cmd: &Cmd) -> Result<Output, SshError> {
        todo!()
    }
    pub async fn upload(&self, _file: &Upload) -> Result<(), SshError> {
        todo!()
    }
    pub async fn sha256(&self, _path: &str) -> Result<Option<String>, SshError> {
        todo!()
    }
    pub async fn close(&self) {}
}
