//! One snapshot of the whole cluster from live probes (no SSH): every db member as
//! Patroni sees it and as it reports itself, every etcd member, every router's
//! HAProxy backends, every exporter, every served certificate. All probes run at
//! once and each is bounded, so a dead or partitioned host costs seconds, not
//! minutes, and is shown as unreachable. What the findings mean is `verdict`'s.

use futures_util::future::join_all;

use super::run::Ctx;
pub use super::verdict::*;
use crate::probe::{Net, etcd, exporter, haproxy, patroni};

/// Gather a snapshot; never fails: what does not answer is recorded as such.
pub async fn snapshot(ctx: &Ctx<'_>) -> Snapshot {
    let c = &ctx.inv.cluster;
    let apis = ctx.ep.patroni_apis();
    // Every probe at once, each bounded by one probe timeout: a host that silently
    // drops packets costs that bound once, not once per probe.
    let backup = async {
        match ctx.inv.backup_host() {
            Some(repo) => Some(backup_state(ctx, &repo.name).await),
            None => None,
        }
    };
    let (view, statuses, etcd_report, routers, exporters, certificates, (backup, alerts, poolers)) = tokio::join!(
        patroni::cluster_any(&ctx.ep.net, &apis),
        join_all(
            ctx.ep
                .patroni
                .iter()
                .map(|(_, api)| patroni::status(&ctx.ep.net, api))
        ),
        etcd::probe_within(&ctx.ep.net, &ctx.ep.etcd, crate::probe::PROBE_TIMEOUT),
        join_all(ctx.ep.routers.iter().map(|(_, ip)| haproxy::backends(
            &ctx.ep.net,
            ip,
            &ctx.ep.stats
        ))),
        join_all(
            ctx.ep
                .exporters
                .iter()
                .map(|(_, url)| pg_up(&ctx.ep.net, url))
        ),
        async {
            if c.tls {
                certificates(ctx).await
            } else {
                Vec::new()
            }
        },
        async {
            tokio::join!(
                backup,
                super::monitoring::alerts(&ctx.ep),
                super::pool::show(&ctx.ep)
            )
        },
    );
    let ca = ctx.pki.as_ref().and_then(|p| p.ca_info().ok()).map(|i| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        ca_state(&i, now)
    });
    let addresses: Vec<String> = ctx
        .inv
        .db_hosts()
        .iter()
        .map(|h| h.ip.to_string())
        .collect();
    let members = members(&ctx.ep.db_names, &addresses, view.as_ref().ok(), &statuses);
    let etcd_names: Vec<String> = ctx.etcd_hosts();
    let etcd = etcd_members(&etcd_names, &etcd_report);
    let bounds = Bounds {
        max_lag: c.patroni_maximum_lag_on_failover,
        read_max_lag: c.haproxy_replica_max_lag,
        synchronous_mode: c.synchronous_mode,
        renew_before_days: c.tls_renew_before_days as i64,
    };
    let routers: Vec<RouterState> = ctx
        .ep
        .routers
        .iter()
        .zip(routers)
        .map(|((name, ip), b)| router(name, ip, b, &members, &bounds))
        .collect();
    let exporters = ctx
        .ep
        .exporters
        .iter()
        .zip(exporters)
        .map(|((name, _), r)| match r {
            Ok(up) => ExporterState {
                name: name.clone(),
                pg_up: Some(up),
                error: None,
            },
            Err(e) => ExporterState {
                name: name.clone(),
                pg_up: None,
                error: Some(e),
            },
        })
        .collect();
    let paused = view.as_ref().is_ok_and(|v| v.pause);
    let poolers = poolers
        .into_iter()
        .map(|(router, r)| match r {
            Ok(v) => {
                let (clients, waiting, servers) = crate::probe::pgbouncer::totals(&v.pools);
                super::verdict::PoolerState {
                    router,
                    clients,
                    waiting,
                    servers,
                    maxwait: v.pools.iter().map(|p| p.maxwait).max().unwrap_or(0),
                    paused: v.paused,
                    error: None,
                }
            }
            Err(e) => super::verdict::PoolerState {
                router,
                clients: 0,
                waiting: 0,
                servers: 0,
                maxwait: 0,
                paused: false,
                error: Some(e),
            },
        })
        .collect();
    let parts = Parts {
        members,
        etcd,
        routers,
        exporters,
        certificates,
        ca,
        poolers,
    };
    let mut snap = assemble(&c.cluster_name, parts, paused, &bounds);
    if let (Some(r), Some((_, url))) = (alerts, &ctx.ep.alertmanager) {
        let graphs = ctx
            .ep
            .prometheus
            .as_ref()
            .map(|(_, p)| super::monitoring::graphs_link(p))
            .unwrap_or_default();
        snap.alerts = Some(match r {
            Ok(a) => super::verdict::AlertsState {
                url: url.clone(),
                graphs: graphs.clone(),
                alerts: a,
                error: None,
            },
            Err(e) => super::verdict::AlertsState {
                url: url.clone(),
                graphs,
                alerts: Vec::new(),
                error: Some(e),
            },
        });
    }
    match backup {
        Some(b) => {
            let bb = BackupBounds {
                max_age_secs: (c.backup_max_age_hours > 0)
                    .then(|| i64::from(c.backup_max_age_hours) * 3600),
                archive_fail_secs: i64::from(c.backup_archive_fail_minutes) * 60,
            };
            snap.with_backup(b, &bb)
        }
        None => snap,
    }
}

/// The newest backup (pgBackRest on the repository's host, over the run's SSH
/// session: `status` opens one to that host only) and the leader's archiver
/// (through a router's write port), read at once.
async fn backup_state(ctx: &Ctx<'_>, repo: &str) -> BackupState {
    let c = &ctx.inv.cluster;
    let repo_info = async {
        match ctx.session(repo) {
            Ok(s) => tokio::time::timeout(
                std::time::Duration::from_secs(30),
                super::backup::info(s, c),
            )
            .await
            .map_err(|_| "pgbackrest info did not answer within 30s".to_string())
            .and_then(|r| r.map_err(|f| f.message)),
            Err(_) => Err(format!("no SSH session to {repo}")),
        }
    };
    let (info, arch) = tokio::join!(repo_info, archiver(ctx));
    let now = super::backup::now();
    let (newest, backups, repository_error) = match info {
        Ok(i) => (
            i.newest()
                .map(|b| (b.label.clone(), b.kind.clone(), now - b.stop)),
            i.backups.len(),
            None,
        ),
        Err(e) => (None, 0, Some(e)),
    };
    let mut b = BackupState {
        repository: repo.to_string(),
        newest,
        backups,
        repository_error,
        last_archived_wal: None,
        last_archived_age_secs: None,
        archive_failed_count: 0,
        archive_failing_secs: None,
        archiver_error: None,
    };
    match arch {
        Ok(a) => {
            b.last_archived_wal = a.wal;
            b.last_archived_age_secs = a.archived_at.map(|t| now - t);
            b.archive_failed_count = a.failed_count;
            b.archive_failing_secs = match (a.failed_at, a.archived_at) {
                (Some(f), Some(ok)) if f > ok => Some(now - ok),
                (Some(f), None) => Some(now - f),
                _ => None,
            };
        }
        Err(e) => b.archiver_error = Some(e),
    }
    b
}

/// The leader's `pg_stat_archiver`, as read through a router's write port.
pub struct Archiver {
    pub wal: Option<String>,
    pub archived_at: Option<i64>,
    pub failed_count: i64,
    pub failed_at: Option<i64>,
}

pub async fn archiver(ctx: &Ctx<'_>) -> Result<Archiver, String> {
    let router = ctx
        .ep
        .routers
        .first()
        .map(|r| r.1.clone())
        .ok_or("no router")?;
    let ep = ctx.ep.router_port(&router, ctx.ep.write_port);
    let client = crate::probe::sql::connect(&ctx.ep.net, &ep).await?;
    let row = tokio::time::timeout(
        crate::probe::PROBE_TIMEOUT,
        client.query_one(
            "select last_archived_wal, extract(epoch from last_archived_time)::bigint, \
                    failed_count, extract(epoch from last_failed_time)::bigint \
               from pg_stat_archiver",
            &[],
        ),
    )
    .await
    .map_err(|_| "pg_stat_archiver did not answer".to_string())?
    .map_err(|e| crate::probe::sql::pg_error(&e))?;
    Ok(Archiver {
        wal: row.get(0),
        archived_at: row.get(1),
        failed_count: row.get(2),
        failed_at: row.get(3),
    })
}

/// The certificate each TLS endpoint serves: Patroni's REST API on db hosts (the
/// same file as PostgreSQL's), etcd's client port on etcd hosts.
async fn certificates(ctx: &Ctx<'_>) -> Vec<CertState> {
    let c = &ctx.inv.cluster;
    let mut targets = Vec::new();
    for h in ctx.inv.db_hosts() {
        targets.push((
            h.name.clone(),
            "patroni",
            h.ip.to_string(),
            c.patroni_rest_port,
            "/liveness",
        ));
    }
    for h in ctx.inv.etcd_hosts() {
        targets.push((
            h.name.clone(),
            "etcd",
            h.ip.to_string(),
            c.etcd_client_port,
            "/version",
        ));
    }
    join_all(
        targets
            .into_iter()
            .map(|(host, service, ip, port, path)| async move {
                let Some(tls) = ctx.ep.net.tls() else {
                    return CertState {
                        host,
                        service: service.into(),
                        not_after: None,
                        days_left: None,
                        error: Some("no TLS material loaded".into()),
                    };
                };
                let info = crate::probe::tls::served_certificate(tls, &ip, port, path)
                    .await
                    .and_then(|pem| {
                        crate::pki::cert_info(&pem)
                            .map(|i| (i, crate::pki::days_left(&pem)))
                            .map_err(|e| e.to_string())
                    });
                match info {
                    Ok((i, days)) => CertState {
                        host,
                        service: service.into(),
                        not_after: Some(
                            humantime::format_rfc3339_seconds(
                                std::time::UNIX_EPOCH + std::time::Duration::from_secs(i.not_after),
                            )
                            .to_string(),
                        ),
                        days_left: days,
                        error: None,
                    },
                    Err(e) => CertState {
                        host,
                        service: service.into(),
                        not_after: None,
                        days_left: None,
                        error: Some(e),
                    },
                }
            }),
    )
    .await
}

/// The exporter's pg_up. postgres_exporter keeps its connection between scrapes, so
/// the first scrape after PostgreSQL restarted fails once and reconnects: only a
/// second 0 in a row counts.
async fn pg_up(net: &Net, url: &str) -> Result<bool, String> {
    // Both scrapes within one probe timeout.
    let twice = async {
        match exporter::pg_up(net, url).await {
            Ok(false) => exporter::pg_up(net, url).await,
            r => r,
        }
    };
    tokio::time::timeout(crate::probe::PROBE_TIMEOUT, twice)
        .await
        .unwrap_or_else(|_| Err("no answer".into()))
}
