//! The run context every command stands on: the inventory, the cluster's endpoints,
//! the UI (progress, recap), and, for commands that change hosts, one SSH session
//! per host with facts gathering and parallel per-host steps.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;

use super::Endpoints;
use super::guard::LockGuard;
use crate::engine::facts::{self, FactsRequest, HostFacts};
use crate::error::{Exit, Failure};
use crate::inventory::Inventory;
use crate::ssh::{self, Cmd, Session, SshOptions};
use crate::ui::Ui;

pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// How far a host's clock reading lies outside the window of this machine's clock
/// in which the host took it (0 when inside): a slow round trip widens the window
/// instead of turning into a false skew.
pub fn clock_skew(host_clock: f64, sent: f64, received: f64) -> f64 {
    if host_clock < sent {
        host_clock - sent
    } else if host_clock > received {
        host_clock - received
    } else {
        0.0
    }
}

pub fn host_failed(msg: impl Into<String>) -> Failure {
    Failure::new(Exit::HostFailed, msg)
}

/// What a command works with. Commands that only probe (status, switchover) use it
/// without SSH; commands that change hosts `connect` first.
pub struct Ctx<'a> {
    pub inv: &'a Inventory,
    /// The cluster's certificates (with `tls`), loaded where the run started.
    pub pki: Option<crate::pki::Pki>,
    pub ep: Endpoints,
    pub ui: Ui,
    sessions: BTreeMap<String, Session>,
    /// Hosts a `--limit` run may act on (empty: all).
    limit: Vec<String>,
    /// The cluster lock this run holds, checked before every step that changes
    /// the cluster.
    lock: Mutex<Option<Arc<LockGuard>>>,
}

impl<'a> Ctx<'a> {
    pub fn new(inv: &'a Inventory, pki: Option<crate::pki::Pki>, ui: &Ui) -> Ctx<'a> {
        for w in &inv.warnings {
            ui.warn(&w.message);
        }
        Ctx {
            inv,
            // Certificates without `tls` are pgBackRest's only: probes speak plain HTTP.
            ep: Endpoints::new(
                inv,
                crate::probe::Net::new(pki.as_ref().filter(|_| inv.cluster.tls).map(|p| p.tls())),
            ),
            pki,
            ui: ui.clone(),
            sessions: BTreeMap::new(),
            limit: Vec::new(),
            lock: Mutex::new(None),
        }
    }

    /// From now on, steps check that this run still holds the cluster lock.
    pub fn hold_lock(&self, guard: Arc<LockGuard>) {
        *self.lock.lock().unwrap() = Some(guard);
    }

    /// The lock was given back: steps no longer check it.
    pub fn drop_lock(&self) {
        *self.lock.lock().unwrap() = None;
    }

    /// Before a step that changes the cluster: Ok while this run holds the cluster
    /// lock (or takes none); once it is lost, the failure that stops the command
    /// before `step`.
    pub async fn ensure_locked(&self, step: &str) -> Result<(), Failure> {
        let guard = self.lock.lock().unwrap().clone();
        match guard {
            Some(g) => g.check(step).await,
            None => Ok(()),
        }
    }

    /// This run's id (the cluster lock's holder id; empty without the lock).
    pub fn run_id(&self) -> String {
        self.lock
            .lock()
            .unwrap()
            .as_ref()
            .map(|g| g.holder_id().to_string())
            .unwrap_or_default()
    }

    /// Whether the lock this run held was lost (no cleanup may change the cluster).
    pub fn lock_lost(&self) -> bool {
        self.lock
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|g| g.lost().is_some())
    }

    /// Restrict per-host steps to these hosts (`--limit`); refuses unknown names.
    pub fn with_limit(mut self, limit: &[String]) -> Result<Self, Failure> {
        let unknown: Vec<&str> = limit
            .iter()
            .filter(|h| self.inv.host(h).is_none())
            .map(|s| s.as_str())
            .collect();
        if !unknown.is_empty() {
            return Err(Failure::options(format!(
                "--limit names unknown host(s) {}; the inventory has: {}",
                unknown.join(", "),
                self.all_hosts().join(", ")
            )));
        }
        self.limit = limit.to_vec();
        Ok(self)
    }

    pub fn all_hosts(&self) -> Vec<String> {
        self.inv.hosts.iter().map(|h| h.name.clone()).collect()
    }
    pub fn db_hosts(&self) -> Vec<String> {
        self.inv.db_hosts().iter().map(|h| h.name.clone()).collect()
    }
    pub fn etcd_hosts(&self) -> Vec<String> {
        self.inv
            .etcd_hosts()
            .iter()
            .map(|h| h.name.clone())
            .collect()
    }
    pub fn router_hosts(&self) -> Vec<String> {
        self.inv
            .router_hosts()
            .iter()
            .map(|h| h.name.clone())
            .collect()
    }

    /// Patroni REST base URL of a db host of the inventory.
    pub fn api(&self, host: &str) -> String {
        self.ep
            .api_of(host)
            .expect("Patroni hosts come from the inventory")
            .to_string()
    }

    /// Whether --limit lets this run act on the host.
    pub fn acts_on(&self, host: &str) -> bool {
        self.limit.is_empty() || self.limit.iter().any(|h| h == host)
    }
    pub fn limited(&self) -> bool {
        !self.limit.is_empty()
    }

    /// One SSH session per host (host keys verified). Any host that cannot be
    /// reached fails the run before a change: exit 3 (unreachable) or 2.
    pub async fn connect(&mut self, ssh: &SshOptions, hosts: &[String]) -> Result<(), Failure> {
        let phase = self.ui.phase("connect");
        phase.set(format!("{} hosts", hosts.len()));
        let targets: Vec<_> = hosts
            .iter()
            .filter_map(|h| self.inv.host(h).map(|h| h.ssh.clone()))
            .collect();
        let mut unreachable = Vec::new();
        let mut other = Vec::new();
        for (host, res) in ssh::connect_all(&targets, ssh).await {
            match res {
                Ok(s) => {
                    self.sessions.insert(host, s);
                }
                Err(e) => {
                    let f: Failure = e.into();
                    if f.exit == Exit::Unreachable {
                        self.ui.unreachable(&host);
                        unreachable.push(f.message);
                    } else {
                        self.ui.failed(&host);
                        other.push(f.message);
                    }
                }
            }
        }
        if !unreachable.is_empty() || !other.is_empty() {
            self.close().await;
            let exit = if unreachable.is_empty() {
                Exit::HostFailed
            } else {
                Exit::Unreachable
            };
            let mut all = unreachable;
            all.extend(other);
            return Err(Failure::new(
                exit,
                format!(
                    "nothing was changed; cannot reach every host:\n  {}",
                    all.join("\n  ")
                ),
            ));
        }
        phase.done(format!("{} hosts, host keys verified", self.sessions.len()));
        Ok(())
    }

    /// One host's session, opened without progress lines or recap entries: a
    /// reading command's side channel (status's view of the backup repository).
    pub async fn connect_quietly(&mut self, ssh: &SshOptions, host: &str) -> Result<(), String> {
        match self
            .connect_quietly_all(ssh, &[host.to_string()])
            .await
            .into_iter()
            .next()
        {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Sessions to `hosts`, opened at once without progress lines or recap
    /// entries: each host that could not be reached, with why (the caller does
    /// without it).
    pub async fn connect_quietly_all(
        &mut self,
        ssh: &SshOptions,
        hosts: &[String],
    ) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        let mut targets = Vec::new();
        for host in hosts {
            match self.inv.host(host) {
                Some(h) => targets.push(h.ssh.clone()),
                None => failed.push((host.clone(), format!("{host} is not in the inventory"))),
            }
        }
        for (h, r) in ssh::connect_all(&targets, ssh).await {
            match r {
                Ok(s) => {
                    self.sessions.insert(h, s);
                }
                Err(e) => failed.push((h, Failure::from(e).message)),
            }
        }
        failed
    }

    /// A session to a host outside the inventory (one `pgha remove` takes out),
    /// under its own name; host keys verified as for every host.
    pub async fn connect_outside(
        &mut self,
        ssh: &SshOptions,
        target: crate::inventory::SshTarget,
    ) -> Result<(), Failure> {
        match ssh::connect_all(&[target], ssh).await.into_iter().next() {
            Some((h, Ok(s))) => {
                self.sessions.insert(h, s);
                Ok(())
            }
            Some((_, Err(e))) => Err(e.into()),
            None => Err(Failure::error("no connection attempt was made")),
        }
    }

    pub async fn close(&self) {
        for s in self.sessions.values() {
            s.close().await;
        }
    }

    /// The SSH session of a connected host.
    pub fn session(&self, host: &str) -> Result<&Session, Failure> {
        self.sessions
            .get(host)
            .ok_or_else(|| Failure::error(format!("{host}: no SSH session (not connected)")))
    }

    pub fn has_session(&self, host: &str) -> bool {
        self.sessions.contains_key(host)
    }

    /// Run `f` on each host in parallel (those --limit allows); every failure is
    /// collected and reported with the host and the step, then the run stops (exit 2).
    /// `f` returns the number of changes it made on its host.
    pub async fn each<F, Fut>(&self, hosts: &[String], step: &str, f: F) -> Result<(), Failure>
    where
        F: Fn(String, Session) -> Fut,
        Fut: Future<Output = anyhow::Result<u32>>,
    {
        self.ensure_locked(step).await?;
        let mut futs = Vec::new();
        for h in hosts.iter().filter(|h| self.acts_on(h)) {
            let fut = f(h.clone(), self.session(h)?.clone());
            futs.push(async move { (h.clone(), fut.await) });
        }
        let mut failures = Vec::new();
        for (host, res) in join_all(futs).await {
            match res {
                Ok(n) => {
                    if n > 0 {
                        self.ui.changed(&host, n);
                    }
                }
                Err(e) => {
                    self.ui.failed(&host);
                    failures.push(format!("{host}: {step}: {e:#}"));
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(host_failed(self.inv.secrets.redact(&failures.join("\n"))))
        }
    }

    /// Facts from every host in `requests`, one read-only script each, in parallel.
    /// Returns the facts and each host's clock skew to this machine (seconds).
    pub async fn gather(
        &self,
        requests: &BTreeMap<String, FactsRequest>,
    ) -> Result<(BTreeMap<String, HostFacts>, BTreeMap<String, f64>), Failure> {
        let phase = self.ui.phase("facts");
        let mut futs = Vec::new();
        for (host, req) in requests {
            let s = self.session(host)?.clone();
            let script = facts::script(req);
            futs.push(async move {
                let t0 = now_secs();
                let out = s
                    .exec(&Cmd::root(script).timeout(Duration::from_secs(60)))
                    .await;
                let window = (t0, now_secs());
                tracing::debug!(host = %host, "facts in {:.3}s", window.1 - window.0);
                let res = match out {
                    Ok(o) => o
                        .ok()
                        .map_err(anyhow::Error::from)
                        .and_then(|o| facts::parse(host, &o.stdout_str()).map(|f| (f, window))),
                    Err(e) => Err(e.into()),
                };
                (host.clone(), res)
            });
        }
        let mut failures = Vec::new();
        let mut all = BTreeMap::new();
        let mut skews = BTreeMap::new();
        for (host, res) in join_all(futs).await {
            match res {
                Ok((f, (t0, t1))) => {
                    skews.insert(host.clone(), clock_skew(f.clock, t0, t1));
                    all.insert(host, f);
                }
                Err(e) => {
                    self.ui.failed(&host);
                    failures.push(format!("{host}: gathering facts: {e:#}"));
                }
            }
        }
        if !failures.is_empty() {
            return Err(host_failed(format!(
                "nothing was changed:\n  {}",
                failures.join("\n  ")
            )));
        }
        phase.done(format!("{} hosts", all.len()));
        Ok((all, skews))
    }

    /// Run a root script on a host; a failure names the host and the step.
    pub async fn run_on(
        &self,
        host: &str,
        step: &str,
        script: impl Into<String>,
    ) -> Result<String, Failure> {
        self.ensure_locked(&format!("{host}: {step}")).await?;
        crate::engine::apply::run(self.session(host)?, script)
            .await
            .map_err(|e| host_failed(self.inv.secrets.redact(&format!("{host}: {step}: {e:#}"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_round_trip_is_not_a_skew() {
        assert_eq!(clock_skew(105.0, 100.0, 106.0), 0.0);
        assert_eq!(clock_skew(97.0, 100.0, 106.0), -3.0);
        assert_eq!(clock_skew(110.5, 100.0, 106.0), 4.5);
    }
}
