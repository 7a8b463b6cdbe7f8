//! Docker on this machine: the docker CLI run through tokio::process (every error
//! names the command and carries docker's stderr), the Debian 13 base image built
//! with debootstrap (`base`), pgha's stack image for the docker install method
//! (`stack`), and free subnets for bridge networks (`net`). Used by the product
//! (images for `install_method: docker`) and by the lab alike.
//!
//! Layer 1 (an edge): imports only `error` and `wait`.

pub mod base;
pub mod net;
pub mod stack;

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use crate::error::Failure;

/// Default bound for one docker call (image builds pass their own).
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// What a docker call printed and how it ended.
#[derive(Debug, Clone)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// `docker ARGS` shown in messages: long arguments (scripts) are abbreviated.
pub fn show(args: &[&str]) -> String {
    let mut s = String::from("docker");
    for a in args {
        s.push(' ');
        let one_line = a.lines().next().unwrap_or_default();
        if a.len() > 60 || one_line.len() != a.len() {
            let cut: String = one_line.chars().take(40).collect();
            s.push_str(&format!("'{cut}...'"));
        } else if a.is_empty() || a.contains(' ') {
            s.push_str(&format!("'{a}'"));
        } else {
            s.push_str(a);
        }
    }
    s
}

/// Last `n` non-empty lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn spawn_error(args: &[&str], e: &std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::NotFound {
        Failure::error(
            "the docker CLI is not installed: the lab's hosts are Docker containers and need a \
             running Docker engine (e.g. apt-get install docker.io)",
        )
    } else {
        Failure::error(format!("cannot run {}: {e}", show(args)))
    }
}

/// Run `cmd` with stdin closed and output captured, killed if it outlives `timeout`.
/// `Err(None)`: it timed out; `Err(Some(e))`: it could not be started.
pub async fn bounded(
    mut cmd: Command,
    timeout: Duration,
) -> Result<std::process::Output, Option<std::io::Error>> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, child).await {
        Err(_) => Err(None),
        Ok(r) => r.map_err(Some),
    }
}

/// `SOURCE | docker import IMPORT_ARGS... -`: a root filesystem streamed from
/// another process into a new image, both bounded by `timeout`. Returns both
/// processes' outputs (the caller judges them: each names its failure its way).
pub async fn import_from(
    mut source: Command,
    what: &str,
    import_args: &[&str],
    timeout: Duration,
) -> Result<(std::process::Output, std::process::Output), Failure> {
    let mut child = source
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Failure::error(format!("cannot run {what}: {e}")))?;
    let stdout: Stdio = child
        .stdout
        .take()
        .expect("piped")
        .try_into()
        .map_err(|e| Failure::error(format!("cannot pipe {what} into docker import: {e}")))?;
    let import = Command::new("docker")
        .arg("import")
        .args(import_args)
        .stdin(stdout)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let both = async { tokio::join!(child.wait_with_output(), import) };
    let (src, imp) = tokio::time::timeout(timeout, both)
        .await
        .map_err(|_| Failure::error(format!("{what} | docker import timed out")))?;
    let src = src.map_err(|e| Failure::error(format!("{what}: {e}")))?;
    let imp = imp.map_err(|e| Failure::error(format!("cannot run docker import: {e}")))?;
    Ok((src, imp))
}

/// Run `docker ARGS` (stdin closed) within `timeout`; a non-zero exit is not an error here.
pub async fn output(args: &[&str], timeout: Duration) -> Result<Out, Failure> {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    match bounded(cmd, timeout).await {
        Err(None) => Err(Failure::error(format!(
            "{} did not finish within {}s",
            show(args),
            timeout.as_secs()
        ))),
        Err(Some(e)) => Err(spawn_error(args, &e)),
        Ok(o) => Ok(Out {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }),
    }
}

/// The failure for a docker call that exited non-zero.
pub fn failed(args: &[&str], out: &Out) -> Failure {
    let code = out
        .code
        .map_or_else(|| "a signal".to_string(), |c| format!("exit {c}"));
    let mut detail = tail(&out.stderr, 20);
    if detail.is_empty() {
        detail = tail(&out.stdout, 20);
    }
    Failure::error(format!("{} failed ({code}): {}", show(args), detail.trim()))
}

/// Run `docker ARGS` within `timeout`; stdout on success, docker's stderr in the error.
pub async fn run_with(args: &[&str], timeout: Duration) -> Result<String, Failure> {
    let out = output(args, timeout).await?;
    if out.success() {
        Ok(out.stdout)
    } else {
        Err(failed(args, &out))
    }
}

/// `run_with` with the default timeout.
pub async fn run(args: &[&str]) -> Result<String, Failure> {
    run_with(args, TIMEOUT).await
}

/// Check that the engine answers, with a clear message when it does not.
pub async fn check_engine() -> Result<(), Failure> {
    let args = ["version", "--format", "{{.Server.Version}}"];
    let out = output(&args, Duration::from_secs(30)).await?;
    if out.success() {
        return Ok(());
    }
    Err(Failure::error(format!(
        "the Docker engine is not reachable (the lab's hosts are Docker containers): {}",
        tail(&out.stderr, 5).trim()
    )))
}

/// `docker KIND inspect NAMES...` as JSON objects; None when an object does not exist
/// (only when a single name is asked for).
pub async fn inspect(kind: &str, name: &str) -> Result<Option<Value>, Failure> {
    let args = [kind, "inspect", name];
    let out = output(&args, TIMEOUT).await?;
    if !out.success() {
        let e = out.stderr.to_ascii_lowercase();
        if e.contains("no such") || e.contains("not found") {
            return Ok(None);
        }
        return Err(failed(&args, &out));
    }
    let v: Value = serde_json::from_str(&out.stdout)
        .map_err(|e| Failure::error(format!("{}: unexpected output ({e})", show(&args))))?;
    Ok(v.as_array().and_then(|a| a.first()).cloned())
}

/// Inspect several objects of one kind at once (all must exist).
pub async fn inspect_many(kind: &str, names: &[String]) -> Result<Vec<Value>, Failure> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec![kind, "inspect"];
    args.extend(names.iter().map(String::as_str));
    let out = run(&args).await?;
    match serde_json::from_str::<Value>(&out) {
        Ok(Value::Array(a)) => Ok(a),
        _ => Err(Failure::error(format!(
            "{}: unexpected output",
            show(&args[..2])
        ))),
    }
}

/// IDs (or names) printed one per line.
pub fn lines(out: &str) -> Vec<String> {
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// `docker exec CONTAINER sh -c SCRIPT sh ARGS...`.
pub async fn exec_sh(
    container: &str,
    script: &str,
    script_args: &[&str],
    timeout: Duration,
) -> Result<Out, Failure> {
    let mut args = vec!["exec", container, "sh", "-c", script, "sh"];
    args.extend_from_slice(script_args);
    output(&args, timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_abbreviates_scripts() {
        assert_eq!(
            show(&["exec", "c1", "sh", "-c", "set -e\necho hi", "sh"]),
            "docker exec c1 sh -c 'set -e...' sh"
        );
        assert_eq!(
            show(&["ps", "--format", "{{.ID}} x"]),
            "docker ps --format '{{.ID}} x'"
        );
    }

    #[test]
    fn tail_keeps_the_last_non_empty_lines() {
        assert_eq!(tail("a\n\nb\nc\n\n", 2), "b\nc");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn failure_carries_stderr() {
        let out = Out {
            code: Some(1),
            stdout: String::new(),
            stderr: "Error: No such container: x\n".into(),
        };
        let f = failed(&["kill", "x"], &out);
        assert_eq!(
            f.message,
            "docker kill x failed (exit 1): Error: No such container: x"
        );
    }
}
