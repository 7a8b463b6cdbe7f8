//! Quoting of inventory values for what reads them on the hosts: environment files
//! (read by systemd and by `sh`), shell commands from the roles (`prepare`,
//! `validate`) and HAProxy's configuration. Pure, unit-tested with the real readers
//! where they exist here (`sh`).

use minijinja::value::Value;
use minijinja::{AutoEscape, Error, ErrorKind, Output, State};

use crate::ssh::shell_quote;

/// The auto-escape mode of role fields that run in a shell on the hosts.
pub const SHELL: &str = "sh";

/// The template name suffix that turns shell quoting on (see `auto_escape`).
pub const SHELL_SUFFIX: &str = ".sh";

/// Auto-escaping by template name: role fields rendered as `*.sh` quote every
/// `{{ value }}` for `sh`; config templates (`*.j2`) are not HTML or JSON and are
/// never escaped (minijinja would JSON-escape values in templates named *.yml.j2).
pub fn auto_escape(name: &str) -> AutoEscape {
    if name.ends_with(SHELL_SUFFIX) {
        AutoEscape::Custom(SHELL.into())
    } else {
        AutoEscape::None
    }
}

/// The template formatter: in shell mode every value is one shell word, whatever it
/// holds (`;`, `$(...)`, backticks, quotes), unless a role marks it `| safe`;
/// elsewhere minijinja's default.
pub fn formatter(out: &mut Output, state: &mut State, value: &Value) -> Result<(), Error> {
    match state.auto_escape() {
        AutoEscape::Custom(mode) if mode == SHELL => {
            let text = value.to_string();
            let word = if value.is_safe() {
                text
            } else {
                shell_quote(&text)
            };
            out.write_str(&word)
                .map_err(|_| Error::new(ErrorKind::WriteFailure, "cannot write the output"))
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Quote a value for an environment file that systemd (`EnvironmentFile=`, native)
/// and `sh` (`set -a; . file`, docker) must read alike: double quotes, with a
/// backslash before `"`, `\`, `$` and `` ` ``. Inside double quotes these four are
/// the only characters either reader treats specially (systemd's env-file parser
/// unescapes exactly them; POSIX sh expands `$` and `` ` `` and unescapes the same
/// four), so everything else, spaces and `'` included, is read literally by both.
/// Control characters are refused: the readers disagree on newlines.
pub fn envquote(v: String) -> Result<String, Error> {
    if v.chars().any(char::is_control) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "a value with a control character (newline, tab...) cannot go into an environment file",
        ));
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for ch in v.chars() {
        if matches!(ch, '"' | '\\' | '$' | '`') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('"');
    Ok(out)
}

/// Quote one argument of an HAProxy configuration line: single quotes (HAProxy's
/// strong quoting: no escapes, no `$VAR` expansion, `#` is literal), a `'` inside
/// as `'\''` (HAProxy joins quoted and escaped parts of a word, as sh does).
/// Control characters are refused: a newline would end the line.
pub fn haproxy_quote(v: String) -> Result<String, Error> {
    if v.chars().any(char::is_control) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "a value with a control character (newline, tab...) cannot go into haproxy.cfg",
        ));
    }
    Ok(format!("'{}'", v.replace('\'', r"'\''")))
}

/// Quote a name or password for PgBouncer's auth_file (`"name" "password"`):
/// double quotes, a `"` inside doubled (PgBouncer's only escape; a backslash is
/// literal). Control characters are refused: a newline would end the entry.
pub fn pgbouncer_quote(v: String) -> Result<String, Error> {
    if v.chars().any(char::is_control) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "a value with a control character (newline, tab...) cannot go into PgBouncer's auth_file",
        ));
    }
    Ok(format!("\"{}\"", v.replace('"', "\"\"")))
}

/// Percent-encode a value for one component of a URL (a user or a password in a
/// connection URI): everything but RFC 3986's unreserved characters.
pub fn uri_component(v: String) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn uri_component_leaves_only_unreserved_characters() {
        assert_eq!(uri_component("pgha_pgbouncer".into()), "pgha_pgbouncer");
        assert_eq!(uri_component("a b@c:d/e%f".into()), "a%20b%40c%3Ad%2Fe%25f");
        assert_eq!(uri_component("ä".into()), "%C3%A4");
    }

    #[test]
    fn pgbouncer_quote_doubles_quotes_only() {
        assert_eq!(
            pgbouncer_quote("pgha_pgbouncer".into()).unwrap(),
            "\"pgha_pgbouncer\""
        );
        assert_eq!(
            pgbouncer_quote(HOSTILE[0].into()).unwrap(),
            r#""a""b\c'd$e`f<g>h&i j""#
        );
        assert!(pgbouncer_quote("a\nb".into()).is_err());
    }
    use std::collections::BTreeMap;

    /// Passwords that break naive quoting: every character sh, systemd, YAML, JSON,
    /// HTML and HAProxy treat specially, spaces included.
    pub(crate) const HOSTILE: [&str; 6] = [
        r#"a"b\c'd$e`f<g>h&i j"#,
        r#"$(touch /tmp/pgha-pwned) `id` ${HOME} ; | & # %s"#,
        r"trailing\",
        "'",
        "  two  spaces  ",
        "päss: wörd, \\\"x\\\" {y} [z] *q* !h",
    ];

    /// What `sh` reads from an environment file: `VAR` after `. file`.
    pub(crate) fn sh_reads(file: &std::path::Path, var: &str) -> String {
        let out = std::process::Command::new("sh")
            .args(["-c", r#"set -a; . "$1"; set +a; printenv "$2""#, "sh"])
            .arg(file)
            .arg(var)
            .output()
            .expect("run sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut s = String::from_utf8(out.stdout).unwrap();
        s.pop(); // printenv's newline
        s
    }

    /// What systemd reads from an `EnvironmentFile=`: a transcription of the state
    /// machine of systemd's `parse_env_file_internal` (src/basic/env-file.c, v257,
    /// Debian 13), as documented in systemd.exec(5). Comments (`#`, `;`) start a line.
    pub(crate) fn systemd_reads(text: &str) -> BTreeMap<String, String> {
        #[derive(PartialEq)]
        enum S {
            PreKey,
            Key,
            PreValue,
            Value,
            ValueEscape,
            Single,
            Double,
            DoubleEscape,
            Comment,
        }
        let ws = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r');
        let nl = |c: char| matches!(c, '\n' | '\r');
        let mut vars = BTreeMap::new();
        let (mut key, mut value) = (String::new(), String::new());
        let mut trailing_ws: Option<usize> = None;
        let mut state = S::PreKey;
        let mut push = |key: &mut String, value: &mut String| {
            vars.insert(key.trim_end().to_string(), std::mem::take(value));
            key.clear();
        };
        for c in text.chars() {
            state = match state {
                S::PreKey if c == '#' || c == ';' => S::Comment,
                S::PreKey if !ws(c) => {
                    key.push(c);
                    S::Key
                }
                S::PreKey => S::PreKey,
                S::Key if nl(c) => {
                    key.clear();
                    S::PreKey
                }
                S::Key if c == '=' => {
                    trailing_ws = None;
                    S::PreValue
                }
                S::Key => {
                    key.push(c);
                    S::Key
                }
                S::PreValue if nl(c) => {
                    push(&mut key, &mut value);
                    S::PreKey
                }
                S::PreValue if c == '\'' => S::Single,
                S::PreValue if c == '"' => S::Double,
                S::PreValue if c == '\\' => S::ValueEscape,
                S::PreValue if !ws(c) => {
                    value.push(c);
                    S::Value
                }
                S::PreValue => S::PreValue,
                S::Value if nl(c) => {
                    if let Some(n) = trailing_ws {
                        value.truncate(n);
                    }
                    push(&mut key, &mut value);
                    S::PreKey
                }
                S::Value if c == '\\' => {
                    trailing_ws = None;
                    S::ValueEscape
                }
                S::Value => {
                    if !ws(c) {
                        trailing_ws = None;
                    } else if trailing_ws.is_none() {
                        trailing_ws = Some(value.len());
                    }
                    value.push(c);
                    S::Value
                }
                S::ValueEscape => {
                    if !nl(c) {
                        value.push(c);
                    }
                    S::Value
                }
                S::Single if c == '\'' => S::PreValue,
                S::Single => {
                    value.push(c);
                    S::Single
                }
                S::Double if c == '"' => S::PreValue,
                S::Double if c == '\\' => S::DoubleEscape,
                S::Double => {
                    value.push(c);
                    S::Double
                }
                S::DoubleEscape => {
                    if matches!(c, '"' | '\\' | '`' | '$') {
                        value.push(c);
                    } else if c != '\n' {
                        value.push('\\');
                        value.push(c);
                    }
                    S::Double
                }
                S::Comment if nl(c) => S::PreKey,
                S::Comment => S::Comment,
            };
        }
        if !matches!(state, S::PreKey | S::Key | S::Comment) {
            if state == S::Value
                && let Some(n) = trailing_ws
            {
                value.truncate(n);
            }
            push(&mut key, &mut value);
        }
        vars
    }

    #[test]
    fn the_systemd_model_follows_the_documented_rules() {
        let vars = systemd_reads(
            "# comment\n; comment\nA=plain value  \nB='single \\ $x'\nC=\"d \\\" \\\\ \\$ \\` \\n\"\nD=x\\\ny\nE = spaced\n",
        );
        assert_eq!(vars["A"], "plain value");
        assert_eq!(vars["B"], r"single \ $x");
        assert_eq!(vars["C"], r#"d " \ $ ` \n"#);
        assert_eq!(vars["D"], "xy");
        assert_eq!(vars["E"], "spaced");
        assert_eq!(vars.len(), 5);
    }

    #[test]
    fn envquote_reads_the_same_in_sh_and_systemd() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("env");
        for v in HOSTILE {
            let line = format!("# pgha\nVAR={}\n", envquote(v.to_string()).unwrap());
            std::fs::write(&file, &line).unwrap();
            assert_eq!(sh_reads(&file, "VAR"), v, "sh reads {line}");
            assert_eq!(systemd_reads(&line)["VAR"], v, "systemd reads {line}");
        }
        assert!(!std::path::Path::new("/tmp/pgha-pwned").exists());
        assert!(envquote("a\nb".into()).is_err());
        assert_eq!(envquote("pgha_monitor".into()).unwrap(), "\"pgha_monitor\"");
    }

    /// `sh` runs `script` with `cmd` replaced by a function printing its arguments,
    /// one per line: what the command would have received.
    pub(crate) fn sh_args(cmd: &str, script: &str) -> Vec<String> {
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                &format!("{cmd}() {{ printf '%s\\n' \"$@\"; }}\n{script}"),
            ])
            .output()
            .expect("run sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn shell_fields_carry_every_value_as_one_literal_word() {
        let mut env = minijinja::Environment::new();
        env.set_auto_escape_callback(auto_escape);
        env.set_formatter(formatter);
        for v in HOSTILE {
            let ctx = minijinja::context! { dir => v };
            let script = env
                .render_named_str("t.sh", "mkdir -p {{ dir }} {{ dir ~ ':ro' }}", ctx)
                .unwrap();
            assert_eq!(sh_args("mkdir", &script), ["-p", v, &format!("{v}:ro")]);
        }
        assert!(!std::path::Path::new("/tmp/pgha-pwned").exists());
        // Plain values stay as they are (a re-rendered role does not change).
        let plain = env
            .render_named_str(
                "t.sh",
                "x {{ d }}",
                minijinja::context! { d => "/var/lib/x" },
            )
            .unwrap();
        assert_eq!(plain, "x /var/lib/x");
        // A role may pass shell text on deliberately.
        let safe = env
            .render_named_str(
                "t.sh",
                "{{ c | safe }}",
                minijinja::context! { c => "a; b" },
            )
            .unwrap();
        assert_eq!(safe, "a; b");
        // Config templates are not touched.
        let conf = env
            .render_named_str("t.j2", "{{ d }}", minijinja::context! { d => "a b" })
            .unwrap();
        assert_eq!(conf, "a b");
    }

    #[test]
    fn haproxy_quote_is_strong_quoting() {
        assert_eq!(haproxy_quote("pgha:abc".into()).unwrap(), "'pgha:abc'");
        assert_eq!(haproxy_quote("it's".into()).unwrap(), r"'it'\''s'");
        assert!(haproxy_quote("a\nb".into()).is_err());
    }
}
