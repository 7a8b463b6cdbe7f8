//! `pgha lab`: local bare Debian 13 hosts as systemd containers, with fault injection.
//!
//! Each lab is a user-defined Docker network `NAME` (a fixed /24 in 172.28.0.0/16)
//! and containers `NAME-db1..N`, `NAME-router1..M` booting systemd and sshd from a
//! locally built image (see `image`). Everything the lab creates is labelled
//! `pgha.lab=NAME`, and only objects with that label are ever changed or removed.
//! Docker is reached through the docker CLI (`docker`); naming, addressing and the
//! files in the lab directory are pure functions (`layout`).

pub mod args;
pub mod clients;
mod files;
pub mod layout;
pub mod rehearsal;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::docker;
use crate::error::{Exit, Failure};
use crate::ui::OutputFormat;
use crate::wait;
use args::{LabArgs, LabCommand, LabHostArgs, LabName, LabUpArgs};
use layout::{LABEL, LABEL_ADDRESS, LABEL_DIR, LABEL_HOST, Planned};

pub use crate::docker::base::{ensure as ensure_image, image_tag, recipe_hash};

/// What `up` creates.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Lab name: prefix of its containers, name of its network and of the cluster.
    pub name: String,
    /// Number of database hosts (db1..dbN).
    pub db: u32,
    /// Number of router hosts (router1..routerM).
    pub routers: u32,
    /// Directory for the inventory, SSH key and known_hosts (created when missing).
    pub dir: PathBuf,
    /// SSH user written into the inventory: `root`, or `deploy` (with `ansible_become`).
    pub user: String,
    /// TLS on (the default); false writes `tls: false` into the inventory.
    pub tls: bool,
    /// `install_method: docker` (components as containers in the hosts).
    pub docker: bool,
}

/// A lab that is up.
#[derive(Debug, Clone, Serialize)]
pub struct LabInfo {
    pub name: String,
    pub dir: PathBuf,
    pub inventory_path: PathBuf,
    pub known_hosts_path: PathBuf,
    pub key_path: PathBuf,
    pub subnet: Ipv4Net,
    /// The hosts of the spec, db hosts first.
    pub hosts: Vec<LabHost>,
}

impl LabInfo {
    /// The host named `name` (db1, router1...).
    pub fn host(&self, name: &str) -> Option<&LabHost> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

/// One host of a lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabHost {
    /// Inventory name and hostname: db1, router1.
    pub name: String,
    /// Docker container name: NAME-db1.
    pub container: String,
    /// Fixed address on the lab network (kept across kill, partition and replace).
    pub address: IpAddr,
    pub running: bool,
    /// Cut off the lab network by `lab partition`.
    pub partitioned: bool,
    /// Hosts (and `controller`, this machine) it is cut off from by
    /// `lab partition --from`, while it stays on the network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cut_from: Vec<String>,
}

/// Progress for people, on stderr (stdout stays for results).
pub(crate) fn say(msg: &str) {
    eprintln!("{msg}");
}

/// Bound for a host to boot: systemd up, sshd answering.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------
// Library API
// ---------------------------------------------------------------------------

/// Create the lab's network and hosts, or reuse them (starting stopped hosts and
/// reconnecting partitioned ones); write the key, known_hosts and inventory into
/// `spec.dir` (only files whose content changes). Does not deploy.
pub async fn up(spec: &LabSpec) -> Result<LabInfo, Failure> {
    layout::validate_name(&spec.name).map_err(Failure::options)?;
    layout::validate_counts(spec.db, spec.routers).map_err(Failure::options)?;
    validate_user(&spec.user)?;
    docker::check_engine().await?;
    let image = docker::base::ensure().await?;
    let name = spec.name.as_str();

    files::ensure_dir(&spec.dir)?;
    let dir_abs = spec.dir.canonicalize().map_err(|e| {
        Failure::error(format!(
            "cannot resolve the lab directory {}: {e}",
            spec.dir.display()
        ))
    })?;
    let subnet = ensure_network(name, &dir_abs).await?;
    let planned = layout::plan_hosts(name, subnet, spec.db, spec.routers);

    let existing: BTreeMap<String, LabHost> = status(name)
        .await?
        .into_iter()
        .map(|h| (h.name.clone(), h))
        .collect();
    for h in existing.values() {
        if !planned.iter().any(|p| p.name == h.name) {
            say(&format!(
                "note: lab {name} also has {} ({}), not in this spec: left as it is \
                 (not in the inventory; `pgha lab down --name {name}` removes it)",
                h.name, h.container
            ));
        }
    }

    let (key_path, public_key) =
        files::ensure_key(&spec.dir, layout::KEY_FILE, &format!("pgha-lab-{name}"))?;
    let started = Instant::now();
    let results = futures_util::future::try_join_all(
        planned
            .iter()
            .map(|p| bring_up(name, p, &image, existing.get(&p.name), &public_key)),
    )
    .await?;
    let (hosts, entries): (Vec<LabHost>, Vec<String>) = results.into_iter().unzip();
    say(&format!(
        "lab {name}: {} hosts ready in {}s ({subnet})",
        hosts.len(),
        started.elapsed().as_secs()
    ));

    let known_hosts_path = spec.dir.join(layout::KNOWN_HOSTS_FILE);
    files::write_if_changed(
        &known_hosts_path,
        layout::render_known_hosts(name, &entries).as_bytes(),
        0o644,
    )?;
    let inventory_path = spec.dir.join(layout::INVENTORY_FILE);
    files::write_if_changed(
        &inventory_path,
        layout::render_inventory(name, &planned, &spec.user, spec.tls, spec.docker).as_bytes(),
        0o644,
    )?;
    Ok(LabInfo {
        name: name.to_string(),
        dir: spec.dir.clone(),
        inventory_path,
        known_hosts_path,
        key_path,
        subnet,
        hosts,
    })
}

/// Remove the lab's containers and network (objects labelled `pgha.lab=NAME` only).
/// The image cache and the lab directory are kept. A lab that does not exist is fine.
pub async fn down(name: &str) -> Result<(), Failure> {
    layout::validate_name(name).map_err(Failure::options)?;
    let ids = lab_container_ids(name).await?;
    if !ids.is_empty() {
        // -v: with each host's Docker storage volume.
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(ids.iter().map(String::as_str));
        docker::run(&args).await?;
    }
    let removed_net = match lab_network(name).await? {
        NetState::Ours { .. } => {
            docker::run(&["network", "rm", name]).await?;
            true
        }
        NetState::Foreign => {
            say(&format!(
                "note: network {name} exists but is not lab {name}'s (no {LABEL}={name} label): left alone"
            ));
            false
        }
        NetState::Missing => false,
    };
    if ids.is_empty() && !removed_net {
        say(&format!("lab {name}: nothing to remove"));
    } else {
        say(&format!(
            "lab {name}: removed {} containers{}",
            ids.len(),
            if removed_net { " and its network" } else { "" }
        ));
    }
    Ok(())
}

/// The lab's hosts (every container labelled `pgha.lab=NAME`), db hosts first.
/// Empty when the lab does not exist.
pub async fn status(name: &str) -> Result<Vec<LabHost>, Failure> {
    layout::validate_name(name).map_err(Failure::options)?;
    let ids = lab_container_ids(name).await?;
    let values = docker::inspect_many("container", &ids).await?;
    let mut hosts: Vec<LabHost> = values
        .iter()
        .filter_map(|v| host_from_inspect(name, v))
        .collect();
    hosts.sort_by_key(|h| layout::host_order(&h.name));
    let cuts = futures_util::future::join_all(hosts.iter().map(|h| async move {
        if h.running {
            read_cut(&h.container).await
        } else {
            Vec::new()
        }
    }))
    .await;
    let by_address: Vec<(String, String)> = hosts
        .iter()
        .map(|h| (h.address.to_string(), h.name.clone()))
        .collect();
    let gateway = lab_network(name).await.ok().and_then(|n| match n {
        NetState::Ours {
            subnet: Some(s), ..
        } => Some(layout::gateway(s).to_string()),
        _ => None,
    });
    for (h, cut) in hosts.iter_mut().zip(cuts) {
        h.cut_from = cut
            .iter()
            .map(|a| {
                if Some(a) == gateway.as_ref() {
                    CONTROLLER.to_string()
                } else {
                    by_address
                        .iter()
                        .find(|(ip, _)| ip == a)
                        .map_or(a.clone(), |(_, n)| n.clone())
                }
            })
            .collect();
    }
    Ok(hosts)
}

/// The name `lab partition --from` gives this machine (the lab network's gateway).
pub const CONTROLLER: &str = "controller";
/// The nftables table a partial partition lives in, on the cut host.
const CUT_TABLE: &str = "inet pgha_lab_cut";

/// The addresses a host is cut off from (its nftables table), empty when none.
async fn read_cut(container: &str) -> Vec<String> {
    let script = format!("nft -j list table {CUT_TABLE} 2>/dev/null || true");
    let Ok(out) = docker::exec_sh(container, &script, &[], Duration::from_secs(10)).await else {
        return Vec::new();
    };
    cut_addresses(&out.stdout)
}

/// The addresses of the output chain's drop rule in `nft -j list table` output. Pure.
fn cut_addresses(json: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<Value>(json) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let rule = &item["rule"];
        if rule["chain"] != "output" {
            continue;
        }
        for e in rule["expr"].as_array().into_iter().flatten() {
            let right = &e["match"]["right"];
            let set = right["set"]
                .as_array()
                .cloned()
                .unwrap_or_else(|| vec![right.clone()]);
            out.extend(set.iter().filter_map(|a| a.as_str().map(str::to_string)));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The nftables ruleset that cuts a host off from `addresses`, both ways: what it
/// sends to them and what it receives from them is dropped, silently, as packets
/// lost in a real partition. Pure.
fn cut_ruleset(addresses: &[String]) -> String {
    let set = addresses.join(", ");
    format!(
        "table {CUT_TABLE} {{\n\
         \tchain input {{ type filter hook input priority -10; ip saddr {{ {set} }} drop; }}\n\
         \tchain output {{ type filter hook output priority -10; ip daddr {{ {set} }} drop; }}\n\
         }}\n"
    )
}

/// Cut a running host off from some of the lab's hosts (and `controller`, this
/// machine, when named) while it stays on the network: every other host still
/// reaches it. Both ways, packets dropped (nftables on the host). Replaces any
/// earlier partial cut of that host; `heal` removes it.
pub async fn partition_from(name: &str, host: &str, from: &[String]) -> Result<LabHost, Failure> {
    let (mut h, _) = find_host(name, host).await?;
    if !h.running || h.partitioned {
        return Err(Failure::error(format!(
            "{}: a partial partition needs a running host on the lab network (it is {})",
            h.name,
            state_word(&h)
        )));
    }
    let hosts = status(name).await?;
    let gateway = match lab_network(name).await? {
        NetState::Ours {
            subnet: Some(s), ..
        } => Some(layout::gateway(s).to_string()),
        _ => None,
    };
    let mut addresses = Vec::new();
    for f in from {
        let a = if f == CONTROLLER {
            gateway.clone().ok_or_else(|| {
                Failure::error(format!("lab {name}: the network's gateway is unknown"))
            })?
        } else {
            match hosts.iter().find(|x| x.name == *f) {
                Some(x) if x.name != h.name => x.address.to_string(),
                Some(_) => {
                    return Err(Failure::options(format!(
                        "{f}: a host is not cut from itself"
                    )));
                }
                None => {
                    let names: Vec<&str> = hosts.iter().map(|x| x.name.as_str()).collect();
                    return Err(Failure::options(format!(
                        "--from {f}: not a host of lab {name} ({}, or {CONTROLLER})",
                        names.join(", ")
                    )));
                }
            }
        };
        addresses.push(a);
    }
    if addresses.is_empty() {
        return Err(Failure::options(
            "--from names no host: name the hosts to cut it off from",
        ));
    }
    let script = format!("nft delete table {CUT_TABLE} 2>/dev/null; printf '%s' \"$1\" | nft -f -");
    let out = docker::exec_sh(
        &h.container,
        &script,
        &[&cut_ruleset(&addresses)],
        Duration::from_secs(30),
    )
    .await?;
    if !out.success() {
        return Err(Failure::error(format!(
            "{}: nft failed: {}",
            h.name,
            out.stderr.trim()
        )));
    }
    h.cut_from = read_cut(&h.container).await;
    if h.cut_from.len() != addresses.len() {
        return Err(Failure::error(format!(
            "{}: the cut is not in place (nft shows {:?}, wanted {addresses:?})",
            h.name, h.cut_from
        )));
    }
    h.cut_from = from.to_vec();
    say(&format!(
        "{}: cut off from {} (both ways; packets dropped)",
        h.name,
        from.join(", ")
    ));
    Ok(h)
}

/// Hard-stop a host, like pulling the power (`docker kill`). A stopped host stays stopped.
pub async fn kill(name: &str, host: &str) -> Result<LabHost, Failure> {
    let (mut h, _) = find_host(name, host).await?;
    if h.running {
        docker::run(&["kill", &h.container]).await?;
        say(&format!("{}: killed ({})", h.name, h.container));
    } else {
        say(&format!("{}: already stopped", h.name));
    }
    h.running = false;
    Ok(h)
}

/// Start a stopped host and wait until it has booted (systemd up, sshd answering;
/// reachability is not checked while it is partitioned). Disks survive: files
/// written before a kill are still there.
pub async fn start(name: &str, host: &str) -> Result<LabHost, Failure> {
    let (mut h, _) = find_host(name, host).await?;
    if !h.running {
        docker::run(&["start", &h.container]).await?;
    }
    let probe = (!h.partitioned).then_some(h.address);
    wait_ready(&h.container, probe).await?;
    say(&format!("{}: running ({})", h.name, h.container));
    h.running = true;
    Ok(h)
}

/// Cut a host off the lab network, both ways (also from this machine): its network
/// interface is removed (`docker network disconnect`). Its address is kept for `heal`.
pub async fn partition(name: &str, host: &str) -> Result<LabHost, Failure> {
    let (mut h, _) = find_host(name, host).await?;
    if h.partitioned {
        say(&format!("{}: already partitioned", h.name));
    } else {
        docker::run(&["network", "disconnect", name, &h.container]).await?;
        if h.running {
            // Docker may return before the interface is gone: the cut is done when
            // the host itself no longer has its lab address.
            let addr = h.address.to_string();
            let what = format!("{} to lose its address {addr}", h.container);
            wait::until(&what, Duration::from_secs(30), || async {
                let out = docker::exec_sh(
                    &h.container,
                    "ip -o addr show",
                    &[],
                    Duration::from_secs(10),
                )
                .await
                .map_err(|f| f.message)?;
                if out.stdout.contains(&format!(" {addr}/")) {
                    Err(format!("{addr} still configured"))
                } else {
                    Ok(())
                }
            })
            .await
            .map_err(|e| Failure::error(e.to_string()))?;
        }
        say(&format!(
            "{}: partitioned (cut off the lab network)",
            h.name
        ));
    }
    h.partitioned = true;
    Ok(h)
}

/// Put a partitioned host back on the lab network at its own address; when it is
/// running, wait until its sshd answers again.
pub async fn heal(name: &str, host: &str) -> Result<LabHost, Failure> {
    let (mut h, _) = find_host(name, host).await?;
    if h.running && !h.cut_from.is_empty() {
        let script = format!("nft delete table {CUT_TABLE} 2>/dev/null || true");
        docker::exec_sh(&h.container, &script, &[], Duration::from_secs(30)).await?;
        say(&format!(
            "{}: no longer cut off from {}",
            h.name,
            h.cut_from.join(", ")
        ));
        h.cut_from.clear();
    }
    if h.partitioned {
        reconnect(name, &h).await?;
        say(&format!(
            "{}: back on the lab network at {}",
            h.name, h.address
        ));
    } else {
        say(&format!("{}: not partitioned", h.name));
    }
    h.partitioned = false;
    if h.running {
        let addr = SocketAddr::new(h.address, 22);
        let what = format!("{} to answer SSH on {addr} after heal", h.container);
        wait::until(&what, Duration::from_secs(60), || ssh_banner(addr))
            .await
            .map_err(|e| Failure::error(e.to_string()))?;
    }
    Ok(h)
}

/// Destroy a host and create a fresh bare one at the same address (a lost VM or
/// disk): new disk, new SSH host keys. The lab's key is authorized on it and its new
/// host key replaces the old one in the lab's known_hosts (the lab made the host, so
/// it knows the key is genuine).
pub async fn replace(name: &str, host: &str) -> Result<LabHost, Failure> {
    replace_in(name, host, None).await
}

/// `replace`, updating the key files in `dir` instead of the directory recorded on
/// the lab network.
pub async fn replace_in(name: &str, host: &str, dir: Option<&Path>) -> Result<LabHost, Failure> {
    replace_with(name, host, dir, false).await
}

/// A lost host replaced by a fresh bare one at a new address: the lab inventory's
/// `ansible_host` of that name points at it afterwards.
pub async fn replace_at_new_address(name: &str, host: &str) -> Result<LabHost, Failure> {
    replace_with(name, host, None, true).await
}

async fn replace_with(
    name: &str,
    host: &str,
    dir: Option<&Path>,
    new_address: bool,
) -> Result<LabHost, Failure> {
    let (mut h, v) = find_host(name, host).await?;
    let old_address = h.address;
    if new_address {
        let used: Vec<IpAddr> = status(name).await?.iter().map(|x| x.address).collect();
        let subnet = match lab_network(name).await? {
            NetState::Ours {
                subnet: Some(s), ..
            } => s,
            _ => {
                return Err(Failure::error(format!(
                    "lab {name}: cannot read its network's subnet"
                )));
            }
        };
        h.address = IpAddr::V4(layout::spare_address(subnet, &used).ok_or_else(|| {
            Failure::error(format!("lab {name}: no spare address left in {subnet}"))
        })?);
    }
    let Some((role, _)) = layout::parse_host(&h.name) else {
        return Err(Failure::error(format!(
            "{}: not a lab host name (db<N> or router<N>); cannot replace it",
            h.name
        )));
    };
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => match lab_network(name).await? {
            NetState::Ours { dir: Some(d), .. } => d,
            _ => layout::default_dir(name),
        },
    };
    let mut image = v["Config"]["Image"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if image.is_empty() || docker::inspect("image", &image).await?.is_none() {
        image = docker::base::ensure().await?;
    }
    let planned = Planned {
        name: h.name.clone(),
        role,
        container: h.container.clone(),
        address: match h.address {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => {
                return Err(Failure::error(format!(
                    "{}: not an IPv4 lab address",
                    h.name
                )));
            }
        },
    };
    docker::run(&["rm", "-f", "-v", &h.container]).await?;
    let args = layout::run_args(name, &planned, &image);
    docker::run(&args.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    let host_key = wait_ready(&h.container, Some(h.address)).await?;

    let key_file = dir.join(layout::KEY_FILE);
    if key_file.exists() {
        let (_, public) = files::ensure_key(&dir, layout::KEY_FILE, &format!("pgha-lab-{name}"))?;
        install_key(&h.container, &public).await?;
    } else {
        say(&format!(
            "warning: no lab key at {}: the new {} accepts no SSH key until `pgha lab up` installs one",
            key_file.display(),
            h.name
        ));
    }
    let entry = layout::host_key_entry(h.address, &host_key)
        .map_err(|e| Failure::error(format!("{}: {e}", h.name)))?;
    if h.address != old_address {
        let inv = dir.join(layout::INVENTORY_FILE);
        let text = std::fs::read_to_string(&inv)
            .map_err(|e| Failure::error(format!("cannot read {}: {e}", inv.display())))?;
        let updated = layout::set_host_address(&text, &h.name, h.address).ok_or_else(|| {
            Failure::error(format!(
                "{}: no `ansible_host` for {} to update",
                inv.display(),
                h.name
            ))
        })?;
        files::write_if_changed(&inv, updated.as_bytes(), 0o644)?;
        say(&format!(
            "{}: {} now points at {} (was {old_address}); `pgha lab up` puts hosts back at their \
             planned addresses only after `pgha lab down`",
            inv.display(),
            h.name,
            h.address
        ));
    }
    let kh = dir.join(layout::KNOWN_HOSTS_FILE);
    let fp = entry
        .split_whitespace()
        .nth(2)
        .and_then(|b| russh::keys::parse_public_key_base64(b).ok())
        .map(|k| crate::ssh::known_hosts::fingerprint(&k))
        .unwrap_or_default();
    if kh.exists() {
        let old = std::fs::read_to_string(&kh)
            .map_err(|e| Failure::error(format!("cannot read {}: {e}", kh.display())))?;
        files::write_if_changed(
            &kh,
            layout::update_known_hosts(&old, h.address, &entry).as_bytes(),
            0o644,
        )?;
        say(&format!(
            "{}: replaced by a fresh bare host at {} (new host key {fp}, recorded in {})",
            h.name,
            h.address,
            kh.display()
        ));
    } else {
        say(&format!(
            "{}: replaced by a fresh bare host at {} (new host key {fp}; no {} to update)",
            h.name,
            h.address,
            kh.display()
        ));
    }
    Ok(LabHost {
        running: true,
        partitioned: false,
        ..h
    })
}

// ---------------------------------------------------------------------------
// Docker-facing helpers
// ---------------------------------------------------------------------------

fn validate_user(user: &str) -> Result<(), Failure> {
    match user {
        "root" | "deploy" => Ok(()),
        other => Err(Failure::options(format!(
            "--user {other}: the lab's hosts have two SSH users, root and deploy (passwordless sudo)"
        ))),
    }
}

async fn lab_container_ids(name: &str) -> Result<Vec<String>, Failure> {
    let filter = format!("label={LABEL}={name}");
    let out = docker::run(&["ps", "-a", "-q", "--no-trunc", "--filter", &filter]).await?;
    Ok(docker::lines(&out))
}

/// A lab host from `docker container inspect` output (None without the lab's labels).
fn host_from_inspect(lab: &str, v: &Value) -> Option<LabHost> {
    let labels = &v["Config"]["Labels"];
    if labels[LABEL].as_str() != Some(lab) {
        return None;
    }
    let name = labels[LABEL_HOST].as_str()?.to_string();
    let address: IpAddr = labels[LABEL_ADDRESS].as_str()?.parse().ok()?;
    let container = v["Name"].as_str()?.trim_start_matches('/').to_string();
    let running = v["State"]["Running"].as_bool().unwrap_or(false);
    let attached = v["NetworkSettings"]["Networks"].get(lab).is_some();
    Some(LabHost {
        name,
        container,
        address,
        running,
        partitioned: !attached,
        cut_from: Vec::new(),
    })
}

/// The host `host` of lab `name`, with its inspect output. Unknown host: exit 5,
/// naming the lab's hosts.
async fn find_host(name: &str, host: &str) -> Result<(LabHost, Value), Failure> {
    let hosts = status(name).await?;
    if hosts.is_empty() {
        return Err(Failure::error(format!(
            "there is no lab {name} (no containers labelled {LABEL}={name}): create it with `pgha lab up --name {name}`"
        )));
    }
    let Some(h) = hosts.iter().find(|h| h.name == host) else {
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        return Err(Failure::options(format!(
            "unknown host {host:?} in lab {name}; its hosts are: {}",
            names.join(", ")
        )));
    };
    let v = docker::inspect("container", &h.container)
        .await?
        .ok_or_else(|| Failure::error(format!("{}: container {} vanished", h.name, h.container)))?;
    Ok((h.clone(), v))
}

enum NetState {
    Ours {
        subnet: Option<Ipv4Net>,
        dir: Option<PathBuf>,
    },
    Foreign,
    Missing,
}

async fn lab_network(name: &str) -> Result<NetState, Failure> {
    let Some(v) = docker::inspect("network", name).await? else {
        return Ok(NetState::Missing);
    };
    if v["Labels"][LABEL].as_str() != Some(name) {
        return Ok(NetState::Foreign);
    }
    let subnet = v["IPAM"]["Config"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|c| c["Subnet"].as_str()?.parse::<Ipv4Net>().ok());
    let dir = v["Labels"][LABEL_DIR].as_str().map(PathBuf::from);
    Ok(NetState::Ours { subnet, dir })
}

/// The lab network's subnet, creating the network when missing.
async fn ensure_network(name: &str, dir_abs: &Path) -> Result<Ipv4Net, Failure> {
    let dir_s = dir_abs.to_string_lossy().into_owned();
    for attempt in 0..3 {
        match lab_network(name).await? {
            NetState::Ours { subnet, dir } => {
                if let Some(d) = dir
                    && d != dir_abs
                {
                    say(&format!(
                        "note: lab {name} was created with directory {}; `pgha lab replace` updates \
                         the known_hosts there unless given --dir",
                        d.display()
                    ));
                }
                return subnet.ok_or_else(|| {
                    Failure::error(format!("network {name} has no IPv4 subnet; run `pgha lab down --name {name}` and up again"))
                });
            }
            NetState::Foreign => {
                return Err(Failure::error(format!(
                    "a Docker network named {name} exists and is not lab {name}'s (no {LABEL}={name} label): \
                     choose another --name"
                )));
            }
            NetState::Missing => {}
        }
        let taken = docker::net::taken_subnets().await?;
        let (subnet, note) = docker::net::choose_subnet(name, &taken).map_err(Failure::error)?;
        if let Some(n) = note {
            say(&format!("note: {n}"));
        }
        let (s, g) = (subnet.to_string(), layout::gateway(subnet).to_string());
        let l1 = format!("{LABEL}={name}");
        let l2 = format!("{LABEL_DIR}={dir_s}");
        let args = [
            "network",
            "create",
            "--driver",
            "bridge",
            "--subnet",
            &s,
            "--gateway",
            &g,
            "--label",
            &l1,
            "--label",
            &l2,
            name,
        ];
        match docker::run(&args).await {
            Ok(_) => return Ok(subnet),
            // Another pgha may have created it (or taken that subnet) meanwhile: look again.
            Err(e) if attempt < 2 => tracing::debug!("network create: {e}"),
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}

/// Create, start or reconnect one host, wait for it, authorize the lab key.
/// Returns the host and its known_hosts entry.
async fn bring_up(
    lab: &str,
    p: &Planned,
    image: &str,
    existing: Option<&LabHost>,
    public_key: &str,
) -> Result<(LabHost, String), Failure> {
    let address = IpAddr::V4(p.address);
    match existing {
        None => {
            if docker::inspect("container", &p.container).await?.is_some() {
                return Err(Failure::error(format!(
                    "a container named {} exists and is not part of lab {lab} (no {LABEL}={lab} label): \
                     remove or rename it, or choose another --name",
                    p.container
                )));
            }
            let args = layout::run_args(lab, p, image);
            docker::run(&args.iter().map(String::as_str).collect::<Vec<_>>()).await?;
        }
        Some(h) => {
            if h.address != address {
                return Err(Failure::error(format!(
                    "{}: container {} has address {} but the lab network wants {address}; \
                     run `pgha lab down --name {lab}` and up again",
                    h.name, h.container, h.address
                )));
            }
            if h.partitioned {
                reconnect(lab, h).await?;
                say(&format!("{}: was partitioned: reconnected", h.name));
            }
            if !h.running {
                docker::run(&["start", &h.container]).await?;
                say(&format!("{}: was stopped: started", h.name));
            }
        }
    }
    let host_key = wait_ready(&p.container, Some(address)).await?;
    install_key(&p.container, public_key).await?;
    let entry = layout::host_key_entry(address, &host_key)
        .map_err(|e| Failure::error(format!("{}: {e}", p.name)))?;
    Ok((
        LabHost {
            name: p.name.clone(),
            container: p.container.clone(),
            address,
            running: true,
            partitioned: false,
            cut_from: Vec::new(),
        },
        entry,
    ))
}

async fn reconnect(lab: &str, h: &LabHost) -> Result<(), Failure> {
    let ip = h.address.to_string();
    docker::run(&[
        "network",
        "connect",
        "--ip",
        &ip,
        "--alias",
        &h.name,
        lab,
        &h.container,
    ])
    .await
    .map(|_| ())
}

/// What a host's boot looks like from inside (one `docker exec`).
#[derive(Debug, Default, PartialEq, Eq)]
struct BootState {
    system: String,
    ssh: String,
    host_key: Option<String>,
}

const BOOT_PROBE: &str = "echo \"system=$(systemctl is-system-running 2>/dev/null)\"; \
echo \"ssh=$(systemctl is-active ssh.service 2>/dev/null)\"; \
k=$(cat /etc/ssh/ssh_host_ed25519_key.pub 2>/dev/null) && echo \"key=$k\"; true";

fn parse_boot_state(stdout: &str) -> BootState {
    let mut s = BootState::default();
    for line in stdout.lines() {
        if let Some(v) = line.strip_prefix("system=") {
            s.system = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("ssh=") {
            s.ssh = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("key=") {
            s.host_key = Some(v.trim().to_string()).filter(|k| !k.is_empty());
        }
    }
    s
}

impl BootState {
    /// The host key once systemd is up (running or degraded) and sshd is active.
    fn ready(&self) -> Option<&str> {
        let up = self.system == "running" || self.system == "degraded";
        if up && self.ssh == "active" {
            self.host_key.as_deref()
        } else {
            None
        }
    }
    fn describe(&self) -> String {
        let or_none = |s: &str| {
            if s.is_empty() {
                "unknown".to_string()
            } else {
                s.to_string()
            }
        };
        format!(
            "systemd {}, ssh.service {}, ed25519 host key {}",
            or_none(&self.system),
            or_none(&self.ssh),
            if self.host_key.is_some() {
                "present"
            } else {
                "missing"
            }
        )
    }
}

/// Wait until the container's systemd is running (or degraded), ssh.service is active
/// and, with `probe`, sshd answers on `probe:22` from this machine. Returns the host's
/// ed25519 public key line. Fails at once when the container stops.
async fn wait_ready(container: &str, probe: Option<IpAddr>) -> Result<String, Failure> {
    let what = match probe {
        Some(ip) => format!("{container} to boot (systemd up, sshd answering on {ip}:22)"),
        None => format!("{container} to boot (systemd up, ssh.service active)"),
    };
    wait::until(&what, BOOT_TIMEOUT, || async move {
        let out = docker::exec_sh(container, BOOT_PROBE, &[], Duration::from_secs(20)).await;
        let out = match out {
            Ok(o) => o,
            Err(e) => return Err(e.message),
        };
        if !out.success() {
            // Not running any more? Then waiting is pointless.
            if let Ok(Some(v)) = docker::inspect("container", container).await
                && v["State"]["Running"].as_bool() == Some(false)
            {
                let logs = docker::output(&["logs", "--tail", "15", container], docker::TIMEOUT)
                    .await
                    .map(|o| docker::tail(&format!("{}\n{}", o.stdout, o.stderr), 15))
                    .unwrap_or_default();
                return Ok(Err(Failure::error(format!(
                    "{container} stopped while booting (status {}, exit code {}); its last output:\n{logs}",
                    v["State"]["Status"].as_str().unwrap_or("?"),
                    v["State"]["ExitCode"]
                ))));
            }
            return Err(format!(
                "docker exec failed: {}",
                docker::tail(&out.stderr, 3).trim()
            ));
        }
        let state = parse_boot_state(&out.stdout);
        let Some(key) = state.ready() else {
            return Err(state.describe());
        };
        if let Some(ip) = probe {
            ssh_banner(SocketAddr::new(ip, 22))
                .await
                .map_err(|e| format!("{}; but {e}", state.describe()))?;
        }
        Ok(Ok(key.to_string()))
    })
    .await
    .map_err(|e| Failure::error(e.to_string()))?
}

/// Connect to `addr` and read the SSH banner.
async fn ssh_banner(addr: SocketAddr) -> Result<(), String> {
    let t = Duration::from_secs(3);
    let mut s = match tokio::time::timeout(t, tokio::net::TcpStream::connect(addr)).await {
        Err(_) => return Err(format!("TCP connect to {addr} timed out")),
        Ok(Err(e)) => return Err(format!("TCP connect to {addr}: {e}")),
        Ok(Ok(s)) => s,
    };
    let mut buf = [0u8; 64];
    let n = match tokio::time::timeout(t, s.read(&mut buf)).await {
        Err(_) => return Err(format!("{addr} sent no SSH banner within 3s")),
        Ok(Err(e)) => return Err(format!("reading the SSH banner from {addr}: {e}")),
        Ok(Ok(n)) => n,
    };
    if buf[..n].starts_with(b"SSH-") {
        Ok(())
    } else {
        Err(format!(
            "{addr} answered {:?} instead of an SSH banner",
            String::from_utf8_lossy(&buf[..n])
        ))
    }
}

/// Authorize the lab key for root and deploy (appended when missing; other keys kept).
const INSTALL_KEY: &str = r#"set -e
key="$1"
for u in root deploy; do
  home=$(getent passwd "$u" | cut -d: -f6)
  [ -n "$home" ] || continue
  install -d -m 700 "$home/.ssh"
  f="$home/.ssh/authorized_keys"
  touch "$f"
  grep -qxF "$key" "$f" || printf '%s\n' "$key" >> "$f"
  chmod 600 "$f"
  chown -R "$u:" "$home/.ssh"
done"#;

async fn install_key(container: &str, public_key: &str) -> Result<(), Failure> {
    let out = docker::exec_sh(
        container,
        INSTALL_KEY,
        &[public_key],
        Duration::from_secs(30),
    )
    .await?;
    if out.success() {
        Ok(())
    } else {
        Err(Failure::error(format!(
            "{container}: cannot authorize the lab's SSH key: {}",
            docker::tail(&out.stderr, 5).trim()
        )))
    }
}

// ---------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------

pub async fn command(args: LabArgs, output: OutputFormat) -> Result<Exit, Failure> {
    let json = output == OutputFormat::Json;
    match args.command {
        LabCommand::Up(a) => cmd_up(a, output).await,
        LabCommand::Down(n) => {
            down(&n.name).await?;
            if json {
                println!("{}", json!({"lab": n.name, "removed": true}));
            }
            Ok(Exit::Ok)
        }
        LabCommand::Status(n) => cmd_status(&n, json).await,
        LabCommand::Kill(h) => verb(h, "kill", json).await,
        LabCommand::Start(h) => verb(h, "start", json).await,
        LabCommand::Partition(p) if !p.from.is_empty() => {
            let name = p.host.lab.name.as_str();
            layout::validate_name(name).map_err(Failure::options)?;
            let h = partition_from(name, &p.host.host, &p.from).await?;
            if json {
                println!("{}", json!({"lab": name, "action": "partition", "host": h}));
            }
            Ok(Exit::Ok)
        }
        LabCommand::Partition(p) => verb(p.host, "partition", json).await,
        LabCommand::Heal(h) => verb(h, "heal", json).await,
        LabCommand::Replace(r) => {
            let a = r.host;
            let name = a.lab.name.as_str();
            layout::validate_name(name).map_err(Failure::options)?;
            let h = replace_with(name, &a.host, a.lab.dir.as_deref(), r.new_address).await?;
            if json {
                println!("{}", json!({"lab": name, "action": "replace", "host": h}));
            }
            Ok(Exit::Ok)
        }
    }
}

async fn verb(a: LabHostArgs, action: &str, json: bool) -> Result<Exit, Failure> {
    let name = a.lab.name.as_str();
    layout::validate_name(name).map_err(Failure::options)?;
    let h = match action {
        "kill" => kill(name, &a.host).await?,
        "start" => start(name, &a.host).await?,
        "partition" => partition(name, &a.host).await?,
        _ => heal(name, &a.host).await?,
    };
    if json {
        println!("{}", json!({"lab": name, "action": action, "host": h}));
    }
    Ok(Exit::Ok)
}

fn state_word(h: &LabHost) -> String {
    let mut s = if h.running { "running" } else { "stopped" }.to_string();
    if h.partitioned {
        s.push_str(", partitioned");
    }
    if !h.cut_from.is_empty() {
        s.push_str(&format!(", cut off from {}", h.cut_from.join(", ")));
    }
    s
}

/// The hosts as a table.
fn hosts_table(hosts: &[LabHost]) -> String {
    let mut s = format!(
        "{:<10} {:<16} {:<22} {}\n",
        "HOST", "ADDRESS", "CONTAINER", "STATE"
    );
    for h in hosts {
        s.push_str(&format!(
            "{:<10} {:<16} {:<22} {}\n",
            h.name,
            h.address.to_string(),
            h.container,
            state_word(h)
        ));
    }
    s
}

async fn cmd_status(n: &LabName, json: bool) -> Result<Exit, Failure> {
    let name = n.name.as_str();
    let hosts = status(name).await?;
    let (subnet, dir) = match lab_network(name).await? {
        NetState::Ours { subnet, dir } => (subnet, dir),
        _ => (None, None),
    };
    let exists = !hosts.is_empty() || subnet.is_some();
    if json {
        println!(
            "{}",
            json!({"lab": name, "exists": exists, "subnet": subnet, "dir": dir, "hosts": hosts})
        );
        return Ok(Exit::Ok);
    }
    if !exists {
        println!("lab {name}: not created (pgha lab up --name {name})");
        return Ok(Exit::Ok);
    }
    let mut head = format!("lab {name}");
    if let Some(s) = subnet {
        head.push_str(&format!("  network {name} {s}"));
    }
    if let Some(d) = dir {
        head.push_str(&format!("  dir {}", d.display()));
    }
    println!("{head}");
    print!("{}", hosts_table(&hosts));
    Ok(Exit::Ok)
}

async fn cmd_up(a: LabUpArgs, output: OutputFormat) -> Result<Exit, Failure> {
    let name = a.lab.name.clone();
    layout::validate_name(&name).map_err(Failure::options)?;
    validate_user(&a.user)?;
    let dir = a
        .lab
        .dir
        .clone()
        .unwrap_or_else(|| layout::default_dir(&name));
    let spec = LabSpec {
        name: name.clone(),
        db: a.db,
        routers: a.routers,
        dir,
        user: a.user.clone(),
        tls: !a.no_tls,
        docker: a.method == "docker",
    };
    if spec.docker {
        // The images the hosts will run, built here (cached) before the hosts start.
        crate::docker::stack::ensure().await?;
    }
    let info = up(&spec).await?;
    let json = output == OutputFormat::Json;
    let inv = info.inventory_path.display().to_string();
    if a.no_deploy {
        if json {
            println!("{}", serde_json::to_string(&info).unwrap_or_default());
        } else {
            print!("{}", hosts_table(&info.hosts));
            println!("inventory: {inv}");
            println!("deploy onto it: pgha deploy -i {inv}");
        }
        return Ok(Exit::Ok);
    }
    say(&format!(
        "deploying the cluster onto lab {name} (pgha deploy -i {inv})"
    ));
    let exit = deploy_lab(&info.inventory_path, output).await?;
    if exit != Exit::Ok {
        return Ok(exit);
    }
    // deploy printed the connection strings (from the inventory) and where the
    // password is; add only how to take the lab away again.
    say(&format!(
        "lab {name}: `pgha lab status --name {name}` lists its hosts, `pgha lab down --name {name}` removes it"
    ));
    Ok(Exit::Ok)
}

/// `pgha deploy` of a lab's inventory, as the command runs it: secrets and
/// certificates written beside it, host keys verified against its known_hosts.
async fn deploy_lab(inventory: &Path, output: OutputFormat) -> Result<Exit, Failure> {
    use crate::commands::{args::SshArgs, deploy, load_pki, ssh_options};
    let inv = crate::inventory::load(
        inventory,
        &crate::inventory::LoadOptions {
            write_secrets: true,
        },
    )?;
    let pki = load_pki(&inv, true)?;
    let ssh = ssh_options(
        &SshArgs {
            known_hosts: None,
            accept_new_host_keys: false,
            connect_timeout: 10,
        },
        &inv,
    );
    let opts = deploy::DeployOptions::default();
    deploy::deploy(&inv, pki, &opts, ssh, &crate::ui::Ui::new(output)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_state_parsing() {
        let s = parse_boot_state("system=starting\nssh=activating\n");
        assert_eq!(s.ready(), None);
        assert_eq!(
            s.describe(),
            "systemd starting, ssh.service activating, ed25519 host key missing"
        );
        let s = parse_boot_state("system=degraded\nssh=active\nkey=ssh-ed25519 AAAA root@db1\n");
        assert_eq!(s.ready(), Some("ssh-ed25519 AAAA root@db1"));
        let s = parse_boot_state("system=running\nssh=inactive\nkey=ssh-ed25519 AAAA\n");
        assert_eq!(s.ready(), None);
        assert_eq!(
            parse_boot_state("").describe(),
            "systemd unknown, ssh.service unknown, ed25519 host key missing"
        );
    }

    fn inspect_sample(networks: Value, running: bool) -> Value {
        json!({
            "Name": "/demo-db2",
            "Config": {"Labels": {"pgha.lab": "demo", "pgha.lab.host": "db2", "pgha.lab.address": "172.28.7.12"}},
            "State": {"Running": running, "Status": if running {"running"} else {"exited"}},
            "NetworkSettings": {"Networks": networks}
        })
    }

    #[test]
    fn hosts_from_docker_inspect() {
        let v = inspect_sample(json!({"demo": {"IPAddress": "172.28.7.12"}}), true);
        assert_eq!(
            host_from_inspect("demo", &v),
            Some(LabHost {
                name: "db2".into(),
                container: "demo-db2".into(),
                address: "172.28.7.12".parse().unwrap(),
                running: true,
                partitioned: false,
                cut_from: Vec::new(),
            })
        );
        let v = inspect_sample(json!({}), false);
        let h = host_from_inspect("demo", &v).unwrap();
        assert!(!h.running && h.partitioned);
        // Another lab's container, or one without our labels, is not ours.
        assert_eq!(host_from_inspect("other", &v), None);
        assert_eq!(
            host_from_inspect("demo", &json!({"Name": "/x", "Config": {"Labels": null}})),
            None
        );
    }

    #[test]
    fn a_cut_drops_both_ways_and_reads_back() {
        let r = cut_ruleset(&["172.28.7.12".into(), "172.28.7.13".into()]);
        assert!(
            r.contains("hook input") && r.contains("ip saddr { 172.28.7.12, 172.28.7.13 } drop"),
            "{r}"
        );
        assert!(
            r.contains("hook output") && r.contains("ip daddr { 172.28.7.12, 172.28.7.13 } drop"),
            "{r}"
        );
        // `nft -j list table` of that ruleset (trimmed), as nftables 1.1 prints it.
        let listed = r#"{"nftables": [{"metainfo": {"version": "1.1.3"}},
          {"table": {"family": "inet", "name": "pgha_lab_cut"}},
          {"rule": {"family": "inet", "table": "pgha_lab_cut", "chain": "input", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
             "right": {"set": ["172.28.7.12", "172.28.7.13"]}}}, {"drop": null}]}},
          {"rule": {"family": "inet", "table": "pgha_lab_cut", "chain": "output", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
             "right": {"set": ["172.28.7.13", "172.28.7.12"]}}}, {"drop": null}]}}]}"#;
        assert_eq!(cut_addresses(listed), ["172.28.7.12", "172.28.7.13"]);
        let one = r#"{"nftables": [{"rule": {"chain": "output", "expr": [
            {"match": {"right": "172.28.7.1"}}, {"drop": null}]}}]}"#;
        assert_eq!(cut_addresses(one), ["172.28.7.1"]);
        assert!(cut_addresses("").is_empty());
    }

    #[test]
    fn users_are_root_or_deploy() {
        assert!(validate_user("root").is_ok());
        assert!(validate_user("deploy").is_ok());
        assert_eq!(validate_user("admin").unwrap_err().exit, Exit::BadOptions);
    }

    #[test]
    fn table_shows_state() {
        let hosts = vec![LabHost {
            name: "db1".into(),
            container: "demo-db1".into(),
            address: "172.28.7.11".parse().unwrap(),
            running: false,
            partitioned: true,
            cut_from: Vec::new(),
        }];
        let t = hosts_table(&hosts);
        assert!(
            t.contains("db1        172.28.7.11      demo-db1               stopped, partitioned"),
            "{t}"
        );
    }
}
