//! End-to-end: `pgha deploy` onto real lab hosts (Docker containers booting systemd
//! and sshd, real Debian packages). Every assertion reads live state: etcd members,
//! Patroni roles, rows in PostgreSQL, HAProxy stats, exporter metrics.
//!
//! Two labs run side by side: `pgha-e2e` (root) for the cluster lifecycle, and
//! `pgha-e2e-user` (non-root `deploy` user with sudo) for refusals and sudo.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use pgha::lab::{self, LabInfo, LabSpec};
use serde_json::Value;
use tokio_postgres::NoTls;

fn pgha(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgha"))
        .args(args)
        .env("CI", "1")
        .output()
        .expect("run pgha");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("$ pgha {}\n{stdout}{stderr}", args.join(" "));
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

struct Lab {
    info: LabInfo,
}

impl Lab {
    async fn up(name: &str, user: &str) -> Lab {
        let _ = lab::down(name).await;
        let dir = std::env::temp_dir().join(format!("{name}-dir"));
        let _ = std::fs::remove_dir_all(&dir);
        let info = lab::up(&LabSpec {
            name: name.into(),
            db: 3,
            routers: 1,
            dir,
            user: user.into(),
        })
        .await
        .expect("lab up");
        Lab { info }
    }
    fn inventory(&self) -> String {
        self.info.inventory_path.display().to_string()
    }
    fn ip(&self, host: &str) -> String {
        self.info
            .hosts
            .iter()
            .find(|h| h.name == host)
            .unwrap_or_else(|| panic!("no lab host {host}"))
            .address
            .to_string()
    }
    fn cluster_name(&self) -> String {
        pgha::inventory::load(&self.info.inventory_path, &Default::default())
            .expect("lab inventory loads")
            .cluster
            .cluster_name
    }
    fn router(&self) -> String {
        self.ip("router1")
    }
    fn secret(&self, key: &str) -> String {
        let path = self.info.dir.join("inventory.secrets.yml");
        let text = std::fs::read_to_string(&path).expect("secrets file");
        let map: BTreeMap<String, String> = yaml_serde::from_str(&text).expect("secrets yaml");
        map[key].clone()
    }
    /// Run a command on a host through docker exec (independent of pgha's SSH).
    fn sh(&self, host: &str, script: &str) -> (i32, String) {
        let out = Command::new("docker")
            .args([
                "exec",
                &format!("{}-{host}", self.info.name),
                "sh",
                "-c",
                script,
            ])
            .output()
            .expect("docker exec");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::env::var_os("PGHA_KEEP_LAB").is_none() {
            let name = self.info.name.clone();
            let _ = Command::new(env!("CARGO_BIN_EXE_pgha"))
                .args(["lab", "down", "--name", &name])
                .output();
        }
    }
}

async fn pg(host: &str, port: u16, password: &str) -> Result<tokio_postgres::Client, String> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(host)
        .port(port)
        .user("postgres")
        .password(password)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(3));
    // connect_timeout covers the TCP connect only: bound the whole handshake, since
    // HAProxy accepts at once and a session bound for a dead server can hang.
    let (client, conn) = tokio::time::timeout(Duration::from_secs(5), cfg.connect(NoTls))
        .await
        .map_err(|_| format!("no answer from {host}:{port} within 5 s"))?
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(client)
}

async fn get_json(url: &str) -> Result<Value, String> {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    c.get(url)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())
}

/// Poll until `f` is Some, or panic naming what was awaited and the last state.
async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) if start.elapsed() > Duration::from_secs(secs) => {
                panic!("timed out after {secs}s waiting for {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Patroni's view from any db host: (leader, [(name, role, state, lag)]).
async fn patroni_cluster(
    lab: &Lab,
) -> Result<(String, Vec<(String, String, String, Option<u64>)>), String> {
    let mut last = String::new();
    for h in ["db1", "db2", "db3"] {
        match get_json(&format!("http://{}:8008/cluster", lab.ip(h))).await {
            Ok(v) => {
                let members: Vec<_> = v["members"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|m| {
                        (
                            m["name"].as_str().unwrap_or("").to_string(),
                            m["role"].as_str().unwrap_or("").to_string(),
                            m["state"].as_str().unwrap_or("").to_string(),
                            m["lag"].as_u64(),
                        )
                    })
                    .collect();
                let leader = members
                    .iter()
                    .find(|m| m.1 == "leader" && m.2 == "running")
                    .map(|m| m.0.clone())
                    .ok_or(format!("no running leader: {members:?}"))?;
                return Ok((leader, members));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn healthy_cluster(lab: &Lab) -> String {
    eventually(
        "a leader and two replicas streaming with lag 0",
        180,
        || async {
            let (leader, members) = patroni_cluster(lab).await?;
            let streaming = members
                .iter()
                .filter(|m| m.1 != "leader" && m.2 == "streaming" && m.3 == Some(0))
                .count();
            if streaming == 2 {
                Ok(leader)
            } else {
                Err(format!("{members:?}"))
            }
        },
    )
    .await
}

async fn check_etcd(lab: &Lab) {
    let mut cluster_ids = Vec::new();
    for h in ["db1", "db2", "db3"] {
        let ep = format!("http://{}:2379", lab.ip(h));
        let mut c = etcd_client::Client::connect([ep.as_str()], None)
            .await
            .expect("etcd connect");
        let members = c.member_list().await.expect("member list");
        let mut names: Vec<String> = members
            .members()
            .iter()
            .map(|m| m.name().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["db1", "db2", "db3"], "etcd members seen from {h}");
        let st = c.status().await.expect("status");
        assert_ne!(st.leader(), 0, "{h} knows the etcd leader");
        cluster_ids.push(st.header().unwrap().cluster_id());
        // Patroni's cluster lives in this etcd cluster.
        let init = c
            .get(format!("/service/{}/initialize", lab.cluster_name()), None)
            .await
            .expect("get");
        assert_eq!(init.kvs().len(), 1, "Patroni initialize key via {h}");
    }
    cluster_ids.dedup();
    assert_eq!(
        cluster_ids.len(),
        1,
        "one etcd cluster id on every endpoint"
    );
}

fn postmaster_start(v: &Value) -> String {
    v["postmaster_start_time"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

async fn start_times(lab: &Lab) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for h in ["db1", "db2", "db3"] {
        let v = get_json(&format!("http://{}:8008/patroni", lab.ip(h)))
            .await
            .expect("patroni status");
        m.insert(h.to_string(), postmaster_start(&v));
    }
    m
}

fn deploy_json(inventory: &str, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["deploy", "-i", inventory, "--output", "json"];
    args.extend_from_slice(extra);
    let (code, stdout, _) = pgha(&args);
    let doc = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or(Value::Null);
    (code, doc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_rerun_reconfigure_and_survive_leader_loss() {
    let lab = Lab::up("pgha-e2e", "root").await;
    let inv = lab.inventory();

    // 1. Bare hosts -> cluster.
    let (code, doc) = deploy_json(&inv, &[]);
    assert_eq!(code, 0, "first deploy");
    assert!(doc["changed"].as_u64().unwrap() > 0);

    // Observed independently of pgha's report.
    check_etcd(&lab).await;
    let leader = healthy_cluster(&lab).await;
    let (code, out) = lab.sh(
        &leader,
        "dpkg-query -W -f='${Version}' postgresql-17 patroni etcd-server",
    );
    assert_eq!(code, 0, "packages installed on {leader}: {out}");
    let (_, clusters) = lab.sh("db2", "ls /etc/postgresql/17 2>/dev/null | wc -l");
    assert_eq!(
        clusters.trim(),
        "0",
        "no Debian-managed 17/main cluster next to Patroni's"
    );
    let superpw = lab.secret("superuser_password");
    let router = lab.router();
    let w = pg(&router, 5000, &superpw).await.expect("connect :5000");
    w.batch_execute("CREATE TABLE e2e (id int PRIMARY KEY, note text)")
        .await
        .unwrap();
    w.execute("INSERT INTO e2e VALUES (1, 'through the router')", &[])
        .await
        .unwrap();
    let on_primary: bool = w
        .query_one("SELECT NOT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(on_primary, "port 5000 reaches the primary");
    eventually("row 1 readable on a replica through :5001", 30, || async {
        let r = pg(&router, 5001, &superpw).await?;
        let row = r
            .query_one(
                "SELECT (SELECT count(*) FROM e2e WHERE id = 1), pg_is_in_recovery()",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        let (n, replica): (i64, bool) = (row.get(0), row.get(1));
        if n == 1 && replica {
            Ok(())
        } else {
            Err(format!("count {n}, replica {replica}"))
        }
    })
    .await;
    let metrics = reqwest::get(format!("http://{}:9187/metrics", lab.ip("db1")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l == "pg_up 1"),
        "exporter on db1 reports pg_up 1"
    );
    let csv = reqwest::get(format!("http://{router}:8404/;csv"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let up: Vec<&str> = csv
        .lines()
        .filter(|l| l.starts_with("primary,db") && l.contains(",UP,"))
        .collect();
    assert_eq!(
        up.len(),
        1,
        "exactly one server UP in the primary backend: {csv}"
    );
    assert!(
        up[0].starts_with(&format!("primary,{leader},")),
        "the UP server is the leader {leader}"
    );
    let secrets_mode = std::fs::metadata(lab.info.dir.join("inventory.secrets.yml")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&secrets_mode.permissions()) & 0o777,
        0o600
    );

    // 2. Re-run: nothing changes, nothing restarts.
    let before = start_times(&lab).await;
    let (code, doc) = deploy_json(&inv, &[]);
    assert_eq!(code, 0, "second deploy");
    assert_eq!(doc["changed"], 0, "second deploy changes nothing: {doc}");
    assert_eq!(start_times(&lab).await, before, "no PostgreSQL restarted");
    assert_eq!(healthy_cluster(&lab).await, leader, "leader unchanged");

    // 3. Config change: work_mem (reload) and max_connections (restart: rolled).
    let text = std::fs::read_to_string(&inv).unwrap();
    let changed = text.replacen(
        "vars:\n",
        "vars:\n    postgresql_parameters:\n      work_mem: 8MB\n      max_connections: 250\n",
        1,
    );
    assert_ne!(text, changed, "inventory has an all.vars block");
    std::fs::write(&inv, changed).unwrap();
    let (code, _) = deploy_json(&inv, &[]);
    assert_eq!(code, 0, "deploy with changed parameters");
    let new_leader = healthy_cluster(&lab).await;
    for h in ["db1", "db2", "db3"] {
        let (_, out) = lab.sh(
            h,
            "runuser -u postgres -- psql -XAtc 'show max_connections' -c 'show work_mem'",
        );
        assert_eq!(
            out.split_whitespace().collect::<Vec<_>>(),
            ["250", "8MB"],
            "{h} runs the new settings"
        );
    }
    assert_ne!(
        new_leader, leader,
        "the leader was restarted last, after a switchover"
    );
    let w = pg(&router, 5000, &superpw)
        .await
        .expect("connect :5000 after rolling restart");
    let n: i64 = w
        .query_one("SELECT count(*) FROM e2e", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "rows survive the rolling restart");

    // 4. Hard kill of the leader while a writer runs: no acknowledged write is lost.
    let leader = new_leader;
    let writer_router = router.clone();
    let writer_pw = superpw.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut i = 1000;
        let mut client = None;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            if client.is_none() {
                client = pg(&writer_router, 5000, &writer_pw).await.ok();
            }
            if let Some(c) = &client {
                // No answer within 3 s is no acknowledgement: drop the connection
                // (a session whose server died can hang until TCP gives up).
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&i];
                let insert = c.execute("INSERT INTO e2e VALUES ($1, 'writer')", &params);
                match tokio::time::timeout(Duration::from_secs(3), insert).await {
                    Ok(Ok(_)) => acked.push(i),
                    _ => client = None,
                }
                i += 1;
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        acked
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    lab::kill(&lab.info.name, &leader).await.expect("lab kill");
    let survivors: Vec<&str> = ["db1", "db2", "db3"]
        .into_iter()
        .filter(|h| *h != leader)
        .collect();
    let promoted = eventually("a surviving replica to become leader", 120, || async {
        for h in &survivors {
            if let Ok(v) = get_json(&format!("http://{}:8008/patroni", lab.ip(h))).await
                && v["role"] == "primary"
                && v["state"] == "running"
            {
                return Ok(h.to_string());
            }
        }
        Err("no survivor is primary yet".to_string())
    })
    .await;
    assert_ne!(promoted, leader);
    eventually("writes through :5000 to succeed again", 120, || async {
        let c = pg(&router, 5000, &superpw).await?;
        let insert = c.execute(
            "INSERT INTO e2e VALUES (999999, 'after failover') ON CONFLICT DO NOTHING",
            &[],
        );
        match tokio::time::timeout(Duration::from_secs(3), insert).await {
            Ok(r) => r.map(|_| ()).map_err(|e| e.to_string()),
            Err(_) => Err("no answer within 3 s".to_string()),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked = writer.await.unwrap();
    assert!(
        acked.len() > 10,
        "the writer got acknowledgements ({})",
        acked.len()
    );
    let c = pg(&router, 5000, &superpw).await.unwrap();
    let present: Vec<i32> = c
        .query("SELECT id FROM e2e WHERE note = 'writer'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost: Vec<&i32> = acked.iter().filter(|i| !present.contains(i)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged writes lost in failover: {lost:?}"
    );

    // 5. The old leader comes back as a replica by itself.
    lab::start(&lab.info.name, &leader)
        .await
        .expect("lab start");
    eventually(
        &format!("{leader} to rejoin as a streaming replica"),
        180,
        || async {
            let (l, members) = patroni_cluster(&lab).await?;
            let m = members.iter().find(|m| m.0 == leader).ok_or("not listed")?;
            if l != leader && m.2 == "streaming" {
                Ok(())
            } else {
                Err(format!("{members:?}"))
            }
        },
    )
    .await;
}

fn untouched(lab: &Lab, host: &str) {
    let (_, pkgs) = lab.sh(host, "dpkg-query -W -f='${Status}\\n' postgresql-17 etcd-server haproxy 2>/dev/null | grep -c installed");
    assert_eq!(pkgs.trim(), "0", "{host}: no package installed");
    let (_, files) = lab.sh(host, "ls /etc/apt/sources.list.d/pgha.list /etc/postgresql-common/createcluster.conf 2>/dev/null | wc -l");
    assert_eq!(files.trim(), "0", "{host}: no file written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_touch_nothing_then_non_root_deploy_works() {
    let lab = Lab::up("pgha-e2e-user", "deploy").await;
    let inv = lab.inventory();
    let text = std::fs::read_to_string(&inv).unwrap();
    assert!(
        text.contains("ansible_user: deploy"),
        "lab inventory uses the deploy user"
    );

    // Invalid inventory: exit 4, no host touched.
    let bad = lab.info.dir.join("bad.yml");
    std::fs::write(
        &bad,
        text.replacen("vars:\n", "vars:\n    postgresql_verison: 17\n", 1),
    )
    .unwrap();
    let (code, _, stderr) = pgha(&["deploy", "-i", bad.to_str().unwrap()]);
    assert_eq!(code, 4, "invalid inventory exit code");
    assert!(
        stderr.contains("postgresql_version"),
        "did-you-mean names the right key: {stderr}"
    );
    for h in ["db1", "db2", "db3", "router1"] {
        untouched(&lab, h);
    }

    // One unreachable host: exit 3 naming it, the other hosts untouched.
    let dead = format!("{}.250", lab.ip("db3").rsplit_once('.').unwrap().0);
    let unreachable = lab.info.dir.join("unreachable.yml");
    std::fs::write(&unreachable, text.replace(&lab.ip("db3"), &dead)).unwrap();
    let (code, _, stderr) = pgha(&[
        "deploy",
        "-i",
        unreachable.to_str().unwrap(),
        "--connect-timeout",
        "2",
    ]);
    assert_eq!(code, 3, "unreachable host exit code");
    assert!(
        stderr.contains("db3") && stderr.contains(&dead),
        "names host and address: {stderr}"
    );
    for h in ["db1", "db2", "router1"] {
        untouched(&lab, h);
    }

    // The real deploy, as `deploy` through sudo.
    let (code, _, _) = pgha(&["deploy", "-i", &inv]);
    assert_eq!(code, 0, "deploy as the non-root user");
    healthy_cluster(&lab).await;
    let (_, owner) = lab.sh("db1", "stat -c '%U %a' /etc/patroni/config.yml");
    assert_eq!(
        owner.trim(),
        "postgres 600",
        "patroni config owned by postgres, mode 0600"
    );
    let (_, grep) = lab.sh(
        "db1",
        &format!(
            "grep -c {} /etc/patroni/config.yml",
            lab.secret("superuser_password")
        ),
    );
    assert_eq!(
        grep.trim(),
        "1",
        "the generated superuser password is what Patroni uses"
    );

    // --check --diff on a changed parameter: shows the change with secrets redacted,
    // and changes nothing.
    let changed = text.replacen(
        "vars:\n",
        "vars:\n    postgresql_parameters:\n      work_mem: 12MB\n",
        1,
    );
    std::fs::write(&inv, &changed).unwrap();
    // Drift on db1: its password lines edited by hand, so the diff must show them.
    let (code, _) = lab.sh(
        "db1",
        "sed -i 's/^\\( *\\)password: .*/\\1password: \"tampered\"/' /etc/patroni/config.yml",
    );
    assert_eq!(code, 0);
    let (code, stdout, stderr) = pgha(&["deploy", "-i", &inv, "--check", "--diff"]);
    assert_eq!(code, 0, "--check exit code");
    let shown = format!("{stdout}{stderr}");
    assert!(
        shown.contains("work_mem"),
        "the diff shows the parameter: {shown}"
    );
    assert!(
        shown.contains("-      password: \"tampered\""),
        "the drifted lines are in the diff: {shown}"
    );
    assert!(
        shown.contains("+      password: \"<redacted>\""),
        "the wanted password is redacted: {shown}"
    );
    for key in [
        "superuser_password",
        "replication_password",
        "patroni_api_password",
    ] {
        assert!(
            !shown.contains(&lab.secret(key)),
            "{key} leaked into --check --diff output"
        );
    }
    let show_work_mem = || {
        lab.sh("db1", "runuser -u postgres -- psql -XAtc 'show work_mem'")
            .1
    };
    assert_eq!(show_work_mem().trim(), "4MB", "--check changed nothing");

    // --limit is refused for a cluster-wide change, with the reason (exit 5).
    let (code, _, stderr) = pgha(&["deploy", "-i", &inv, "--limit", "db1"]);
    assert_eq!(code, 5, "--limit refused");
    assert!(
        stderr.contains("dynamic configuration"),
        "names the reason: {stderr}"
    );
    assert_eq!(
        show_work_mem().trim(),
        "4MB",
        "a refused --limit changed nothing"
    );

    // The real run repairs the drift and applies the parameter (a reload, no restart).
    let (code, _, _) = pgha(&["deploy", "-i", &inv]);
    assert_eq!(code, 0, "deploy repairs drift");
    eventually("work_mem 12MB on db1", 30, || async {
        let v = show_work_mem();
        if v.trim() == "12MB" { Ok(()) } else { Err(v) }
    })
    .await;
    let (_, tampered) = lab.sh("db1", "grep -c tampered /etc/patroni/config.yml");
    assert_eq!(tampered.trim(), "0", "drifted lines restored");
    healthy_cluster(&lab).await;
}
