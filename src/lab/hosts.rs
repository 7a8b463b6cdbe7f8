//! The lab's hosts and network: what `up` creates (or reuses and starts), what
//! `down` removes, and the state of each host as Docker reports it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ipnet::Ipv4Net;
use serde::Serialize;
use serde_json::Value;

use super::boot::{install_key, wait_ready};
use super::cut::{CONTROLLER, read_cut};
use super::files;
use super::layout::{self, LABEL, LABEL_ADDRESS, LABEL_DIR, LABEL_HOST, Planned};
use crate::docker;
use crate::error::Failure;

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
    /// Backups on, the first router doubling as the repository (off: the
    /// inventory says `backup_enabled: false`).
    pub backup: bool,
    /// Monitoring on (the default): Prometheus and Alertmanager on the first router,
    /// node_exporter everywhere; off writes `monitoring_enabled: false`.
    pub monitoring: bool,
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
        layout::render_inventory(
            name,
            &planned,
            &spec.user,
            spec.tls,
            spec.docker,
            spec.backup,
            spec.monitoring,
        )
        .as_bytes(),
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
        // -v: with each host's volumes (its disk).
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

pub(super) fn validate_user(user: &str) -> Result<(), Failure> {
    match user {
        "root" | "deploy" => Ok(()),
        other => Err(Failure::options(format!(
            "--user {other}: the lab's hosts have two SSH users, root and deploy (passwordless sudo)"
        ))),
    }
}

pub(super) async fn lab_container_ids(name: &str) -> Result<Vec<String>, Failure> {
    let filter = format!("label={LABEL}={name}");
    let out = docker::run(&["ps", "-a", "-q", "--no-trunc", "--filter", &filter]).await?;
    Ok(docker::lines(&out))
}

/// A lab host from `docker container inspect` output (None without the lab's labels).
pub(super) fn host_from_inspect(lab: &str, v: &Value) -> Option<LabHost> {
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
pub(super) async fn find_host(name: &str, host: &str) -> Result<(LabHost, Value), Failure> {
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

pub(super) enum NetState {
    Ours {
        subnet: Option<Ipv4Net>,
        dir: Option<PathBuf>,
    },
    Foreign,
    Missing,
}

pub(super) async fn lab_network(name: &str) -> Result<NetState, Failure> {
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
pub(super) async fn ensure_network(name: &str, dir_abs: &Path) -> Result<Ipv4Net, Failure> {
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
pub(super) async fn bring_up(
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

pub(super) async fn reconnect(lab: &str, h: &LabHost) -> Result<(), Failure> {
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

/// How a host is, in words (running or stopped, partitioned, cut off from...).
pub(super) fn state_word(h: &LabHost) -> String {
    let mut s = if h.running { "running" } else { "stopped" }.to_string();
    if h.partitioned {
        s.push_str(", partitioned");
    }
    if !h.cut_from.is_empty() {
        s.push_str(&format!(", cut off from {}", h.cut_from.join(", ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Exit;
    use serde_json::json;

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
    fn users_are_root_or_deploy() {
        assert!(validate_user("root").is_ok());
        assert!(validate_user("deploy").is_ok());
        assert_eq!(validate_user("admin").unwrap_err().exit, Exit::BadOptions);
    }
}
