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
    let (view, statuses, etcd_report, routers, exporters, certificates) = tokio::join!(
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
    let parts = Parts {
        members,
        etcd,
        routers,
        exporters,
        certificates,
        ca,
    };
    assemble(&c.cluster_name, parts, paused, &bounds)
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
        ));
    }
    for h in ctx.inv.etcd_hosts() {
        targets.push((h.name.clone(), "etcd", h.ip.to_string(), c.etcd_client_port));
    }
    join_all(
        targets
            .into_iter()
            .map(|(host, service, ip, port)| async move {
                let Some(tls) = ctx.ep.net.tls() else {
                    return CertState {
                        host,
                        service: service.into(),
                        not_after: None,
                        days_left: None,
                        error: Some("no TLS material loaded".into()),
                    };
                };
                let info = crate::probe::tls::served_certificate(tls, &ip, port)
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
