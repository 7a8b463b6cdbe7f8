//! The lab: real bare hosts (Docker containers booting systemd and sshd) reached over
//! pgha's own SSH transport, with host keys verified against the lab's known_hosts,
//! and every fault injection verb observed from the outside.
//!
//! Needs a running Docker engine and root (the base image is built with debootstrap
//! the first time; it is cached afterwards). Set PGHA_KEEP_LAB=1 to keep the lab.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pgha::inventory::{self, LoadOptions, SshTarget};
use pgha::lab::{self, LabInfo, LabSpec};
use pgha::ssh::{Cmd, Session, SshError, SshOptions};

const LAB: &str = "pgha-t-lab";

/// Removes the lab when the test ends, passed or failed (through the CLI, which
/// needs no async runtime).
struct Teardown;

impl Drop for Teardown {
    fn drop(&mut self) {
        if std::env::var_os("PGHA_KEEP_LAB").is_some() {
            eprintln!("PGHA_KEEP_LAB set: lab {LAB} kept");
            return;
        }
        let out = Command::new(env!("CARGO_BIN_EXE_pgha"))
            .args(["lab", "down", "--name", LAB])
            .output();
        if let Ok(o) = out {
            eprintln!("lab down: {}", String::from_utf8_lossy(&o.stderr).trim());
        }
    }
}

fn pgha(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgha"))
        .args(args)
        .output()
        .expect("run pgha");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("$ pgha {}\n{stdout}{stderr}", args.join(" "));
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

fn opts(known_hosts: &Path) -> SshOptions {
    let mut o = SshOptions::new(known_hosts.to_path_buf());
    o.connect_timeout = Duration::from_secs(5);
    o.connect_attempts = 1;
    o
}

async fn connect(t: &SshTarget, known_hosts: &Path) -> Result<Session, SshError> {
    Session::connect(t, &opts(known_hosts)).await
}

/// Run `script` (as root when `root`), expect exit 0, return trimmed stdout.
async fn run(s: &Session, cmd: Cmd) -> String {
    let shown = cmd.script.clone();
    let out = s
        .exec(&cmd.timeout(Duration::from_secs(60)))
        .await
        .unwrap_or_else(|e| panic!("{}: {shown}: {e}", s.host()))
        .ok()
        .unwrap_or_else(|e| panic!("{e}"));
    out.stdout_str().trim().to_string()
}

/// Whether `from` can open a TCP connection to `ip:22` within 3 s.
async fn reaches(from: &Session, ip: &str) -> bool {
    let out = from
        .exec(
            &Cmd::root(format!("timeout 3 bash -c '</dev/tcp/{ip}/22'"))
                .timeout(Duration::from_secs(30)),
        )
        .await
        .expect("exec");
    out.success()
}

fn known_hosts_line(path: &Path, ip: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .find(|l| l.split_whitespace().next() == Some(ip))
        .unwrap_or_else(|| panic!("no known_hosts entry for {ip}"))
        .to_string()
}

fn container_id(name: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "--format", "{{.Id}}", name])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

fn target<'a>(targets: &'a [SshTarget], host: &str) -> &'a SshTarget {
    targets.iter().find(|t| t.host == host).unwrap()
}

fn as_deploy(t: &SshTarget) -> SshTarget {
    SshTarget {
        user: "deploy".into(),
        become_: true,
        ..t.clone()
    }
}

fn ip(info: &LabInfo, host: &str) -> String {
    info.host(host).unwrap().address.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn lab_hosts_over_ssh_with_fault_injection() {
    // A lab left over by an interrupted run is removed first.
    lab::down(LAB).await.expect("lab down (leftovers)");
    let dir: PathBuf = std::env::temp_dir().join(format!("{LAB}-dir"));
    let _ = std::fs::remove_dir_all(&dir);
    let _teardown = Teardown;

    let spec = LabSpec {
        name: LAB.into(),
        db: 3,
        routers: 1,
        dir: dir.clone(),
        user: "root".into(),
        tls: false,
        docker: false,
        backup: true,
        monitoring: true,
    };
    let t = Instant::now();
    let info = lab::up(&spec).await.expect("lab up");
    eprintln!("lab up (hosts only) took {:?}", t.elapsed());

    // The lab directory: key (0600), known_hosts, inventory in Ansible form.
    let names: Vec<&str> = info.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["db1", "db2", "db3", "router1"]);
    assert!(info.hosts.iter().all(|h| h.running && !h.partitioned));
    assert_eq!(info.subnet.prefix_len(), 24);
    assert!(
        info.hosts
            .iter()
            .all(|h| info.subnet.contains(&match h.address {
                std::net::IpAddr::V4(a) => a,
                _ => panic!("IPv6"),
            }))
    );
    assert!(ip(&info, "db1").ends_with(".11") && ip(&info, "router1").ends_with(".101"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&info.key_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "private key mode");
    let inv = inventory::load(&info.inventory_path, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("the lab inventory loads: {e}"));
    assert_eq!(
        inv.known_hosts.as_deref(),
        Some(info.known_hosts_path.as_path())
    );
    let targets: Vec<SshTarget> = inv.hosts.iter().map(|h| h.ssh.clone()).collect();
    assert_eq!(targets.len(), 4);
    for h in &inv.hosts {
        assert_eq!(h.ip, info.host(&h.name).unwrap().address, "{}", h.name);
        assert_eq!(h.ssh.user, "root");
    }
    let kh = info.known_hosts_path.clone();

    // Every host: root, and deploy with sudo, over pgha's SSH with verified host keys.
    // Hosts are bare: none of the cluster's packages is installed.
    let mut host_keys = Vec::new();
    for t in &targets {
        let s = connect(t, &kh).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run(&s, Cmd::root("id -u")).await, "0");
        assert_eq!(run(&s, Cmd::root("hostname")).await, t.host);
        let installed = run(
            &s,
            Cmd::root(
                "dpkg-query -W -f='${Status}\\n' postgresql-17 patroni etcd-server haproxy \
                 2>/dev/null | grep -c 'install ok installed' || true",
            ),
        )
        .await;
        assert_eq!(installed, "0", "{}: bare host", t.host);
        s.close().await;

        let d = connect(&as_deploy(t), &kh)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run(&d, Cmd::user("id -un")).await, "deploy");
        assert_eq!(run(&d, Cmd::root("id -u")).await, "0", "{}: sudo", t.host);
        d.close().await;
        host_keys.push(known_hosts_line(&kh, &t.address));
    }
    // Each container made its own host key.
    let mut keys: Vec<&str> = host_keys
        .iter()
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 4, "host keys differ per host: {host_keys:?}");

    // Idempotent: a second up reuses the containers and rewrites no file.
    let ids: Vec<String> = info
        .hosts
        .iter()
        .map(|h| container_id(&h.container))
        .collect();
    let files = [&info.inventory_path, &info.known_hosts_path, &info.key_path];
    let before: Vec<_> = files.iter().map(|p| mtime(p)).collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = lab::up(&spec).await.expect("lab up again");
    assert_eq!(again.subnet, info.subnet);
    assert_eq!(again.hosts, info.hosts);
    let ids2: Vec<String> = info
        .hosts
        .iter()
        .map(|h| container_id(&h.container))
        .collect();
    assert_eq!(ids, ids2, "containers reused");
    let after: Vec<_> = files.iter().map(|p| mtime(p)).collect();
    assert_eq!(before, after, "no file rewritten");

    let db1 = target(&targets, "db1");
    let db2 = target(&targets, "db2");
    let db2_ip = ip(&info, "db2");
    let s1 = connect(db1, &kh).await.expect("db1");

    // kill: like pulling the power. The disk survives a start.
    let s2 = connect(db2, &kh).await.expect("db2");
    run(
        &s2,
        Cmd::root("echo before-kill > /root/pgha-marker && sync"),
    )
    .await;
    s2.close().await;
    let h = lab::kill(LAB, "db2").await.expect("lab kill");
    assert!(!h.running);
    match connect(db2, &kh).await {
        Err(e @ SshError::Unreachable { .. }) => eprintln!("killed db2: {e}"),
        other => panic!("a killed host must be unreachable, got {other:?}"),
    }
    let st = lab::status(LAB).await.unwrap();
    assert!(!st.iter().find(|h| h.name == "db2").unwrap().running);
    let h = lab::start(LAB, "db2").await.expect("lab start");
    assert!(h.running);
    let s2 = connect(db2, &kh).await.expect("db2 after start");
    assert_eq!(
        run(&s2, Cmd::root("cat /root/pgha-marker")).await,
        "before-kill"
    );
    s2.close().await;

    // partition: cut off both ways, also from this machine; heal restores it.
    assert!(
        reaches(&s1, &db2_ip).await,
        "db1 reaches db2 before the partition"
    );
    let h = lab::partition(LAB, "db2").await.expect("lab partition");
    assert!(h.partitioned);
    assert!(
        !reaches(&s1, &db2_ip).await,
        "db1 must not reach db2 while partitioned"
    );
    match connect(db2, &kh).await {
        Err(SshError::Unreachable { .. }) => {}
        other => panic!("a partitioned host must be unreachable, got {other:?}"),
    }
    let st = lab::status(LAB).await.unwrap();
    let s = st.iter().find(|h| h.name == "db2").unwrap();
    assert!(s.running && s.partitioned);
    let h = lab::heal(LAB, "db2").await.expect("lab heal");
    assert!(!h.partitioned);
    assert_eq!(h.address.to_string(), db2_ip, "address kept");
    // heal waited for sshd from this machine; db1's path to db2 is checked with a
    // deadline too (its neighbour entry for db2 may still be stale).
    let mut back = false;
    for _ in 0..10 {
        if reaches(&s1, &db2_ip).await {
            back = true;
            break;
        }
    }
    assert!(back, "db1 reaches db2 after heal (10 tries of 3 s)");
    let s2 = connect(db2, &kh).await.expect("db2 after heal");
    assert_eq!(
        run(&s2, Cmd::root("cat /root/pgha-marker")).await,
        "before-kill"
    );
    s2.close().await;

    // partition --from: db2 cut off from db1 and this machine only, both ways; the
    // router still reaches it, and the lab reports the cut; heal removes it.
    let router = connect(target(&targets, "router1"), &kh)
        .await
        .expect("router1");
    let h = lab::partition_from(LAB, "db2", &["db1".into(), lab::CONTROLLER.into()])
        .await
        .expect("lab partition --from");
    assert_eq!(h.cut_from, ["db1", "controller"]);
    assert!(!h.partitioned, "still on the lab network");
    assert!(
        !reaches(&s1, &db2_ip).await,
        "db1 must not reach db2 while cut off from it"
    );
    assert!(reaches(&router, &db2_ip).await, "router1 still reaches db2");
    let s2 = connect(db2, &kh).await.err();
    assert!(
        matches!(s2, Some(SshError::Unreachable { .. })),
        "this machine is cut off from db2: {s2:?}"
    );
    let st = lab::status(LAB).await.unwrap();
    let mut cut = st
        .iter()
        .find(|h| h.name == "db2")
        .unwrap()
        .cut_from
        .clone();
    cut.sort();
    assert_eq!(cut, ["controller", "db1"], "lab status shows the cut");
    let h = lab::heal(LAB, "db2").await.expect("lab heal");
    assert!(h.cut_from.is_empty());
    let mut back = false;
    for _ in 0..10 {
        if reaches(&s1, &db2_ip).await {
            back = true;
            break;
        }
    }
    assert!(back, "db1 reaches db2 after heal");
    connect(db2, &kh).await.expect("db2 after heal of the cut");
    router.close().await;

    // replace: a fresh bare machine at the same address, with a new host key that the
    // lab records (the old known_hosts now refuses it).
    let old_kh = dir.join("known_hosts.before-replace");
    std::fs::copy(&kh, &old_kh).unwrap();
    let old_line = known_hosts_line(&kh, &db2_ip);
    let others: Vec<String> = ["db1", "db3", "router1"]
        .iter()
        .map(|h| known_hosts_line(&kh, &ip(&info, h)))
        .collect();
    let h = lab::replace(LAB, "db2").await.expect("lab replace");
    assert!(h.running && !h.partitioned);
    assert_eq!(h.address.to_string(), db2_ip);
    let new_line = known_hosts_line(&kh, &db2_ip);
    assert_ne!(old_line, new_line, "the host key changed");
    let others_after: Vec<String> = ["db1", "db3", "router1"]
        .iter()
        .map(|h| known_hosts_line(&kh, &ip(&info, h)))
        .collect();
    assert_eq!(others, others_after, "other hosts' keys untouched");
    match connect(db2, &old_kh).await {
        Err(e @ SshError::HostKeyChanged { .. }) => eprintln!("old known_hosts: {e}"),
        other => panic!("the old known_hosts must refuse the new key, got {other:?}"),
    }
    let s2 = connect(db2, &kh).await.expect("db2 after replace");
    let marker = s2
        .exec(&Cmd::root("test -e /root/pgha-marker"))
        .await
        .unwrap();
    assert_eq!(marker.status, 1, "the marker is gone with the old disk");
    assert_eq!(run(&s2, Cmd::root("id -u")).await, "0");
    s2.close().await;
    let d2 = connect(&as_deploy(db2), &kh)
        .await
        .expect("deploy@db2 after replace");
    assert_eq!(run(&d2, Cmd::root("id -u")).await, "0");
    d2.close().await;
    s1.close().await;

    // The CLI: status as JSON, unknown host names the lab's hosts (exit 5).
    let (code, out, _) = pgha(&["lab", "status", "--name", LAB, "--output", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    assert_eq!(v["subnet"].as_str(), Some(info.subnet.to_string().as_str()));
    let hosts = v["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 4);
    assert!(
        hosts
            .iter()
            .all(|h| h["running"] == true && h["partitioned"] == false)
    );
    let (code, _, err) = pgha(&["lab", "kill", "db9", "--name", LAB]);
    assert_eq!(code, 5);
    assert!(err.contains("db1, db2, db3, router1"), "{err}");

    // down: containers and network gone, the lab directory kept.
    lab::down(LAB).await.expect("lab down");
    assert!(lab::status(LAB).await.unwrap().is_empty());
    let net = Command::new("docker")
        .args(["network", "inspect", LAB])
        .output()
        .unwrap();
    assert!(!net.status.success(), "network removed");
    assert!(info.inventory_path.exists(), "lab directory kept");
    let _ = std::fs::remove_dir_all(&dir);
}
