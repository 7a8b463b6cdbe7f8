//! The options of `pgha lab` (clap derive), parsed by `cli`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

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
    /// Write `backup_enabled: false` into the lab inventory (no backup repository;
    /// by default the first router doubles as it).
    #[arg(long)]
    pub no_backup: bool,
    /// Write `monitoring_enabled: false` into the lab inventory (no Prometheus,
    /// Alertmanager or node_exporter; by default the first router is the monitor).
    #[arg(long)]
    pub no_monitoring: bool,
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
