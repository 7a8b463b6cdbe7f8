//! The lab's naming, addressing and files, as pure functions (no Docker, no I/O).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::Ipv4Net;

/// Label put on every container and network of a lab: `pgha.lab=NAME`.
pub const LABEL: &str = "pgha.lab";
/// Container label: the host's inventory name (db1, router1).
pub const LABEL_HOST: &str = "pgha.lab.host";
/// Container label: the host's fixed address on the lab network.
pub const LABEL_ADDRESS: &str = "pgha.lab.address";
/// Network label: absolute path of the lab directory (inventory, key, known_hosts).
pub const LABEL_DIR: &str = "pgha.lab.dir";

/// Labs live in 172.28.0.0/16, one /24 each.
/// First host number of the db and router hosts (db1 = .11, router1 = .101).
const DB_FIRST: u32 = 11;
const ROUTER_FIRST: u32 = 101;
pub const MAX_DB: u32 = 89;
pub const MAX_ROUTERS: u32 = 99;

pub const DEFAULT_NAME: &str = "pgha-lab";
pub const INVENTORY_FILE: &str = "inventory.yml";
pub const KNOWN_HOSTS_FILE: &str = "known_hosts";
pub const KEY_FILE: &str = "id_ed25519";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Db,
    Router,
}

impl Role {
    pub fn group(self) -> &'static str {
        match self {
            Role::Db => "db",
            Role::Router => "router",
        }
    }
}

/// One host the lab should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Inventory name and hostname: db1, router1.
    pub name: String,
    pub role: Role,
    /// Docker container name: LAB-db1.
    pub container: String,
    pub address: Ipv4Addr,
}

/// Lab names become container, network and cluster names: `^[a-z0-9][a-z0-9-]*$`, 1-40 chars.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad lab name {name:?}: use 1 to 40 lowercase letters, digits and dashes, \
             starting and ending with a letter or digit (it names containers, the network and the cluster)"
        ))
    }
}

/// `.pgha-lab/` for the default lab, `.pgha-lab-NAME/` otherwise (relative to the cwd).
pub fn default_dir(name: &str) -> PathBuf {
    if name == DEFAULT_NAME {
        PathBuf::from(".pgha-lab")
    } else {
        PathBuf::from(format!(".pgha-lab-{name}"))
    }
}

/// The container of host `host` in lab `lab`.
pub fn container_name(lab: &str, host: &str) -> String {
    format!("{lab}-{host}")
}

/// Role and number of a lab host name (`db3` -> (Db, 3)).
pub fn parse_host(host: &str) -> Option<(Role, u32)> {
    let (role, n) = if let Some(n) = host.strip_prefix("db") {
        (Role::Db, n)
    } else if let Some(n) = host.strip_prefix("router") {
        (Role::Router, n)
    } else {
        return None;
    };
    if n.starts_with('0') {
        return None;
    }
    n.parse::<u32>().ok().filter(|&n| n >= 1).map(|n| (role, n))
}

/// Sort key: db hosts by number, then routers by number, then anything else by name.
pub fn host_order(host: &str) -> (u8, u32, String) {
    match parse_host(host) {
        Some((Role::Db, n)) => (0, n, String::new()),
        Some((Role::Router, n)) => (1, n, String::new()),
        None => (2, 0, host.to_string()),
    }
}

fn host_address(subnet: Ipv4Net, number: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + number)
}

/// The network's gateway (the Docker host's side of the bridge): .1.
pub fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    host_address(subnet, 1)
}

/// The fixed address of a host in the lab's /24.
pub fn address_of(subnet: Ipv4Net, role: Role, n: u32) -> Ipv4Addr {
    match role {
        Role::Db => host_address(subnet, DB_FIRST + n - 1),
        Role::Router => host_address(subnet, ROUTER_FIRST + n - 1),
    }
}

/// First and last address of the spare range `lab replace --new-address` uses.
const SPARE_FIRST: u32 = 200;
const SPARE_LAST: u32 = 249;

/// The first spare address (.200-.249) no host uses.
pub fn spare_address(subnet: Ipv4Net, used: &[IpAddr]) -> Option<Ipv4Addr> {
    (SPARE_FIRST..=SPARE_LAST)
        .map(|n| host_address(subnet, n))
        .find(|a| !used.contains(&IpAddr::V4(*a)))
}

/// The lab inventory with `host`'s `ansible_host` set to `address` (None when the
/// host has no such line).
pub fn set_host_address(inventory: &str, host: &str, address: IpAddr) -> Option<String> {
    let mut out = Vec::new();
    let mut in_host = false;
    let mut done = false;
    for line in inventory.lines() {
        let t = line.trim_start();
        if t.ends_with(':') && !t.starts_with("ansible_host") {
            in_host = t.trim_end_matches(':') == host;
        }
        if in_host && !done && t.starts_with("ansible_host:") {
            let indent = &line[..line.len() - t.len()];
            out.push(format!("{indent}ansible_host: {address}"));
            done = true;
            continue;
        }
        out.push(line.to_string());
    }
    done.then(|| out.join("\n") + "\n")
}

/// The hosts of a lab with `db` database hosts and `routers` routers.
pub fn plan_hosts(lab: &str, subnet: Ipv4Net, db: u32, routers: u32) -> Vec<Planned> {
    let one = |role: Role, n: u32| {
        let name = format!("{}{n}", role.group());
        Planned {
            container: container_name(lab, &name),
            address: address_of(subnet, role, n),
            name,
            role,
        }
    };
    (1..=db)
        .map(|n| one(Role::Db, n))
        .chain((1..=routers).map(|n| one(Role::Router, n)))
        .collect()
}

pub fn validate_counts(db: u32, routers: u32) -> Result<(), String> {
    if !(1..=MAX_DB).contains(&db) {
        return Err(format!("--db {db}: a lab has 1 to {MAX_DB} database hosts"));
    }
    if routers > MAX_ROUTERS {
        return Err(format!(
            "--routers {routers}: a lab has at most {MAX_ROUTERS} routers"
        ));
    }
    Ok(())
}

/// The lab inventory, in Ansible's YAML form. Relative paths (key, known_hosts) are
/// resolved against the inventory's directory.
pub fn render_inventory(
    lab: &str,
    hosts: &[Planned],
    user: &str,
    tls: bool,
    docker: bool,
    backup: bool,
    monitoring: bool,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# pgha lab {lab}: written by `pgha lab up`, which rewrites it when the lab changes."
    );
    s.push_str("# Relative paths are resolved against this file's directory.\n");
    s.push_str("all:\n  vars:\n");
    let _ = writeln!(s, "    cluster_name: {lab}");
    let _ = writeln!(s, "    pgha_known_hosts: {KNOWN_HOSTS_FILE}");
    let _ = writeln!(s, "    ansible_user: {user}");
    if user != "root" {
        s.push_str("    ansible_become: true\n");
    }
    let _ = writeln!(s, "    ansible_ssh_private_key_file: {KEY_FILE}");
    if !tls {
        s.push_str("    tls: false\n");
    }
    if docker {
        s.push_str("    install_method: docker\n");
    }
    let repository = hosts
        .iter()
        .find(|h| h.role == Role::Router)
        .filter(|_| backup);
    if repository.is_none() {
        s.push_str("    backup_enabled: false\n");
    }
    if !monitoring {
        s.push_str("    monitoring_enabled: false\n");
    }
    s.push_str("  children:\n");
    for role in [Role::Db, Role::Router] {
        let members: Vec<&Planned> = hosts.iter().filter(|h| h.role == role).collect();
        if members.is_empty() {
            continue;
        }
        let _ = writeln!(s, "    {}:\n      hosts:", role.group());
        for h in members {
            let _ = writeln!(
                s,
                "        {}:\n          ansible_host: {}",
                h.name, h.address
            );
        }
    }
    // The first router doubles as the backup repository (a lab has no spare host
    // for it; the router is not a cluster member).
    if let Some(r) = repository {
        let _ = writeln!(s, "    backup:\n      hosts:\n        {}:", r.name);
    }
    s
}

/// Several clusters on one lab (`pgha deploy a.yml b.yml ...`): cluster `index`
/// of `names` takes db hosts `3*index+1..=3*index+3` and router `index+1`, the
/// lab's key and known hosts (absolute: each inventory sits in its own
/// directory, with its own secrets and certificates), no backups and no
/// monitoring (the lab's one repository and monitor belong to its first router).
pub fn fleet_inventory(
    cluster: &str,
    index: usize,
    lab_dir: &std::path::Path,
    address: impl Fn(&str) -> Option<IpAddr>,
) -> Result<String, String> {
    let dir = lab_dir.display();
    let mut s = format!(
        "# pgha lab fleet: cluster {cluster} of the lab in {dir}.\nall:\n  vars:\n    cluster_name: {cluster}\n    \
         pgha_known_hosts: {dir}/{KNOWN_HOSTS_FILE}\n    ansible_user: root\n    \
         ansible_ssh_private_key_file: {dir}/{KEY_FILE}\n    backup_enabled: false\n    \
         monitoring_enabled: false\n  children:\n    db:\n      hosts:\n"
    );
    let host = |name: String| -> Result<String, String> {
        let ip = address(&name).ok_or_else(|| format!("the lab has no host {name}"))?;
        Ok(format!("        {name}:\n          ansible_host: {ip}\n"))
    };
    for n in 1..=3 {
        s.push_str(&host(format!("db{}", 3 * index + n))?);
    }
    s.push_str("    router:\n      hosts:\n");
    s.push_str(&host(format!("router{}", index + 1))?);
    Ok(s)
}

/// A known_hosts entry for `ip` from a host's `ssh_host_ed25519_key.pub` line
/// (the comment is dropped; the key is checked to parse).
pub fn host_key_entry(ip: IpAddr, pub_line: &str) -> Result<String, String> {
    let mut f = pub_line.split_whitespace();
    let (Some(kind), Some(b64)) = (f.next(), f.next()) else {
        return Err(format!("not an SSH public key line: {:?}", pub_line.trim()));
    };
    if kind != "ssh-ed25519" {
        return Err(format!("expected an ssh-ed25519 host key, got {kind}"));
    }
    russh::keys::parse_public_key_base64(b64)
        .map_err(|e| format!("the ed25519 host key does not parse: {e}"))?;
    Ok(format!("{ip} {kind} {b64}"))
}

/// The lab's known_hosts: one ed25519 entry per host, in host order.
pub fn render_known_hosts(lab: &str, entries: &[String]) -> String {
    let mut s = format!(
        "# pgha lab {lab}: host keys read from each container (docker exec), \
         rewritten by `pgha lab up` and `pgha lab replace`.\n"
    );
    for e in entries {
        s.push_str(e);
        s.push('\n');
    }
    s
}

/// `text` with the entries for `ip` replaced by `entry` (appended when there was none).
pub fn update_known_hosts(text: &str, ip: IpAddr, entry: &str) -> String {
    let ip_s = ip.to_string();
    let bracketed = format!("[{ip}]:22");
    let mut out = String::new();
    let mut placed = false;
    for line in text.lines() {
        let t = line.trim_start();
        let names = t.split_whitespace().next().unwrap_or_default();
        let is_ip = !t.starts_with('#')
            && names
                .split(',')
                .any(|n| n == ip_s.as_str() || n == bracketed.as_str());
        if is_ip {
            if !placed {
                out.push_str(entry);
                out.push('\n');
                placed = true;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !placed {
        out.push_str(entry);
        out.push('\n');
    }
    out
}

/// `docker run` arguments for one lab host: systemd as PID 1 with the flags known to
/// work on these machines (`--privileged` does not).
pub fn run_args(lab: &str, host: &Planned, image: &str) -> Vec<String> {
    let ip = host.address.to_string();
    [
        "run",
        "-d",
        "--name",
        &host.container,
        "--hostname",
        &host.name,
        "--network",
        lab,
        "--ip",
        &ip,
        "--network-alias",
        &host.name,
        "--label",
        &format!("{LABEL}={lab}"),
        "--label",
        &format!("{LABEL_HOST}={}", host.name),
        "--label",
        &format!("{LABEL_ADDRESS}={ip}"),
        "--cap-add",
        "SYS_ADMIN",
        // Docker inside a host (install_method docker) sets up each container's
        // network namespace (NET_ADMIN), joins the namespaces of a container's
        // process running as another user for `docker exec` (SYS_PTRACE), and
        // creates a session keyring, which the default seccomp profile forbids; a
        // VM's root has all of these.
        "--cap-add",
        "NET_ADMIN",
        "--cap-add",
        "SYS_PTRACE",
        "--security-opt",
        "seccomp=unconfined",
        "--tmpfs",
        "/run",
        "--tmpfs",
        "/run/lock",
        "-v",
        "/sys/fs/cgroup:/sys/fs/cgroup:rw",
        // Docker's own storage on a volume, not on this machine's overlay: Docker
        // in the host (install_method docker) then uses overlay2, which shares an
        // image's layers between containers instead of copying them (vfs).
        "-v",
        "/var/lib/docker",
        // Where installing packages and running the cluster write (programs, dpkg's
        // database, PostgreSQL's and etcd's data) also on volumes: each starts as a
        // copy of the image's directory, and writes then skip the fuse overlay,
        // which costs more CPU than the writing itself.
        "-v",
        "/usr",
        "-v",
        "/var/lib",
        "--cgroupns=host",
        "--stop-signal",
        "SIGRTMIN+3",
        image,
        "/sbin/init",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn fleet_inventories_split_the_lab_into_clusters_of_three_and_one() {
        let addr = |n: &str| -> Option<IpAddr> {
            let (role, i) = parse_host(n)?;
            Some(IpAddr::V4(address_of(
                "172.28.9.0/24".parse().unwrap(),
                role,
                i,
            )))
        };
        let dir = std::path::Path::new("/tmp/lab");
        let beta = fleet_inventory("beta", 1, dir, addr).unwrap();
        let yaml: serde_json::Value = yaml_serde::from_str(&beta).unwrap();
        assert!(
            beta.contains("        db4:\n          ansible_host: 172.28.9.14\n"),
            "{beta}"
        );
        assert!(
            beta.contains("        db6:\n") && !beta.contains("db3:") && !beta.contains("db7:")
        );
        assert!(beta.contains("        router2:\n          ansible_host: 172.28.9.102\n"));
        assert!(beta.contains("ansible_ssh_private_key_file: /tmp/lab/id_ed25519"));
        assert_eq!(yaml["all"]["vars"]["cluster_name"], "beta");
        assert!(fleet_inventory("zeta", 40, dir, |_| None).is_err());
    }

    use super::*;

    #[test]
    fn names_and_dirs() {
        assert!(validate_name("pgha-lab").is_ok());
        assert!(validate_name("pgha-t-lab2").is_ok());
        for bad in ["", "-x", "x-", "Lab", "a_b", "a.b", &"x".repeat(41)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(default_dir("pgha-lab"), PathBuf::from(".pgha-lab"));
        assert_eq!(default_dir("demo"), PathBuf::from(".pgha-lab-demo"));
        assert_eq!(container_name("demo", "db2"), "demo-db2");
    }

    #[test]
    fn host_names_parse_and_sort() {
        assert_eq!(parse_host("db12"), Some((Role::Db, 12)));
        assert_eq!(parse_host("router1"), Some((Role::Router, 1)));
        for bad in ["db", "db0", "db01", "dbx", "web1", "router-1"] {
            assert_eq!(parse_host(bad), None, "{bad}");
        }
        let mut v = vec!["router1", "db10", "db2", "db1"];
        v.sort_by_key(|h| host_order(h));
        assert_eq!(v, ["db1", "db2", "db10", "router1"]);
    }

    #[test]
    fn hosts_get_fixed_addresses() {
        let subnet: Ipv4Net = "172.28.7.0/24".parse().unwrap();
        let hosts = plan_hosts("demo", subnet, 3, 1);
        let got: Vec<(String, String, String)> = hosts
            .iter()
            .map(|h| (h.name.clone(), h.container.clone(), h.address.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("db1".into(), "demo-db1".into(), "172.28.7.11".into()),
                ("db2".into(), "demo-db2".into(), "172.28.7.12".into()),
                ("db3".into(), "demo-db3".into(), "172.28.7.13".into()),
                (
                    "router1".into(),
                    "demo-router1".into(),
                    "172.28.7.101".into()
                ),
            ]
        );
        let max = plan_hosts("demo", subnet, MAX_DB, MAX_ROUTERS);
        assert_eq!(max[MAX_DB as usize - 1].address.to_string(), "172.28.7.99");
        assert_eq!(max.last().unwrap().address.to_string(), "172.28.7.199");
        assert!(validate_counts(0, 1).is_err());
        assert!(validate_counts(MAX_DB + 1, 1).is_err());
        assert!(validate_counts(3, MAX_ROUTERS + 1).is_err());
        assert!(validate_counts(3, 0).is_ok());
        assert_eq!(gateway(subnet).to_string(), "172.28.7.1");
    }

    #[test]
    fn inventory_for_root_and_deploy() {
        let subnet: Ipv4Net = "172.28.7.0/24".parse().unwrap();
        let hosts = plan_hosts("demo", subnet, 2, 1);
        let inv = render_inventory("demo", &hosts, "root", true, false, true, true);
        assert_eq!(
            inv,
            "# pgha lab demo: written by `pgha lab up`, which rewrites it when the lab changes.\n\
# Relative paths are resolved against this file's directory.\n\
all:
  vars:
    cluster_name: demo
    pgha_known_hosts: known_hosts
    ansible_user: root
    ansible_ssh_private_key_file: id_ed25519
  children:
    db:
      hosts:
        db1:
          ansible_host: 172.28.7.11
        db2:
          ansible_host: 172.28.7.12
    router:
      hosts:
        router1:
          ansible_host: 172.28.7.101
    backup:
      hosts:
        router1:
"
        );
        let v: yaml_serde::Value = yaml_serde::from_str(&inv).unwrap();
        assert_eq!(
            v["all"]["children"]["router"]["hosts"]["router1"]["ansible_host"].as_str(),
            Some("172.28.7.101")
        );
        let dep = render_inventory("demo", &hosts, "deploy", true, false, true, true);
        let v: yaml_serde::Value = yaml_serde::from_str(&dep).unwrap();
        assert_eq!(v["all"]["vars"]["ansible_user"].as_str(), Some("deploy"));
        assert_eq!(v["all"]["vars"]["ansible_become"].as_bool(), Some(true));
        let no_router = render_inventory(
            "demo",
            &plan_hosts("demo", subnet, 1, 0),
            "root",
            true,
            false,
            true,
            true,
        );
        assert!(!no_router.contains("router"), "{no_router}");
        assert!(no_router.contains("backup_enabled: false"), "{no_router}");
        let docker = render_inventory("demo", &hosts, "root", true, true, true, true);
        assert!(!docker.contains("backup_enabled"), "{docker}");
        assert!(docker.contains("    backup:\n"), "{docker}");
        assert!(!inv.contains("monitoring_enabled"), "{inv}");
        let unmonitored = render_inventory("demo", &hosts, "root", true, false, true, false);
        let v: yaml_serde::Value = yaml_serde::from_str(&unmonitored).unwrap();
        assert_eq!(
            v["all"]["vars"]["monitoring_enabled"].as_bool(),
            Some(false)
        );
    }

    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIEnRplL8OWQ+uwpUzTnQ6LjzrRygGnr2QcxiHu1f/7Oe";
    const KEY2: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIMMWh1jvvB9UO7Q/wv8JY/wM/bFvD598dyXMwK2OPgKS";

    #[test]
    fn known_hosts_entries() {
        let ip: IpAddr = "172.28.7.11".parse().unwrap();
        let e = host_key_entry(ip, &format!("ssh-ed25519 {KEY} root@db1\n")).unwrap();
        assert_eq!(e, format!("172.28.7.11 ssh-ed25519 {KEY}"));
        assert!(host_key_entry(ip, "ssh-rsa AAAA x").is_err());
        assert!(host_key_entry(ip, "ssh-ed25519 notbase64").is_err());
        assert!(host_key_entry(ip, "").is_err());

        let text = render_known_hosts("demo", std::slice::from_ref(&e));
        let kh = crate::ssh::KnownHosts::parse(std::path::Path::new("kh"), &text);
        let key = russh::keys::parse_public_key_base64(KEY).unwrap();
        assert_eq!(
            kh.check("172.28.7.11", 22, &key),
            crate::ssh::HostKeyStatus::Known { line: 2 }
        );
    }

    #[test]
    fn known_hosts_update_replaces_only_that_host() {
        let a = format!("172.28.7.11 ssh-ed25519 {KEY}");
        let b = format!("172.28.7.12 ssh-ed25519 {KEY}");
        let text = format!("# c\n{a}\n{b}\n");
        let ip: IpAddr = "172.28.7.11".parse().unwrap();
        let new = format!("172.28.7.11 ssh-ed25519 {KEY2}");
        assert_eq!(
            update_known_hosts(&text, ip, &new),
            format!("# c\n{new}\n{b}\n")
        );
        let ip3: IpAddr = "172.28.7.13".parse().unwrap();
        let new3 = format!("172.28.7.13 ssh-ed25519 {KEY2}");
        assert_eq!(
            update_known_hosts(&text, ip3, &new3),
            format!("# c\n{a}\n{b}\n{new3}\n")
        );
        // Duplicate entries for the host collapse into the new one; 172.28.7.111 is another host.
        let other = format!("172.28.7.111 ssh-ed25519 {KEY}");
        let text = format!("{a}\n{other}\n172.28.7.11,db1 ssh-ed25519 {KEY}\n");
        assert_eq!(
            update_known_hosts(&text, ip, &new),
            format!("{new}\n{other}\n")
        );
    }

    #[test]
    fn docker_run_arguments() {
        let subnet: Ipv4Net = "172.28.7.0/24".parse().unwrap();
        let h = &plan_hosts("demo", subnet, 1, 0)[0];
        let args = run_args("demo", h, "pgha-lab:0123456789ab").join(" ");
        assert_eq!(
            args,
            "run -d --name demo-db1 --hostname db1 --network demo --ip 172.28.7.11 \
--network-alias db1 --label pgha.lab=demo --label pgha.lab.host=db1 \
--label pgha.lab.address=172.28.7.11 --cap-add SYS_ADMIN --cap-add NET_ADMIN --cap-add SYS_PTRACE --security-opt seccomp=unconfined \
--tmpfs /run --tmpfs /run/lock -v /sys/fs/cgroup:/sys/fs/cgroup:rw -v /var/lib/docker -v /usr -v /var/lib --cgroupns=host --stop-signal SIGRTMIN+3 pgha-lab:0123456789ab /sbin/init"
        );
        assert!(!args.contains("--privileged"));
    }

    #[test]
    fn a_host_moves_to_a_spare_address_in_the_inventory() {
        let subnet: Ipv4Net = "172.28.5.0/24".parse().unwrap();
        let used: Vec<IpAddr> = vec!["172.28.5.200".parse().unwrap()];
        assert_eq!(
            spare_address(subnet, &used).unwrap().to_string(),
            "172.28.5.201"
        );
        let hosts = plan_hosts("lab", subnet, 3, 1);
        let inv = render_inventory("lab", &hosts, "root", true, false, true, true);
        let moved = set_host_address(&inv, "db2", "172.28.5.201".parse().unwrap()).unwrap();
        assert!(
            moved.contains("db2:\n          ansible_host: 172.28.5.201\n"),
            "{moved}"
        );
        assert!(
            moved.contains("db1:\n          ansible_host: 172.28.5.11\n"),
            "{moved}"
        );
        assert!(
            moved.contains("db3:\n          ansible_host: 172.28.5.13\n"),
            "{moved}"
        );
        assert!(set_host_address(&inv, "db9", "172.28.5.201".parse().unwrap()).is_none());
    }
}
