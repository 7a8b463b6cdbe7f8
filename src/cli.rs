//! Command-line interface (clap): the top-level parser and one variant per
//! command. Each command's options live with it (`commands::args`, `lab::args`);
//! `main` matches on `Command` and calls the command.
//!
//! Layer 6, the top: may import commands and the lab.

use clap::{Args, Parser, Subcommand};

use crate::commands::args::{
    BackupArgs, DeployArgs, DestroyArgs, ImagesArgs, InventoryArgs, LockArgs, PoolArgs,
    RebuildArgs, RemoveArgs, RestartArgs, RestoreArgs, StatusArgs, SwitchoverArgs, UpgradeArgs,
};
use crate::lab::args::LabArgs;
use crate::ui::OutputFormat;

#[derive(Debug, Parser)]
#[command(
    name = "pgha",
    version,
    about = "Highly available PostgreSQL (Patroni + etcd + HAProxy) on bare hosts over SSH",
    after_help = "Exit codes: 0 ok, 1 error, 2 a host failed, 3 a host unreachable, 4 inventory or parse error, 5 bad options."
)]
pub struct Cli {
    /// Output format: text for people, json for programs.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// More detail on stderr (-v: info; -vv: debug, including each remote command).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the resolved inventory: hosts, groups, addresses, SSH settings, variables.
    Inventory(InventoryArgs),
    /// Bring hosts to a running, verified cluster; re-runs change only what drifted.
    Deploy(DeployArgs),
    /// One view of the cluster from live probes: members, etcd, routers, exporters.
    Status(StatusArgs),
    /// Planned switchover of the leader to a caught-up standby, gap measured.
    Switchover(SwitchoverArgs),
    /// Restart PostgreSQL on members in the order PostgreSQL requires, gap measured.
    Restart(RestartArgs),
    /// Rolling upgrade of the stack's packages to the versions the inventory asks for.
    Upgrade(UpgradeArgs),
    /// Make a fresh host (same or new address) a full member again after its VM or disk was lost.
    Rebuild(RebuildArgs),
    /// Backups with pgBackRest: take one, list them with the recovery window, test a restore.
    Backup(BackupArgs),
    /// Point-in-time recovery of the whole cluster from its backups, in place or onto new hosts.
    Restore(RestoreArgs),
    /// Take a host the inventory no longer lists out of the cluster: etcd, Patroni, routers, pg_hba.
    Remove(RemoveArgs),
    /// Take the cluster down for good: every component stopped and disabled, its etcd state removed.
    Destroy(DestroyArgs),
    /// The connection poolers (PgBouncer on the routers): show, pause, resume, reconnect.
    Pool(PoolArgs),
    /// Show the cluster lock (who runs a command that changes the cluster); --break removes it.
    Lock(LockArgs),
    /// Local bare Debian 13 hosts in Docker, with fault injection.
    Lab(LabArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// pgha's container image for `install_method: docker` (built here, no registry).
    Images(ImagesArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: clap_complete::Shell,
}
