//! The rolling steps of an upgrade, one member at a time with the cluster serving:
//! etcd members (the leader last, after handing off its leadership), database
//! members drained, upgraded, restarted and streaming again (the leader after a
//! switchover), Patroni alone under pause, exporters, routers, pgBackRest's
//! servers, the monitoring; the health gates before any of it.

use std::time::Duration;

use super::health::{self, Level};
use super::patroni as actions;
use super::run::host_failed;
use super::stack::Stack;
use super::switchover::{self, SwitchoverOpts, SwitchoverReport};
use super::{etcd as etcd_ops, waits};
use crate::engine::apply;
use crate::engine::upgrade::{Component, HostWork, UpgradePlan};
use crate::error::Failure;
use crate::install;
use crate::probe::patroni;
use crate::wait::until;

/// Bound for the cluster to be healthy before the upgrade starts.
const GATE: Duration = Duration::from_secs(60);
/// Bound for one member's step (back, streaming, on its new version).
const MEMBER: Duration = Duration::from_secs(300);

impl Stack<'_, '_> {
    /// Refuse before any package is installed unless the cluster is healthy, etcd
    /// has every member healthy, and every host has room.
    pub async fn gates(&self, plan: &UpgradePlan) -> Result<(), Failure> {
        let phase = self.ctx.ui.phase("gates");
        let snap = until("a healthy cluster to upgrade", GATE, || async {
            let s = health::snapshot(self.ctx).await;
            if s.verdict.level == Level::Healthy && s.etcd.iter().all(|e| e.healthy) {
                Ok(s)
            } else {
                Err(s.verdict.line())
            }
        })
        .await
        .map_err(|e| {
            Failure::error(format!(
                "upgrade refused, nothing was installed: the cluster is not healthy ({})",
                e.last
            ))
        })?;
        let min = crate::engine::preflight::MIN_FREE_KIB;
        for h in plan.work.keys() {
            let out = self
                .ctx
                .run_on(
                    h,
                    "free space",
                    "df -Pk /var/lib /var/cache/apt | awk 'NR>1{print $4}'",
                )
                .await?;
            if let Some(free) = out
                .lines()
                .filter_map(|l| l.trim().parse::<u64>().ok())
                .min()
                && free < min
            {
                return Err(host_failed(format!(
                    "upgrade refused, nothing was installed: {h} has {} MiB free in /var, {} MiB needed",
                    free / 1024,
                    min / 1024
                )));
            }
        }
        phase.done(format!(
            "healthy: leader {}, etcd {} of {} healthy, room on every host",
            snap.leader.unwrap_or_default(),
            snap.etcd.iter().filter(|e| e.healthy).count(),
            snap.etcd.len()
        ));
        Ok(())
    }

    pub async fn steps(
        &self,
        plan: &UpgradePlan,
        switchovers: &mut Vec<SwitchoverReport>,
    ) -> Result<(), Failure> {
        for h in &plan.etcd {
            self.etcd_member(h, &plan.work[h]).await?;
        }
        for h in &plan.db_rolling {
            // The leader is asked from a fresh view: it may have moved.
            let leader = waits::wait_leader(&self.ctx.ep, None, MEMBER).await?;
            if *h == leader {
                let phase = self.ctx.ui.phase("switchover");
                let r = switchover::switchover(
                    self.ctx,
                    &SwitchoverOpts {
                        to: None,
                        max_lag: self.ctx.inv.cluster.patroni_maximum_lag_on_failover,
                        candidate_wait: MEMBER,
                    },
                )
                .await?;
                phase.done(format!("{} -> {}", r.from, r.to));
                switchovers.push(r);
            }
            self.db_member(h, &plan.work[h]).await?;
        }
        if !plan.patroni_only.is_empty() {
            self.patroni_under_pause(plan).await?;
        }
        for h in &plan.exporter_only {
            self.install_and_restart(h, &plan.work[h]).await?;
        }
        for h in &plan.routers {
            self.router(h, &plan.work[h]).await?;
        }
        // A host's packages are installed already when an earlier step had it.
        let earlier = |h: &String, monitoring: bool| {
            [
                &plan.etcd,
                &plan.db_rolling,
                &plan.patroni_only,
                &plan.exporter_only,
                &plan.routers,
            ]
            .iter()
            .any(|l| l.contains(h))
                || (monitoring && plan.pgbackrest.contains(h))
        };
        for h in &plan.pgbackrest {
            self.pgbackrest(h, &plan.work[h], earlier(h, false)).await?;
        }
        if !plan.monitoring.is_empty() {
            let phase = self.ctx.ui.phase("monitoring");
            for h in &plan.monitoring {
                phase.set(format!("{h}: restarting the monitoring"));
                self.monitoring(h, &plan.work[h], earlier(h, true)).await?;
            }
            phase.set("waiting for every target up in Prometheus");
            let expected = super::monitoring::expected_targets(self.ctx.inv);
            super::monitoring::wait_targets(&self.ctx.ep, &expected, MEMBER).await?;
            phase.done(format!(
                "upgraded on {}; every target up",
                plan.monitoring.join(", ")
            ));
        }
        Ok(())
    }

    /// The monitoring's services on a host: the new packages (or image), then each
    /// restarted (its container re-created) and running the new binary.
    async fn monitoring(&self, h: &str, w: &HostWork, installed: bool) -> Result<(), Failure> {
        if !installed {
            self.install(h, w).await?;
        }
        for role in super::monitoring::ROLES {
            let Ok(r) = self.role(h, role) else { continue };
            let shown = r.services[0].clone();
            self.restart_service(h, role, &shown).await?;
            self.wait_new_binary(h, role, &shown).await?;
        }
        Ok(())
    }

    /// Wait until a role's service on `h` runs and its process's binary is the one
    /// on disk now (a replaced one reads `... (deleted)`).
    async fn wait_new_binary(&self, h: &str, role: &str, shown: &str) -> Result<(), Failure> {
        let role = self.role(h, role)?;
        let check = format!(
            "{} && p={}; readlink /proc/$p/exe",
            install::is_active(role),
            install::main_pid(role)
        );
        until(
            &format!("{shown} on {h} to run the new binary"),
            MEMBER,
            || async {
                let exe = self
                    .ctx
                    .run_on(h, &format!("{shown} binary"), check.clone())
                    .await
                    .map_err(|f| f.message)?;
                let exe = exe.trim();
                if exe.is_empty() || exe.ends_with("(deleted)") {
                    Err(format!("runs {exe}"))
                } else {
                    Ok(())
                }
            },
        )
        .await?;
        Ok(())
    }

    /// pgBackRest's server on a host: the new package (or image), then a restart;
    /// done when it runs the new binary.
    pub async fn pgbackrest(&self, h: &str, w: &HostWork, installed: bool) -> Result<(), Failure> {
        let phase = self.ctx.ui.phase("pgbackrest");
        if !installed {
            self.install(h, w).await?;
        }
        phase.set(format!("{h}: restarting pgBackRest's server"));
        self.restart_service(h, "pgbackrest", "pgBackRest").await?;
        self.wait_new_binary(h, "pgbackrest", "pgBackRest's server")
            .await?;
        phase.done(format!("{h}: pgBackRest's server restarted"));
        Ok(())
    }

    /// Install a host's packages (services are not started by package scripts).
    pub async fn install(&self, host: &str, w: &HostWork) -> Result<(), Failure> {
        // Docker: the images are on the host already (prepare); the restart
        // re-creates the container on the new one.
        if w.packages.is_empty() || self.docker {
            return Ok(());
        }
        self.ctx
            .ensure_locked(&format!("{host}: install {}", w.specs().join(" ")))
            .await?;
        apply::install_exact(self.ctx.session(host)?, &w.specs(), false)
            .await
            .map_err(|e| host_failed(format!("{host}: install {}: {e:#}", w.specs().join(" "))))?;
        self.ctx
            .ui
            .host(host, format!("installed {}", w.specs().join(" ")));
        self.ctx.ui.changed(host, 1);
        Ok(())
    }

    pub async fn etcd_member(&self, h: &str, w: &HostWork) -> Result<(), Failure> {
        let phase = self.ctx.ui.phase("etcd");
        phase.set(format!("{h}: waiting for every member to be healthy"));
        waits::wait_etcd_quorum(&self.ctx.ep, etcd_ops::QUORUM).await?;
        let leader = etcd_ops::leader(self.ctx).await?;
        if leader == h
            && let Some(to) = self.ctx.etcd_hosts().into_iter().find(|m| m != h)
        {
            phase.set(format!("moving etcd leadership {h} -> {to}"));
            etcd_ops::move_leader(self.ctx, h, &to).await?;
        }
        self.install(h, w).await?;
        phase.set(format!("restarting etcd on {h}"));
        self.ctx
            .run_on(
                h,
                "restart etcd",
                install::restart(self.role(h, "etcd")?, true),
            )
            .await?;
        waits::wait_etcd_quorum(&self.ctx.ep, etcd_ops::QUORUM).await?;
        phase.done(format!("{h} upgraded; quorum with every member healthy"));
        Ok(())
    }

    /// One database member: drained, upgraded, restarted, streaming again, back.
    pub async fn db_member(&self, h: &str, w: &HostWork) -> Result<(), Failure> {
        let phase = self.ctx.ui.phase("postgres");
        phase.set(format!("draining {h}"));
        actions::drain(self.ctx, h).await?;
        crate::testpoint::pause("upgrade:drained").await;
        self.install_and_restart(h, w).await?;
        phase.set(format!("{h}: back into service"));
        actions::undrain(self.ctx, h).await?;
        phase.done(format!("{h} upgraded and streaming"));
        Ok(())
    }

    /// Restart a role's service (or re-create its container) on a host.
    async fn restart_service(&self, h: &str, role: &str, shown: &str) -> Result<(), Failure> {
        self.ctx
            .run_on(
                h,
                &format!("restart {shown}"),
                install::restart(self.role(h, role)?, false),
            )
            .await?;
        self.ctx.ui.host(h, format!("{shown} restarted"));
        Ok(())
    }

    /// Install, then restart what changed and wait until it runs the new versions.
    pub async fn install_and_restart(&self, h: &str, w: &HostWork) -> Result<(), Failure> {
        self.install(h, w).await?;
        crate::testpoint::pause("upgrade:installed").await;
        if w.touches(Component::Patroni) {
            // Restarting Patroni on a drained replica restarts its PostgreSQL too.
            self.restart_service(h, "patroni", "Patroni").await?;
        } else if w.touches(Component::Postgres) {
            actions::restart_member(self.ctx, h).await?;
        }
        if w.touches(Component::Exporter) {
            self.restart_service(h, "exporter", "postgres_exporter")
                .await?;
        }
        if w.touches(Component::Postgres) || w.touches(Component::Patroni) {
            let want_pg = self.target_upstream(w, Component::Postgres);
            let want_patroni = self.target_upstream(w, Component::Patroni);
            let api = self.ctx.api(h);
            until(&format!("{h} to run the new versions"), MEMBER, || async {
                let st = patroni::status(&self.ctx.ep.net, &api).await?;
                let pg = st["server_version"]
                    .as_u64()
                    .map(|n| format!("{}.{}", n / 10000, n % 10000));
                let pat = st["patroni"]["version"].as_str().map(str::to_string);
                let ok = st["state"] == "running"
                    && want_pg.as_ref().is_none_or(|v| pg.as_ref() == Some(v))
                    && want_patroni
                        .as_ref()
                        .is_none_or(|v| pat.as_ref() == Some(v));
                if ok {
                    Ok(())
                } else {
                    Err(format!(
                        "state {}, PostgreSQL {pg:?}, Patroni {pat:?}",
                        st["state"]
                    ))
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Patroni packages only: pause (PostgreSQL keeps running and is not managed),
    /// restart Patroni member by member on the new version, resume.
    pub async fn patroni_under_pause(&self, plan: &UpgradePlan) -> Result<(), Failure> {
        let phase = self.ctx.ui.phase("patroni");
        let shown = &phase;
        actions::under_pause(self.ctx, &plan.patroni_only, |h| async move {
            shown.set(format!("{h}: Patroni (PostgreSQL keeps running)"));
            let w = &plan.work[&h];
            self.install(&h, w).await?;
            let restart = install::restart(self.role(&h, "patroni")?, false);
            actions::restart_paused(self.ctx, &h, restart).await?;
            let want = self.target_upstream(w, Component::Patroni);
            let api = self.ctx.api(&h);
            until(
                &format!("Patroni on {h} to answer on its new version"),
                MEMBER,
                || async {
                    let st = patroni::status(&self.ctx.ep.net, &api).await?;
                    let v = st["patroni"]["version"].as_str().map(str::to_string);
                    if want.as_ref().is_none_or(|w| v.as_ref() == Some(w)) {
                        Ok(())
                    } else {
                        Err(format!("Patroni {v:?}"))
                    }
                },
            )
            .await?;
            if w.touches(Component::Exporter) {
                self.restart_service(&h, "exporter", "postgres_exporter")
                    .await?;
            }
            Ok(())
        })
        .await?;
        phase.done(format!(
            "Patroni upgraded on {}",
            plan.patroni_only.join(", ")
        ));
        Ok(())
    }

    /// A router: the new packages, then HAProxy reloaded (the master process
    /// re-executes the new binary; established sessions stay with the old workers
    /// until they end) and PgBouncer restarted (its unit stops it with SIGINT, a
    /// safe shutdown: transactions in flight finish, its clients reconnect).
    pub async fn router(&self, h: &str, w: &HostWork) -> Result<(), Failure> {
        let phase = self.ctx.ui.phase("router");
        self.install(h, w).await?;
        if w.touches(Component::Haproxy) {
            let role = self.role(h, "haproxy")?;
            if self.docker {
                // A new image is a new container: its sessions end (a second router
                // keeps serving meanwhile).
                phase.set(format!("{h}: re-creating the HAProxy container"));
                self.ctx
                    .run_on(h, "re-create haproxy", install::restart(role, false))
                    .await?;
            } else {
                phase.set(format!("{h}: reload HAProxy"));
                self.ctx
                    .run_on(h, "reload haproxy", install::reload(role))
                    .await?;
            }
            self.wait_new_binary(h, "haproxy", "HAProxy").await?;
        }
        let view = patroni::cluster_any(&self.ctx.ep.net, &self.ctx.ep.patroni_apis())
            .await
            .map_err(Failure::error)?;
        let leader = view.leader().map(|l| l.name.clone()).unwrap_or_default();
        let replicas: Vec<String> = self
            .ctx
            .db_hosts()
            .into_iter()
            .filter(|x| *x != leader)
            .collect();
        waits::wait_haproxy(&self.ctx.ep, &leader, &replicas, MEMBER).await?;
        if w.touches(Component::Pgbouncer) {
            phase.set(format!("{h}: restarting PgBouncer"));
            self.restart_service(h, "pgbouncer", "PgBouncer").await?;
            self.wait_new_binary(h, "pgbouncer", "PgBouncer").await?;
            // Done when the application logs in through every pooler again.
            super::pool::wait_app_through_poolers(self.ctx, MEMBER).await?;
        }
        phase.done(format!("{h} upgraded; backends match Patroni"));
        Ok(())
    }
}
