//! Helpers shared by the end-to-end tests: a lab per scenario, pgha runs, and
//! independent observers of the cluster (Patroni's REST API, etcd, SQL through
//! the router, docker exec on the hosts). Nothing here goes through pgha's own
//! probes, so a test's assertions do not depend on what pgha reports.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

pub use pgha::lab::clients::*;
use pgha::lab::{self, LabInfo, LabSpec};
use serde_json::Value;

pub fn pgha(args: &[&str]) -> (i32, String, String) {
    pgha_env(args, &[])
}

pub fn pgha_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgha"));
    cmd.args(args).env("CI", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run pgha");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("$ pgha {}\n{stdout}{stderr}", args.join(" "));
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// The last line of stdout that parses as a JSON object (pgha prints one document);
/// panics when there is none, so a check on pgha's report cannot pass on nothing.
pub fn json_doc(stdout: &str) -> Value {
    stdout
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(Value::is_object)
        })
        .unwrap_or_else(|| panic!("no JSON document in pgha's output:\n{stdout}"))
}

/// What a lab's inventory turns on.
#[derive(Clone, Copy)]
struct Parts {
    tls: bool,
    docker: bool,
    backup: bool,
    monitoring: bool,
}

impl Parts {
    const DEFAULT: Parts = Parts {
        tls: true,
        docker: false,
        backup: true,
        monitoring: true,
    };
    const UNMONITORED: Parts = Parts {
        monitoring: false,
        ..Parts::DEFAULT
    };
}

pub struct Lab {
    pub info: LabInfo,
    /// The inventory has TLS on: Patroni and etcd are read over TLS with the
    /// cluster CA and pgha's client certificate, once deploy has made them.
    pub tls: bool,
    /// `install_method: docker`: PostgreSQL's and pgBackRest's tools run in their
    /// containers on the hosts.
    pub docker: bool,
}

impl Lab {
    /// A lab of 3 db hosts and a router with the inventory's defaults: TLS,
    /// backups and monitoring on.
    pub async fn up(name: &str, user: &str) -> Lab {
        Self::up_sized(name, user, 3, 1, Parts::DEFAULT).await
    }

    /// As `up`, monitoring off: for scenarios that do not look at it (a deploy
    /// without Prometheus, Alertmanager and node_exporter takes about half the
    /// CPU, which the suite's two lanes share).
    pub async fn up_unmonitored(name: &str) -> Lab {
        Self::up_sized(name, "root", 3, 1, Parts::UNMONITORED).await
    }

    /// A lab whose inventory has TLS on or off, monitoring off.
    pub async fn up_tls(name: &str, user: &str, db: u32, tls: bool) -> Lab {
        let parts = Parts {
            tls,
            ..Parts::UNMONITORED
        };
        Self::up_sized(name, user, db, 1, parts).await
    }

    /// A lab of `db` db hosts and `routers` routers, TLS on, backups on,
    /// monitoring off.
    pub async fn up_hosts(name: &str, db: u32, routers: u32) -> Lab {
        Self::up_sized(name, "root", db, routers, Parts::UNMONITORED).await
    }

    /// A lab deployed without backups (`backup_enabled: false`), TLS on,
    /// monitoring on or off.
    pub async fn up_without_backups(name: &str, monitoring: bool) -> Lab {
        let parts = Parts {
            backup: false,
            monitoring,
            ..Parts::DEFAULT
        };
        Self::up_sized(name, "root", 3, 1, parts).await
    }

    /// A lab for install_method docker (TLS and monitoring on, the defaults),
    /// pgha's image built first.
    pub async fn up_docker(name: &str) -> Lab {
        pgha::docker::stack::ensure()
            .await
            .expect("pgha images build");
        let parts = Parts {
            docker: true,
            ..Parts::DEFAULT
        };
        Self::up_sized(name, "root", 3, 1, parts).await
    }

    async fn up_sized(name: &str, user: &str, db: u32, routers: u32, parts: Parts) -> Lab {
        let _ = lab::down(name).await;
        let dir = std::env::temp_dir().join(format!("{name}-dir"));
        let _ = std::fs::remove_dir_all(&dir);
        let info = lab::up(&LabSpec {
            name: name.into(),
            db,
            routers,
            dir,
            user: user.into(),
            tls: parts.tls,
            docker: parts.docker,
            backup: parts.backup,
            monitoring: parts.monitoring,
        })
        .await
        .expect("lab up");
        Lab {
            info,
            tls: parts.tls,
            docker: parts.docker,
        }
    }

    /// The cluster CA and pgha's client certificate, read from the files deploy
    /// wrote. None with TLS off.
    pub fn tls_material(&self) -> Option<pgha::probe::tls::Tls> {
        if !self.tls {
            return None;
        }
        let dir = self.info.dir.join("inventory.pki");
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .unwrap_or_else(|e| panic!("{}: {e} (deploy makes it)", dir.join(f).display()))
        };
        Some(pgha::probe::tls::Tls {
            ca_pem: read("ca.crt"),
            client_cert_pem: read("client-pgha.crt"),
            client_key_pem: read("client-pgha.key"),
        })
    }

    /// How to reach the cluster (its TLS material when it has TLS), as pgha does.
    pub fn net(&self) -> pgha::probe::Net {
        pgha::probe::Net::new(self.tls_material())
    }

    /// The router's ports as the superuser: what the workload clients connect to.
    pub fn target(&self) -> Target {
        Target::new(
            self.net(),
            &self.router(),
            &self.secret("superuser_password"),
        )
    }

    /// `http` or `https`: how Patroni's REST API and etcd are reached.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// Patroni's `/patroni` status of a host (over TLS when on).
    pub async fn patroni_status(&self, host: &str) -> Result<Value, String> {
        self.patroni_get(host, "/patroni").await
    }

    /// A JSON document from Patroni's REST API on a host (over TLS when on).
    pub async fn patroni_get(&self, host: &str, path: &str) -> Result<Value, String> {
        let url = format!("{}://{}:8008{path}", self.scheme(), self.ip(host));
        get_json(&self.net(), &url).await
    }

    /// An etcd client of one host's member (over TLS with pgha's client
    /// certificate when on).
    pub async fn etcd(&self, host: &str) -> etcd_client::Client {
        let ep = format!("{}://{}:2379", self.scheme(), self.ip(host));
        let opts = self
            .tls_material()
            .map(|t| etcd_client::ConnectOptions::new().with_tls(t.etcd_options()));
        etcd_client::Client::connect([ep.as_str()], opts)
            .await
            .unwrap_or_else(|e| panic!("etcd connect {ep}: {e}"))
    }

    /// Re-read the hosts' addresses from Docker (after `lab replace --new-address`).
    pub async fn refresh(&mut self) {
        self.info.hosts = lab::status(&self.info.name).await.expect("lab status");
    }

    pub fn inventory(&self) -> String {
        self.info.inventory_path.display().to_string()
    }

    /// Put `lines` (indented as cluster variables) at the top of the inventory's
    /// `all: vars:`.
    pub fn add_vars(&self, lines: &str) {
        let inv = self.inventory();
        let text = std::fs::read_to_string(&inv).unwrap();
        assert!(text.contains("all:\n  vars:\n"), "{text}");
        std::fs::write(
            &inv,
            text.replacen("all:\n  vars:\n", &format!("all:\n  vars:\n{lines}"), 1),
        )
        .unwrap();
    }

    pub fn ip(&self, host: &str) -> String {
        self.info
            .hosts
            .iter()
            .find(|h| h.name == host)
            .unwrap_or_else(|| panic!("no lab host {host}"))
            .address
            .to_string()
    }

    pub fn db_hosts(&self) -> Vec<String> {
        self.info
            .hosts
            .iter()
            .filter(|h| h.name.starts_with("db"))
            .map(|h| h.name.clone())
            .collect()
    }

    /// The db host with this address.
    pub fn name_of(&self, ip: &str) -> Option<String> {
        self.info
            .hosts
            .iter()
            .find(|h| h.address.to_string() == ip)
            .map(|h| h.name.clone())
    }

    pub fn cluster_name(&self) -> String {
        pgha::inventory::load(&self.info.inventory_path, &Default::default())
            .expect("lab inventory loads")
            .cluster
            .cluster_name
    }

    pub fn router(&self) -> String {
        self.ip("router1")
    }

    pub fn secret(&self, key: &str) -> String {
        let path = self.info.dir.join("inventory.secrets.yml");
        let text = std::fs::read_to_string(&path).expect("secrets file");
        let map: BTreeMap<String, String> = yaml_serde::from_str(&text).expect("secrets yaml");
        map[key].clone()
    }

    /// Run a command on a host through docker exec (independent of pgha's SSH).
    pub fn sh(&self, host: &str, script: &str) -> (i32, String) {
        let (code, out, _) = self.sh_err(host, script);
        (code, out)
    }

    /// `sh` with stderr too.
    pub fn sh_err(&self, host: &str, script: &str) -> (i32, String, String) {
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
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The last `lines` lines of a unit's journal on a host (for failure messages).
    pub fn journal(&self, host: &str, unit: &str, lines: u32) -> String {
        self.sh(
            host,
            &format!("journalctl -u {unit} --no-pager -n {lines} 2>&1"),
        )
        .1
    }

    /// A SQL query on a host's own PostgreSQL, through docker exec; panics when psql
    /// fails (an error is never read as an answer).
    pub fn psql(&self, host: &str, sql: &str) -> String {
        self.try_psql(host, sql)
            .unwrap_or_else(|e| panic!("psql on {host}: {sql}: {e}"))
    }

    /// `psql`, with psql's failure as an Err (for waits).
    pub fn try_psql(&self, host: &str, sql: &str) -> Result<String, String> {
        let (code, out, err) = self.sh_err(
            host,
            &format!(
                "{} psql -XAt -v ON_ERROR_STOP=1 -c {}",
                self.as_postgres("pgha-patroni"),
                shell_words(sql)
            ),
        );
        if code == 0 {
            Ok(out.trim().to_string())
        } else {
            Err(format!("exit {code}: {}", err.trim()))
        }
    }
}

impl Lab {
    /// The start of a command run as postgres on a host: there, or in the named
    /// container under docker.
    pub fn as_postgres(&self, container: &str) -> String {
        if self.docker {
            format!("docker exec -u postgres {container}")
        } else {
            "runuser -u postgres --".into()
        }
    }
}

fn shell_words(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
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

/// A JSON document over HTTP(S) as `net` reaches it (3 s bound).
pub async fn get_json(net: &pgha::probe::Net, url: &str) -> Result<Value, String> {
    net.get(url, Duration::from_secs(3))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())
}

/// Poll until `f` is Ok, or panic naming what was awaited and the last state.
pub async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
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

/// One member as Patroni's `/cluster` lists it.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub role: String,
    pub state: String,
    pub lag: Option<u64>,
    pub timeline: Option<u64>,
}

/// Patroni's view from any db host that answers: (leader, members).
pub async fn patroni_cluster(lab: &Lab) -> Result<(String, Vec<Member>), String> {
    let mut last = String::new();
    for h in lab.db_hosts() {
        match lab.patroni_get(&h, "/cluster").await {
            Ok(v) => {
                let members: Vec<Member> = v["members"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|m| Member {
                        name: m["name"].as_str().unwrap_or("").to_string(),
                        role: m["role"].as_str().unwrap_or("").to_string(),
                        state: m["state"].as_str().unwrap_or("").to_string(),
                        lag: m["lag"].as_u64(),
                        timeline: m["timeline"].as_u64(),
                    })
                    .collect();
                let leader = members
                    .iter()
                    .find(|m| m.role == "leader" && m.state == "running")
                    .map(|m| m.name.clone())
                    .ok_or(format!("no running leader: {members:?}"))?;
                return Ok((leader, members));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Wait for a leader and every other db host streaming with lag 0; the leader.
pub async fn healthy_cluster(lab: &Lab) -> String {
    let want = lab.db_hosts().len() - 1;
    eventually(
        "a leader and every replica streaming with lag 0",
        180,
        || async {
            let (leader, members) = patroni_cluster(lab).await?;
            let streaming = members
                .iter()
                .filter(|m| m.role != "leader" && m.state == "streaming" && m.lag == Some(0))
                .count();
            if streaming == want {
                Ok(leader)
            } else {
                Err(format!("{members:?}"))
            }
        },
    )
    .await
}

/// The name of etcd's leader, as the member on `via` reports it.
pub async fn etcd_leader(lab: &Lab, via: &str) -> String {
    try_etcd_leader(lab, via)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// As `etcd_leader`, for waits: during a hand-over a member may name no leader
/// for a moment.
pub async fn try_etcd_leader(lab: &Lab, via: &str) -> Result<String, String> {
    let mut c = lab.etcd(via).await;
    let st = c.status().await.map_err(|e| format!("etcd status: {e}"))?;
    let members = c
        .member_list()
        .await
        .map_err(|e| format!("etcd members: {e}"))?;
    members
        .members()
        .iter()
        .find(|m| m.id() == st.leader())
        .map(|m| m.name().to_string())
        .ok_or_else(|| {
            format!(
                "{via} names no etcd leader listed (leader id {:x})",
                st.leader()
            )
        })
}

/// Hand etcd's leadership to `host` (as an operator's etcdctl would, past pgha)
/// and wait until its member says it leads.
pub async fn lead_etcd_on(lab: &Lab, host: &str) {
    let leader = etcd_leader(lab, host).await;
    if leader != host {
        let st = lab.etcd(host).await.status().await.expect("etcd status");
        let to = st.header().expect("status header").member_id();
        lab.etcd(&leader)
            .await
            .move_leader(to)
            .await
            .expect("etcd move-leader");
    }
    eventually(&format!("etcd led by {host}"), 30, || async {
        match try_etcd_leader(lab, host).await? {
            l if l == host => Ok(()),
            l => Err(format!("etcd leader {l}")),
        }
    })
    .await;
}

pub async fn check_etcd(lab: &Lab) {
    let mut cluster_ids = Vec::new();
    let dbs = lab.db_hosts();
    for h in &dbs {
        let mut c = lab.etcd(h).await;
        let members = c.member_list().await.expect("member list");
        let mut names: Vec<String> = members
            .members()
            .iter()
            .map(|m| m.name().to_string())
            .collect();
        names.sort();
        assert_eq!(names, dbs, "etcd members seen from {h}");
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

/// HAProxy's stats CSV of the lab's router (the page wants pgha's password).
pub async fn haproxy_csv(lab: &Lab) -> String {
    reqwest::Client::new()
        .get(format!("http://{}:8404/;csv", lab.router()))
        .basic_auth("pgha", Some(lab.secret("haproxy_stats_password")))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("haproxy stats")
        .text()
        .await
        .unwrap()
}

/// HAProxy's servers on one proxy (`primary` or `replicas`) with their status.
pub async fn haproxy_servers(lab: &Lab, proxy: &str) -> BTreeMap<String, String> {
    let csv = haproxy_csv(lab).await;
    csv.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.len() > 17 && f[0] == proxy && f[1] != "FRONTEND" && f[1] != "BACKEND")
                .then(|| (f[1].to_string(), f[17].to_string()))
        })
        .collect()
}

pub fn postmaster_start(v: &Value) -> String {
    v["postmaster_start_time"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

pub async fn start_times(lab: &Lab) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for h in lab.db_hosts() {
        let v = lab
            .patroni_get(&h, "/patroni")
            .await
            .expect("patroni status");
        m.insert(h.to_string(), postmaster_start(&v));
    }
    m
}

/// Wait until `writer` has had `n` writes acknowledged since `since` (by `server`
/// when named), or panic naming what it saw: a no-loss check needs a writer that
/// was really answered, observed rather than assumed after a sleep.
pub async fn acked(writer: &Writer, n: usize, since: Instant, server: Option<&str>) {
    writer
        .wait_acked(n, since, server, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A writer started on `table` and observed acknowledged a few times.
pub async fn writer_going(lab: &Lab, table: &str, first_id: i32) -> Writer {
    let t0 = Instant::now();
    let w = Writer::start(&lab.target(), table, first_id);
    acked(&w, 20, t0, None).await;
    w
}

/// Every acknowledged id is present in `table` (read through the write port).
pub async fn assert_no_loss(lab: &Lab, table: &str, acked: &[Ack]) {
    let ids: Vec<i32> = acked.iter().map(|a| a.id).collect();
    assert_present(lab, table, &ids).await
}

/// Every id in `acked` is present in `table` (read through the write port).
pub async fn assert_present(lab: &Lab, table: &str, acked: &[i32]) {
    let target = lab.target();
    let present: Vec<i32> = eventually("a connection through :5000 to count rows", 60, || async {
        let c = pg(&target, 5000).await?;
        let rows = c
            .query(&format!("SELECT id FROM {table}"), &[])
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    })
    .await;
    // A dead writer proves nothing: the check needs a writer that was answered.
    assert!(
        acked.len() >= 20,
        "only {} acknowledged writes on {table}: too few for a no-loss check",
        acked.len()
    );
    let present: std::collections::BTreeSet<i32> = present.into_iter().collect();
    let lost: Vec<i32> = acked
        .iter()
        .copied()
        .filter(|i| !present.contains(i))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {lost:?}",
        lost.len(),
        acked.len()
    );
}

/// Wait until a session through the router's read port lands on a replica where
/// `count_sql` (one bigint) returns `want`.
pub async fn replica_count(lab: &Lab, count_sql: &str, want: i64) {
    let target = lab.target();
    let sql = format!("SELECT ({count_sql}), pg_is_in_recovery()");
    eventually(
        &format!("{count_sql} = {want} on a replica through :5001"),
        30,
        || async {
            let r = pg(&target, 5001).await?;
            let row = r.query_one(&sql, &[]).await.map_err(|e| e.to_string())?;
            let (n, replica): (i64, bool) = (row.get(0), row.get(1));
            if n == want && replica {
                Ok(())
            } else {
                Err(format!("count {n}, replica {replica}"))
            }
        },
    )
    .await;
}

/// A client on a db host itself, inserting through the Unix socket (docker exec, so
/// it reaches that host's PostgreSQL whatever the network does): the ids it got an
/// acknowledgement for, and when the test saw each. An insert is acknowledged only
/// when psql exits 0.
pub struct LocalWriter {
    container: String,
    child: std::process::Child,
    acked: std::sync::Arc<std::sync::Mutex<Vec<(i32, Instant)>>>,
    reader: std::thread::JoinHandle<()>,
}

const LOCAL_STOP: &str = "/tmp/pgha-e2e-local-writer.stop";

impl LocalWriter {
    pub fn start(lab: &Lab, host: &str, table: &str, first_id: i32) -> LocalWriter {
        use std::io::BufRead;
        let container = format!("{}-{host}", lab.info.name);
        let script = format!(
            "rm -f {LOCAL_STOP}; i={first_id}; while [ ! -e {LOCAL_STOP} ]; do \
             if runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 \
             -c \"INSERT INTO {table} VALUES ($i, 'local')\" >/dev/null 2>&1; then echo $i; fi; \
             i=$((i+1)); sleep 0.05; done"
        );
        let mut child = Command::new("docker")
            .args(["exec", &container, "sh", "-c", &script])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker exec the local writer");
        let out = child.stdout.take().expect("stdout");
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let acked2 = acked.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(id) = line.trim().parse::<i32>() {
                    acked2.lock().unwrap().push((id, Instant::now()));
                }
            }
        });
        LocalWriter {
            container,
            child,
            acked,
            reader,
        }
    }

    pub fn acked(&self) -> Vec<(i32, Instant)> {
        self.acked.lock().unwrap().clone()
    }

    /// Wait until `n` inserts were acknowledged.
    pub async fn wait_acked(&self, n: usize) {
        eventually(&format!("{n} local inserts acknowledged"), 60, || async {
            let got = self.acked.lock().unwrap().len();
            if got >= n {
                Ok(())
            } else {
                Err(format!("{got} so far"))
            }
        })
        .await
    }

    /// Stop it (an insert still waiting ends when its server does) and return
    /// what was acknowledged.
    pub async fn stop(self) -> Vec<(i32, Instant)> {
        let _ = Command::new("docker")
            .args(["exec", &self.container, "touch", LOCAL_STOP])
            .output();
        let child = std::sync::Mutex::new(self.child);
        eventually("the local writer to stop", 120, || async {
            match child.lock().unwrap().try_wait() {
                Ok(Some(_)) => Ok(()),
                _ => Err("still running".to_string()),
            }
        })
        .await;
        self.reader.join().expect("local writer output");
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

/// A pgha run started with named pause points (debug builds only, see
/// `pgha::testpoint`): the test waits until it is paused at a point, acts on the
/// cluster, then lets it go on or kills it.
pub struct PausedRun {
    child: std::process::Child,
    dir: std::path::PathBuf,
    out: std::sync::Arc<std::sync::Mutex<(String, String)>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl PausedRun {
    pub fn start(args: &[&str], points: &[&str]) -> PausedRun {
        use std::io::BufRead;
        let dir = std::env::temp_dir().join(format!(
            "pgha-pause-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        eprintln!(
            "$ pgha {} (pausing at {})",
            args.join(" "),
            points.join(",")
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgha"))
            .args(args)
            .env("CI", "1")
            .env("PGHA_PAUSE_AT", points.join(","))
            .env("PGHA_PAUSE_DIR", &dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run pgha");
        let out = std::sync::Arc::new(std::sync::Mutex::new((String::new(), String::new())));
        let mut readers = Vec::new();
        let stdout = child.stdout.take().unwrap();
        let o = out.clone();
        readers.push(std::thread::spawn(move || {
            for l in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("pgha| {l}");
                o.lock().unwrap().0.push_str(&format!("{l}\n"));
            }
        }));
        let stderr = child.stderr.take().unwrap();
        let o = out.clone();
        readers.push(std::thread::spawn(move || {
            for l in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("pgha! {l}");
                o.lock().unwrap().1.push_str(&format!("{l}\n"));
            }
        }));
        PausedRun {
            child,
            dir,
            out,
            readers,
        }
    }

    /// Wait until the run is paused at `point` (the n-th time it reaches it).
    pub async fn paused_at(&mut self, point: &str, nth: usize) {
        let marker = format!("pgha: paused at {point} ");
        let child = std::sync::Mutex::new(&mut self.child);
        let out = self.out.clone();
        eventually(
            &format!("pgha to pause at {point} (#{nth})"),
            600,
            || async {
                let seen = out.lock().unwrap().1.matches(&marker).count();
                if seen >= nth {
                    return Ok(());
                }
                if let Ok(Some(st)) = child.lock().unwrap().try_wait() {
                    panic!(
                        "pgha ended ({st}) before pausing at {point}:\n{}",
                        out.lock().unwrap().1
                    );
                }
                Err(format!("paused {seen} time(s) there so far"))
            },
        )
        .await
    }

    /// Let a run paused at `point` go on.
    pub fn resume(&self, point: &str) {
        std::fs::write(self.dir.join(point), b"").unwrap();
    }

    /// SIGKILL: the run stops where it is, with no cleanup.
    pub fn kill(mut self) -> (String, String) {
        self.child.kill().expect("kill pgha");
        let _ = self.child.wait();
        self.collect()
    }

    /// Wait for the run to end: (exit code, stdout, stderr).
    pub async fn finish(mut self) -> (i32, String, String) {
        let child = std::sync::Mutex::new(&mut self.child);
        let code = eventually("pgha to end", 1800, || async {
            match child.lock().unwrap().try_wait() {
                Ok(Some(st)) => Ok(st.code().unwrap_or(-1)),
                _ => Err("still running".to_string()),
            }
        })
        .await;
        let (out, err) = self.collect();
        (code, out, err)
    }

    fn collect(self) -> (String, String) {
        for r in self.readers {
            let _ = r.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let o = self.out.lock().unwrap();
        (o.0.clone(), o.1.clone())
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A switchover done outside pgha, as an operator would with patronictl on a
/// member (it talks to Patroni's REST API with the member's own configuration).
pub fn patronictl_switchover(lab: &Lab, via: &str, leader: &str, candidate: &str) {
    let (code, out, err) = lab.sh_err(
        via,
        &format!(
            "patronictl -c /etc/patroni/config.yml switchover --leader {leader} \
             --candidate {candidate} --force"
        ),
    );
    assert_eq!(
        code, 0,
        "patronictl switchover {leader} -> {candidate}: {out}{err}"
    );
}

/// Wait until `host` leads (Patroni's view).
pub async fn leads(lab: &Lab, host: &str) {
    eventually(&format!("{host} to lead"), 120, || async {
        let (l, members) = patroni_cluster(lab).await?;
        if l == host {
            Ok(())
        } else {
            Err(format!("{members:?}"))
        }
    })
    .await
}

/// The synchronous standby streaming now.
pub async fn sync_standby(lab: &Lab) -> String {
    eventually("a synchronous standby", 60, || async {
        let (_, members) = patroni_cluster(lab).await?;
        members
            .iter()
            .find(|m| m.role == "sync_standby" && m.state == "streaming")
            .map(|m| m.name.clone())
            .ok_or(format!("{members:?}"))
    })
    .await
}

/// The lab's backup repository host (its first router).
pub const BACKUP_REPO: &str = "router1";

/// `pgbackrest info` of the cluster's stanza, read on the repository host.
pub fn repo_info(lab: &Lab) -> Value {
    let (code, out, err) = lab.sh_err(
        BACKUP_REPO,
        &format!(
            "{} pgbackrest --stanza={} --output=json info",
            lab.as_postgres("pgha-pgbackrest"),
            lab.cluster_name()
        ),
    );
    assert_eq!(code, 0, "pgbackrest info on {BACKUP_REPO}: {err}");
    let v: Value = serde_json::from_str(&out).expect("pgbackrest info JSON");
    v[0].clone()
}

pub fn labels(info: &Value) -> Vec<String> {
    info["backup"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| b["label"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub fn newest(info: &Value) -> Value {
    info["backup"]
        .as_array()
        .and_then(|a| a.last().cloned())
        .unwrap_or(Value::Null)
}

/// The WAL file a forced switch on `leader` closed, once its archiver reports it
/// archived (PostgreSQL acknowledges archiving only when archive-push succeeded).
pub async fn switch_reaches_repository(lab: &Lab, leader: &str) -> String {
    // Patroni names a new leader as soon as it holds the lock: PostgreSQL may still
    // be leaving recovery (no WAL switch there yet).
    let wal = eventually(&format!("a WAL switch on {leader}"), 60, || async {
        lab.try_psql(
            leader,
            "SELECT pg_walfile_name(pg_switch_wal()) FROM pg_stat_archiver",
        )
    })
    .await;
    eventually(&format!("{wal} archived by {leader}"), 120, || async {
        let last = lab.try_psql(
            leader,
            "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
        )?;
        if last.as_str() >= wal.as_str() {
            Ok(())
        } else {
            Err(format!("last archived {last}"))
        }
    })
    .await;
    // And pgBackRest has it: the repository's newest WAL is at least that one.
    let max = eventually("the repository's newest WAL", 60, || async {
        let info = repo_info(lab);
        let max = info["archive"]
            .as_array()
            .and_then(|a| a.iter().filter_map(|x| x["max"].as_str()).max())
            .unwrap_or_default()
            .to_string();
        if max.as_str() >= wal.as_str() {
            Ok(max)
        } else {
            Err(format!("newest WAL in the repository {max}, want {wal}"))
        }
    })
    .await;
    assert!(max.as_str() >= wal.as_str());
    wal
}

/// `pgha backup verify` of every backup the lab's repository holds: the suite
/// proves that each backup it takes restores (a lab without backups has none).
pub fn verify_every_backup(lab: &Lab) {
    let text = std::fs::read_to_string(lab.inventory()).unwrap_or_default();
    if text.contains("backup_enabled: false") || !text.contains("    backup:\n") {
        return;
    }
    let info = repo_info(lab);
    let sets = labels(&info);
    assert!(!sets.is_empty(), "the repository holds no backup: {info}");
    for set in sets {
        let (code, out, err) = pgha(&[
            "backup",
            "verify",
            &lab.inventory(),
            "--set",
            &set,
            "--output",
            "json",
        ]);
        assert_eq!(code, 0, "backup verify --set {set}:\n{out}\n{err}");
        assert_eq!(json_doc(&out)["result"]["status"], "ok", "{out}");
    }
}

/// A lab deployed without backups (a later deploy turns them on): the lab, its
/// inventory and the leader.
pub async fn deployed_without_backups(name: &str) -> (Lab, String, String) {
    let lab = Lab::up_without_backups(name, false).await;
    let inv = lab.inventory();
    let (code, out, err) = pgha(&["deploy", &inv]);
    assert_eq!(code, 0, "deploy without backups:\n{out}\n{err}");
    let leader = healthy_cluster(&lab).await;
    (lab, inv, leader)
}

/// A host's clock now, in UTC with microseconds, as `pgha restore --time` takes it.
pub fn clock_utc(lab: &Lab, host: &str) -> String {
    lab.psql(
        host,
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
}

/// The ids of the writes acknowledged before `t` (committed before it).
pub fn acked_before(acks: &[pgha::lab::clients::Ack], t: Instant) -> Vec<i32> {
    acks.iter().filter(|a| a.at < t).map(|a| a.id).collect()
}

/// `pgha backup run --type full`, then `pgha backup list`: the new backup is the
/// repository's newest full one, and the list is what pgBackRest itself shows, with
/// a recovery window. The new backup's label.
pub fn full_backup_listed(lab: &Lab, inv: &str) -> String {
    let (code, out, err) = pgha(&["backup", "run", inv, "--type", "full", "--output", "json"]);
    assert_eq!(code, 0, "backup run:\n{out}\n{err}");
    let taken = json_doc(&out)["backup"]["label"]
        .as_str()
        .expect("the backup's label")
        .to_string();
    let info = repo_info(lab);
    assert_eq!(newest(&info)["label"], taken.as_str());
    assert_eq!(newest(&info)["type"], "full");
    let (code, out, _) = pgha(&["backup", "list", inv, "--output", "json"]);
    assert_eq!(code, 0, "{out}");
    let list = json_doc(&out);
    let listed: Vec<String> = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["label"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, labels(&info), "backup list against pgbackrest info");
    assert!(list["window"]["earliest"].is_string(), "{list}");
    assert!(list["window"]["latest"].is_string(), "{list}");
    taken
}

/// The point-in-time marker test, with a writer going on `table`: `<table>_t` of 50
/// rows, the time T, `<table>_t` dropped and more written; `restore --time T --yes`
/// brings `<table>_t` back with its rows, every write acknowledged before T is
/// there and none sent after T, every member runs on a new timeline, a WAL switch
/// reaches the repository, and the restore's new full backup is the newest and
/// restores (`backup verify`). Returns the new leader.
pub async fn point_in_time_marker(
    lab: &Lab,
    inv: &str,
    leader: &str,
    writer: Writer,
    table: &str,
) -> String {
    let marker = format!("{table}_t");
    let old_timeline = leader_timeline(lab).await;
    lab.psql(
        leader,
        &format!("CREATE TABLE {marker} AS SELECT g AS id FROM generate_series(1, 50) g"),
    );
    acked(&writer, 20, Instant::now(), None).await;
    let before_t = Instant::now();
    let t = clock_utc(lab, leader);
    let after_t = Instant::now();
    lab.psql(leader, &format!("DROP TABLE {marker}"));
    acked(&writer, 20, after_t, None).await;
    let acks = writer.stop().await;
    let present = acked_before(&acks, before_t);
    let absent: Vec<String> = acks
        .iter()
        .filter(|a| a.sent > after_t)
        .map(|a| a.id.to_string())
        .collect();
    assert!(
        present.len() >= 20 && absent.len() >= 20,
        "writes on both sides of T"
    );
    let (code, out, err) = pgha(&["restore", inv, "--time", &t, "--yes", "--output", "json"]);
    assert_eq!(code, 0, "restore --time {t}:\n{out}\n{err}");
    let report = json_doc(&out);
    let leader = healthy_cluster(lab).await;
    assert_eq!(
        lab.psql(&leader, &format!("SELECT count(*) FROM {marker}")),
        "50",
        "the dropped table is back with its rows"
    );
    assert_present(lab, table, &present).await;
    assert_eq!(
        lab.psql(
            &leader,
            &format!(
                "SELECT count(*) FROM {table} WHERE id IN ({})",
                absent.join(",")
            )
        ),
        "0",
        "no write sent after T survives"
    );
    let new_timeline = leader_timeline(lab).await;
    let (_, members) = patroni_cluster(lab).await.expect("patroni cluster");
    assert!(new_timeline > old_timeline, "a new timeline: {members:?}");
    assert!(
        members.len() == lab.db_hosts().len()
            && members.iter().all(|m| m.timeline == Some(new_timeline)
                && (m.state == "running" || m.state == "streaming")),
        "every member on timeline {new_timeline}: {members:?}"
    );
    switch_reaches_repository(lab, &leader).await;
    let info = repo_info(lab);
    assert_eq!(newest(&info)["type"], "full", "{info}");
    assert_eq!(
        report["restore"]["backup"],
        newest(&info)["label"],
        "the restore's new full backup: {report}"
    );
    let (code, out, err) = pgha(&["backup", "verify", inv, "--output", "json"]);
    assert_eq!(code, 0, "backup verify:\n{out}\n{err}");
    assert_eq!(json_doc(&out)["result"]["status"], "ok", "{out}");
    leader
}

/// The leader's timeline, as Patroni reports it.
pub async fn leader_timeline(lab: &Lab) -> u64 {
    let (leader, members) = patroni_cluster(lab).await.expect("patroni cluster");
    members
        .iter()
        .find(|m| m.name == leader)
        .and_then(|m| m.timeline)
        .unwrap_or_else(|| panic!("the leader's timeline: {members:?}"))
}

/// Prometheus and Alertmanager on a lab's monitoring host, read through their own
/// APIs.
pub struct Monitor<'a> {
    pub host: &'a str,
}

impl Monitor<'_> {
    pub fn prometheus(&self, lab: &Lab) -> String {
        format!("http://{}:9090", lab.ip(self.host))
    }

    /// An instant query's result: labels -> value.
    pub async fn query(
        &self,
        lab: &Lab,
        q: &str,
    ) -> Result<Vec<(BTreeMap<String, String>, f64)>, String> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.prometheus(lab)),
            &[("query", q)],
        )
        .unwrap();
        let v = get_json(&lab.net(), url.as_str()).await?;
        if v["status"] != "success" {
            return Err(format!("{q}: {v}"));
        }
        Ok(v["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = r["value"][1]
                    .as_str()
                    .unwrap_or("nan")
                    .parse()
                    .unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect())
    }

    /// Until `q` returns `n` series whose values all pass `ok`.
    pub async fn expect_series(&self, lab: &Lab, q: &str, n: usize, ok: impl Fn(f64) -> bool) {
        eventually(&format!("{n} series of {q} as expected"), 120, || async {
            let r = self.query(lab, q).await?;
            if r.len() == n && r.iter().all(|(_, v)| ok(*v)) {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        })
        .await
    }

    /// The (job, instance) targets of a cluster: `dbs` run PostgreSQL, Patroni and
    /// etcd; every one of `hosts` a node exporter; the monitoring host is the
    /// router (HAProxy) and, with `backup`, the repository.
    pub fn targets(&self, dbs: &[String], hosts: &[String], backup: bool) -> Vec<(String, String)> {
        let mut want: Vec<(String, String)> = Vec::new();
        for h in hosts {
            want.push(("node".into(), h.clone()));
        }
        for h in dbs {
            for j in ["postgres", "patroni", "etcd"] {
                want.push((j.into(), h.clone()));
            }
        }
        let mut jobs = vec!["haproxy", "prometheus", "alertmanager"];
        if backup {
            jobs.push("pgbackrest");
        }
        for j in jobs {
            want.push((j.into(), self.host.to_string()));
        }
        want.sort();
        want
    }

    /// Until Prometheus scrapes exactly `want` (job, instance), each up, Patroni's
    /// over HTTPS.
    pub async fn all_targets_up(&self, lab: &Lab, want: &[(String, String)]) {
        let targets = format!("{}/api/v1/targets?state=active", self.prometheus(lab));
        eventually("every target up in Prometheus", 120, || async {
            let v = get_json(&lab.net(), &targets).await?;
            let list = v["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut seen: Vec<(String, String)> = list
                .iter()
                .map(|t| {
                    (
                        t["labels"]["job"].as_str().unwrap_or_default().to_string(),
                        t["labels"]["instance"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    )
                })
                .collect();
            seen.sort();
            let down: Vec<&Value> = list.iter().filter(|t| t["health"] != "up").collect();
            let patroni_https = list
                .iter()
                .filter(|t| t["labels"]["job"] == "patroni")
                .all(|t| {
                    t["scrapeUrl"]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with("https://")
                });
            if seen == *want && down.is_empty() && patroni_https {
                Ok(())
            } else {
                Err(format!(
                    "seen {seen:?}, not up: {down:?}, patroni over https: {patroni_https}"
                ))
            }
        })
        .await;
    }

    /// Each component's key metric answers, for a cluster of three db hosts and
    /// `hosts` hosts in all with TLS on: PostgreSQL up on each, one Patroni primary
    /// and it is `leader`, etcd led everywhere, HAProxy with one writer and two
    /// readers, each host's node metrics and certificate dates, pgBackRest's
    /// exporter (with `backup`); the rules run (the Watchdog fires) and reach
    /// Alertmanager.
    pub async fn key_metrics(&self, lab: &Lab, leader: &str, hosts: usize, backup: bool) {
        self.expect_series(lab, "pg_up", 3, |v| v == 1.0).await;
        let primaries = eventually("one Patroni primary in Prometheus", 120, || async {
            let p = self.query(lab, "patroni_primary == 1").await?;
            if p.len() == 1 && p[0].0.get("instance").map(String::as_str) == Some(leader) {
                Ok(p)
            } else {
                Err(format!("{p:?}"))
            }
        })
        .await;
        assert_eq!(primaries[0].0["instance"], leader);
        self.expect_series(lab, "etcd_server_has_leader", 3, |v| v == 1.0)
            .await;
        self.expect_series(
            lab,
            r#"haproxy_backend_active_servers{proxy="primary"}"#,
            1,
            |v| v == 1.0,
        )
        .await;
        self.expect_series(
            lab,
            r#"haproxy_backend_active_servers{proxy="replicas"}"#,
            1,
            |v| v == 2.0,
        )
        .await;
        self.expect_series(lab, "node_uname_info", hosts, |v| v == 1.0)
            .await;
        if backup {
            self.expect_series(lab, "pgbackrest_exporter_status", 1, |_| true)
                .await;
        }
        // Every host's certificate and the CA, well in the future (TLS is on).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        self.expect_series(
            lab,
            "pgha_tls_certificate_not_after_seconds",
            2 * hosts,
            |v| v > now + 30.0 * 86400.0,
        )
        .await;
        self.expect_series(
            lab,
            r#"ALERTS{alertname="Watchdog",alertstate="firing"}"#,
            1,
            |v| v == 1.0,
        )
        .await;
        self.watchdog_at_alertmanager(lab).await;
    }

    /// Until Alertmanager holds the always-firing Watchdog: rules run and reach it.
    pub async fn watchdog_at_alertmanager(&self, lab: &Lab) {
        let am = format!("http://{}:9093/api/v2/alerts", lab.ip(self.host));
        eventually("Alertmanager to hold the Watchdog", 120, || async {
            let v = get_json(&lab.net(), &am).await?;
            let names: Vec<&str> = v
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["labels"]["alertname"].as_str())
                .collect();
            if names.contains(&"Watchdog") {
                Ok(())
            } else {
                Err(format!("{names:?}"))
            }
        })
        .await;
    }
}
