//! known_hosts verification, compatible with OpenSSH's file format:
//! plain and hashed (`|1|salt|hash`) host entries, comma-separated pattern lists with
//! `*`/`?` wildcards and `!` negation, the `[host]:port` form for non-standard ports,
//! `@revoked` lines (a revoked key is refused) and `@cert-authority` lines (ignored:
//! pgha does not ask servers for host certificates).

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use russh::keys::{Algorithm, HashAlg, PublicKey};
use sha1::Sha1;

/// What to do with a host whose key is not recorded yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Refuse the connection (the default; like OpenSSH's `StrictHostKeyChecking=yes`).
    Strict,
    /// Record the key and go on (`--accept-new-host-keys`; OpenSSH's `accept-new`).
    /// A key that differs from a recorded one is refused all the same.
    AcceptNew,
}

/// The verdict for one server key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyStatus {
    /// The key is recorded for this host at this (1-based) line.
    Known { line: usize },
    /// Nothing is recorded for this host.
    Unknown,
    /// The host has recorded keys, none of which is the offered one.
    /// `line` is the first recorded entry of the same key type (else the first entry),
    /// `recorded` its algorithm.
    Changed { line: usize, recorded: String },
    /// The offered key is marked `@revoked` at this line.
    Revoked { line: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
    CertAuthority,
}

#[derive(Debug, Clone)]
struct Entry {
    line: usize,
    marker: Marker,
    patterns: String,
    key: PublicKey,
}

/// A parsed known_hosts file.
#[derive(Debug, Clone)]
pub struct KnownHosts {
    path: PathBuf,
    entries: Vec<Entry>,
}

impl KnownHosts {
    /// Read `path`; a missing file is an empty list.
    pub fn load(path: &Path) -> io::Result<KnownHosts> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Self::parse(path, &String::from_utf8_lossy(&bytes))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(KnownHosts {
                path: path.to_path_buf(),
                entries: Vec::new(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Parse known_hosts text. Lines that cannot be parsed are skipped (as OpenSSH does).
    pub fn parse(path: &Path, text: &str) -> KnownHosts {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_ascii_whitespace();
            let mut first = fields.next().unwrap_or_default();
            let marker = match first {
                "@revoked" => Marker::Revoked,
                "@cert-authority" => Marker::CertAuthority,
                m if m.starts_with('@') => continue,
                _ => Marker::None,
            };
            if marker != Marker::None {
                first = match fields.next() {
                    Some(f) => f,
                    None => continue,
                };
            }
            let (Some(_keytype), Some(b64)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Ok(key) = russh::keys::parse_public_key_base64(b64) else {
                continue;
            };
            entries.push(Entry {
                line: i + 1,
                marker,
                patterns: first.to_string(),
                key,
            });
        }
        KnownHosts {
            path: path.to_path_buf(),
            entries,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Verify `key` offered by `host` (the name or address connected to) on `port`.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> HostKeyStatus {
        let name = lookup_name(host, port);
        let mut recorded: Vec<&Entry> = Vec::new();
        for e in &self.entries {
            if !host_matches(&name, &e.patterns) {
                continue;
            }
            match e.marker {
                Marker::Revoked if e.key.key_data() == key.key_data() => {
                    return HostKeyStatus::Revoked { line: e.line };
                }
                Marker::None => recorded.push(e),
                _ => {}
            }
        }
        if let Some(e) = recorded.iter().find(|e| e.key.key_data() == key.key_data()) {
            return HostKeyStatus::Known { line: e.line };
        }
        let Some(first) = recorded.first() else {
            return HostKeyStatus::Unknown;
        };
        let same_type = recorded
            .iter()
            .find(|e| same_family(&e.key.algorithm(), &key.algorithm()))
            .unwrap_or(first);
        HostKeyStatus::Changed {
            line: same_type.line,
            recorded: same_type.key.algorithm().to_string(),
        }
    }

    /// Algorithms of the keys recorded for this host, in file order, without duplicates.
    /// Used to ask the server for a key type we can verify (as OpenSSH does).
    pub fn known_algorithms(&self, host: &str, port: u16) -> Vec<Algorithm> {
        let name = lookup_name(host, port);
        let mut out: Vec<Algorithm> = Vec::new();
        for e in &self.entries {
            if e.marker == Marker::None && host_matches(&name, &e.patterns) {
                let a = e.key.algorithm();
                if !out.iter().any(|x| same_family(x, &a)) {
                    out.push(a);
                }
            }
        }
        out
    }

    /// Append an entry for `host`/`port` to the file at `path`, creating the file
    /// (mode 0600) and its directory (mode 0700) when missing.
    pub fn append(path: &Path, host: &str, port: u16, key: &PublicKey) -> io::Result<()> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
            && !parent.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        let mut line = String::new();
        if f.seek(SeekFrom::End(-1)).is_ok() {
            let mut last = [0u8; 1];
            f.read_exact(&mut last)?;
            if last[0] != b'\n' {
                line.push('\n');
            }
        }
        line.push_str(&entry_line(host, port, key)?);
        // One write on an O_APPEND descriptor: concurrent appenders do not interleave.
        f.write_all(line.as_bytes())?;
        f.sync_all()
    }
}

impl KnownHosts {
    /// Remove the entries recorded for `host`/`port` from the file at `path` (plain or
    /// hashed, like `ssh-keygen -R`; wildcard and `@` marker lines are kept). For a host
    /// that was rebuilt on purpose and has a new key. Returns how many lines went.
    pub fn forget(path: &Path, host: &str, port: u16) -> io::Result<usize> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let name = lookup_name(host, port);
        let mut removed = 0;
        let mut out = String::with_capacity(text.len());
        for line in text.lines() {
            let t = line.trim();
            let first = t.split_ascii_whitespace().next().unwrap_or("");
            let drop = !t.starts_with('#')
                && !first.starts_with('@')
                && !first.contains(['*', '?', '!'])
                && host_matches(&name, first);
            if drop {
                removed += 1;
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        if removed > 0 {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
            let tmp = path.with_extension("pgha-tmp");
            {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(mode)
                    .open(&tmp)?;
                f.write_all(out.as_bytes())?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, path)?;
        }
        Ok(removed)
    }
}

/// The known_hosts line recording `key` for `host`/`port` (with trailing newline).
pub fn entry_line(host: &str, port: u16, key: &PublicKey) -> io::Result<String> {
    let mut key = key.clone();
    key.set_comment("");
    let text = key.to_openssh().map_err(io::Error::other)?;
    Ok(format!("{} {}\n", lookup_name(host, port), text.trim_end()))
}

/// The name a host is recorded under: `host` on port 22, `[host]:port` otherwise.
pub fn lookup_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// `SHA256:...` fingerprint of a key, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// A hashed host entry (`|1|salt|hash`) for `name`, with the given salt (as `ssh-keygen -H`).
pub fn hash_name(name: &str, salt: &[u8]) -> String {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(salt).expect("HMAC takes any key length");
    mac.update(name.as_bytes());
    let hash = mac.finalize().into_bytes();
    format!("|1|{}|{}", B64.encode(salt), B64.encode(hash))
}

pub(crate) fn same_family(a: &Algorithm, b: &Algorithm) -> bool {
    a == b || (matches!(a, Algorithm::Rsa { .. }) && matches!(b, Algorithm::Rsa { .. }))
}

/// Does a comma-separated pattern list (or a hashed entry) match `name`?
/// A matching negated pattern (`!pat`) makes the whole list not match.
fn host_matches(name: &str, patterns: &str) -> bool {
    if let Some(rest) = patterns.strip_prefix("|1|") {
        return hashed_matches(name, rest);
    }
    let mut matched = false;
    for p in patterns.split(',') {
        let p = p.to_ascii_lowercase();
        if let Some(neg) = p.strip_prefix('!') {
            if glob(neg.as_bytes(), name.as_bytes()) {
                return false;
            }
        } else if glob(p.as_bytes(), name.as_bytes()) {
            matched = true;
        }
    }
    matched
}

fn hashed_matches(name: &str, rest: &str) -> bool {
    let Some((salt, hash)) = rest.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (B64.decode(salt), B64.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha1> as Mac>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(name.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

/// OpenSSH-style wildcard match: `*` any run of characters, `?` exactly one.
fn glob(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == s[i]) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    while p < pat.len() && pat[p] == b'*' {
        p += 1;
    }
    p == pat.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED1: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const ED2: &str = "AAAAC3NzaC1lZDI1NTE5AAAAILIG2T/B0l0gaqj3puu510tu9N1OkQ4znY3LYuEm5zCF";
    const ED3: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G1sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";

    fn key(b64: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(b64).unwrap()
    }

    fn kh(text: &str) -> KnownHosts {
        KnownHosts::parse(Path::new("/tmp/kh"), text)
    }

    #[test]
    fn plain_entries_and_ports() {
        let k = kh(&format!(
            "# comment\n\n10.0.0.1 ssh-ed25519 {ED1}\n[10.0.0.2]:2222 ssh-ed25519 {ED2} some comment\n"
        ));
        assert_eq!(
            k.check("10.0.0.1", 22, &key(ED1)),
            HostKeyStatus::Known { line: 3 }
        );
        assert_eq!(
            k.check("10.0.0.2", 2222, &key(ED2)),
            HostKeyStatus::Known { line: 4 }
        );
        // The port matters: the same address on 22 is not recorded.
        assert_eq!(k.check("10.0.0.2", 22, &key(ED2)), HostKeyStatus::Unknown);
        assert_eq!(k.check("10.0.0.1", 2200, &key(ED1)), HostKeyStatus::Unknown);
        assert_eq!(
            k.check("10.0.0.1", 22, &key(ED2)),
            HostKeyStatus::Changed {
                line: 3,
                recorded: "ssh-ed25519".into()
            }
        );
    }

    #[test]
    fn pattern_lists_wildcards_negation_case() {
        let k = kh(&format!(
            "db1.example.com,10.0.0.1 ssh-ed25519 {ED1}\n*.lab,!bad.lab ssh-ed25519 {ED2}\n"
        ));
        assert!(matches!(
            k.check("10.0.0.1", 22, &key(ED1)),
            HostKeyStatus::Known { .. }
        ));
        assert!(matches!(
            k.check("DB1.Example.COM", 22, &key(ED1)),
            HostKeyStatus::Known { .. }
        ));
        assert!(matches!(
            k.check("x.lab", 22, &key(ED2)),
            HostKeyStatus::Known { line: 2 }
        ));
        assert_eq!(k.check("bad.lab", 22, &key(ED2)), HostKeyStatus::Unknown);
        assert!(glob(b"db?.*", b"db1.x"));
        assert!(!glob(b"db?", b"db10"));
        assert!(glob(b"*", b""));
    }

    #[test]
    fn hashed_entries() {
        // Known vector from OpenSSH/russh tests: |1|...| hashes "example.com".
        let k = kh(&format!(
            "|1|O33ESRMWPVkMYIwJ1Uw+n877jTo=|nuuC5vEqXlEZ/8BXQR7m619W6Ak= ssh-ed25519 {ED2}\n"
        ));
        assert_eq!(
            k.check("example.com", 22, &key(ED2)),
            HostKeyStatus::Known { line: 1 }
        );
        assert_eq!(
            k.check("example.org", 22, &key(ED2)),
            HostKeyStatus::Unknown
        );
        // Our own hashing, including the [host]:port form.
        let salt = [7u8; 20];
        let line = format!(
            "{} ssh-ed25519 {ED3}\n",
            hash_name("[10.1.2.3]:2022", &salt)
        );
        let k = kh(&line);
        assert!(matches!(
            k.check("10.1.2.3", 2022, &key(ED3)),
            HostKeyStatus::Known { .. }
        ));
        assert_eq!(k.check("10.1.2.3", 22, &key(ED3)), HostKeyStatus::Unknown);
        assert!(matches!(
            k.check("10.1.2.3", 2022, &key(ED1)),
            HostKeyStatus::Changed { line: 1, .. }
        ));
    }

    #[test]
    fn markers_and_garbage() {
        let k = kh(&format!(
            "garbage line\nhost ssh-ed25519 notbase64!!\n@cert-authority * ssh-ed25519 {ED1}\n@revoked * ssh-ed25519 {ED3}\nh ssh-ed25519 {ED3}\n"
        ));
        // cert-authority lines do not make a host known
        assert_eq!(k.check("other", 22, &key(ED1)), HostKeyStatus::Unknown);
        assert_eq!(
            k.check("h", 22, &key(ED3)),
            HostKeyStatus::Revoked { line: 4 }
        );
    }

    #[test]
    fn multiple_keys_and_types() {
        let k = kh(&format!("h ssh-ed25519 {ED1}\nh ssh-ed25519 {ED2}\n"));
        assert_eq!(
            k.check("h", 22, &key(ED2)),
            HostKeyStatus::Known { line: 2 }
        );
        assert_eq!(k.known_algorithms("h", 22), vec![Algorithm::Ed25519]);
        assert!(k.known_algorithms("x", 22).is_empty());
    }

    #[test]
    fn forget_removes_only_that_host() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        let hashed = hash_name("10.0.0.1", &[3u8; 20]);
        let text = format!(
            "# keep\n10.0.0.1 ssh-ed25519 {ED1}\n10.0.0.2 ssh-ed25519 {ED2}\n{hashed} ssh-ed25519 {ED3}\n\
             [10.0.0.1]:2222 ssh-ed25519 {ED1}\n10.0.0.* ssh-ed25519 {ED2}\n@revoked 10.0.0.1 ssh-ed25519 {ED2}\n"
        );
        std::fs::write(&path, &text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(KnownHosts::forget(&path, "10.0.0.1", 22).unwrap(), 2);
        let after = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            after,
            format!(
                "# keep\n10.0.0.2 ssh-ed25519 {ED2}\n[10.0.0.1]:2222 ssh-ed25519 {ED1}\n\
                 10.0.0.* ssh-ed25519 {ED2}\n@revoked 10.0.0.1 ssh-ed25519 {ED2}\n"
            )
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(KnownHosts::forget(&path, "10.0.0.1", 22).unwrap(), 0);
        assert_eq!(
            KnownHosts::forget(&dir.path().join("none"), "x", 22).unwrap(),
            0
        );
    }

    #[test]
    fn append_creates_file_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/known_hosts");
        KnownHosts::append(&path, "10.9.9.9", 22, &key(ED1)).unwrap();
        KnownHosts::append(&path, "10.9.9.9", 2222, &key(ED2)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("10.9.9.9 ssh-ed25519 {ED1}\n[10.9.9.9]:2222 ssh-ed25519 {ED2}\n")
        );
        let k = KnownHosts::load(&path).unwrap();
        assert!(matches!(
            k.check("10.9.9.9", 2222, &key(ED2)),
            HostKeyStatus::Known { line: 2 }
        ));
        // Appending to a file without a trailing newline keeps lines separate.
        std::fs::write(&path, format!("a ssh-ed25519 {ED1}")).unwrap();
        KnownHosts::append(&path, "b", 22, &key(ED2)).unwrap();
        let k = KnownHosts::load(&path).unwrap();
        assert!(matches!(
            k.check("b", 22, &key(ED2)),
            HostKeyStatus::Known { line: 2 }
        ));
        assert!(matches!(
            KnownHosts::load(&dir.path().join("missing"))
                .unwrap()
                .check("b", 22, &key(ED2)),
            HostKeyStatus::Unknown
        ));
    }
}
