//! Secrets masked by structure, for `deploy --check --diff`: the lines a role
//! declares as secret-bearing (`secrets:` in roles/*.yml: YAML keys, environment
//! variables, directives, whole files) lose their values on both sides, the host's
//! and pgha's, whatever those values are. A value-based redaction cannot do this
//! alone: a password changed or tampered with on a host is no known secret.
//!
//! The diff still shows that a secret changed: a value that differs between the
//! sides is masked as `<redacted (old)>` on the host's side and `<redacted (new)>`
//! on pgha's; an equal one as `<redacted>` on both.

use std::collections::BTreeMap;

use super::roles::SecretLines;

pub const SAME: &str = "<redacted>";
pub const OLD: &str = "<redacted (old)>";
pub const NEW: &str = "<redacted (new)>";

/// One line of a file as the diff shows it.
enum Line {
    Plain(String),
    /// `prefix` then the placeholder; `slot` pairs it with the other side's line.
    Secret {
        prefix: String,
        slot: String,
        value: String,
    },
}

/// What the following lines continue (a multi-line secret value is folded in).
#[derive(Clone, Copy)]
enum Continues {
    No,
    /// A YAML value: lines indented deeper than its key.
    Yaml {
        indent: usize,
    },
    /// An environment value: lines that start no assignment or comment.
    Env,
}

/// Both sides of a file, `(current, wanted)`, with every declared secret masked.
pub fn mask_pair(spec: &SecretLines, current: &str, wanted: &str) -> (String, String) {
    if spec.whole_file {
        return whole_file(current, wanted);
    }
    let (have, want) = (scan(spec, current), scan(spec, wanted));
    let (have_slots, want_slots) = (slots(&have), slots(&want));
    (
        render(&have, &want_slots, OLD, current.ends_with('\n')),
        render(&want, &have_slots, NEW, wanted.ends_with('\n')),
    )
}

fn whole_file(current: &str, wanted: &str) -> (String, String) {
    let side = |text: &str, label: &str| {
        if text.is_empty() {
            String::new()
        } else {
            format!("{label} (whole file)\n")
        }
    };
    if current == wanted {
        (side(current, SAME), side(wanted, SAME))
    } else {
        (side(current, OLD), side(wanted, NEW))
    }
}

fn slots(lines: &[Line]) -> BTreeMap<&str, &str> {
    lines
        .iter()
        .filter_map(|l| match l {
            Line::Secret { slot, value, .. } => Some((slot.as_str(), value.as_str())),
            Line::Plain(_) => None,
        })
        .collect()
}

fn render(lines: &[Line], other: &BTreeMap<&str, &str>, differs: &str, newline: bool) -> String {
    let mut out: Vec<String> = lines
        .iter()
        .map(|l| match l {
            Line::Plain(t) => t.clone(),
            Line::Secret {
                prefix,
                slot,
                value,
            } => {
                let same = other.get(slot.as_str()) == Some(&value.as_str());
                format!("{prefix}{}", if same { SAME } else { differs })
            }
        })
        .collect();
    if newline {
        out.push(String::new());
    }
    out.join("\n")
}

/// The file's lines, secret values taken out (with their continuation lines).
fn scan(spec: &SecretLines, text: &str) -> Vec<Line> {
    let mut out = Vec::new();
    let mut keys: Vec<(usize, String)> = Vec::new(); // YAML path: (indent, key)
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut continues = Continues::No;
    for line in text.lines() {
        if let Some(Line::Secret { value, .. }) = out.last_mut()
            && continuation(continues, line)
        {
            value.push('\n');
            value.push_str(line);
            continue;
        }
        continues = Continues::No;
        let indent = line.len() - line.trim_start().len();
        let Some((prefix, slot, value, next)) = secret_line(spec, line, indent, &mut keys) else {
            out.push(Line::Plain(line.to_string()));
            continue;
        };
        // The same slot twice (e.g. a key in two flow mappings) is told apart by count.
        let n = seen.entry(slot.clone()).or_default();
        *n += 1;
        out.push(Line::Secret {
            prefix,
            slot: format!("{slot}#{n}"),
            value,
        });
        continues = next;
    }
    out
}

fn continuation(c: Continues, line: &str) -> bool {
    let t = line.trim_start();
    match c {
        Continues::No => false,
        Continues::Yaml { indent } => t.is_empty() || line.len() - t.len() > indent,
        Continues::Env => !(t.is_empty() || t.starts_with(['#', ';']) || env_name(t).is_some()),
    }
}

/// A secret-bearing line: (text before the value, slot, value, what may follow).
fn secret_line(
    spec: &SecretLines,
    line: &str,
    indent: usize,
    keys: &mut Vec<(usize, String)>,
) -> Option<(String, String, String, Continues)> {
    if !spec.yaml_keys.is_empty() {
        let path = yaml_path(line, indent, keys);
        for k in &spec.yaml_keys {
            if let Some((at, leading)) = yaml_key(line, k) {
                let slot = if leading {
                    path.clone()
                } else {
                    format!("{path}/{k}")
                };
                let next = if leading {
                    Continues::Yaml { indent }
                } else {
                    Continues::No
                };
                return Some((format!("{} ", &line[..at]), slot, line[at..].into(), next));
            }
        }
    }
    let t = line.trim_start();
    for k in &spec.env_keys {
        if env_name(t) == Some(k.as_str()) {
            let at = line.find('=').map_or(line.len(), |i| i + 1);
            let prefix = line[..at].to_string();
            return Some((prefix, k.clone(), line[at..].into(), Continues::Env));
        }
    }
    for k in &spec.ini_keys {
        if let Some((name, _)) = t.split_once('=')
            && name.trim_end() == k
        {
            let at = line.find('=').map_or(line.len(), |i| i + 1);
            return Some((
                line[..at].to_string(),
                k.clone(),
                line[at..].into(),
                Continues::No,
            ));
        }
    }
    for d in &spec.directives {
        if let Some(rest) = t.strip_prefix(d.as_str())
            && rest.starts_with([' ', '\t'])
        {
            let at = indent + d.len();
            let prefix = format!("{} ", &line[..at]);
            return Some((prefix, d.clone(), rest.into(), Continues::No));
        }
    }
    None
}

/// Track the YAML key path of block-style lines; returns this line's path.
fn yaml_path(line: &str, indent: usize, keys: &mut Vec<(usize, String)>) -> String {
    let t = line.trim_start();
    if !t.is_empty() && !t.starts_with('#') {
        let item = t.trim_start_matches(['-', ' ']);
        let key_indent = indent + (t.len() - item.len());
        if let Some(colon) = item.find(':') {
            let key = item[..colon].trim_matches(['"', '\'']);
            keys.retain(|(i, _)| *i < key_indent);
            keys.push((key_indent, key.to_string()));
        }
    }
    keys.iter()
        .map(|(_, k)| k.as_str())
        .collect::<Vec<_>>()
        .join(".")
}

/// Where `key: value`'s value starts in `line`, and whether the key leads the line
/// (block style) rather than sitting inside a flow mapping (`{user: x, key: y}`).
fn yaml_key(line: &str, key: &str) -> Option<(usize, bool)> {
    for (i, _) in line.match_indices(key) {
        let before = &line[..i];
        if !before.is_empty() && !before.ends_with([' ', '\t', '{', ',', '"', '\'']) {
            continue;
        }
        let after = &line[i + key.len()..];
        let after_quote = after.strip_prefix(['"', '\'']).unwrap_or(after);
        let Some(value) = after_quote
            .trim_start_matches([' ', '\t'])
            .strip_prefix(':')
        else {
            continue;
        };
        if !(value.is_empty() || value.starts_with([' ', '\t'])) {
            continue;
        }
        let leading = before.chars().all(|c| " \t-\"'".contains(c));
        return Some((line.len() - value.len(), leading));
    }
    None
}

/// The variable an environment-file line assigns (`[export ]NAME=...`).
fn env_name(t: &str) -> Option<&str> {
    let t = t
        .strip_prefix("export")
        .filter(|r| r.starts_with([' ', '\t']))
        .map_or(t, str::trim_start);
    let end = t.find('=')?;
    let name = t[..end].trim_end();
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> SecretLines {
        yaml_serde::from_str(yaml).unwrap()
    }

    #[test]
    fn yaml_values_are_masked_on_both_sides_and_changes_still_show() {
        let s = spec("{yaml_keys: [password]}");
        let have = "a:\n  auth:\n    username: u\n    password: \"tampered\"\n  other:\n    password: same\n";
        let want = "a:\n  auth:\n    username: u\n    password: \"S3cret\"\n  other:\n    password: same\n";
        let (h, w) = mask_pair(&s, have, want);
        assert_eq!(
            h,
            "a:\n  auth:\n    username: u\n    password: <redacted (old)>\n  other:\n    password: <redacted>\n"
        );
        assert_eq!(
            w,
            "a:\n  auth:\n    username: u\n    password: <redacted (new)>\n  other:\n    password: <redacted>\n"
        );
    }

    #[test]
    fn multi_line_and_flow_values_on_the_host_are_masked_too() {
        let s = spec("{yaml_keys: [password]}");
        let have = "x:\n  password: |\n    line-one-secret\n    line-two-secret\n  y: {user: a, password: flow-secret}\n  z: 1\n";
        let (h, _) = mask_pair(&s, have, "x:\n  z: 1\n");
        assert!(!h.contains("secret"), "{h}");
        assert!(
            h.contains(
                "  password: <redacted (old)>\n  y: {user: a, password: <redacted (old)>\n  z: 1\n"
            ),
            "{h}"
        );
        // `password` inside another word, or a key named like it, is not a match.
        let (h, _) = mask_pair(&s, "pgpass: /x\npasswords_file: y\n", "");
        assert_eq!(h, "pgpass: /x\npasswords_file: y\n");
    }

    #[test]
    fn env_directives_and_whole_files() {
        let s = spec("{env_keys: [PASS]}");
        let (h, w) = mask_pair(
            &s,
            "A=1\nPASS='old\nsecret'\nB=2\n",
            "A=1\nPASS=\"new\"\nB=2\n",
        );
        assert_eq!(h, "A=1\nPASS=<redacted (old)>\nB=2\n");
        assert_eq!(w, "A=1\nPASS=<redacted (new)>\nB=2\n");
        let (h, _) = mask_pair(&s, "export PASS=x\nPASSWORD=visible\n", "");
        assert_eq!(h, "export PASS=<redacted (old)>\nPASSWORD=visible\n");
        let s = spec("{directives: [stats auth]}");
        let (h, w) = mask_pair(&s, "    stats auth 'pgha:a'\n", "    stats auth 'pgha:a'\n");
        assert_eq!(
            (h.as_str(), w.as_str()),
            ("    stats auth <redacted>\n", "    stats auth <redacted>\n")
        );
        let s = spec("{ini_keys: [repo1-cipher-pass]}");
        let (h, w) = mask_pair(
            &s,
            "repo1-path=/x\nrepo1-cipher-pass=old\n",
            "repo1-path=/x\nrepo1-cipher-pass=new\nrepo1-cipher-pass-x=shown\n",
        );
        assert_eq!(h, "repo1-path=/x\nrepo1-cipher-pass=<redacted (old)>\n");
        assert_eq!(
            w,
            "repo1-path=/x\nrepo1-cipher-pass=<redacted (new)>\nrepo1-cipher-pass-x=shown\n"
        );
        let s = spec("{whole_file: true}");
        assert_eq!(
            mask_pair(&s, "", "KEY"),
            (String::new(), format!("{NEW} (whole file)\n"))
        );
        assert_eq!(mask_pair(&s, "A", "B").0, format!("{OLD} (whole file)\n"));
    }

    #[test]
    fn files_without_secrets_are_unchanged() {
        let text = "password: x\nA=1\n";
        assert_eq!(
            mask_pair(&SecretLines::default(), text, text),
            (text.to_string(), text.to_string())
        );
    }

    /// An inventory with TLS (private keys among the files) and every secret set to
    /// `marker` + a hostile password.
    fn inventory(dir: &std::path::Path, marker: &str) -> crate::inventory::Inventory {
        use crate::engine::quote::tests::HOSTILE;
        let path = dir.join("inv.yml");
        std::fs::write(
            &path,
            "all:\n  children:\n    db:\n      hosts:\n        db1: {ansible_host: 10.9.0.11}\n        db2: {ansible_host: 10.9.0.12}\n        db3: {ansible_host: 10.9.0.13}\n    router:\n      hosts:\n        router1: {ansible_host: 10.9.0.21}\n    backup:\n      hosts:\n        router1:\n",
        )
        .unwrap();
        let opts = crate::inventory::LoadOptions {
            write_secrets: true,
        };
        let mut inv = crate::inventory::load(&path, &opts).unwrap();
        let s = &mut inv.secrets;
        let all = [
            &mut s.superuser_password,
            &mut s.replication_password,
            &mut s.rewind_password,
            &mut s.monitor_password,
            &mut s.app_password,
            &mut s.patroni_api_password,
            &mut s.haproxy_stats_password,
        ];
        for (i, secret) in all.into_iter().enumerate() {
            let pw = format!("{marker}{i}{}", HOSTILE[i % HOSTILE.len()]);
            *secret = crate::inventory::Secret::new(pw);
        }
        inv
    }

    /// Every file the roles render, under both methods, with hostile passwords: the
    /// host holds other (changed or tampered) secrets, pgha wants new ones. Masking
    /// by structure alone leaves neither side's secrets in the diff, in any
    /// encoding, nor any private key; the value-based net alone catches pgha's.
    #[test]
    fn every_secret_the_roles_render_is_masked_on_both_sides() {
        use crate::engine::desired::{Inputs, desired_state_with};
        use crate::engine::roles::Library;
        use crate::inventory::InstallMethod;
        let lib = Library::builtin().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut old = inventory(dir.path(), "S3cr3tOLD");
        let mut new = inventory(dir.path(), "S3cr3tNEW");
        for method in [InstallMethod::Native, InstallMethod::Docker] {
            for inv in [&mut old, &mut new] {
                inv.cluster.install_method = method;
                inv.cluster.docker_image = "pgha:test".into();
            }
            let inputs = |inv| Inputs {
                pki: Some(crate::pki::load(inv, true).unwrap()),
                ..Default::default()
            };
            let (have, want) = (
                desired_state_with(&old, &lib, &inputs(&old)).unwrap(),
                desired_state_with(&new, &lib, &inputs(&new)).unwrap(),
            );
            for (h, w) in have.iter().zip(&want) {
                for (hf, wf) in h.files().zip(w.files()) {
                    let (hc, wc) = (
                        String::from_utf8_lossy(&hf.content),
                        String::from_utf8_lossy(&wf.content),
                    );
                    let (hm, wm) = mask_pair(&wf.secrets, &hc, &wc);
                    for shown in [&hm, &wm] {
                        assert!(
                            !shown.contains("S3cr3t") && !shown.contains("PRIVATE KEY"),
                            "{}:{} shows a secret:\n{shown}",
                            w.host,
                            wf.path
                        );
                    }
                    let net = new.secrets.redact(&wc);
                    assert!(!net.contains("S3cr3tNEW"), "{}: {net}", wf.path);
                    if wf.path == "/etc/patroni/config.yml" {
                        // Each of the four passwords is shown as changed.
                        assert_eq!(wm.matches(&format!("password: {NEW}\n")).count(), 4, "{wm}");
                        assert_eq!(hm.matches(&format!("password: {OLD}\n")).count(), 4, "{hm}");
                    }
                }
            }
        }
    }

    /// A URL with `pw` as its password, as the `url` crate (WHATWG) writes it.
    fn whatwg_url(pw: &str) -> String {
        let mut u = reqwest::Url::parse("postgresql://u@h/db").unwrap();
        u.set_password(Some(pw)).unwrap();
        u.to_string()
    }

    #[test]
    fn url_forms_of_a_password_are_redacted() {
        let mut inv = inventory(tempfile::tempdir().unwrap().path(), "x");
        inv.secrets.monitor_password = crate::inventory::Secret::new("p@ss:w/rd $&+ 'q'");
        for url in [
            whatwg_url("p@ss:w/rd $&+ 'q'"),
            // Go's net/url (postgres_exporter's DSN).
            "postgresql://u:p%40ss%3Aw%2Frd%20$&+%20%27q%27@h/db".to_string(),
            "postgresql://u:p%40ss%3aw%2frd%20%24%26%2b%20%27q%27@h/db".to_string(),
        ] {
            assert_eq!(
                inv.secrets.redact(&url),
                "postgresql://u:<redacted>@h/db",
                "{url}"
            );
        }
    }

    /// Value-based redaction (error text, logs) knows every encoding the templates
    /// and probes use, checked against the real encoders.
    #[test]
    fn redaction_by_value_covers_every_encoding() {
        use crate::engine::quote::{envquote, haproxy_quote};
        let dir = tempfile::tempdir().unwrap();
        let inv = inventory(dir.path(), "S3cr3tNEW");
        let env = minijinja::Environment::new();
        for s in inv.secrets.all() {
            let pw = s.expose();
            let forms = [
                pw.to_string(),
                env.render_str("{{ p | tojson }}", minijinja::context! { p => pw })
                    .unwrap(),
                serde_json::to_string(pw).unwrap(),
                yaml_serde::to_string(pw).unwrap(),
                envquote(pw.into()).unwrap(),
                haproxy_quote(pw.into()).unwrap(),
                crate::ssh::shell_quote(pw),
                whatwg_url(pw),
            ];
            for f in forms {
                let shown = inv.secrets.redact(&format!("error: {f} failed"));
                assert!(!shown.contains("S3cr3t"), "{f} -> {shown}");
            }
        }
    }
}
