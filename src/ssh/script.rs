//! Pure helpers for commands: wrapping for sudo, the upload script, bounded buffers,
//! error text extraction. No I/O here, so all of it is unit-tested.

use std::time::Duration;

use super::shell_quote;

/// Default bound for each of stdout and stderr (the first 8 MiB are kept).
pub const DEFAULT_MAX_OUTPUT: usize = 8 * 1024 * 1024;

/// The remote command line for a script: `timeout -k 5 N sh -c '<script>'`, prefixed with
/// `sudo -n --` when it must run as root, the SSH user is not root and become is on.
///
/// The remote `timeout` (N = the command's timeout + 2 s) makes sure nothing the command
/// started outlives it: it runs the script in its own process group and kills the group
/// when time is up, or at once when it gets the TERM pgha sends on its own timeout
/// (sshd does not stop a command when its channel closes). Returns (line, uses_sudo).
pub fn wrap(
    script: &str,
    as_root: bool,
    user: &str,
    become_: bool,
    timeout: Duration,
) -> (String, bool) {
    let mut line = String::new();
    let sudo = needs_sudo(as_root, user, become_);
    if sudo {
        line.push_str("sudo -n -- ");
    }
    if timeout < Duration::from_secs(7 * 24 * 3600) {
        let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0) + 2;
        line.push_str(&format!("timeout -k 5 {secs} "));
    }
    line.push_str("sh -c ");
    line.push_str(&shell_quote(script));
    (line, sudo)
}

pub fn needs_sudo(as_root: bool, user: &str, become_: bool) -> bool {
    as_root && become_ && user != "root"
}

/// The first line of a script, at most 120 characters (for messages and logs).
pub fn first_line(script: &str) -> String {
    let line = script
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let more_lines = script.trim().lines().count() > 1;
    let mut out: String = line.chars().take(120).collect();
    if line.chars().count() > 120 || more_lines {
        out.push_str(" ...");
    }
    out
}

/// The last `n` lines of a byte buffer, as text.
pub fn tail_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// A buffer keeping the first `limit` bytes of a stream and noting whether more came.
#[derive(Debug, Default)]
pub struct Bounded {
    pub buf: Vec<u8>,
    pub limit: usize,
    pub truncated: bool,
}

impl Bounded {
    pub fn new(limit: usize) -> Self {
        Bounded {
            buf: Vec::new(),
            limit,
            truncated: false,
        }
    }
    pub fn push(&mut self, data: &[u8]) {
        let room = self.limit.saturating_sub(self.buf.len());
        if data.len() > room {
            self.truncated = true;
        }
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
    }
}

/// What sudo said, when the failure is sudo's own and not the command's.
#[derive(Debug, PartialEq, Eq)]
pub enum SudoProblem {
    /// sudo wants a password (`sudo -n`: "a password is required").
    Password,
    /// Any other refusal by sudo (not in sudoers, not installed...), with its message.
    Other(String),
}

/// Recognise sudo's own failures in a wrapped command's result.
pub fn sudo_problem(status: u32, stdout: &[u8], stderr: &[u8]) -> Option<SudoProblem> {
    if !stdout.is_empty() {
        return None;
    }
    let err = String::from_utf8_lossy(stderr);
    let first = err.lines().next().unwrap_or("").trim();
    if status == 1 && first.starts_with("sudo:") {
        if first.contains("a password is required") || first.contains("a terminal is required") {
            return Some(SudoProblem::Password);
        }
        if first.contains("not in the sudoers file")
            || first.contains("is not allowed to")
            || first.contains("may not run sudo")
        {
            return Some(SudoProblem::Other(first.to_string()));
        }
    }
    if status == 127
        && (first.contains("sudo: not found") || first.contains("sudo: command not found"))
    {
        return Some(SudoProblem::Other(
            "sudo is not installed on the host (install it, or connect as root)".into(),
        ));
    }
    None
}

/// The shell script that puts a file in place atomically. Content comes on stdin.
///
/// It creates the parent directory when missing (root:root 0755), writes a temp file
/// next to the target (mktemp, umask 077), sets owner, group and mode, runs the
/// validation command on the temp file (`%s` = temp path) and, only when that passes,
/// renames it over the target. On any failure the temp file is removed.
pub fn upload_script(
    path: &str,
    owner: &str,
    group: &str,
    mode: u32,
    validate: Option<&str>,
) -> String {
    let (dir, base) = match path.rsplit_once('/') {
        Some(("", b)) => ("/".to_string(), b.to_string()),
        Some((d, b)) => (d.to_string(), b.to_string()),
        None => (".".to_string(), path.to_string()),
    };
    let q_path = shell_quote(path);
    let q_dir = shell_quote(&dir);
    let q_tmpl = shell_quote(&format!(
        "{}/.{}.pgha.XXXXXX",
        dir.trim_end_matches('/'),
        base
    ));
    let q_owner = shell_quote(&format!("{owner}:{group}"));
    let mut s = String::new();
    let shown: String = path.chars().filter(|c| !c.is_control()).collect();
    s.push_str(&format!("# pgha upload {shown}\n"));
    s.push_str("set -e\n");
    s.push_str(&format!(
        "if [ ! -d {q_dir} ]; then umask 022; mkdir -p {q_dir}; chown root:root {q_dir}; chmod 0755 {q_dir}; fi\n"
    ));
    s.push_str("umask 077\n");
    s.push_str(&format!("t=$(mktemp {q_tmpl})\n"));
    s.push_str("trap 'rm -f \"$t\"' EXIT\n");
    s.push_str("cat > \"$t\"\n");
    s.push_str(&format!("chown {q_owner} \"$t\"\n"));
    s.push_str(&format!("chmod {mode:04o} \"$t\"\n"));
    if let Some(v) = validate {
        let cmd = v.replace("%s", "\"$t\"");
        s.push_str(&format!(
            "{cmd} || {{ rc=$?; echo {} \"(exit $rc)\" >&2; exit 1; }}\n",
            shell_quote(&format!("pgha: validation of {path} failed: {v}"))
        ));
    }
    s.push_str(&format!("mv -f \"$t\" {q_path}\n"));
    s.push_str("trap - EXIT\n");
    s
}

/// The script behind `sha256`: prints the hex digest, or `absent`.
pub fn sha256_script(path: &str) -> String {
    let q = shell_quote(path);
    format!("if [ -e {q} ]; then sha256sum < {q}; else echo absent; fi")
}

/// Parse the output of `sha256_script`.
pub fn parse_sha256(stdout: &str) -> Option<Option<String>> {
    let t = stdout.trim();
    if t == "absent" {
        return Some(None);
    }
    let hex = t.split_whitespace().next()?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| Some(hex.to_ascii_lowercase()))
}

/// Conventional number of a signal name (for a `128 + n` exit status).
pub fn signal_number(name: &str) -> Option<u32> {
    Some(match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "ABRT" => 6,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping() {
        let t = Duration::from_secs(30);
        assert_eq!(
            wrap("id -u", true, "deploy", true, t),
            ("sudo -n -- timeout -k 5 32 sh -c 'id -u'".to_string(), true)
        );
        assert_eq!(
            wrap("id -u", true, "root", true, t),
            ("timeout -k 5 32 sh -c 'id -u'".to_string(), false)
        );
        assert_eq!(
            wrap("id -u", false, "deploy", true, t),
            ("timeout -k 5 32 sh -c 'id -u'".to_string(), false)
        );
        assert_eq!(
            wrap("id -u", true, "deploy", false, t),
            ("timeout -k 5 32 sh -c 'id -u'".to_string(), false)
        );
        assert_eq!(
            wrap(
                "echo 'a b'",
                true,
                "deploy",
                true,
                Duration::from_millis(1500)
            )
            .0,
            r"sudo -n -- timeout -k 5 4 sh -c 'echo '\''a b'\'''"
        );
        assert_eq!(
            wrap("true", true, "root", true, Duration::MAX).0,
            "sh -c true"
        );
    }

    #[test]
    fn first_lines() {
        assert_eq!(first_line("echo hi"), "echo hi");
        assert_eq!(first_line("\n  set -e\necho x\n"), "set -e ...");
        let long = "x".repeat(200);
        assert_eq!(first_line(&long), format!("{} ...", "x".repeat(120)));
        assert_eq!(first_line(""), "");
    }

    #[test]
    fn tails() {
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let t = tail_lines(text.as_bytes(), 20);
        assert!(t.starts_with("line 11\n"));
        assert!(t.ends_with("line 30"));
        assert_eq!(tail_lines(b"one\n\n", 20), "one");
        assert_eq!(tail_lines(b"", 20), "");
    }

    #[test]
    fn bounded_truncates() {
        let mut b = Bounded::new(10);
        b.push(b"12345");
        assert!(!b.truncated);
        b.push(b"67890");
        assert!(!b.truncated);
        assert_eq!(b.buf, b"1234567890");
        b.push(b"x");
        assert!(b.truncated);
        assert_eq!(b.buf.len(), 10);
        let mut b = Bounded::new(4);
        b.push(b"abcdef");
        assert_eq!(b.buf, b"abcd");
        assert!(b.truncated);
    }

    #[test]
    fn sudo_detection() {
        assert_eq!(
            sudo_problem(1, b"", b"sudo: a password is required\n"),
            Some(SudoProblem::Password)
        );
        assert_eq!(
            sudo_problem(
                1,
                b"",
                b"sudo: a terminal is required to read the password; either use the -S option\n"
            ),
            Some(SudoProblem::Password)
        );
        assert!(matches!(
            sudo_problem(1, b"", b"sudo: deploy is not in the sudoers file.\n"),
            Some(SudoProblem::Other(_))
        ));
        assert!(matches!(
            sudo_problem(127, b"", b"sh: 1: sudo: not found\n"),
            Some(SudoProblem::Other(_))
        ));
        // The command's own output mentioning a password is not sudo's failure.
        assert_eq!(
            sudo_problem(1, b"", b"psql: a password is required\n"),
            None
        );
        assert_eq!(
            sudo_problem(1, b"x", b"sudo: a password is required\n"),
            None
        );
        assert_eq!(
            sudo_problem(2, b"", b"sudo: a password is required\n"),
            None
        );
    }

    #[test]
    fn upload_script_shape() {
        let s = upload_script(
            "/etc/pgha/x.conf",
            "root",
            "postgres",
            0o640,
            Some("check -f %s"),
        );
        assert!(s.contains("mkdir -p /etc/pgha;"));
        assert!(s.contains("t=$(mktemp /etc/pgha/.x.conf.pgha.XXXXXX)"));
        assert!(s.contains("chown root:postgres \"$t\""));
        assert!(s.contains("chmod 0640 \"$t\""));
        assert!(s.contains("check -f \"$t\" || {"));
        assert!(s.contains("mv -f \"$t\" /etc/pgha/x.conf"));
        // validation before rename
        assert!(s.find("check -f").unwrap() < s.find("mv -f").unwrap());
        let s = upload_script("/x y", "a", "b", 0o600, None);
        assert!(s.contains("mktemp '/.x y.pgha.XXXXXX'"));
        assert!(s.contains("mv -f \"$t\" '/x y'"));
        assert!(!s.contains("validation"));
    }

    #[test]
    fn sha256_parsing() {
        let h = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            parse_sha256(&format!("{h}  -\n")),
            Some(Some(h.to_string()))
        );
        assert_eq!(parse_sha256("absent\n"), Some(None));
        assert_eq!(parse_sha256("garbage"), None);
        assert_eq!(
            sha256_script("/etc/a b"),
            "if [ -e '/etc/a b' ]; then sha256sum < '/etc/a b'; else echo absent; fi"
        );
    }

    #[test]
    fn signals() {
        assert_eq!(signal_number("KILL"), Some(9));
        assert_eq!(signal_number("TERM"), Some(15));
        assert_eq!(signal_number("WINCH"), None);
    }
}
