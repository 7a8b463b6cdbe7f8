//! Faults on lab hosts, like the failures pgha must survive: a hard kill and a
//! start, a partition off the network or from some hosts only (both ways, packets
//! dropped), a heal, a lost VM or disk replaced by a fresh host.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::boot::{install_key, ssh_banner, wait_ready};
use super::cut::{CONTROLLER, CUT_TABLE, cut_ruleset, read_cut};
use super::files;
use super::hosts::{LabHost, NetState, find_host, lab_network, reconnect, say, state_word, status};
use super::layout::{self, Planned};
use crate::docker;
use crate::error::Failure;
use crate::wait;

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

// Long by design: the replacement of a host step by step (stop, new container,
// boot, key, known_hosts, inventory), each observed before the next.
pub(super) async fn replace_with(
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
