//! Passwords: inline, from `<name>_file`, or generated once and kept in
//! `<inventory dir>/<inventory stem>.secrets.yml` (mode 0600).

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::Rng;
use rand::distributions::Alphanumeric;

use super::locate::Seg;
use super::model::SecretSource;
use super::{Ctx, expand_local_path};

/// The passwords pgha manages, in the order of `Secrets`.
pub const SECRET_NAMES: [&str; 11] = [
    "superuser_password",
    "replication_password",
    "rewind_password",
    "monitor_password",
    "app_password",
    "patroni_api_password",
    "haproxy_stats_password",
    "pgbouncer_auth_password",
    "backup_cipher_pass",
    "backup_s3_key",
    "backup_s3_key_secret",
];

/// Secrets only the user can give (an S3 account's keys): never generated; when
/// one is needed and missing, the inventory is refused naming it.
pub const PROVIDED: [&str; 2] = ["backup_s3_key", "backup_s3_key_secret"];

/// Length of generated passwords (alphanumeric: safe in every config format).
pub const GENERATED_LEN: usize = 32;

/// `<dir>/<stem>.secrets.yml` next to the inventory.
pub fn secrets_path(inventory: &Path) -> PathBuf {
    let stem = inventory
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "inventory".into());
    inventory.with_file_name(format!("{stem}.secrets.yml"))
}

pub(crate) fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A new random password.
pub fn generate() -> String {
    rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(GENERATED_LEN)
        .map(char::from)
        .collect()
}

pub(crate) struct Found {
    pub values: BTreeMap<String, String>,
    pub sources: BTreeMap<String, SecretSource>,
    /// Names set nowhere: to be generated.
    pub missing: Vec<String>,
}

/// A `postgresql_users` login role and where its password is given, if anywhere.
pub(crate) struct UserPassword {
    pub role: String,
    /// `password_file` as written, and where.
    pub file: Option<(String, Vec<Seg>)>,
    /// `password` inline, and where.
    pub inline: Option<(String, Vec<Seg>)>,
}

/// The secrets file's key for a `postgresql_users` role's password.
pub fn user_key(role: &str) -> String {
    format!("user.{role}")
}

/// A password from a file: one line, not empty; the error says what to fix.
fn read_password_file(path: &Path, key: &str) -> Result<String, String> {
    match fs::read_to_string(path) {
        Ok(s) => {
            let v = s.trim();
            if v.is_empty() {
                Err(format!(
                    "`{key}`: {} is empty: write the password into it",
                    path.display()
                ))
            } else if v.chars().any(|c| c.is_control()) {
                Err(format!(
                    "`{key}`: {} must hold the password on one line",
                    path.display()
                ))
            } else {
                Ok(v.to_string())
            }
        }
        Err(e) => Err(format!(
            "`{key}`: cannot read {} ({e}): fix the path (relative paths start at the inventory's directory)",
            path.display()
        )),
    }
}

/// Find each secret: inventory (inline or `_file`), else the secrets file.
pub(crate) fn find(
    ctx: &mut Ctx,
    dir: &Path,
    inline: &BTreeMap<&'static str, (String, Vec<Seg>)>,
    files: &BTreeMap<&'static str, (String, Vec<Seg>)>,
    users: &[UserPassword],
    store: &Path,
) -> Found {
    let stored = if store.exists() {
        tighten(ctx, store);
        match read_store(store) {
            Ok(m) => m,
            Err(d) => {
                ctx.push(d);
                BTreeMap::new()
            }
        }
    } else {
        BTreeMap::new()
    };
    let mut found = Found {
        values: BTreeMap::new(),
        sources: BTreeMap::new(),
        missing: Vec::new(),
    };
    for name in SECRET_NAMES {
        match (inline.get(name), files.get(name)) {
            (Some((_, at)), Some(_)) => {
                ctx.error_at(
                    at,
                    format!("`{name}` and `{name}_file` are both set: keep one of them"),
                );
            }
            (Some((v, _)), None) => {
                found.values.insert(name.into(), v.clone());
                found.sources.insert(name.into(), SecretSource::Inventory);
            }
            (None, Some((p, at))) => {
                let path = expand_local_path(dir, p);
                match read_password_file(&path, &format!("{name}_file")) {
                    Ok(v) => {
                        found.values.insert(name.into(), v);
                        found
                            .sources
                            .insert(name.into(), SecretSource::File { path });
                    }
                    Err(e) => ctx.error_at(at, e),
                }
            }
            (None, None) => match stored.get(name) {
                Some(v) => {
                    found.values.insert(name.into(), v.clone());
                    found.sources.insert(
                        name.into(),
                        SecretSource::SecretsFile {
                            path: store.to_path_buf(),
                        },
                    );
                }
                None if PROVIDED.contains(&name) => {}
                None => found.missing.push(name.into()),
            },
        }
    }
    for UserPassword { role, file, inline } in users {
        let key = user_key(role);
        match (file, inline) {
            (Some(_), Some((_, at))) => ctx.error_at(
                at,
                format!(
                    "role {role}: `password` and `password_file` are both set: keep one of them"
                ),
            ),
            (None, Some((v, _))) => {
                found.values.insert(key.clone(), v.clone());
                found.sources.insert(key, SecretSource::Inventory);
            }
            (Some((p, at)), None) => {
                let path = expand_local_path(dir, p);
                match read_password_file(&path, "password_file") {
                    Ok(v) => {
                        found.values.insert(key.clone(), v);
                        found.sources.insert(key, SecretSource::File { path });
                    }
                    Err(e) => ctx.error_at(at, format!("role {role}: {e}")),
                }
            }
            (None, None) => match stored.get(&key) {
                Some(v) => {
                    found.values.insert(key.clone(), v.clone());
                    found.sources.insert(
                        key,
                        SecretSource::SecretsFile {
                            path: store.to_path_buf(),
                        },
                    );
                }
                None => found.missing.push(key),
            },
        }
    }
    found
}

/// Generate the missing secrets and add them to the secrets file (created 0600,
/// atomically; never readable by others, not even briefly). Another pgha writing
/// the file at the same moment is detected: its values are used instead.
pub(crate) fn store_missing(store: &Path, found: &mut Found) -> Result<(), String> {
    for _attempt in 0..3 {
        let existed = store.exists();
        let mut content: BTreeMap<String, String> = if existed {
            read_store(store).map_err(|d| d.to_string())?
        } else {
            BTreeMap::new()
        };
        // Values that appeared meanwhile win over generating new ones.
        found.missing.retain(|name| match content.get(name) {
            Some(v) => {
                found.values.insert(name.clone(), v.clone());
                found.sources.insert(
                    name.clone(),
                    SecretSource::SecretsFile {
                        path: store.to_path_buf(),
                    },
                );
                false
            }
            None => true,
        });
        if found.missing.is_empty() {
            return Ok(());
        }
        let generated: Vec<(String, String)> = found
            .missing
            .iter()
            .map(|n| (n.clone(), generate()))
            .collect();
        for (n, v) in &generated {
            content.insert(n.clone(), v.clone());
        }
        let body = render_store(store, &content).map_err(|e| e.to_string())?;
        match write_0600(store, body.as_bytes(), !existed) {
            Ok(true) => {
                for (n, v) in generated {
                    found.values.insert(n.clone(), v);
                    found.sources.insert(
                        n,
                        SecretSource::SecretsFile {
                            path: store.to_path_buf(),
                        },
                    );
                }
                found.missing.clear();
                return Ok(());
            }
            Ok(false) => continue, // created by someone else meanwhile: read it again
            Err(e) => return Err(format!("cannot write {}: {e}", store.display())),
        }
    }
    Err(format!(
        "{} keeps changing while pgha writes it: is another pgha running?",
        store.display()
    ))
}

fn render_store(
    store: &Path,
    content: &BTreeMap<String, String>,
) -> Result<String, yaml_serde::Error> {
    let name = store
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(format!(
        "# {name}: passwords generated by pgha for this inventory (kept mode 0600).\n\
         # Keep it safe and out of version control: the cluster's roles use these passwords.\n\
         # A value set in the inventory (inline or <name>_file) takes precedence.\n{}",
        yaml_serde::to_string(content)?
    ))
}

/// Write `data` to `path` with mode 0600 through a temp file in the same
/// directory. With `create`, never replace an existing file (Ok(false) then).
fn write_0600(path: &Path, data: &[u8], create: bool) -> io::Result<bool> {
    let dir = parent_dir(path);
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{base}.{}.{}.tmp", std::process::id(), generate()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        if create {
            match fs::hard_link(&tmp, path) {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
                // No hard links on this filesystem: fall back to rename.
                Err(_) if !path.exists() => {}
                Err(_) => return Ok(false),
            }
        }
        fs::rename(&tmp, path)?;
        Ok(true)
    })();
    let _ = fs::remove_file(&tmp);
    if result.is_ok()
        && let Ok(d) = fs::File::open(&dir)
    {
        let _ = d.sync_all();
    }
    result
}

/// A secrets file readable by group or others is tightened to 0600 (with a warning).
fn tighten(ctx: &mut Ctx, store: &Path) {
    let Ok(meta) = fs::metadata(store) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        match fs::set_permissions(store, fs::Permissions::from_mode(0o600)) {
            Ok(()) => ctx.warn(format!(
                "{} was readable by others (mode {mode:o}): changed to 0600; consider changing the passwords in it",
                store.display()
            )),
            Err(e) => ctx.warn(format!(
                "{} is readable by others (mode {mode:o}) and could not be changed to 0600: {e}",
                store.display()
            )),
        }
    }
}

fn read_store(store: &Path) -> Result<BTreeMap<String, String>, super::Diagnostic> {
    let diag = |line, col, msg: String| super::Diagnostic::new(store, line, col, msg);
    let text = fs::read_to_string(store)
        .map_err(|e| diag(None, None, format!("cannot read the secrets file: {e}")))?;
    let value: yaml_serde::Value = yaml_serde::from_str(&text).map_err(|e| {
        let loc = e.location();
        diag(
            loc.as_ref().map(|l| l.line()),
            loc.as_ref().map(|l| l.column()),
            format!("the secrets file is not valid YAML ({e}): fix it, or remove it to generate new passwords"),
        )
    })?;
    let mut out = BTreeMap::new();
    match value {
        yaml_serde::Value::Null => {}
        yaml_serde::Value::Mapping(m) => {
            for (k, v) in m {
                let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
                    let key = k.as_str().unwrap_or("?").to_string();
                    let line =
                        super::locate::locate(&text, &[Seg::Key(key.clone())]).map(|l| l.line);
                    return Err(diag(
                        line,
                        None,
                        format!("`{key}` in the secrets file must be a string"),
                    ));
                };
                out.insert(k.to_string(), v.to_string());
            }
        }
        _ => {
            return Err(diag(
                None,
                None,
                "the secrets file must be a mapping `name: password`".into(),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), GENERATED_LEN);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn secrets_path_next_to_inventory() {
        assert_eq!(
            secrets_path(Path::new("inv/prod.yml")),
            PathBuf::from("inv/prod.secrets.yml")
        );
        assert_eq!(
            secrets_path(Path::new("prod.yaml")),
            PathBuf::from("prod.secrets.yml")
        );
    }

    #[test]
    fn write_0600_creates_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.secrets.yml");
        assert!(write_0600(&p, b"a: b\n", true).unwrap());
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A second create does not replace it.
        assert!(!write_0600(&p, b"a: c\n", true).unwrap());
        assert_eq!(fs::read_to_string(&p).unwrap(), "a: b\n");
        // Replace mode does.
        assert!(write_0600(&p, b"a: c\n", false).unwrap());
        assert_eq!(fs::read_to_string(&p).unwrap(), "a: c\n");
        // No temp files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
