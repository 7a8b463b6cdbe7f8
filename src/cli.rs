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
    /// Local bare Debian 13 hosts in Docker, with fault injection.
    Lab(LabArgs),
}

#[derive(Debug, Args)]
pub struct InventoryArgs {
    /// Inventory file (Ansible YAML form).
    #[arg(short, long, value_name = "FILE")]
    pub inventory: PathBuf,
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
    /// Inventory file (Ansible YAML form).
    #[arg(short, long, value_name = "FILE")]
    pub inventory: PathBuf,

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
    /// Cut a host off the lab network.
    Partition(LabHostArgs),
    /// Put a partitioned host back on the network.
    Heal(LabHostArgs),
    /// Destroy a host and create a fresh bare one at the same address (lost VM or disk).
    Replace(LabHostArgs),
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
}

#[derive(Debug, Args)]
pub struct LabHostArgs {
    /// Host name as in the lab inventory (db1, router1, ...).
    pub host: String,
    #[command(flatten)]
    pub lab: LabName,
}
