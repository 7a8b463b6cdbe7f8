//! The commands users run. Each is a short sequence of calls into the operations
//! core (`crate::ops`): read it top to bottom to know what the command does.
//!
//! Layer 4: may import ops and everything below; never cli, main, the lab or the
//! benchmark.

pub mod args;
pub mod backup;
pub mod deploy;
pub mod destroy;
pub mod fleet;
pub mod images;
pub mod inventory;
pub mod lock;
pub mod pool;
pub mod rebuild;
pub mod remove;
pub mod restart;
pub mod restore;
pub mod status;
pub mod switchover;
pub mod upgrade;

use std::path::PathBuf;

use serde_json::json;

use crate::commands::args::InventoryArg;
use crate::error::{Exit, Failure};
use crate::inventory::{Inventory, LoadOptions};
use crate::ui::Ui;

/// Where the inventory came from when the command line did not name it.
pub const ENV_INVENTORY: &str = "PGHA_INVENTORY";
pub const DEFAULT_INVENTORY: &str = "inventory.yml";

/// The inventory file to read: the positional argument or `-i`, else
/// `$PGHA_INVENTORY`, else `./inventory.yml`. Says which file it used when the
/// command line did not name one.
pub fn inventory_path(arg: &InventoryArg) -> Result<PathBuf, Failure> {
    if let Some(p) = arg.inventory.clone().or_else(|| arg.inventory_opt.clone()) {
        return Ok(p);
    }
    let (path, from) = resolve_default(
        std::env::var_os(ENV_INVENTORY).map(PathBuf::from),
        PathBuf::from(DEFAULT_INVENTORY).exists(),
    )?;
    eprintln!("using inventory {} ({from})", path.display());
    Ok(path)
}

/// Pure part of `inventory_path`: the env variable, else ./inventory.yml if present.
fn resolve_default(
    env: Option<PathBuf>,
    default_exists: bool,
) -> Result<(PathBuf, &'static str), Failure> {
    match env {
        Some(p) if !p.as_os_str().is_empty() => Ok((p, "from PGHA_INVENTORY")),
        _ if default_exists => Ok((
            PathBuf::from(DEFAULT_INVENTORY),
            "found in the current directory",
        )),
        _ => Err(Failure::options(format!(
            "no inventory given: name it (`pgha deploy inventory.yml` or `-i FILE`), set \
             {ENV_INVENTORY}, or run where ./{DEFAULT_INVENTORY} exists"
        ))),
    }
}

/// Load the inventory a command names (secrets are written only by commands that
/// change the cluster).
pub fn load_inventory(arg: &InventoryArg, write_secrets: bool) -> Result<Inventory, Failure> {
    let path = inventory_path(arg)?;
    Ok(crate::inventory::load(
        &path,
        &LoadOptions { write_secrets },
    )?)
}

/// The cluster's certificates when it has TLS or backups (pgBackRest's TLS server
/// uses them either way), loaded where a run starts: created or renewed when
/// `write` (the commands that write secrets), else read as they are; a run
/// without them cannot reach a TLS cluster, so it stops here.
pub fn load_pki(inv: &Inventory, write: bool) -> Result<Option<crate::pki::Pki>, Failure> {
    if !inv.cluster.tls && !inv.cluster.backup_enabled {
        return Ok(None);
    }
    let dir = crate::pki::pki_dir(&inv.path);
    match crate::pki::load(inv, write) {
        Ok(p) => Ok(Some(p)),
        // Without TLS only pgBackRest's files need them, and a reading run renders none.
        Err(_) if !write && !inv.cluster.tls => Ok(None),
        Err(e) if write => Err(Failure::new(
            Exit::Inventory,
            format!("{}: TLS certificates: {e:#}", dir.display()),
        )),
        Err(e) => Err(Failure::error(format!(
            "no usable cluster certificates in {} ({e:#}); tls is on: `pgha deploy` creates \
             them; is this the inventory the cluster was deployed with?",
            dir.display()
        ))),
    }
}

/// End a command that changes hosts: secrets redacted from the error, the recap,
/// and on failure a JSON document for programs (the message goes to stderr too).
pub fn finish(
    inv: &Inventory,
    ui: &Ui,
    result: Result<Exit, Failure>,
    recap: bool,
) -> Result<Exit, Failure> {
    let result = result.map_err(|f| Failure::new(f.exit, inv.secrets.redact(&f.message)));
    if recap {
        ui.print_recap();
    }
    if let Err(f) = &result
        && ui.json()
    {
        ui.document(
            json!({"ok": false, "exit": f.exit as i32, "error": f.message, "recap": ui.recap()}),
        );
    }
    result
}

/// A command that replaces or removes the cluster goes on with `--yes`, or once
/// the cluster's name is typed at a terminal; without a terminal `--yes` is
/// required (exit 5): "restore replaces the data of cluster NAME: add --yes".
pub fn confirm_by_name(name: &str, yes: bool, what: &str, verb: &str) -> Result<(), Failure> {
    confirm_typed(
        name,
        "the cluster's name",
        &format!("{verb} it"),
        yes,
        &format!("{verb} {what} cluster {name}"),
    )
}

/// Go on with `--yes`, or once `name` is typed at a terminal (the prompt says
/// "Type {what} ({name}) to {to}"); without a terminal `--yes` is required (exit
/// 5, the message starting with `doing`).
pub fn confirm_typed(
    name: &str,
    what: &str,
    to: &str,
    yes: bool,
    doing: &str,
) -> Result<(), Failure> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::options(format!(
            "{doing}: add --yes to go on (nothing was changed)"
        )));
    }
    eprint!("Type {what} ({name}) to {to}: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if answer.trim() == name {
        Ok(())
    } else {
        Err(Failure::error("not confirmed; nothing was changed"))
    }
}

/// SSH options: --known-hosts, else the inventory's pgha_known_hosts, else ~/.ssh/known_hosts.
/// Run a command's work (REST and etcd only, no SSH) under the cluster lock,
/// which is given back either way (poolers a killed run left paused are resumed
/// first: these commands move the primary); a failure is also printed as one JSON document
/// with `--output json`.
pub async fn under_lock<T>(
    ctx: &crate::ops::Ctx<'_>,
    command: &str,
    wait: std::time::Duration,
    work: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    let lock = crate::ops::lock::ClusterLock::acquire(ctx, command, true, wait).await?;
    crate::ops::pool::resume_interrupted(ctx).await;
    let result = work.await;
    lock.release(ctx).await;
    result.inspect_err(|f| {
        if ctx.ui.json() {
            ctx.ui
                .document(json!({"ok": false, "exit": f.exit as i32, "error": f.message}));
        }
    })
}

pub fn ssh_options(args: &args::SshArgs, inv: &Inventory) -> crate::ssh::SshOptions {
    let known = args
        .known_hosts
        .clone()
        .or_else(|| inv.known_hosts.clone())
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".ssh").join("known_hosts")
        });
    let mut o = crate::ssh::SshOptions::new(known);
    o.accept_new_host_keys = args.accept_new_host_keys;
    o.connect_timeout = std::time::Duration::from_secs(args.connect_timeout.max(1));
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_inventory_is_the_env_then_the_current_directory() {
        let (p, from) = resolve_default(Some("/x/prod.yml".into()), true).unwrap();
        assert_eq!(
            (p, from),
            (PathBuf::from("/x/prod.yml"), "from PGHA_INVENTORY")
        );
        let (p, _) = resolve_default(None, true).unwrap();
        assert_eq!(p, PathBuf::from("inventory.yml"));
        let e = resolve_default(Some("".into()), false).unwrap_err();
        assert_eq!(e.exit, Exit::BadOptions);
        assert!(e.message.contains("PGHA_INVENTORY"), "{}", e.message);
    }
}
