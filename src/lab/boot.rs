//! A lab host's boot as seen from inside: systemd up, sshd answering with the host's
//! own key, and the lab's key authorized.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::docker;
use crate::error::Failure;
use crate::wait;

/// Bound for a host to boot: systemd up, sshd answering.
pub(super) const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// What a host's boot looks like from inside (one `docker exec`).
#[derive(Debug, Default, PartialEq, Eq)]
struct BootState {
    system: String,
    ssh: String,
    host_key: Option<String>,
}

const BOOT_PROBE: &str = "echo \"system=$(systemctl is-system-running 2>/dev/null)\"; \
echo \"ssh=$(systemctl is-active ssh.service 2>/dev/null)\"; \
k=$(cat /etc/ssh/ssh_host_ed25519_key.pub 2>/dev/null) && echo \"key=$k\"; true";

fn parse_boot_state(stdout: &str) -> BootState {
    let mut s = BootState::default();
    for line in stdout.lines() {
        if let Some(v) = line.strip_prefix("system=") {
            s.system = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("ssh=") {
            s.ssh = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("key=") {
            s.host_key = Some(v.trim().to_string()).filter(|k| !k.is_empty());
        }
    }
    s
}

impl BootState {
    /// The host key once systemd is up (running or degraded) and sshd is active.
    fn ready(&self) -> Option<&str> {
        let up = self.system == "running" || self.system == "degraded";
        if up && self.ssh == "active" {
            self.host_key.as_deref()
        } else {
            None
        }
    }
    fn describe(&self) -> String {
        let or_none = |s: &str| {
            if s.is_empty() {
                "unknown".to_string()
            } else {
                s.to_string()
            }
        };
        format!(
            "systemd {}, ssh.service {}, ed25519 host key {}",
            or_none(&self.system),
            or_none(&self.ssh),
            if self.host_key.is_some() {
                "present"
            } else {
                "missing"
            }
        )
    }
}

/// Wait until the container's systemd is running (or degraded), ssh.service is active
/// and, with `probe`, sshd answers on `probe:22` from this machine. Returns the host's
/// ed25519 public key line. Fails at once when the container stops.
pub(super) async fn wait_ready(container: &str, probe: Option<IpAddr>) -> Result<String, Failure> {
    let what = match probe {
        Some(ip) => format!("{container} to boot (systemd up, sshd answering on {ip}:22)"),
        None => format!("{container} to boot (systemd up, ssh.service active)"),
    };
    wait::until(&what, BOOT_TIMEOUT, || async move {
        let out = docker::exec_sh(container, BOOT_PROBE, &[], Duration::from_secs(20)).await;
        let out = match out {
            Ok(o) => o,
            Err(e) => return Err(e.message),
        };
        if !out.success() {
            // Not running any more? Then waiting is pointless.
            if let Ok(Some(v)) = docker::inspect("container", container).await
                && v["State"]["Running"].as_bool() == Some(false)
            {
                let logs = docker::output(&["logs", "--tail", "15", container], docker::TIMEOUT)
                    .await
                    .map(|o| docker::tail(&format!("{}\n{}", o.stdout, o.stderr), 15))
                    .unwrap_or_default();
                return Ok(Err(Failure::error(format!(
                    "{container} stopped while booting (status {}, exit code {}); its last output:\n{logs}",
                    v["State"]["Status"].as_str().unwrap_or("?"),
                    v["State"]["ExitCode"]
                ))));
            }
            return Err(format!(
                "docker exec failed: {}",
                docker::tail(&out.stderr, 3).trim()
            ));
        }
        let state = parse_boot_state(&out.stdout);
        let Some(key) = state.ready() else {
            return Err(state.describe());
        };
        if let Some(ip) = probe {
            ssh_banner(SocketAddr::new(ip, 22))
                .await
                .map_err(|e| format!("{}; but {e}", state.describe()))?;
        }
        Ok(Ok(key.to_string()))
    })
    .await
    .map_err(|e| Failure::error(e.to_string()))?
}

/// Connect to `addr` and read the SSH banner.
pub(super) async fn ssh_banner(addr: SocketAddr) -> Result<(), String> {
    let t = Duration::from_secs(3);
    let mut s = match tokio::time::timeout(t, tokio::net::TcpStream::connect(addr)).await {
        Err(_) => return Err(format!("TCP connect to {addr} timed out")),
        Ok(Err(e)) => return Err(format!("TCP connect to {addr}: {e}")),
        Ok(Ok(s)) => s,
    };
    let mut buf = [0u8; 64];
    let n = match tokio::time::timeout(t, s.read(&mut buf)).await {
        Err(_) => return Err(format!("{addr} sent no SSH banner within 3s")),
        Ok(Err(e)) => return Err(format!("reading the SSH banner from {addr}: {e}")),
        Ok(Ok(n)) => n,
    };
    if buf[..n].starts_with(b"SSH-") {
        Ok(())
    } else {
        Err(format!(
            "{addr} answered {:?} instead of an SSH banner",
            String::from_utf8_lossy(&buf[..n])
        ))
    }
}

/// Authorize the lab key for root and deploy (appended when missing; other keys kept).
const INSTALL_KEY: &str = r#"set -e
key="$1"
for u in root deploy; do
  home=$(getent passwd "$u" | cut -d: -f6)
  [ -n "$home" ] || continue
  install -d -m 700 "$home/.ssh"
  f="$home/.ssh/authorized_keys"
  touch "$f"
  grep -qxF "$key" "$f" || printf '%s\n' "$key" >> "$f"
  chmod 600 "$f"
  chown -R "$u:" "$home/.ssh"
done"#;

pub(super) async fn install_key(container: &str, public_key: &str) -> Result<(), Failure> {
    let out = docker::exec_sh(
        container,
        INSTALL_KEY,
        &[public_key],
        Duration::from_secs(30),
    )
    .await?;
    if out.success() {
        Ok(())
    } else {
        Err(Failure::error(format!(
            "{container}: cannot authorize the lab's SSH key: {}",
            docker::tail(&out.stderr, 5).trim()
        )))
    }
}

// ---------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_state_parsing() {
        let s = parse_boot_state("system=starting\nssh=activating\n");
        assert_eq!(s.ready(), None);
        assert_eq!(
            s.describe(),
            "systemd starting, ssh.service activating, ed25519 host key missing"
        );
        let s = parse_boot_state("system=degraded\nssh=active\nkey=ssh-ed25519 AAAA root@db1\n");
        assert_eq!(s.ready(), Some("ssh-ed25519 AAAA root@db1"));
        let s = parse_boot_state("system=running\nssh=inactive\nkey=ssh-ed25519 AAAA\n");
        assert_eq!(s.ready(), None);
        assert_eq!(
            parse_boot_state("").describe(),
            "systemd unknown, ssh.service unknown, ed25519 host key missing"
        );
    }
}
