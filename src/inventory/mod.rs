//! Ansible-compatible inventory: parsing, validation, secrets.
//!
//! `load` reads an Ansible YAML inventory (`all: {vars, hosts, children}`),
//! applies Ansible's variable precedence, checks every value and the cluster's
//! rules, and returns a typed [`Inventory`] or an [`InventoryError`] listing
//! every problem with its file, line and column (exit code 4).
//!
//! Layer 0: plain data and pure logic; imports only `error` (and std and crates).
//! Reads no certificates and calls nothing above it: a run loads those itself.

pub mod calendar;
mod convert;
mod error;
pub(crate) mod locate;
mod model;
pub mod objects;
mod parse;
pub mod print;
mod resolve;
mod scalar;
mod secrets;
mod validate;
mod vars;

use std::path::{Path, PathBuf};

pub use error::{Diagnostic, InventoryError};
pub use model::*;
pub use secrets::{SECRET_NAMES, secrets_path};

use locate::Seg;

/// How `load` treats secrets.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Generate missing passwords and store them in the secrets file (`deploy`).
    /// When false nothing is written: missing passwords get a random in-memory
    /// value and the source `Pending`.
    pub write_secrets: bool,
}

/// Read, check and resolve the inventory at `path`.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Inventory, InventoryError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let what = match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "the inventory file does not exist: check the path given to -i".to_string()
                }
                _ => format!("cannot read the inventory file: {e}"),
            };
            return Err(InventoryError {
                path: path.to_path_buf(),
                errors: vec![Diagnostic::new(path, None, None, what)],
            });
        }
    };
    load_str(path, &text, opts)
}

/// `load` with the text already read (`path` names the file in messages and
/// anchors relative paths and the secrets file).
pub fn load_str(path: &Path, text: &str, opts: &LoadOptions) -> Result<Inventory, InventoryError> {
    let mut ctx = Ctx::new(path, text);
    let dir = secrets::parent_dir(path);
    let mut root: yaml_serde::Value = match yaml_serde::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            ctx.yaml_error(&e);
            return Err(ctx.into_error());
        }
    };
    if let Err(e) = root.apply_merge() {
        ctx.yaml_error(&e);
        return Err(ctx.into_error());
    }
    let tree = parse::parse(&mut ctx, &root);
    if ctx.has_errors() && tree.groups.is_empty() {
        return Err(ctx.into_error());
    }
    let r = resolve::resolve(&mut ctx, &tree, &dir);
    let store = secrets::secrets_path(path);
    let users = &r.user_password_files;
    let mut found = secrets::find(
        &mut ctx,
        &dir,
        &r.secret_inline,
        &r.secret_files,
        users,
        &store,
    );
    if r.cluster.backup_enabled && r.cluster.s3() {
        for name in secrets::PROVIDED {
            if !found.values.contains_key(name) {
                ctx.error(format!(
                    "`backup_repo_type: s3` needs the S3 account's `{name}`: add `{name}: ...` to {} \
                     (kept there, mode 0600), or set `{name}_file` to a file holding it",
                    store.display()
                ));
            }
        }
    }
    if ctx.has_errors() {
        return Err(ctx.into_error());
    }
    if opts.write_secrets
        && !found.missing.is_empty()
        && let Err(msg) = secrets::store_missing(&store, &mut found)
    {
        ctx.push(Diagnostic::new(&store, None, None, msg));
        return Err(ctx.into_error());
    }
    for name in std::mem::take(&mut found.missing) {
        found.values.insert(name.clone(), secrets::generate());
        found.sources.insert(
            name,
            SecretSource::Pending {
                path: store.clone(),
            },
        );
    }
    let secret = |n: &str| Secret::new(found.values.get(n).cloned().unwrap_or_default());
    let secrets = Secrets {
        superuser_password: secret("superuser_password"),
        replication_password: secret("replication_password"),
        rewind_password: secret("rewind_password"),
        monitor_password: secret("monitor_password"),
        app_password: secret("app_password"),
        patroni_api_password: secret("patroni_api_password"),
        haproxy_stats_password: secret("haproxy_stats_password"),
        pgbouncer_auth_password: secret("pgbouncer_auth_password"),
        backup_cipher_pass: secret("backup_cipher_pass"),
        backup_s3_key: secret("backup_s3_key"),
        backup_s3_key_secret: secret("backup_s3_key_secret"),
        users: users
            .iter()
            .map(|u| (u.role.clone(), secret(&secrets::user_key(&u.role))))
            .collect(),
    };
    let mut inv = Inventory {
        path: path.to_path_buf(),
        hosts: r.hosts,
        groups: r.groups,
        cluster: r.cluster,
        secrets,
        secrets_path: store,
        secret_sources: found.sources.into_iter().collect(),
        known_hosts: r.known_hosts,
        warnings: Vec::new(),
    };
    inv.warnings = ctx.take_warnings();
    Ok(inv)
}

/// Print the inventory's warnings to stderr (for commands that act on it).
pub fn eprint_warnings(inv: &Inventory) {
    for w in &inv.warnings {
        eprintln!("warning: {}", w.message);
    }
}

/// A path from the inventory: `~` expanded, relative to the inventory's directory.
pub(crate) fn expand_local_path(dir: &Path, p: &str) -> PathBuf {
    let expanded = if p == "~" || p.starts_with("~/") {
        match std::env::var_os("HOME") {
            Some(home) => {
                PathBuf::from(home).join(p.trim_start_matches('~').trim_start_matches('/'))
            }
            None => PathBuf::from(p),
        }
    } else {
        PathBuf::from(p)
    };
    if expanded.is_absolute() {
        expanded
    } else {
        dir.join(expanded)
    }
}

pub(crate) const INI_HINT: &str = ": INI inventories are not supported; convert this one to the YAML form \
     with `ansible-inventory -i FILE --list --yaml`";

/// An Ansible INI inventory: a `[group]` header line and no `all:`.
pub(crate) fn looks_like_ini(text: &str) -> bool {
    let header = |l: &str| {
        let l = l.trim();
        l.len() > 2
            && l.starts_with('[')
            && l.ends_with(']')
            && l[1..l.len() - 1]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':'))
    };
    text.lines().any(header) && !text.lines().any(|l| l.trim_end() == "all:")
}

/// Collects problems while the inventory is read.
pub(crate) struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    errors: Vec<Diagnostic>,
    /// With their line, to list them in file order.
    warnings: Vec<(Option<usize>, Warning)>,
}

impl<'a> Ctx<'a> {
    fn new(path: &'a Path, text: &'a str) -> Self {
        Ctx {
            path,
            text,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn take_warnings(&mut self) -> Vec<Warning> {
        let mut w = std::mem::take(&mut self.warnings);
        w.sort_by_key(|(line, _)| (line.is_none(), *line));
        w.into_iter().map(|(_, w)| w).collect()
    }

    pub(crate) fn text(&self) -> &str {
        self.text
    }

    pub(crate) fn error_count(&self) -> usize {
        self.errors.len()
    }

    fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    fn into_error(self) -> InventoryError {
        let mut errors = self.errors;
        // Stable order: by file, then line; problems without a line last.
        errors.sort_by_key(|d| (d.file.clone(), d.line.is_none(), d.line, d.column));
        errors.dedup();
        InventoryError {
            path: self.path.to_path_buf(),
            errors,
        }
    }

    pub(crate) fn push(&mut self, d: Diagnostic) {
        self.errors.push(d);
    }

    /// An error at a key path (line found by the locator; an empty path means no line).
    pub(crate) fn error_at(&mut self, path: &[Seg], msg: impl Into<String>) {
        let loc = if path.is_empty() {
            None
        } else {
            locate::locate(self.text, path)
        };
        let d = Diagnostic::new(self.path, loc.map(|l| l.line), loc.map(|l| l.column), msg);
        self.errors.push(d);
    }

    /// An error about the file as a whole.
    pub(crate) fn error(&mut self, msg: impl Into<String>) {
        self.errors
            .push(Diagnostic::new(self.path, None, None, msg));
    }

    pub(crate) fn warn_at(&mut self, path: Option<&[Seg]>, msg: impl Into<String>) {
        let loc = path
            .filter(|p| !p.is_empty())
            .and_then(|p| locate::locate(self.text, p));
        let d = Diagnostic::new(self.path, loc.map(|l| l.line), None, msg);
        self.warnings.push((
            d.line,
            Warning {
                message: d.to_string(),
            },
        ));
    }

    pub(crate) fn warn(&mut self, msg: impl Into<String>) {
        self.warnings.push((
            None,
            Warning {
                message: msg.into(),
            },
        ));
    }

    /// "line N" for messages that mention another place.
    pub(crate) fn line_of(&self, path: &[Seg]) -> String {
        match locate::locate(self.text, path) {
            Some(l) => format!("line {}", l.line),
            None => "an unknown line".into(),
        }
    }

    fn yaml_error(&mut self, e: &yaml_serde::Error) {
        if looks_like_ini(self.text) {
            self.error(format!("this is not a YAML inventory{INI_HINT}"));
            return;
        }
        let msg = e.to_string();
        let loc = e.location();
        let (mut line, mut column) = (
            loc.as_ref().map(|l| l.line()),
            loc.as_ref().map(|l| l.column()),
        );
        // "all.vars: duplicate entry with key \"a\" at line 3 column 5": point at the repeated key.
        let text = if let Some(i) = msg.find("duplicate entry with key ") {
            let prefix = msg[..i].trim_end_matches(": ").trim_end();
            let rest = &msg[i + "duplicate entry with key ".len()..];
            let key = rest
                .strip_prefix('"')
                .and_then(|r| r.split('"').next())
                .unwrap_or("");
            let occ = locate::locate_key_occurrences(self.text, &locate::parse_dotted(prefix), key);
            if let Some(second) = occ.get(1) {
                line = Some(second.line);
                column = Some(second.column);
            }
            let at = if prefix.is_empty() || prefix == "." {
                "the top level".to_string()
            } else {
                format!("`{prefix}`")
            };
            format!(
                "`{key}` appears twice in {at}: YAML keys must be unique in a mapping; remove or merge one of them"
            )
        } else {
            // Drop yaml_serde's " at line L column C" (the diagnostic carries it).
            let stripped = match msg.find(" at line ") {
                Some(i) => {
                    let rest = &msg[i + " at line ".len()..];
                    let after = rest.find(',').map(|j| &rest[j..]).unwrap_or("");
                    let after = after.replace(" at line ", " that started at line ");
                    format!("{}{after}", &msg[..i])
                }
                None => msg.clone(),
            };
            let hint = if self.text.contains('\t') && stripped.contains("cannot start any token") {
                ": YAML indentation must use spaces, not tabs"
            } else {
                ": fix the YAML syntax"
            };
            format!("YAML syntax error: {stripped}{hint}")
        };
        self.errors
            .push(Diagnostic::new(self.path, line, column, text));
    }
}

#[cfg(test)]
mod tests;
