//! Connection, exec and upload over one russh connection per host.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::Algorithm;
use russh::{ChannelMsg, ChannelWriteHalf, Disconnect, Preferred, Sig};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::client::{Client, HandlerError};
use super::cmd::{Cmd, Output, STDIN_CHUNK, SshOptions, StdinProgress, Upload};
use super::error::SshError;
use super::known_hosts::{self, KnownHosts};
use super::script::{self, Bounded, SudoProblem};
use crate::inventory::SshTarget;

struct Inner {
    target: SshTarget,
    handle: Handle<Client>,
    channels: Semaphore,
    max_output: usize,
}

/// One authenticated SSH connection to a host, shared by clones (cheap: Arc inside).
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("host", &self.inner.target.host)
            .field("address", &self.inner.target.address)
            .field("user", &self.inner.target.user)
            .finish()
    }
}

/// Outcome of one connection attempt.
enum Attempt {
    /// Worth retrying: the host may come up (reason for the final message).
    Retry(String),
    /// Not retried (host key, authentication, known_hosts file).
    Fatal(SshError),
}

fn ssh_config(opts: &SshOptions, known: &[Algorithm]) -> client::Config {
    let mut preferred = Preferred::DEFAULT;
    if !known.is_empty() {
        // Ask for a host key type we can verify first, as OpenSSH does; a server that no
        // longer has it then shows up as a changed key, not as an unknown one.
        let all = preferred.key.to_vec();
        let is_known = |a: &Algorithm| known.iter().any(|k| known_hosts::same_family(k, a));
        let mut keys: Vec<Algorithm> = all.iter().filter(|a| is_known(a)).cloned().collect();
        keys.extend(all.iter().filter(|a| !is_known(a)).cloned());
        preferred.key = Cow::Owned(keys);
    }
    client::Config {
        preferred,
        inactivity_timeout: None,
        keepalive_interval: Some(opts.keepalive_interval),
        keepalive_max: opts.keepalive_max,
        nodelay: true,
        ..Default::default()
    }
}

impl Session {
    /// Connect and authenticate, retrying unreachable hosts with backoff
    /// (host key and authentication failures are not retried).
    pub async fn connect(target: &SshTarget, opts: &SshOptions) -> Result<Session, SshError> {
        let attempts = opts.connect_attempts.max(1);
        let mut reason = String::new();
        for i in 0..attempts {
            if i > 0 {
                let backoff = Duration::from_millis(500u64 << (i - 1).min(4));
                tracing::debug!(host = %target.host, "connect attempt {} failed ({reason}); retrying in {backoff:?}", i);
                tokio::time::sleep(backoff).await;
            }
            match Self::attempt(target, opts).await {
                Ok(s) => return Ok(s),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(r)) => reason = r,
            }
        }
        if attempts > 1 {
            reason = format!("{reason} ({attempts} attempts)");
        }
        Err(SshError::Unreachable {
            host: target.host.clone(),
            address: format!("{}:{}", target.address, target.port),
            reason,
        })
    }

    async fn attempt(target: &SshTarget, opts: &SshOptions) -> Result<Session, Attempt> {
        let t = opts.connect_timeout;
        let addrs: Vec<std::net::SocketAddr> = match tokio::time::timeout(
            t,
            tokio::net::lookup_host((target.address.as_str(), target.port)),
        )
        .await
        {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => {
                return Err(Attempt::Retry(format!(
                    "cannot resolve {}: {e}",
                    target.address
                )));
            }
            Err(_) => {
                return Err(Attempt::Retry(format!(
                    "resolving {} timed out after {t:?}",
                    target.address
                )));
            }
        };
        let mut stream = None;
        let mut last = format!("{} resolves to no address", target.address);
        for a in addrs {
            match tokio::time::timeout(t, TcpStream::connect(a)).await {
                Ok(Ok(s)) => {
                    stream = Some(s);
                    break;
                }
                Ok(Err(e)) => last = format!("TCP connect to {a}: {}", io_reason(&e)),
                Err(_) => last = format!("TCP connect to {a}: timed out after {t:?}"),
            }
        }
        let Some(stream) = stream else {
            return Err(Attempt::Retry(last));
        };

        let known = KnownHosts::load(&opts.known_hosts)
            .map(|kh| kh.known_algorithms(&target.address, target.port))
            .unwrap_or_default();
        let handler = Client {
            host: target.host.clone(),
            address: target.address.clone(),
            port: target.port,
            known_hosts: opts.known_hosts.clone(),
            policy: opts.host_key_policy(),
        };
        let config = Arc::new(ssh_config(opts, &known));
        let mut handle =
            match tokio::time::timeout(t, client::connect_stream(config, stream, handler)).await {
                Ok(Ok(h)) => h,
                Ok(Err(HandlerError::HostKey(e))) => return Err(Attempt::Fatal(e)),
                Ok(Err(HandlerError::Russh(e))) => {
                    return Err(Attempt::Retry(format!(
                        "SSH handshake failed: {}",
                        russh_reason(&e)
                    )));
                }
                Err(_) => {
                    return Err(Attempt::Retry(format!(
                        "SSH handshake timed out after {t:?}"
                    )));
                }
            };

        if let Err(tried) = super::auth::authenticate(
            &mut handle,
            &target.user,
            target.key_file.as_deref(),
            opts.interactive,
            t,
        )
        .await
        {
            let _ = handle.disconnect(Disconnect::ByApplication, "", "en").await;
            return Err(Attempt::Fatal(SshError::Auth {
                host: target.host.clone(),
                user: target.user.clone(),
                address: format!("{}:{}", target.address, target.port),
                tried: tried.join("; "),
            }));
        }
        tracing::debug!(host = %target.host, "connected to {}@{}:{}", target.user, target.address, target.port);
        Ok(Session {
            inner: Arc::new(Inner {
                target: target.clone(),
                handle,
                channels: Semaphore::new(opts.max_channels.max(1)),
                max_output: opts.max_output,
            }),
        })
    }

    /// The inventory name of the host.
    pub fn host(&self) -> &str {
        &self.inner.target.host
    }

    pub fn target(&self) -> &SshTarget {
        &self.inner.target
    }

    /// True once the connection is gone (closed or broken).
    pub fn is_closed(&self) -> bool {
        self.inner.handle.is_closed()
    }

    fn lost(&self, reason: impl Into<String>) -> SshError {
        SshError::ConnectionLost {
            host: self.host().to_string(),
            reason: reason.into(),
        }
    }

    /// A place among the channels this session may have open at once.
    async fn channel_permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, SshError> {
        self.inner
            .channels
            .acquire()
            .await
            .map_err(|_| self.lost("session closed"))
    }

    /// Open a session channel. sshd frees a finished session only after it has handled
    /// our close, so a burst of new channels can briefly exceed its MaxSessions (and some
    /// servers allow fewer than `max_channels`): refusals are retried for a while.
    async fn open_channel(&self) -> Result<russh::Channel<client::Msg>, SshError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut pause = Duration::from_millis(20);
        loop {
            match self.inner.handle.channel_open_session().await {
                Ok(c) => return Ok(c),
                Err(russh::Error::ChannelOpenFailure(reason))
                    if tokio::time::Instant::now() + pause < deadline =>
                {
                    tracing::debug!(host = %self.host(), "channel refused ({reason:?}); retrying in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(russh::Error::ChannelOpenFailure(reason)) => {
                    return Err(SshError::Protocol {
                        host: self.host().to_string(),
                        reason: format!(
                            "the server keeps refusing new session channels ({reason:?}); \
                             is sshd's MaxSessions lower than max_channels?"
                        ),
                    });
                }
                Err(e) => {
                    return Err(self.lost(format!("cannot open a channel: {}", russh_reason(&e))));
                }
            }
        }
    }

    /// Run a command on its own channel; waits for a free channel slot first.
    /// A non-zero exit is not an error here (see `Output::ok`); sudo refusing is
    /// (`SudoPassword`, `Sudo`), as is the timeout.
    // Long by design: one loop over the channel's messages (output, exit status,
    // signals, the deadline) whose state stays local to it.
    pub async fn exec(&self, cmd: &Cmd) -> Result<Output, SshError> {
        let t = &self.inner.target;
        let (line, sudo) = script::wrap(&cmd.script, cmd.as_root, &t.user, t.become_, cmd.timeout);
        let shown = script::first_line(&cmd.script);
        tracing::debug!(host = %t.host, as_root = cmd.as_root, sudo, "exec: {shown}");

        let _permit = self.channel_permit().await?;
        let channel = self.open_channel().await?;
        let (mut rx, tx) = channel.split();
        // Closes the channel (and stops the command) if this future is dropped midway.
        let mut guard = ChannelGuard(Some(tx));
        let tx = guard.0.as_ref().expect("set above");

        let max = self.inner.max_output;
        let mut stdout = Bounded::new(max);
        let mut stderr = Bounded::new(max);
        let mut status: Option<u32> = None;
        let mut signal: Option<(String, bool, String)> = None;

        let run = async {
            tx.exec(true, line.as_bytes())
                .await
                .map_err(|e| self.lost(russh_reason(&e)))?;
            // Feed stdin while reading output (a command may write before it reads);
            // the outcome is decided by the reading side alone.
            let feed = async {
                if let Some(data) = &cmd.stdin {
                    // In chunks, so a large transfer can report its progress.
                    let mut done = 0u64;
                    for chunk in data.chunks(STDIN_CHUNK) {
                        if let Err(e) = tx.data_bytes(chunk.to_vec()).await {
                            tracing::debug!(host = %t.host, "stdin not fully sent: {e}");
                            break;
                        }
                        done += chunk.len() as u64;
                        if let Some(StdinProgress(report)) = &cmd.stdin_progress {
                            report(done);
                        }
                    }
                }
                let _ = tx.eof().await;
                std::future::pending::<()>().await
            };
            let read = async {
                loop {
                    let msg = if status.is_some() || signal.is_some() {
                        // Exited: output normally ends at once. A background process
                        // still holding stdout/stderr must not keep us waiting.
                        match tokio::time::timeout(EXIT_GRACE, rx.wait()).await {
                            Ok(m) => m,
                            Err(_) => {
                                tracing::debug!(host = %t.host, "`{shown}` exited but its output stays open (a background process?); not waiting for it");
                                break;
                            }
                        }
                    } else {
                        rx.wait().await
                    };
                    let Some(msg) = msg else { break };
                    match msg {
                        ChannelMsg::Data { data } => stdout.push(&data),
                        ChannelMsg::ExtendedData { data, ext: 1 } => stderr.push(&data),
                        ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                        ChannelMsg::ExitSignal {
                            signal_name,
                            core_dumped,
                            error_message,
                            ..
                        } => signal = Some((sig_name(&signal_name), core_dumped, error_message)),
                        ChannelMsg::Failure => {
                            return Err(SshError::Protocol {
                                host: t.host.clone(),
                                reason: format!("the server refused to run the command: {shown}"),
                            });
                        }
                        ChannelMsg::Close => break,
                        _ => {}
                    }
                }
                Ok(())
            };
            tokio::select! {
                r = read => r,
                _ = feed => unreachable!(),
            }
        };
        let res = tokio::time::timeout(cmd.timeout, run).await;
        if res.is_err() {
            // Ask sshd to stop the command (sudo relays the signal), then close.
            let _ = tx.signal(Sig::TERM).await;
        }
        let _ = tx.close().await;
        guard.0 = None;
        match res {
            Err(_) => {
                return Err(SshError::Timeout {
                    host: t.host.clone(),
                    command: shown,
                    after: cmd.timeout,
                });
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(())) => {}
        }

        let mut out = Output {
            host: t.host.clone(),
            script: cmd.script.clone(),
            status: 0,
            stdout: stdout.buf,
            stderr: stderr.buf,
            stdout_truncated: stdout.truncated,
            stderr_truncated: stderr.truncated,
            signal: None,
        };
        match (status, signal) {
            (_, Some((name, core, msg))) => {
                out.status = script::signal_number(&name).map_or(255, |n| 128 + n);
                let mut note = format!("pgha: remote command killed by signal {name}");
                if core {
                    note.push_str(" (core dumped)");
                }
                if !msg.is_empty() {
                    note.push_str(&format!(": {msg}"));
                }
                if !out.stderr.is_empty() && !out.stderr.ends_with(b"\n") {
                    out.stderr.push(b'\n');
                }
                out.stderr.extend_from_slice(note.as_bytes());
                out.stderr.push(b'\n');
                out.signal = Some(name);
            }
            (Some(s), None) => out.status = s,
            (None, None) => {
                let why = if self.is_closed() {
                    "the connection closed while a command was running"
                } else {
                    "the channel closed without an exit status"
                };
                return Err(self.lost(format!("{why}: {shown}")));
            }
        }
        if sudo && let Some(p) = script::sudo_problem(out.status, &out.stdout, &out.stderr) {
            return Err(match p {
                SudoProblem::Password => SshError::SudoPassword {
                    host: t.host.clone(),
                    user: t.user.clone(),
                },
                SudoProblem::Other(message) => SshError::Sudo {
                    host: t.host.clone(),
                    user: t.user.clone(),
                    message,
                },
            });
        }
        if out.stdout_truncated || out.stderr_truncated {
            tracing::debug!(host = %t.host, "output of `{}` truncated to {max} bytes", script::first_line(&cmd.script));
        }
        Ok(out)
    }

    /// One request to a Unix socket on the host, through sshd's streamlocal
    /// forwarding (no process started; sshd opens the socket as the login user, so
    /// the socket's permissions apply to that user): `request` written, then
    /// everything the socket answers until it closes, within `timeout`.
    pub async fn unix_socket(
        &self,
        path: &str,
        request: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, SshError> {
        let t = &self.inner.target;
        let _permit = self.channel_permit().await?;
        let run = async {
            let channel = self
                .inner
                .handle
                .channel_open_direct_streamlocal(path)
                .await
                .map_err(|e| SshError::Protocol {
                    host: t.host.clone(),
                    reason: format!(
                        "sshd did not connect to {path} as {}: {}",
                        t.user,
                        russh_reason(&e)
                    ),
                })?;
            let (mut rx, tx) = channel.split();
            tx.data_bytes(request.to_vec())
                .await
                .map_err(|e| self.lost(russh_reason(&e)))?;
            let _ = tx.eof().await;
            let mut answer = Vec::new();
            while let Some(msg) = rx.wait().await {
                match msg {
                    ChannelMsg::Data { data } => answer.extend_from_slice(&data),
                    ChannelMsg::Eof | ChannelMsg::Close => break,
                    _ => {}
                }
            }
            let _ = tx.close().await;
            Ok(answer)
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| SshError::Timeout {
                host: t.host.clone(),
                command: format!("a request to {path}"),
                after: timeout,
            })?
    }

    /// Check that privileged commands work (runs `true` as root).
    pub async fn check_sudo(&self) -> Result<(), SshError> {
        self.exec(&Cmd::root("true").timeout(Duration::from_secs(60)))
            .await?
            .ok()
            .map(|_| ())
    }

    /// Put a file in place atomically, in one round trip (see `Upload`).
    /// The content travels on stdin and is never logged.
    pub async fn upload(&self, file: &Upload) -> Result<(), SshError> {
        if file.owner.is_empty() || file.group.is_empty() || !file.path.starts_with('/') {
            return Err(SshError::Protocol {
                host: self.host().to_string(),
                reason: format!(
                    "bad upload of {:?}: needs an absolute path, an owner and a group",
                    file.path
                ),
            });
        }
        let s = script::upload_script(
            &file.path,
            &file.owner,
            &file.group,
            file.mode,
            file.validate.as_deref(),
        );
        let cmd = Cmd {
            script: s,
            stdin: Some(file.content.clone()),
            timeout: Duration::from_secs(300),
            ..Cmd::root("")
        };
        self.exec(&cmd).await?.ok().map(|_| ())
    }

    /// SHA-256 (lowercase hex) of a remote file, read as root; None when it does not exist.
    pub async fn sha256(&self, path: &str) -> Result<Option<String>, SshError> {
        let out = self
            .exec(&Cmd::root(script::sha256_script(path)).timeout(Duration::from_secs(120)))
            .await?
            .ok()?;
        script::parse_sha256(&out.stdout_str()).ok_or_else(|| SshError::Protocol {
            host: self.host().to_string(),
            reason: format!(
                "unexpected sha256sum output for {path}: {}",
                out.stdout_str().trim()
            ),
        })
    }

    /// Disconnect. Other clones of this session cannot run commands afterwards.
    pub async fn close(&self) {
        let _ = self
            .inner
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// How long to wait for the end of output once a command has exited.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Owns a channel's write half; when dropped still armed (the exec future was
/// cancelled), stops the command and closes the channel in the background.
struct ChannelGuard(Option<ChannelWriteHalf<client::Msg>>);

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = tx.signal(Sig::TERM).await;
                let _ = tx.close().await;
            });
        }
    }
}

fn sig_name(s: &Sig) -> String {
    match s {
        Sig::ABRT => "ABRT".into(),
        Sig::ALRM => "ALRM".into(),
        Sig::FPE => "FPE".into(),
        Sig::HUP => "HUP".into(),
        Sig::ILL => "ILL".into(),
        Sig::INT => "INT".into(),
        Sig::KILL => "KILL".into(),
        Sig::PIPE => "PIPE".into(),
        Sig::QUIT => "QUIT".into(),
        Sig::SEGV => "SEGV".into(),
        Sig::TERM => "TERM".into(),
        Sig::USR1 => "USR1".into(),
        Sig::Custom(c) => c.clone(),
    }
}

fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    let kind = match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::TimedOut => "timed out",
        K::HostUnreachable => "no route to host",
        K::NetworkUnreachable => "network unreachable",
        K::ConnectionReset => "connection reset",
        _ => return e.to_string(),
    };
    format!("{kind} ({e})")
}

fn russh_reason(e: &russh::Error) -> String {
    match e {
        russh::Error::IO(io) => io_reason(io),
        other => other.to_string(),
    }
}
