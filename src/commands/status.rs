//! `pgha status`: the cluster in one view, from live probes (no lock; SSH only to
//! the backup repository's host, for pgBackRest's view of the backups).
//! Exit 0 when healthy, 1 when degraded or down.

use std::io::IsTerminal;
use std::time::Duration;

use crate::commands::args::StatusArgs;
use crate::commands::{fleet, load_inventory, load_pki, ssh_options};
use crate::error::{Exit, Failure};
use crate::ops::Ctx;
use crate::ops::health::{self, Level, Snapshot};
use crate::ui::OutputFormat;
use crate::ui::Ui;

pub async fn command(args: StatusArgs, output: OutputFormat) -> Result<Exit, Failure> {
    if !args.more.is_empty() {
        return several(args, output).await;
    }
    let inv = load_inventory(&args.inventory, false)?;
    let ui = Ui::new(output);
    let pki = load_pki(&inv, false)?;
    let mut ctx = Ctx::new(&inv, pki, &ui);
    if let Some(repo) = inv.backup_host() {
        // Unreachable: the backups line says so, the rest of the view stands.
        let ssh = ssh_options(&args.ssh, &inv);
        // Said on stderr: the verdict stays the first line (it names the
        // repository as not readable too).
        if let Err(e) = ctx.connect_quietly(&ssh, &repo.name).await {
            eprintln!("warning: backups not read: {e}");
        }
    }
    let Some(secs) = args.watch else {
        let s = health::snapshot(&ctx).await;
        print(&s, output);
        return Ok(exit(&s));
    };
    let tty = std::io::stdout().is_terminal();
    loop {
        let s = health::snapshot(&ctx).await;
        if tty && output == OutputFormat::Text {
            // Redraw in place: cursor home, clear screen.
            print!("\x1b[H\x1b[2J");
        }
        print(&s, output);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(secs.max(1))) => {}
            _ = tokio::signal::ctrl_c() => return Ok(exit(&s)),
        }
    }
}

/// `pgha status a.yml b.yml ...`: every cluster's verdict on one line (its full
/// view in the JSON document), the worst exit code.
async fn several(args: StatusArgs, output: OutputFormat) -> Result<Exit, Failure> {
    if args.watch.is_some() {
        return Err(Failure::options("--watch takes one inventory"));
    }
    let paths = fleet::paths(&args.inventory, &args.more)?;
    let invs = fleet::load_all(&paths, false)?;
    let forks = args.forks.unwrap_or_else(fleet::default_forks);
    let args = &args;
    let outcomes = fleet::run_each(&invs, forks, output, |inv, ui| async move {
        let r = async {
            let mut ctx = Ctx::new(inv, load_pki(inv, false)?, &ui);
            if let Some(repo) = inv.backup_host()
                && let Err(e) = ctx
                    .connect_quietly(&ssh_options(&args.ssh, inv), &repo.name)
                    .await
            {
                ui.warn(format!("backups not read: {e}"));
            }
            let s = health::snapshot(&ctx).await;
            ctx.close().await;
            if ui.json() {
                ui.document(serde_json::to_value(&s).expect("snapshot serializes"));
            }
            let leader = s
                .leader
                .as_ref()
                .map(|l| format!(", leader {l}"))
                .unwrap_or_default();
            Ok::<_, Failure>((exit(&s), format!("{}{leader}", s.verdict.line())))
        }
        .await;
        match r {
            Ok((e, line)) => (Ok(e), line),
            Err(f) => (Err(f), String::new()),
        }
    })
    .await;
    fleet::print_summary("status", &outcomes, output);
    Ok(fleet::worst(&outcomes))
}

fn exit(s: &Snapshot) -> Exit {
    if s.healthy { Exit::Ok } else { Exit::Error }
}

fn print(s: &Snapshot, output: OutputFormat) {
    match output {
        OutputFormat::Json => {
            println!("{}", serde_json::to_string(s).expect("snapshot serializes"))
        }
        OutputFormat::Text => print!("{}", render(s)),
    }
}

fn dash<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or("-".into(), |v| v.to_string())
}

fn size(bytes: i64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.0} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// A table with columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::from(" ");
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(&format!(" {c}"));
            } else {
                s.push_str(&format!(" {c:<width$}", width = w[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

/// The text view. Pure, so its shape is tested.
pub fn render(s: &Snapshot) -> String {
    let mut out = format!("cluster {}: {}\n", s.cluster, s.verdict.line());
    for n in &s.verdict.notes {
        out.push_str(&format!("  note: {n}\n"));
    }
    if let Some(w) = s.ca.as_ref().and_then(|ca| ca.warning.as_ref()) {
        out.push_str(&format!("  warning: {w}\n"));
    }
    out.push('\n');
    members_table(s, &mut out);
    out.push('\n');
    etcd_table(s, &mut out);
    routers_table(s, &mut out);
    exporters_and_certificates(s, &mut out);
    if let Some(b) = &s.backup {
        out.push_str(&backup_line(b));
    }
    if let Some(a) = &s.alerts {
        alerts_lines(a, &mut out);
    }
    if !s.poolers.is_empty() {
        out.push('\n');
        for p in &s.poolers {
            match &p.error {
                None => out.push_str(&format!(
                    "pooler {}: {}{} client(s), {} waiting (longest {}s), {} server connection(s)\n",
                    p.router,
                    if p.paused {
                        "PAUSED (clients wait: `pgha pool resume`), "
                    } else {
                        ""
                    },
                    p.clients,
                    p.waiting,
                    p.maxwait,
                    p.servers
                )),
                Some(e) => out.push_str(&format!("pooler {}: not answering ({e})\n", p.router)),
            }
        }
    }
    if s.verdict.level != Level::Healthy {
        out.push_str(&format!("\n{}\n", s.verdict.line()));
    }
    out
}

/// Alertmanager's alerts: those firing, then those silenced or inhibited.
fn alerts_lines(a: &crate::ops::verdict::AlertsState, out: &mut String) {
    if let Some(e) = &a.error {
        out.push_str(&format!("\nalerts: not read ({e})\n"));
        return;
    }
    let active: Vec<_> = a.alerts.iter().filter(|x| x.state == "active").collect();
    let quiet = a.alerts.len() - active.len();
    let more = if quiet > 0 {
        format!(", {quiet} silenced or inhibited")
    } else {
        String::new()
    };
    out.push_str(&format!(
        "\nalerts ({}): {} firing{more}\n",
        a.url,
        active.len()
    ));
    if !active.is_empty() {
        let rows: Vec<Vec<String>> = active
            .iter()
            .map(|x| {
                vec![
                    x.severity.clone(),
                    x.name.clone(),
                    if x.instance.is_empty() {
                        "-".into()
                    } else {
                        x.instance.clone()
                    },
                    x.summary.clone(),
                ]
            })
            .collect();
        out.push_str(&table(&["SEVERITY", "ALERT", "HOST", "SUMMARY"], &rows));
    }
    if !a.graphs.is_empty() {
        out.push_str(&format!("graphs: {}\n", a.graphs));
    }
}

/// Backups: the newest backup and the archiver.
fn backup_line(b: &crate::ops::health::BackupState) -> String {
    use crate::ops::backup_info::human_age;
    let newest = match (&b.repository_error, &b.newest) {
        (Some(e), _) => format!("repository not readable ({e})"),
        (None, None) => "no backup yet".into(),
        (None, Some((label, kind, age))) => {
            format!(
                "newest {kind} {label}, {} ago; {} kept",
                human_age(*age),
                b.backups
            )
        }
    };
    let archive = match (
        &b.archiver_error,
        &b.last_archived_wal,
        b.last_archived_age_secs,
    ) {
        (Some(e), _, _) => format!("archiver not read ({e})"),
        (None, Some(w), Some(age)) => format!("last archived WAL {w}, {} ago", human_age(age)),
        (None, _, _) => "no WAL archived yet".into(),
    };
    let failing = match b.archive_failing_secs {
        Some(f) => format!("; ARCHIVING FAILING for {}", human_age(f)),
        None if b.archive_failed_count > 0 => {
            format!("; {} earlier failure(s)", b.archive_failed_count)
        }
        None => String::new(),
    };
    format!(
        "\nbackups (repository on {}): {newest}; {archive}{failing}\n",
        b.repository
    )
}

/// One row per db member.
fn members_table(s: &Snapshot, out: &mut String) {
    let rows: Vec<Vec<String>> = s
        .members
        .iter()
        .map(|m| {
            let tags: Vec<String> = m
                .tags
                .iter()
                .filter(|(_, v)| **v != serde_json::Value::Bool(false))
                .map(|(k, v)| {
                    if v == &serde_json::Value::Bool(true) {
                        k.clone()
                    } else {
                        format!("{k}={v}")
                    }
                })
                .collect();
            vec![
                m.name.clone(),
                m.address.clone(),
                m.role.clone(),
                m.state.clone(),
                dash(&m.timeline),
                if m.role == "leader" {
                    "-".into()
                } else {
                    dash(&m.lag_bytes)
                },
                dash(&m.server_version),
                dash(&m.patroni_version),
                if m.pending_restart { "yes" } else { "no" }.into(),
                if tags.is_empty() {
                    "-".into()
                } else {
                    tags.join(",")
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "MEMBER", "ADDRESS", "ROLE", "STATE", "TL", "LAG", "POSTGRES", "PATRONI", "PENDING",
            "TAGS",
        ],
        &rows,
    ));
}

/// One row per etcd member, and the quorum.
fn etcd_table(s: &Snapshot, out: &mut String) {
    let rows: Vec<Vec<String>> = s
        .etcd
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                dash(&e.id),
                if e.healthy {
                    "healthy".into()
                } else {
                    format!("unhealthy: {}", e.error.as_deref().unwrap_or("no answer"))
                },
                if e.leader { "leader" } else { "-" }.into(),
                dash(&e.version),
                e.db_size_bytes.map_or("-".into(), size),
                dash(&e.raft_index),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "ETCD",
            "ID",
            "HEALTH",
            "LEADER",
            "VERSION",
            "DB SIZE",
            "RAFT INDEX",
        ],
        &rows,
    ));
    let healthy = s.etcd.iter().filter(|e| e.healthy).count();
    out.push_str(&format!(
        "  quorum: {} ({healthy} of {} members healthy)\n\n",
        if s.etcd_quorum { "held" } else { "LOST" },
        s.etcd.len()
    ));
}

/// One row per router: its backends against Patroni.
fn routers_table(s: &Snapshot, out: &mut String) {
    let servers = |m: &std::collections::BTreeMap<String, String>| {
        if m.is_empty() {
            "-".to_string()
        } else {
            m.iter()
                .map(|(n, st)| format!("{n} {st}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let rows: Vec<Vec<String>> = s
        .routers
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.address.clone(),
                if r.up { "up" } else { "unreachable" }.into(),
                servers(&r.write),
                servers(&r.read),
                if !r.up {
                    "-".into()
                } else if r.agrees {
                    "yes".into()
                } else {
                    format!("NO: {}", r.disagreement.as_deref().unwrap_or(""))
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "ROUTER",
            "ADDRESS",
            "HAPROXY",
            "WRITES",
            "READS",
            "MATCHES PATRONI",
        ],
        &rows,
    ));
    out.push('\n');
}

/// Exporters, served certificates and the CA, a line each.
fn exporters_and_certificates(s: &Snapshot, out: &mut String) {
    let exporters: Vec<String> = s
        .exporters
        .iter()
        .map(|e| match e.pg_up {
            Some(up) => format!("{} pg_up {}", e.name, u8::from(up)),
            None => format!("{} unreachable", e.name),
        })
        .collect();
    out.push_str(&format!("  exporters: {}\n", exporters.join(", ")));
    if !s.certificates.is_empty() {
        let certs: Vec<String> = s
            .certificates
            .iter()
            .map(|c| match (&c.not_after, c.days_left) {
                (Some(t), Some(d)) => format!("{} {} until {t} ({d} d)", c.host, c.service),
                _ => format!(
                    "{} {} unknown ({})",
                    c.host,
                    c.service,
                    c.error.as_deref().unwrap_or("no answer")
                ),
            })
            .collect();
        out.push_str(&format!("  certificates: {}\n", certs.join("; ")));
    }
    if let Some(ca) = &s.ca {
        out.push_str(&format!(
            "  CA: {} until {} ({} d)\n",
            ca.subject, ca.not_after, ca.days_left
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::health::{Bounds, CaState, Parts, assemble};

    fn snapshot(ca: Option<CaState>) -> Snapshot {
        let parts = Parts {
            members: vec![],
            etcd: vec![],
            routers: vec![],
            exporters: vec![],
            certificates: vec![],
            ca,
            poolers: vec![],
        };
        let bounds = Bounds {
            max_lag: 0,
            read_max_lag: 0,
            synchronous_mode: false,
            renew_before_days: 30,
        };
        assemble("prod", parts, false, &bounds)
    }

    #[test]
    fn the_ca_expiry_is_shown_and_warned_about() {
        let ca = |days_left, warning: Option<&str>| CaState {
            subject: "CN=pgha CA prod, O=pgha".into(),
            not_after: "2027-06-01T00:00:00Z".into(),
            days_left,
            warning: warning.map(String::from),
        };
        let text = render(&snapshot(Some(ca(3000, None))));
        assert!(
            text.contains("  CA: CN=pgha CA prod, O=pgha until 2027-06-01T00:00:00Z (3000 d)\n"),
            "{text}"
        );
        assert!(!text.contains("warning:"), "{text}");
        let text = render(&snapshot(Some(ca(
            200,
            Some("the cluster CA expires in 200 day(s)"),
        ))));
        assert!(
            text.contains("\n  warning: the cluster CA expires in 200 day(s)\n"),
            "{text}"
        );
        assert!(!render(&snapshot(None)).contains("CA:"));
    }

    #[test]
    fn firing_alerts_are_listed_and_the_others_counted() {
        use crate::ops::verdict::AlertsState;
        use crate::probe::prometheus::Alert;
        let alert = |name: &str, instance: &str, state: &str| Alert {
            name: name.into(),
            severity: "critical".into(),
            instance: instance.into(),
            summary: format!("{name} on {instance}"),
            state: state.into(),
        };
        let mut s = snapshot(None);
        s.alerts = Some(AlertsState {
            url: "http://10.0.0.21:9093".into(),
            graphs: "http://10.0.0.21:9090/graph?g0.expr=pg_up".into(),
            alerts: vec![
                alert("PostgresDown", "db3", "active"),
                alert("TargetDown", "db3", "suppressed"),
            ],
            error: None,
        });
        let text = render(&s);
        assert!(
            text.contains("alerts (http://10.0.0.21:9093): 1 firing, 1 silenced or inhibited\n"),
            "{text}"
        );
        assert!(
            text.contains("critical PostgresDown db3  PostgresDown on db3\n"),
            "{text}"
        );
        assert!(!text.contains("TargetDown on db3"), "{text}");
        assert!(
            text.contains("graphs: http://10.0.0.21:9090/graph?g0.expr=pg_up\n"),
            "{text}"
        );
        s.alerts.as_mut().unwrap().error = Some("connection refused".into());
        assert!(render(&s).contains("alerts: not read (connection refused)"));
        s.alerts = None;
        assert!(!render(&s).contains("alerts"));
    }
}
