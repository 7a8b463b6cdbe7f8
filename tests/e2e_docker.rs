//! End-to-end: install_method docker on its own lab (`pgha-e2e-docker`): pgha's image
//! built on this machine and pushed to bare hosts that get Debian's docker.io; the
//! same independent checks as native (etcd, Patroni, SQL through the router, the
//! exporter, HAProxy), and the components really in containers, the monitoring
//! too (every target up in its Prometheus, each key metric answering); a missing image
//! refused before any change; a re-run that sends nothing and re-creates nothing;
//! backups with pgBackRest from the image (a full backup under a writer, listed as
//! pgBackRest lists it; point-in-time recovery of a dropped table);
//! the Docker daemon restarted under PostgreSQL; a host hard-reset; a rolling
//! upgrade to a new image with a writer running; a lost host rebuilt. Assertions
//! read the hosts' Docker, etcd, Patroni and rows, not pgha's report.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::*;
use pgha::lab;

const LAB: &str = "pgha-e2e-docker";
const REPO_HOST: &str = BACKUP_REPO;

fn all_hosts(lab: &Lab) -> Vec<String> {
    let mut v = lab.db_hosts();
    v.push("router1".into());
    v
}

/// The containers a host should run.
fn containers_of(host: &str) -> &'static [&'static str] {
    if host.starts_with("db") {
        &[
            "pgha-etcd",
            "pgha-exporter",
            "pgha-node-exporter",
            "pgha-patroni",
            "pgha-pgbackrest",
        ]
    } else {
        // The router is the repository's host and the monitoring host.
        &[
            "pgha-alertmanager",
            "pgha-haproxy",
            "pgha-node-exporter",
            "pgha-pgbackrest",
            "pgha-pgbackrest-exporter",
            "pgha-pgbouncer",
            "pgha-pgbouncer-exporter",
            "pgha-prometheus",
        ]
    }
}

/// Every pgha container of every host: name -> (container id, image id, started at),
/// from the host's own Docker.
fn containers(lab: &Lab) -> BTreeMap<String, (String, String, String)> {
    let mut m = BTreeMap::new();
    for h in all_hosts(lab) {
        for c in containers_of(&h) {
            let (code, out) = lab.sh(
                &h,
                &format!(
                    "docker inspect -f '{{{{.Id}}}} {{{{.Image}}}} {{{{.State.StartedAt}}}} {{{{.State.Running}}}}' {c}"
                ),
            );
            assert_eq!(code, 0, "{h} has container {c}");
            let f: Vec<&str> = out.split_whitespace().collect();
            assert_eq!(f.get(3), Some(&"true"), "{h}: {c} runs: {out}");
            m.insert(
                format!("{h}/{c}"),
                (f[0].to_string(), f[1].to_string(), f[2].to_string()),
            );
        }
    }
    m
}

/// When each host last loaded (tagged) the image: a transfer would change it.
fn image_tag_times(lab: &Lab, image: &str) -> BTreeMap<String, String> {
    all_hosts(lab)
        .into_iter()
        .map(|h| {
            let (_, out) = lab.sh(
                &h,
                &format!(
                    "docker image inspect -f '{{{{.Id}}}} {{{{.Metadata.LastTagTime}}}}' {image}"
                ),
            );
            (h, out.trim().to_string())
        })
        .collect()
}

fn local_image_id(image: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Id}}", image])
        .output()
        .expect("docker image inspect");
    assert!(out.status.success(), "{image} is in this machine's Docker");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A registry on the router host (Debian's docker-registry on port 5050, plain
/// HTTP), holding a new image of the same content as `from` (a new image id: what
/// a rebuilt or patched image looks like to an upgrade). Returns the reference the
/// hosts pull, `<router>:5050/pgha:e2e-next`, and the image id.
fn registry_with_next_image(lab: &Lab, from: &str) -> (String, String) {
    let registry = format!("{}:5050", lab.router());
    let script = format!(
        r#"set -e
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends docker-registry >/dev/null
# Debian's unit listens on :5000, HAProxy's write port: ours runs on 5050.
systemctl disable --now docker-registry >/dev/null 2>&1 || true
mkdir -p /var/lib/pgha-e2e-registry
cat >/etc/pgha-e2e-registry.yml <<'YML'
version: 0.1
storage:
  filesystem:
    rootdirectory: /var/lib/pgha-e2e-registry
http:
  addr: :5050
YML
systemd-run --unit pgha-e2e-registry /usr/bin/docker-registry serve /etc/pgha-e2e-registry.yml >/dev/null
# Wait (10 s at most) until it listens.
for i in $(seq 1 50); do ss -Htln 'sport = :5050' | grep -q . && break; sleep 0.2; done
ss -Htln 'sport = :5050' | grep -q . || {{ echo "the registry did not listen on :5050 within 10 s"; journalctl -u pgha-e2e-registry -n 20 --no-pager; exit 1; }}
id=$(docker create {from} true)
docker commit --change 'LABEL pgha.e2e=upgrade' "$id" 127.0.0.1:5050/pgha:e2e-next >/dev/null
docker rm "$id" >/dev/null
docker push -q 127.0.0.1:5050/pgha:e2e-next >/dev/null
docker image inspect -f '{{{{.Id}}}}' 127.0.0.1:5050/pgha:e2e-next
# The router pulls it like every other host.
docker rmi 127.0.0.1:5050/pgha:e2e-next >/dev/null"#
    );
    let (code, out) = lab.sh("router1", &script);
    assert_eq!(code, 0, "a registry with the next image on router1: {out}");
    (format!("{registry}/pgha:e2e-next"), out.trim().to_string())
}

/// The digests a host's image was pulled under (empty for a loaded image).
fn repo_digests(lab: &Lab, host: &str, image: &str) -> String {
    let (code, out) = lab.sh(
        host,
        &format!("docker image inspect -f '{{{{.Id}}}} {{{{json .RepoDigests}}}}' {image}"),
    );
    assert_eq!(code, 0, "{host} has {image}");
    out.trim().to_string()
}

fn set_vars(inv: &str, original: &str, extra: &str) {
    std::fs::write(
        inv,
        original.replacen("vars:\n", &format!("vars:\n{extra}"), 1),
    )
    .unwrap();
}

async fn patroni_json(lab: &Lab, host: &str) -> serde_json::Value {
    eventually(&format!("Patroni's /patroni on {host}"), 60, || async {
        lab.patroni_get(host, "/patroni").await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_cluster_deploy_restart_reset_upgrade_rebuild() {
    let lab = Lab::up_docker(LAB).await;
    let inv = lab.inventory();
    // Pooling on: PgBouncer and its exporter run in containers too.
    let original = std::fs::read_to_string(&inv).unwrap().replacen(
        "vars:\n",
        "vars:\n    pgbouncer_enabled: true\n",
        1,
    );
    std::fs::write(&inv, &original).unwrap();
    assert!(original.contains("install_method: docker"), "{original}");
    let image = pgha::docker::stack::default_image();

    // 1. push with an image this machine lacks: refused before any change.
    set_vars(
        &inv,
        &original,
        "    docker_image_haproxy: pgha-e2e-missing:none\n",
    );
    let (code, out, err) = pgha(&["deploy", &inv]);
    assert_ne!(code, 0, "a missing image is refused");
    assert!(
        format!("{out}{err}").contains("pgha-e2e-missing:none"),
        "the error names the image"
    );
    for h in all_hosts(&lab) {
        let (code, _) = lab.sh(&h, "command -v docker || dpkg -s docker.io");
        assert_ne!(code, 0, "{h}: nothing installed after the refusal");
    }
    std::fs::write(&inv, &original).unwrap();

    // 2. Bare hosts -> cluster, checked like native.
    let (code, _, _) = pgha(&["deploy", &inv]);
    assert_eq!(code, 0, "docker deploy from bare hosts");
    check_etcd(&lab).await;
    let leader = healthy_cluster(&lab).await;
    let running = containers(&lab);
    let want = local_image_id(&image);
    assert!(
        running.values().all(|(_, img, _)| *img == want),
        "every container runs pgha's image {image}: {running:?}"
    );
    for h in lab.db_hosts() {
        let (code, out) = lab.sh(
            &h,
            "for p in postgresql-17 patroni etcd-server pgbackrest prometheus-node-exporter; do dpkg -s $p >/dev/null 2>&1 && echo $p; done; test ! -e /usr/lib/postgresql",
        );
        assert!(
            code == 0 && out.trim().is_empty(),
            "{h}: no native PostgreSQL, Patroni, etcd or pgBackRest ({out})"
        );
        // PostgreSQL runs in the Patroni container: its postmaster is a child of
        // the container's Patroni.
        let (code, out) = lab.sh(&h, "docker top pgha-patroni -o pid,args");
        assert_eq!(code, 0);
        assert!(
            out.contains("patroni") && out.contains("postgres -D"),
            "{h}: {out}"
        );
        let metrics = eventually(&format!("pg_up 1 on {h}"), 60, || async {
            let text = reqwest::get(format!("http://{}:9187/metrics", lab.ip(&h)))
                .await
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?;
            if text.lines().any(|l| l == "pg_up 1") {
                Ok(text)
            } else {
                Err("pg_up is not 1".to_string())
            }
        })
        .await;
        assert!(!metrics.is_empty());
    }
    let c = pg(&lab.target(), 5000).await.expect("connect :5000");
    c.batch_execute(
        "CREATE TABLE dk (id int PRIMARY KEY, note text); INSERT INTO dk VALUES (0, 'first')",
    )
    .await
    .unwrap();
    drop(c);
    replica_count(&lab, "SELECT count(*) FROM dk", 1).await;
    let servers = eventually("HAProxy's backends to match Patroni", 30, || async {
        let w = haproxy_servers(&lab, "primary").await;
        let r = haproxy_servers(&lab, "replicas").await;
        let up = |m: &BTreeMap<String, String>| -> Vec<String> {
            m.iter()
                .filter(|(_, s)| s.as_str() == "UP")
                .map(|(n, _)| n.clone())
                .collect()
        };
        let replicas: Vec<String> = lab
            .db_hosts()
            .into_iter()
            .filter(|h| *h != leader)
            .collect();
        if up(&w) == vec![leader.clone()] && up(&r) == replicas {
            Ok((w, r))
        } else {
            Err(format!("writes {w:?}, reads {r:?}"))
        }
    })
    .await;
    assert_eq!(servers.0.len(), 3);
    // The monitoring in containers too: no package on the monitoring host, every
    // target up in Prometheus, each component's key metric answering.
    let (code, out) = lab.sh(
        "router1",
        "for p in prometheus prometheus-alertmanager prometheus-node-exporter prometheus-pgbackrest-exporter pgbouncer prometheus-pgbouncer-exporter; do dpkg -s $p >/dev/null 2>&1 && echo $p; done; true",
    );
    assert!(
        code == 0 && out.trim().is_empty(),
        "router1: native monitoring or PgBouncer packages: {out}"
    );
    let mon = Monitor { host: "router1" };
    let mut targets = mon.targets(&lab.db_hosts(), &all_hosts(&lab), true);
    targets.push(("pgbouncer".into(), "router1".into()));
    targets.sort();
    mon.all_targets_up(&lab, &targets).await;
    mon.key_metrics(&lab, &leader, all_hosts(&lab).len(), true)
        .await;
    mon.expect_series(&lab, "pgbouncer_up", 1, |v| v == 1.0)
        .await;
    // The application through the containerized pooler reaches the primary, and
    // PgBouncer runs as postgres (it refuses root) with its open-file limit raised
    // to the native unit's 65536, or to Docker's hard limit where lower (the lab's).
    let app = lab
        .target()
        .as_user("app", &lab.secret("app_password"), "app");
    let leader_ip = lab.ip(&leader).to_string();
    eventually(
        "the app to reach the primary through pgha-pgbouncer",
        60,
        || async {
            let c = pg(&app, 6432).await?;
            let row = c
                .query_one("SELECT pg_is_in_recovery(), host(inet_server_addr())", &[])
                .await
                .map_err(|e| e.to_string())?;
            match (row.get::<_, bool>(0), row.get::<_, String>(1)) {
                (false, ip) if ip == leader_ip => Ok(()),
                other => Err(format!("reached {other:?}")),
            }
        },
    )
    .await;
    let (code, out) = lab.sh(
        "router1",
        "docker top pgha-pgbouncer -o pid,user,args && docker exec pgha-pgbouncer sh -c 'grep \"open files\" /proc/1/limits'",
    );
    let limits: Vec<u64> = out
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        code == 0
            && out.lines().any(
                |l| matches!(l.split_whitespace().nth(1), Some("postgres" | "470"))
                    && l.contains("pgbouncer /etc/pgbouncer/pgbouncer.ini")
            )
            && limits.len() == 2
            && limits[0] == limits[1].min(65536),
        "router1: {out}"
    );

    // 3. A re-run changes nothing: no image sent, no container re-created.
    let tags = image_tag_times(&lab, &image);
    let (code, out, _) = pgha(&["deploy", &inv, "--output", "json"]);
    assert_eq!(code, 0);
    assert_eq!(
        json_doc(&out)["changed"],
        0,
        "a docker re-run changes nothing"
    );
    assert_eq!(
        containers(&lab),
        running,
        "no container re-created or restarted"
    );
    assert_eq!(image_tag_times(&lab, &image), tags, "no image loaded again");

    // Backups in the image: the repository on the router, pgBackRest's servers
    // and every pgBackRest command in containers. A full backup under a writer,
    // listed as pgBackRest itself lists it; then point-in-time recovery.
    let (code, out) = lab.sh(
        REPO_HOST,
        "test ! -e /usr/bin/pgbackrest && ls /var/lib/pgbackrest",
    );
    assert_eq!(
        code, 0,
        "the repository on {REPO_HOST}'s disk, no native pgBackRest: {out}"
    );
    assert_eq!(
        newest(&repo_info(&lab))["type"],
        "full",
        "deploy took the first full backup"
    );
    let writer = writer_going(&lab, "dk", 1000).await;
    full_backup_listed(&lab, &inv);
    let leader = point_in_time_marker(&lab, &inv, &leader, writer, "dk").await;

    // 4. Restarting the Docker daemon leaves PostgreSQL running (live-restore).
    let before = postmaster_start(&patroni_json(&lab, &leader).await);
    let (code, _) = lab.sh(&leader, "systemctl restart docker");
    assert_eq!(code, 0, "docker restarted on {leader}");
    eventually(
        "docker on the leader's host to answer again",
        60,
        || async {
            match lab.sh(&leader, "docker ps -q | wc -l") {
                (0, n) if n.trim() == "5" => Ok(()),
                (c, n) => Err(format!("exit {c}: {n}")),
            }
        },
    )
    .await;
    assert_eq!(
        postmaster_start(&patroni_json(&lab, &leader).await),
        before,
        "the postmaster was not restarted"
    );
    let (still, _) = patroni_cluster(&lab).await.expect("patroni");
    assert_eq!(still, leader, "the leader did not change");

    // 5. A replica's host hard-reset: back as a streaming replica by itself.
    let replica = lab.db_hosts().into_iter().find(|h| *h != leader).unwrap();
    lab::kill(LAB, &replica).await.expect("lab kill");
    eventually(&format!("Patroni to miss {replica}"), 90, || async {
        let (_, members) = patroni_cluster(&lab).await?;
        if members
            .iter()
            .any(|m| m.name == replica && m.state == "streaming")
        {
            Err(format!("{members:?}"))
        } else {
            Ok(())
        }
    })
    .await;
    lab::start(LAB, &replica).await.expect("lab start");
    healthy_cluster(&lab).await;
    containers(&lab);

    // 6. Images from a registry: the inventory names a new image in a plain-HTTP
    // registry on the router; a deploy configures the hosts' Docker for it
    // (restarting the daemon, containers kept) and they pull it; then a rolling
    // upgrade to it with a writer running.
    let (next, next_id) = registry_with_next_image(&lab, &image);
    let registry = next.split('/').next().unwrap().to_string();
    let registry_vars = format!(
        "    docker_image: {next}\n    docker_image_source: registry\n    docker_insecure_registries: [\"{registry}\"]\n"
    );
    set_vars(&inv, &original, &registry_vars);
    let before_pull = containers(&lab);
    let (code, _, _) = pgha(&["deploy", &inv]);
    assert_eq!(code, 0, "deploy with the registry");
    assert_eq!(
        containers(&lab),
        before_pull,
        "deploy leaves the running containers to the upgrade"
    );
    for h in all_hosts(&lab) {
        let (_, daemon) = lab.sh(&h, "cat /etc/docker/daemon.json");
        let daemon: serde_json::Value = serde_json::from_str(&daemon).unwrap();
        assert_eq!(
            daemon["insecure-registries"],
            serde_json::json!([registry]),
            "{h}"
        );
        let got = repo_digests(&lab, &h, &next);
        assert!(
            got.starts_with(&next_id) && got.contains(&format!("{registry}/pgha@sha256:")),
            "{h} pulled {next} from the registry: {got}"
        );
    }
    let (code, out, _) = pgha(&["upgrade", &inv, "--check", "--output", "json"]);
    assert_eq!(code, 0, "upgrade --check");
    let doc = json_doc(&out);
    for h in all_hosts(&lab) {
        let listed: Vec<String> = doc["hosts"][&h]
            .as_array()
            .unwrap_or_else(|| panic!("{h} in {doc}"))
            .iter()
            .filter(|r| r["target"].as_str().is_some_and(|t| t.contains(&next)))
            .map(|r| r["container"].as_str().unwrap_or("").to_string())
            .collect();
        let mut want: Vec<String> = containers_of(&h).iter().map(|s| s.to_string()).collect();
        want.sort();
        let mut listed_sorted = listed.clone();
        listed_sorted.sort();
        assert_eq!(listed_sorted, want, "{h}: --check lists every container");
    }
    assert_eq!(doc["switchovers"], 1, "{doc}");
    let at_check = containers(&lab);
    assert!(
        at_check.values().all(|(_, img, _)| *img == want),
        "--check changed nothing"
    );
    let writer = writer_going(&lab, "dk", 100_000).await;
    let (code, _, _) = pgha(&["upgrade", &inv]);
    assert_eq!(code, 0, "docker upgrade");
    acked(&writer, 20, Instant::now(), None).await;
    let acked = writer.stop().await;
    assert!(acked.len() > 50, "the writer wrote during the upgrade");
    assert_no_loss(&lab, "dk", &acked).await;
    healthy_cluster(&lab).await;
    let upgraded = containers(&lab);
    assert!(
        upgraded.values().all(|(_, img, _)| *img == next_id),
        "every container runs the new image: {upgraded:?}"
    );
    let (_, members) = patroni_cluster(&lab).await.unwrap();
    for h in lab.db_hosts() {
        let st = patroni_json(&lab, &h).await;
        assert!(
            st["tags"]
                .as_object()
                .is_none_or(|t| t.iter().all(|(k, v)| k == "clonefrom" || *v != true)),
            "{h}: no tag left set: {st}"
        );
        assert!(st["pending_restart"] != true, "{h}: {members:?}");
    }
    // The monitoring's containers were re-created too, and scrape everything.
    mon.all_targets_up(&lab, &targets).await;
    let (code, out, _) = pgha(&["upgrade", &inv, "--output", "json"]);
    assert_eq!(code, 0);
    assert_eq!(
        json_doc(&out)["changed"],
        0,
        "a second upgrade has nothing to do"
    );
    assert_eq!(containers(&lab), upgraded, "and restarts nothing");
    let (code, out, _) = pgha(&["deploy", &inv, "--output", "json"]);
    assert_eq!(code, 0);
    assert_eq!(
        json_doc(&out)["changed"],
        0,
        "deploy agrees with the upgrade"
    );

    // 7. A lost replica host rebuilt on a fresh bare host.
    let leader = healthy_cluster(&lab).await;
    let lost = lab.db_hosts().into_iter().find(|h| *h != leader).unwrap();
    lab::replace(LAB, &lost).await.expect("lab replace");
    let (code, _, _) = pgha(&["rebuild", &lost, &inv]);
    assert_eq!(code, 0, "rebuild of {lost}");
    check_etcd(&lab).await;
    healthy_cluster(&lab).await;
    mon.all_targets_up(&lab, &targets).await;
    let rebuilt = containers(&lab);
    assert!(
        rebuilt
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{lost}/")))
            .all(|(_, (_, img, _))| *img == next_id),
        "{lost} runs the inventory's image again"
    );
    let (code, out, _) = pgha(&["deploy", &inv, "--output", "json"]);
    assert_eq!(code, 0);
    assert_eq!(
        json_doc(&out)["changed"],
        0,
        "a deploy after the rebuild changes nothing"
    );
    verify_every_backup(&lab);
    std::fs::write(&inv, &original).unwrap();
}
