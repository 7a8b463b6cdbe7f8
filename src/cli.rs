//! Command-line interface (clap). Parsing only; commands live in their own modules.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
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
    /// Rolling upgrade of the stack's packages to the versions the inventory asks for.
    Upgrade(UpgradeArgs),
    /// Make a fresh host (same or new address) a full member again after its VM or disk was lost.
    Rebuild(RebuildArgs),
    /// Show the cluster lock (who runs a command that changes the cluster); --break removes it.
    Lock(LockArgs),
    /// Local bare Debian 13 hosts in Docker, with fault injection.
    Lab(LabArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// pgha's container image for `install_method: docker` (built here, no registry).
    Images(ImagesArgs),
}

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
    /// Redraw every SECS seconds (default 2) until interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<u64>,
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
pub struct ImagesArgs {
    #[command(subcommand)]
    pub command: ImagesCommand,
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Build the stack image from Debian 13 packages (cached by its recipe's hash).
    Build,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: clap_complete::Shell,
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
pub struct LabArgs {
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Debug, Clone, Args)]
pub struct LabName {
    /// Lab name: prefix of its containers and network.
    #[arg(long, default_value = "pgha-lab")]
    pub name: String,
    /// Directory holding the lab's inventory, key and known_hosts [default: .pgha-lab/ for
    /// the default name, .pgha-lab-NAME/ otherwise].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Create (or reuse) the lab hosts, then deploy the cluster onto them.
    Up(LabUpArgs),
    /// Remove the lab's containers and network (the image cache is kept).
    Down(LabName),
    /// List the lab's hosts, addresses and whether each is running.
    Status(LabName),
    /// Hard-stop a host, like pulling the power.
    Kill(LabHostArgs),
    /// Start a stopped host.
    Start(LabHostArgs),
    /// Cut a host off the lab network, or with --from only off some hosts (both
    /// ways) while the others still reach it.
    Partition(LabPartitionArgs),
    /// Put a partitioned host back on the network.
    Heal(LabHostArgs),
    /// Destroy a host and create a fresh bare one at the same address (lost VM or
    /// disk), or with --new-address at a new one (written into the lab inventory).
    Replace(LabReplaceArgs),
}

#[derive(Debug, Args)]
pub struct LabPartitionArgs {
    #[command(flatten)]
    pub host: LabHostArgs,
    /// Cut it off only from these hosts (comma-separated; `controller` is this
    /// machine), both ways, packets dropped; it stays on the lab network.
    #[arg(long, value_name = "HOSTS", value_delimiter = ',')]
    pub from: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LabReplaceArgs {
    #[command(flatten)]
    pub host: LabHostArgs,
    /// Give the fresh host a new address (from .200-.249 of the lab's /24) and point
    /// the host's name in the lab inventory at it.
    #[arg(long)]
    pub new_address: bool,
}

#[derive(Debug, Args)]
pub struct LabUpArgs {
    #[command(flatten)]
    pub lab: LabName,
    /// Number of DB hosts.
    #[arg(long, default_value_t = 3)]
    pub db: u32,
    /// Number of router hosts.
    #[arg(long, default_value_t = 1)]
    pub routers: u32,
    /// Create the hosts only; do not deploy.
    #[arg(long)]
    pub no_deploy: bool,
    /// SSH user written into the lab inventory (root or deploy).
    #[arg(long, default_value = "root")]
    pub user: String,
    /// Write `tls: false` into the lab inventory (plain HTTP and PostgreSQL without TLS).
    #[arg(long)]
    pub no_tls: bool,
    /// Install method written into the lab inventory: native or docker.
    #[arg(long, default_value = "native", value_parser = ["native", "docker"])]
    pub method: String,
}

#[derive(Debug, Args)]
pub struct LabHostArgs {
    /// Host name as in the lab inventory (db1, router1, ...).
    pub host: String,
    #[command(flatten)]
    pub lab: LabName,
}
