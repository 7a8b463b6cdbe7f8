//! The options of the product's commands (clap derive), parsed by `cli` and read by
//! each command. Shared groups: the inventory argument, SSH options, the lock wait.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// The inventory a command reads: `pgha CMD inventory.yml` or `pgha CMD -i inventory.yml`;
/// without either, `$PGHA_INVENTORY`, then `./inventory.yml`.
#[derive(Debug, Clone, Default, Args)]
pub struct InventoryArg {
    /// Inventory file (Ansible YAML form) [default: $PGHA_INVENTORY, else ./inventory.yml].
    #[arg(value_name = "INVENTORY", value_hint = clap::ValueHint::FilePath)]
    pub inventory: Option<PathBuf>,
    /// The inventory file, as an option (as ansible-playbook takes it).
    #[arg(
        short = 'i',
        long = "inventory",
        value_name = "FILE",
        conflicts_with = "inventory",
        value_hint = clap::ValueHint::FilePath
    )]
    pub inventory_opt: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InventoryArgs {
    #[command(flatten)]
    pub inventory: InventoryArg,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub inventory: InventoryArg,
    /// More inventories: one line per cluster, and the worst exit code.
    #[arg(value_name = "MORE", value_hint = clap::ValueHint::FilePath)]
    pub more: Vec<PathBuf>,
    /// With several inventories: at most this many hosts probed at once
    /// [default: 8 per CPU of this machine].
    #[arg(long, value_name = "N")]
    pub forks: Option<usize>,
    /// Redraw every SECS seconds (default 2) until interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<u64>,
    /// To read the backup repository on its host.
    #[command(flatten)]
    pub ssh: SshArgs,
}

#[derive(Debug, Args)]
pub struct SwitchoverArgs {
    #[command(flatten)]
    pub inventory: InventoryArg,
    /// The member to promote [default: the synchronous standby with the least lag].
    #[arg(long, value_name = "HOST")]
    pub to: Option<String>,
    /// Largest replication lag (bytes) the new leader may have
    /// [default: the inventory's patroni_maximum_lag_on_failover].
    #[arg(long, value_name = "BYTES")]
    pub max_lag: Option<u64>,
    #[command(flatten)]
    pub lock: LockWaitArg,
    /// SSH to the routers: with it, pgha points HAProxy's write port at the new
    /// leader the moment Patroni names it primary (its runtime API; root, or a
    /// login user in the haproxy group), instead of waiting for HAProxy's next
    /// check. Without it, the switchover works the same, HAProxy's checks decide.
    #[command(flatten)]
    pub ssh: SshArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["rolling", "member"])))]
pub struct RestartArgs {
    #[command(flatten)]
    pub inventory: InventoryArg,
    /// Restart every member, one at a time (the leader after a switchover, or first
    /// in place when a parameter standbys must match was lowered).
    #[arg(long)]
    pub rolling: bool,
    /// Restart this member (repeatable); a leader is handed over first.
    #[arg(long, value_name = "HOST")]
    pub member: Vec<String>,
    /// Only the members that wait for a restart (Patroni's pending_restart).
    #[arg(long)]
    pub pending: bool,
    #[command(flatten)]
    pub lock: LockWaitArg,
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub inventory: InventoryArg,
    /// Show each host's installed and target versions, the order and the expected
    /// switchovers; change nothing.
    #[arg(long)]
    pub check: bool,
    /// Upgrade a cluster that someone else paused or tagged (maintenance): pgha
    /// then clears that pause and those tags as it goes.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub ssh: SshArgs,
    #[command(flatten)]
    pub lock: LockWaitArg,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The host to rebuild, as named in the inventory (db2, router1...).
    #[arg(value_name = "HOST")]
    pub host: String,
    #[command(flatten)]
    pub inventory: InventoryArg,
    /// Show what would be done; change nothing.
    #[arg(long)]
    pub check: bool,
    /// Rebuild a host that is a healthy member (its data is wiped).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub ssh: SshArgs,
    #[command(flatten)]
    pub lock: LockWaitArg,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The host to take out, as it was named (db4, router2...); already deleted
    /// from the inventory.
    #[arg(value_name = "HOST")]
    pub host: String,
    #[command(flatten)]
    pub inventory: InventoryArg,
    /// The host's address [default: pgha's record of the hosts it deployed, else
    /// Patroni's or etcd's member entry].
    #[arg(long, value_name = "IP")]
    pub address: Option<std::net::IpAddr>,
    /// When the host leads the cluster, hand leadership over first (refused otherwise).
    #[arg(long)]
    pub switchover: bool,
    /// Also remove PostgreSQL's data directory on the host (kept by default).
    #[arg(long)]
    pub wipe: bool,
    /// The host is gone for good (unreachable): take it out of the cluster without
    /// touching it.
    #[arg(long)]
    pub host_gone: bool,
    /// Go on without asking.
    #[arg(long)]
    pub yes: bool,
    /// Show what would be done; change nothing.
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub ssh: SshArgs,
    #[command(flatten)]
    pub lock: LockWaitArg,
}

#[derive(Debug, Args)]
pub struct LockArgs {
    #[command(flatten)]
    pub inventory: InventoryArg,
    /// Remove the lock whoever holds it (only when its holder is gone: a live holder
    /// keeps running without it).
    #[arg(long = "break")]
    pub break_: bool,
    #[command(flatten)]
    pub ssh: SshArgs,
}

#[derive(Debug, Args)]
pub struct PoolArgs {
    #[command(subcommand)]
    pub command: PoolCommand,
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Each pooler's pools: clients active and waiting, server connections.
    Show(PoolShowArgs),
    /// Hold new work on every pooler once transactions in flight end (server
    /// connections closed); clients wait until `resume`.
    Pause(PoolPauseArgs),
    /// Let the paused poolers' clients go on.
    Resume(PoolShowArgs),
    /// Replace every server connection once it is released (after a failover, or
    /// to spread them again).
    Reconnect(PoolShowArgs),
}

#[derive(Debug, Args)]
pub struct PoolShowArgs {
    #[command(flatten)]
    pub inventory: InventoryArg,
}

#[derive(Debug, Args)]
pub struct PoolPauseArgs {
    #[command(flatten)]
    pub inventory: InventoryArg,
    /// Give up (and resume) when transactions are still running after SECS
    /// [default: the inventory's pgbouncer_pause_timeout].
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    #[command(subcommand)]
    pub command: ImagesCommand,
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Build the stack image from Debian 13 packages (cached by its recipe's hash).
    Build,
}

/// How long a command that changes the cluster waits for the cluster lock.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct LockWaitArg {
    /// Wait up to SECS for the cluster lock when another run holds it (a run that
    /// crashed releases it within 30 s) [default: 0, refuse at once].
    #[arg(long = "lock-wait", value_name = "SECS", default_value_t = 0)]
    pub lock_wait: u64,
}

impl LockWaitArg {
    pub fn duration(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.lock_wait)
    }
}

#[derive(Debug, Clone, Args)]
pub struct SshArgs {
    /// known_hosts file used to verify host keys [default: ~/.ssh/known_hosts,
    /// or the file named by the inventory's `pgha_known_hosts`].
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,

    /// Record the key of a host seen for the first time (trust on first use).
    /// A key that changed is always refused.
    #[arg(long)]
    pub accept_new_host_keys: bool,

    /// Seconds to wait for each SSH connection attempt.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub connect_timeout: u64,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub inventory: InventoryArg,

    /// More inventories: their clusters are deployed at the same time, each with
    /// its own lock, secrets and recap; a failure in one stops no other. Ends
    /// with one line per cluster and the worst exit code.
    #[arg(value_name = "MORE", value_hint = clap::ValueHint::FilePath)]
    pub more: Vec<PathBuf>,

    /// With several inventories: at most this many hosts worked on at once (a
    /// cluster takes a slot per host while it runs) [default: 8 per CPU of this
    /// machine].
    #[arg(long, value_name = "N")]
    pub forks: Option<usize>,

    /// Show what would change; change nothing.
    #[arg(long)]
    pub check: bool,

    /// Show unified diffs of changed files (secrets redacted).
    #[arg(long)]
    pub diff: bool,

    /// Act only on these hosts (comma-separated names); refused when unsafe.
    #[arg(long, value_name = "HOSTS", value_delimiter = ',')]
    pub limit: Vec<String>,

    #[command(flatten)]
    pub ssh: SshArgs,

    #[command(flatten)]
    pub lock: LockWaitArg,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub command: BackupCommand,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Take a backup now (from the repository's host, of whichever member leads).
    Run(BackupRunArgs),
    /// Every backup in the repository, and the recovery window.
    List(BackupListArgs),
    /// Restore a backup into a scratch directory on the repository's host, start
    /// PostgreSQL on it, check it answers and count every table's rows, remove it.
    Verify(BackupVerifyArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackupType {
    Full,
    Diff,
    Incr,
}

impl BackupType {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Diff => "diff",
            BackupType::Incr => "incr",
        }
    }
}

#[derive(Debug, Args)]
pub struct BackupRunArgs {
    #[command(flatten)]
    pub inventory: InventoryArg,
    /// full, diff (changes since the last full) or incr (since the last backup).
    #[arg(long = "type", value_enum, default_value_t = BackupType::Full)]
    pub kind: BackupType,
    /// Copy the files from a standby (the leader still starts and stops the backup).
    #[arg(long)]
    pub from_standby: bool,
    #[command(flatten)]
    pub ssh: SshArgs,
    #[command(flatten)]
    pub lock: LockWaitArg,
}

#[derive(Debug, Args)]
pub struct BackupListArgs {
    #[command(flatten)]
    pub inventory: InventoryArg,
    #[command(flatten)]
    pub ssh: SshArgs,
}

#[derive(Debug, Args)]
pub struct BackupVerifyArgs {
    #[command(flatten)]
    pub inventory: InventoryArg,
    /// The backup to test, by label (`pgha backup list`) [default: the newest].
    #[arg(long, value_name = "LABEL")]
    pub set: Option<String>,
    #[command(flatten)]
    pub ssh: SshArgs,
}

#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("target")
        .required(true)
        .args(["time", "lsn", "latest", "resume"])
))]
pub struct RestoreArgs {
    #[command(flatten)]
    pub inventory: InventoryArg,
    /// Recover to this moment: RFC 3339 with a zone, e.g. 2026-12-02T10:15:00Z.
    #[arg(long, value_name = "TIME")]
    pub time: Option<String>,
    /// Recover to this WAL position, as PostgreSQL prints it (0/5000060).
    #[arg(long, value_name = "LSN")]
    pub lsn: Option<String>,
    /// Recover everything the repository holds (the disaster case: every db host lost).
    #[arg(long)]
    pub latest: bool,
    /// Finish a restore that was interrupted, to the target it was started with.
    #[arg(long)]
    pub resume: bool,
    /// Go on without asking (the restore replaces the cluster's data).
    #[arg(long)]
    pub yes: bool,
    /// Check the target against the recovery window and show the steps; change nothing.
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub ssh: SshArgs,
    #[command(flatten)]
    pub lock: LockWaitArg,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    #[command(flatten)]
    pub inventory: InventoryArg,
    /// Go on without asking.
    #[arg(long)]
    pub yes: bool,
    /// Also remove the data: PostgreSQL's and etcd's data directories (a directory
    /// repository is kept aside unless --delete-backups).
    #[arg(long)]
    pub wipe_data: bool,
    /// Also delete the backups (the repository's directory, or the stanza in S3).
    #[arg(long, requires = "wipe_data")]
    pub delete_backups: bool,
    /// Show what would be stopped and removed; change nothing.
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub ssh: SshArgs,
    #[command(flatten)]
    pub lock: LockWaitArg,
}
