//! The failure figures: hard kill and partition of the leader, switchover, the
//! leader under CPU saturation, each with a writer counting what was acknowledged.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use super::cluster::*;
use super::deploys::reported_gap;
use super::{Bench, Figure, last_json, median, run, say};
use pgha::lab::clients::{Ack, Connector, Target, Writer, pg};
use pgha::lab::{self, LabInfo};
use pgha::probe::patroni;

impl Bench {
    /// The cluster as pgha leaves it (a deploy: nothing to change but etcd's
    /// leadership kept off the Patroni leader's host), then (Patroni leader, etcd
    /// leader).
    pub(crate) async fn as_pgha_leaves_it(&self, info: &LabInfo) -> (String, String) {
        wait_healthy(info).await;
        let inv = info.inventory_path.display().to_string();
        let (code, _, _, _) = self.pgha(&["deploy", &inv]);
        assert_eq!(code, 0, "deploy before a fault");
        let (_, out, _, _) = self.pgha(&["status", &inv, "--output", "json"]);
        let doc = last_json(&out);
        let etcd_leader = doc["etcd"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["leader"] == true)
            .and_then(|e| e["name"].as_str())
            .unwrap_or_default()
            .to_string();
        (wait_healthy(info).await, etcd_leader)
    }

    /// Hard kills of the leader's host: `--kills` as pgha leaves the cluster
    /// (etcd led elsewhere), then `--etcd-leader-kills` of a host leading both,
    /// each reported as its own figure.
    pub(crate) async fn hard_kill(&mut self, info: &LabInfo, target: &Target) {
        let goal = |m: f64, worst: f64, lost: usize, hung: usize| {
            m <= 22.0 && worst <= 24.0 && lost == 0 && hung == 0
        };
        for (etcd_too, kills) in [
            (false, self.args.kills),
            (true, self.args.etcd_leader_kills),
        ] {
            if kills == 0 {
                continue;
            }
            let (mut outages, mut lost_total, mut hung_total) = (Vec::new(), 0, 0);
            let mut led_etcd = 0;
            for i in 0..kills {
                let (leader, mut etcd_leader) = self.as_pgha_leaves_it(info).await;
                if etcd_too {
                    lead_etcd_on(info, &leader).await;
                    etcd_leader = leader.clone();
                }
                led_etcd += usize::from(etcd_leader == leader);
                say(format!(
                    "hard kill {}/{kills}{}: {leader} (etcd leader {etcd_leader})",
                    i + 1,
                    if etcd_too {
                        " of a host leading etcd too"
                    } else {
                        ""
                    }
                ));
                let seed = (i as i32 + 1) * 1_000_000 + if etcd_too { 500_000 } else { 0 };
                let writer = Writer::start(target, "bench_kill", seed);
                let conn = Connector::start(target);
                tokio::time::sleep(Duration::from_secs(3)).await;
                let t = Instant::now();
                lab::kill(&info.name, &leader).await.expect("lab kill");
                let old_ip = ip(info, &leader);
                let first = wait_ack_after(t, &old_ip, target).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                let acked = writer.stop().await;
                let attempts = conn.stop().await;
                hung_total += attempts
                    .iter()
                    .filter(|(d, _)| *d > Duration::from_secs(5))
                    .count();
                let first_new = acked
                    .iter()
                    .filter(|a| a.at > t && a.server != old_ip)
                    .map(|a| a.at)
                    .min()
                    .unwrap_or(first);
                outages.push(first_new.duration_since(t).as_secs_f64());
                lost_total += lost(target, "bench_kill", &acked).await;
                lab::start(&info.name, &leader).await.expect("lab start");
                wait_healthy(info).await;
            }
            let m = median(&outages);
            let worst = outages
                .iter()
                .copied()
                .fold(None, |w: Option<f64>, x| Some(w.map_or(x, |w| w.max(x))));
            self.push(Figure {
                name: if etcd_too {
                    "hard kill of a leader whose host leads etcd too: write outage on :5000"
                } else {
                    "hard kill of the leader: write outage on :5000"
                }
                .into(),
                unit: "s".into(),
                pgha: m,
                baseline: None,
                baseline_name: None,
                ratio: None,
                goal: Some(format!(
                    "median <= 22 s, worst <= 24 s over {kills} kills, 0 rows lost, 0 hung connections"
                )),
                met: m.zip(worst).map(|(m, w)| goal(m, w, lost_total, hung_total)),
                runs: outages,
                failed: None,
                detail: json!({
                    "kills": kills,
                    "worst_secs": worst,
                    "rows_lost": lost_total,
                    "connections_over_5s": hung_total,
                    "runs_where_the_killed_host_led_etcd_too": led_etcd,
                }),
            });
        }
    }

    /// PostgreSQL crashing on the leader (`kill -9` of its postmaster; the host,
    /// Patroni and etcd live on): the longest gap between a writer's
    /// acknowledgements, whether Patroni restarted it in place (the default:
    /// the leader key is still held) or another member took over, rows lost.
    pub(crate) async fn postmaster_crash(&mut self, info: &LabInfo, target: &Target) {
        let mut outages = Vec::new();
        let (mut in_place, mut lost_total) = (0, 0);
        let mut leaders = Vec::new();
        for i in 0..self.args.runs {
            let (leader, _) = self.as_pgha_leaves_it(info).await;
            say(format!(
                "postmaster crash {}/{}: {leader}",
                i + 1,
                self.args.runs
            ));
            let writer = Writer::start(target, "bench_crash", (i as i32 + 1) * 1_000_000);
            let warm = Instant::now();
            writer
                .wait_acked(20, warm, None, Duration::from_secs(60))
                .await
                .expect("the writer writes before the crash");
            let container = info
                .host(&leader)
                .expect("the leader's host")
                .container
                .clone();
            let t = Instant::now();
            let (code, _, err, _) = run(Command::new("docker").args([
                "exec",
                &container,
                "sh",
                "-c",
                "kill -9 $(head -1 /var/lib/postgresql/*/main/postmaster.pid)",
            ]));
            assert_eq!(code, 0, "kill -9 of the postmaster on {leader}: {err}");
            let killed = Instant::now();
            writer
                .wait_acked(20, killed, None, Duration::from_secs(120))
                .await
                .expect("writes come back after the crash");
            let end = Instant::now();
            let acked = writer.stop().await;
            outages.push(longest_gap(&acked, t, end));
            let after = wait_healthy(info).await;
            in_place += usize::from(after == leader);
            leaders.push(format!("{leader} -> {after}"));
            lost_total += lost(target, "bench_crash", &acked).await;
        }
        let m = median(&outages);
        let worst = outages.iter().cloned().fold(0.0, f64::max);
        self.push(Figure {
            name: "PostgreSQL crash on the leader (kill -9 of the postmaster): longest write gap"
                .into(),
            unit: "s".into(),
            pgha: m,
            baseline: None,
            baseline_name: None,
            ratio: None,
            goal: Some("writes back within 10 s, 0 rows lost".into()),
            met: m.map(|_| worst <= 10.0 && lost_total == 0),
            runs: outages,
            failed: None,
            detail: json!({
                "rows_lost": lost_total,
                "restarted_in_place": in_place,
                "leaders": leaders,
            }),
        });
    }

    pub(crate) async fn partition(&mut self, info: &LabInfo, target: &Target) {
        let mut outages = Vec::new();
        let mut rejoin = Vec::new();
        let (mut lost_total, mut split_total, mut split_lost) = (0, 0, 0);
        for i in 0..self.args.runs {
            let (leader, etcd_leader) = self.as_pgha_leaves_it(info).await;
            say(format!(
                "partition {}/{}: {leader} (etcd leader {etcd_leader})",
                i + 1,
                self.args.runs
            ));
            let old_ip = ip(info, &leader);
            let writer = Writer::start(target, "bench_part", (i as i32 + 1) * 1_000_000);
            tokio::time::sleep(Duration::from_secs(3)).await;
            let t = Instant::now();
            // Cut from its db peers (and so from etcd) only: the router and this
            // machine still reach it, so a stale primary could still be written to.
            let peers: Vec<String> = info
                .hosts
                .iter()
                .filter(|h| h.name.starts_with("db") && h.name != leader)
                .map(|h| h.name.clone())
                .collect();
            lab::partition_from(&info.name, &leader, &peers)
                .await
                .expect("lab partition --from");
            let cut = Instant::now();
            wait_ack_after(t, &old_ip, target).await;
            tokio::time::sleep(Duration::from_secs(45).saturating_sub(t.elapsed())).await;
            lab::heal(&info.name, &leader).await.expect("lab heal");
            let healed = Instant::now();
            wait_streaming(info, &leader).await;
            rejoin.push(healed.elapsed().as_secs_f64());
            let acked = writer.stop().await;
            let first_new = acked
                .iter()
                .filter(|a| a.at > t && a.server != old_ip)
                .map(|a| a.at)
                .min();
            if let Some(f) = first_new {
                outages.push(f.duration_since(t).as_secs_f64());
            }
            // Writes the isolated leader acknowledged after the cut: the router still
            // reaches it, so it may (its synchronous standby out of reach should
            // stop it); each must be present afterwards.
            let split: Vec<Ack> = acked
                .iter()
                .filter(|a| a.sent > cut && a.server == old_ip)
                .cloned()
                .collect();
            split_total += split.len();
            split_lost += lost(target, "bench_part", &split).await;
            lost_total += lost(target, "bench_part", &acked).await;
        }
        let m = median(&outages);
        self.push(Figure {
            name: "leader partitioned: write outage on :5000".into(),
            unit: "s".into(),
            pgha: m,
            baseline: None,
            baseline_name: None,
            ratio: None,
            goal: Some("0 rows lost, none of them acknowledged by the isolated leader".into()),
            met: Some(lost_total == 0 && split_lost == 0),
            runs: outages,
            failed: None,
            detail: json!({
                "rows_lost": lost_total,
                "partition": "leader cut from its db peers; router and clients still reach it",
                "writes_acknowledged_by_isolated_leader": split_total,
                "of_those_lost": split_lost,
                "old_leader_streams_after_heal_secs": rejoin,
                "old_leader_streams_after_heal_median": median(&rejoin),
            }),
        });
    }

    pub(crate) async fn switchover(&mut self, info: &LabInfo, inv: &str, target: &Target) {
        let (mut client, mut reported) = (Vec::new(), Vec::new());
        let mut unmeasured: Vec<String> = Vec::new();
        let mut lost_total = 0;
        for i in 0..self.args.runs {
            wait_healthy(info).await;
            let writer = Writer::start(target, "bench_sw", (i as i32 + 1) * 1_000_000);
            tokio::time::sleep(Duration::from_secs(2)).await;
            let t = Instant::now();
            let (code, out, _, _) = self.pgha(&["switchover", inv, "--output", "json"]);
            assert_eq!(code, 0, "switchover");
            let end = Instant::now();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let acked = writer.stop().await;
            client.push(longest_gap(&acked, t, end));
            match reported_gap(&last_json(&out)["switchover"]["gap"]) {
                Ok(g) => reported.push(g),
                Err(e) => {
                    say(format!("switchover {}: {e}", i + 1));
                    unmeasured.push(e);
                }
            }
            lost_total += lost(target, "bench_sw", &acked).await;
        }
        // A median of only the runs pgha measured would not compare with the
        // client's median of all of them.
        let mr = if unmeasured.is_empty() {
            median(&reported)
        } else {
            None
        };
        let mc = median(&client);
        self.push(Figure {
            name: "switchover: write gap seen by a writing client".into(),
            unit: "s".into(),
            pgha: mc,
            baseline: mr,
            baseline_name: Some("gap pgha reported".into()),
            ratio: mc.zip(mr).map(|(c, r)| c / r),
            goal: Some("median <= 2 s, 0 rows lost".into()),
            met: mc.map(|m| m <= 2.0 && lost_total == 0),
            runs: client,
            failed: None,
            detail: json!({"reported_runs": reported, "reported_unmeasured": unmeasured, "rows_lost": lost_total}),
        });
    }

    /// Switchovers with pooling on (a deploy turns it on first): a writer through
    /// the pooled port and one through the direct write port, side by side. The
    /// pooled one must see no error; its longest wait is compared with the direct
    /// one's write gap.
    pub(crate) async fn pooled_switchover(&mut self, info: &LabInfo, inv: &str, target: &Target) {
        let text = std::fs::read_to_string(inv).expect("lab inventory");
        if !text.contains("pgbouncer_enabled: true") {
            std::fs::write(
                inv,
                text.replacen(
                    "all:\n  vars:\n",
                    "all:\n  vars:\n    pgbouncer_enabled: true\n",
                    1,
                ),
            )
            .expect("lab inventory");
            let (code, _, _, _) = self.pgha(&["deploy", inv]);
            assert_eq!(code, 0, "deploy with pooling");
        }
        let app = target.as_user("app", &secret(info, "app_password"), "app");
        create_table(&app, "bench_pool").await;
        let (mut pooled_waits, mut direct_gaps, mut pauses) = (Vec::new(), Vec::new(), Vec::new());
        let (mut errors, mut lost_total) = (0, 0);
        for i in 0..self.args.runs {
            wait_healthy(info).await;
            let first = (i as i32 + 1) * 1_000_000;
            let pooled = Writer::start_pooled(&app, 6432, "bench_pool", first);
            let direct = Writer::start(target, "bench_sw", first + 500_000);
            tokio::time::sleep(Duration::from_secs(2)).await;
            let t = Instant::now();
            let (code, out, _, _) = self.pgha(&["switchover", inv, "--output", "json"]);
            assert_eq!(code, 0, "switchover with pooling");
            let end = Instant::now();
            tokio::time::sleep(Duration::from_secs(1)).await;
            errors += pooled.errors().len();
            let p = pooled.stop().await;
            let d = direct.stop().await;
            pooled_waits.push(longest_gap(&p, t, end));
            direct_gaps.push(longest_gap(&d, t, end));
            if let Some(s) = last_json(&out)["switchover"]["pooler_pause_secs"].as_f64() {
                pauses.push(s);
            }
            lost_total += lost(&app, "bench_pool", &p).await + lost(target, "bench_sw", &d).await;
        }
        let (mp, md) = (median(&pooled_waits), median(&direct_gaps));
        let worst = pooled_waits
            .iter()
            .cloned()
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
        self.push(Figure {
            name: "pooled switchover: longest wait of a pooled client (errors: 0 wanted)".into(),
            unit: "s".into(),
            pgha: mp,
            baseline: md,
            baseline_name: Some("write gap of a direct client".into()),
            ratio: mp.zip(md).map(|(p, d)| p / d),
            goal: Some("0 client errors, longest pause <= 2 s".into()),
            met: worst.map(|w| w <= 2.0 && errors == 0 && lost_total == 0),
            runs: pooled_waits,
            failed: None,
            detail: json!({
                "pooled_client_errors": errors,
                "rows_lost": lost_total,
                "direct_gaps": direct_gaps,
                "pause_pgha_reported": pauses,
            }),
        });
    }

    /// Busy loops on every db host for 60 s: the leader must not change.
    pub(crate) async fn load(&mut self, info: &LabInfo) {
        let before = wait_healthy(info).await;
        let dbs: Vec<String> = info
            .hosts
            .iter()
            .filter(|h| h.name.starts_with("db"))
            .map(|h| h.container.clone())
            .collect();
        say("CPU saturation on every db host for 60 s");
        for c in &dbs {
            let _ = run(Command::new("docker").args([
                "exec",
                "-d",
                c,
                "sh",
                "-c",
                "for i in 1 2 3 4; do timeout 60 sh -c 'while :; do :; done' & done; wait",
            ]));
        }
        let t = Instant::now();
        let mut changes = 0;
        let mut last = before.clone();
        while t.elapsed() < Duration::from_secs(62) {
            if let Ok(v) = patroni::cluster_any(&net(info), &apis(info)).await
                && let Some(l) = v.leader()
                && l.name != last
            {
                changes += 1;
                last = l.name.clone();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.push(Figure {
            name: "leader changes with every db host's CPUs saturated (60 s)".into(),
            unit: "changes".into(),
            pgha: Some(changes as f64),
            baseline: None,
            baseline_name: None,
            ratio: None,
            goal: Some("0 (no false failover)".into()),
            met: Some(changes == 0),
            runs: vec![changes as f64],
            failed: None,
            detail: json!({}),
        });
    }
}

/// Wait until the write port reaches a primary other than `old_ip` (the writer keeps
/// its own record of acknowledgements; this bounds the wait). `t` if it never does.
pub(crate) async fn wait_ack_after(t: Instant, old_ip: &str, target: &Target) -> Instant {
    pgha::wait::until(
        "a write on the new leader",
        Duration::from_secs(120),
        || async {
            let c = pg(target, 5000).await?;
            let row = tokio::time::timeout(
                Duration::from_secs(3),
                c.query_one("SELECT host(inet_server_addr()), pg_is_in_recovery()", &[]),
            )
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| e.to_string())?;
            let (addr, rec): (String, bool) = (row.get(0), row.get(1));
            if addr != old_ip && !rec {
                Ok(Instant::now())
            } else {
                Err(format!("{addr} in recovery {rec}"))
            }
        },
    )
    .await
    .unwrap_or(t)
}

/// Acknowledged ids missing from the table.
pub(crate) async fn lost(target: &Target, table: &str, acked: &[Ack]) -> usize {
    let rows = pgha::wait::until("a read of the rows", Duration::from_secs(60), || async {
        let c = pg(target, 5000).await?;
        c.query(&format!("SELECT id FROM {table}"), &[])
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .expect("read rows");
    let present: std::collections::BTreeSet<i32> = rows.iter().map(|r| r.get(0)).collect();
    acked.iter().filter(|a| !present.contains(&a.id)).count()
}

/// The longest stretch between two acknowledgements (or a window edge) in [from, to].
pub(crate) fn longest_gap(acked: &[Ack], from: Instant, to: Instant) -> f64 {
    let mut times: Vec<Instant> = acked
        .iter()
        .map(|a| a.at)
        .filter(|t| *t >= from && *t <= to)
        .collect();
    times.sort();
    let mut prev = from;
    let mut longest = Duration::ZERO;
    for t in times {
        longest = longest.max(t.duration_since(prev));
        prev = t;
    }
    longest.max(to.duration_since(prev)).as_secs_f64()
}
