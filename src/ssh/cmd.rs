//! What a session runs and returns: connection options, commands, their bounded
//! output, and atomic uploads. Plain data; `session` carries them over SSH.

use std::path::PathBuf;
use std::time::Duration;

use super::error::SshError;
use super::known_hosts::HostKeyPolicy;
use super::script;

#[derive(Debug, Clone)]
pub struct SshOptions {
    /// known_hosts file to verify against (default ~/.ssh/known_hosts).
    pub known_hosts: PathBuf,
    /// Trust-on-first-use: record unknown host keys instead of refusing.
    pub accept_new_host_keys: bool,
    /// Bound for each connection attempt (TCP connect, then SSH handshake), and for
    /// each authentication request.
    pub connect_timeout: Duration,
    /// Attempts before a host is reported unreachable (backoff between: 0.5 s, 1 s, 2 s...).
    pub connect_attempts: u32,
    /// Channels open at once on one connection (sshd's MaxSessions defaults to 10).
    pub max_channels: usize,
    /// Whether a passphrase may be asked on the terminal.
    pub interactive: bool,
    /// Bytes kept of each of stdout and stderr per command (the first ones).
    pub max_output: usize,
    /// Keepalive interval; the connection is dropped after `keepalive_max` unanswered ones.
    pub keepalive_interval: Duration,
    pub keepalive_max: usize,
}

impl SshOptions {
    /// Defaults: strict host keys, 10 s connect timeout, 3 attempts, 8 channels,
    /// non-interactive, 8 MiB per output stream, keepalive every 15 s (4 misses).
    pub fn new(known_hosts: PathBuf) -> Self {
        SshOptions {
            known_hosts,
            accept_new_host_keys: false,
            connect_timeout: Duration::from_secs(10),
            connect_attempts: 3,
            max_channels: 8,
            interactive: false,
            max_output: script::DEFAULT_MAX_OUTPUT,
            keepalive_interval: Duration::from_secs(15),
            keepalive_max: 4,
        }
    }

    /// `~/.ssh/known_hosts` (or `./known_hosts` without a home directory).
    pub fn default_known_hosts() -> PathBuf {
        std::env::home_dir()
            .map(|h| h.join(".ssh").join("known_hosts"))
            .unwrap_or_else(|| PathBuf::from("known_hosts"))
    }

    pub fn host_key_policy(&self) -> HostKeyPolicy {
        if self.accept_new_host_keys {
            HostKeyPolicy::AcceptNew
        } else {
            HostKeyPolicy::Strict
        }
    }
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions::new(SshOptions::default_known_hosts())
    }
}

/// A command to run on a host.
#[derive(Debug, Clone)]
pub struct Cmd {
    /// A POSIX sh script (run with `sh -c`).
    pub script: String,
    pub stdin: Option<Vec<u8>>,
    /// Told the number of stdin bytes sent so far, as they go (large transfers).
    pub stdin_progress: Option<StdinProgress>,
    pub timeout: Duration,
    /// Run as root: through `sudo -n` when the SSH user is not root and become is on.
    pub as_root: bool,
}

/// A callback for stdin progress: called with the bytes sent so far.
#[derive(Clone)]
pub struct StdinProgress(pub std::sync::Arc<dyn Fn(u64) + Send + Sync>);

impl std::fmt::Debug for StdinProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StdinProgress")
    }
}

/// Stdin is sent in chunks of this size (progress is reported after each).
pub(super) const STDIN_CHUNK: usize = 1 << 20;

impl Cmd {
    /// Run as root with the default timeout (10 minutes: apt can be slow and silent).
    pub fn root(script: impl Into<String>) -> Self {
        Cmd {
            script: script.into(),
            stdin: None,
            stdin_progress: None,
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
    /// Report stdin progress to `f` (bytes sent so far) while it is sent.
    pub fn stdin_progress(mut self, f: impl Fn(u64) + Send + Sync + 'static) -> Self {
        self.stdin_progress = Some(StdinProgress(std::sync::Arc::new(f)));
        self
    }
}

/// Result of a command. stdout/stderr are bounded; `*_truncated` tell when cut.
#[derive(Debug, Clone)]
pub struct Output {
    pub host: String,
    pub script: String,
    /// Exit status; `128 + n` when killed by signal n (255 for an unknown signal).
    pub status: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Signal name (`TERM`, `KILL`...) when the command was killed by a signal.
    /// A note naming it is also appended to `stderr`.
    pub signal: Option<String>,
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
        if self.success() {
            return Ok(self);
        }
        Err(SshError::Failed {
            host: self.host.clone(),
            command: script::first_line(&self.script),
            status: self.status,
            stderr_tail: self.tail(),
        })
    }
    /// The last 20 lines of stderr, or of stdout when stderr is empty.
    pub fn tail(&self) -> String {
        let t = script::tail_lines(&self.stderr, 20);
        if t.is_empty() {
            script::tail_lines(&self.stdout, 20)
        } else {
            t
        }
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
