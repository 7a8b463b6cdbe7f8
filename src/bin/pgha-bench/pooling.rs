//! Pooled vs direct throughput: pgbench's short read-only transactions from a
//! replica's host to the router, once through PgBouncer (6432) and once through
//! HAProxy's write port (5000), with a connection per transaction (`-C`) and with
//! 200 clients at once (`-c 200`, more than max_connections lets in directly).

use std::process::Command;

use serde_json::json;

use super::cluster::*;
use super::{Bench, Figure, median, run, say};
use pgha::lab::LabInfo;
use pgha::lab::clients::{Target, pg};

/// What pgbench printed: transactions per second, average latency (ms), failed
/// transactions; None when it aborted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PgbenchResult {
    pub tps: f64,
    pub latency_ms: f64,
    pub failed: u64,
}

/// pgbench's summary: `tps = 1234.5 (...)`, `latency average = 1.2 ms`,
/// `number of failed transactions: 0 (0.000%)`.
pub(crate) fn parse_pgbench(out: &str) -> Option<PgbenchResult> {
    let after = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    Some(PgbenchResult {
        tps: after("tps = ")?,
        latency_ms: after("latency average = ")?,
        failed: after("number of failed transactions: ").unwrap_or(0.0) as u64,
    })
}

impl Bench {
    /// Run pgbench in `container` against the router's `port` as `app`.
    fn pgbench(
        &self,
        container: &str,
        router: &str,
        port: u16,
        password: &str,
        args: &str,
    ) -> Result<PgbenchResult, String> {
        let (code, out, err, _) = run(Command::new("docker").args([
            "exec",
            "-e",
            &format!("PGPASSWORD={password}"),
            "-e",
            "PGSSLMODE=require",
            container,
            "sh",
            "-c",
            &format!(
                "$(ls /usr/lib/postgresql/*/bin/pgbench | tail -1) -n -S -h {router} -p {port} -U app {args} app"
            ),
        ]));
        match parse_pgbench(&out) {
            Some(r) if code == 0 => Ok(r),
            _ => Err(format!(
                "pgbench {args} on :{port} exited {code}: {}",
                err.lines().rev().take(3).collect::<Vec<_>>().join(" / ")
            )),
        }
    }

    pub(crate) async fn pooled_throughput(&mut self, info: &LabInfo, target: &Target) {
        let leader = wait_healthy(info).await;
        let replica = info
            .hosts
            .iter()
            .find(|h| h.name.starts_with("db") && h.name != leader)
            .expect("a replica")
            .container
            .clone();
        let router = ip(info, "router1");
        let password = secret(info, "app_password");
        // pgbench's tables in `app`, readable by the application role.
        let (code, _, err, _) = run(Command::new("docker").args([
            "exec",
            "-e",
            &format!("PGPASSWORD={}", secret(info, "superuser_password")),
            "-e",
            "PGSSLMODE=require",
            &replica,
            "sh",
            "-c",
            &format!(
                "$(ls /usr/lib/postgresql/*/bin/pgbench | tail -1) -i -q -s 10 -h {router} -p 5000 -U postgres app"
            ),
        ]));
        assert_eq!(code, 0, "pgbench -i: {err}");
        // In `app`, where pgbench made its tables (the target's own database is
        // `postgres`).
        let su = target.as_user("postgres", &secret(info, "superuser_password"), "app");
        let c = pg(&su, 5000).await.expect("connect :5000");
        c.batch_execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO app")
            .await
            .expect("grant");
        // Directly, 200 clients exceed max_connections: the direct side runs as
        // many as it lets in beside the connections already there (pgha's, the
        // exporters', the poolers' idle server connections), counted right before
        // each direct run.
        let free_slots = || async {
            let row = c
                .query_one(
                    "SELECT current_setting('max_connections')::int8 \
                       - current_setting('superuser_reserved_connections')::int8 \
                       - current_setting('reserved_connections')::int8 \
                       - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), \
                       current_setting('max_connections')::int8",
                    &[],
                )
                .await
                .expect("free connection slots");
            (row.get::<_, i64>(0), row.get::<_, i64>(1))
        };
        let cases = [
            // (what, a connection per transaction, clients directly: None = 200 or
            // as many as fit)
            ("connection per transaction (-C -c 50)", true, Some(50)),
            ("200 clients (-c 200)", false, None),
        ];
        for (name, per_transaction, fixed) in cases {
            let args = |clients: i64| {
                let c = if per_transaction { "-C " } else { "" };
                format!("{c}-c {clients} -j 2 -T 15")
            };
            let pooled_args = args(fixed.unwrap_or(200));
            let (mut pooled, mut direct, mut direct_clients) = (Vec::new(), Vec::new(), Vec::new());
            let mut failed = None;
            let mut max_conn = 0;
            for _ in 0..self.args.runs {
                say(format!("pgbench {name}: pooled, then direct"));
                match self.pgbench(&replica, &router, 6432, &password, &pooled_args) {
                    Ok(r) => pooled.push(r),
                    Err(e) => failed = Some(e),
                }
                let clients = match fixed {
                    Some(n) => n,
                    None => {
                        let (free, max) = free_slots().await;
                        max_conn = max;
                        200.min(free - 5)
                    }
                };
                direct_clients.push(clients);
                match self.pgbench(&replica, &router, 5000, &password, &args(clients)) {
                    Ok(r) => direct.push(r),
                    Err(e) => failed = Some(e),
                }
            }
            let fewest = direct_clients.iter().copied().min().unwrap_or(0);
            let direct_name = if fixed.is_some() {
                format!("{fewest} clients")
            } else {
                format!("{fewest} clients (what max_connections {max_conn} left free)")
            };
            let tps = |v: &[PgbenchResult]| median(&v.iter().map(|r| r.tps).collect::<Vec<_>>());
            let lat =
                |v: &[PgbenchResult]| median(&v.iter().map(|r| r.latency_ms).collect::<Vec<_>>());
            let (p, d) = (tps(&pooled), tps(&direct));
            self.push(Figure {
                name: format!("pooled throughput, read-only, {name}"),
                unit: "tps".into(),
                pgha: p,
                baseline: d,
                baseline_name: Some(format!("direct through :5000, {direct_name}")),
                ratio: p.zip(d).map(|(p, d)| p / d),
                goal: None,
                met: None,
                runs: pooled.iter().map(|r| r.tps).collect(),
                failed,
                detail: json!({
                    "pooled_latency_ms": lat(&pooled),
                    "direct_latency_ms": lat(&direct),
                    "pooled_failed": pooled.iter().map(|r| r.failed).sum::<u64>(),
                    "direct_failed": direct.iter().map(|r| r.failed).sum::<u64>(),
                    "direct_tps_runs": direct.iter().map(|r| r.tps).collect::<Vec<_>>(),
                    "pooled_args": pooled_args,
                    "direct_clients": direct_clients,
                }),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_summary_is_read() {
        let out = "transaction type: <builtin: select only>\n\
                   number of failed transactions: 3 (0.010%)\n\
                   latency average = 4.567 ms\n\
                   initial connection time = 80.1 ms\n\
                   tps = 10950.123456 (without initial connection time)\n";
        assert_eq!(
            parse_pgbench(out),
            Some(PgbenchResult {
                tps: 10950.123456,
                latency_ms: 4.567,
                failed: 3
            })
        );
        assert_eq!(parse_pgbench("pgbench: error: connection failed"), None);
    }
}
