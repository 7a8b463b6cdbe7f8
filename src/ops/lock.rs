//! The cluster lock: one command that changes the cluster at a time.
//!
//! Held in etcd under `/pgha/<cluster>/lock`, attached to a lease of `ETCD_TTL`
//! seconds that the holder keeps alive: a holder that crashes or loses its network
//! releases it within that time. Before etcd exists (a first deploy), and in every
//! command that has SSH sessions, it is also held on the first db host as
//! `/var/lib/pgha/lock`, a file with an expiry the holder refreshes (`HOST_TTL`).
//! A second command finds either and stops before any change, naming the holder.
//!
//! A lock is judged only by its lease (etcd) or its expiry (host file): a holder
//! that stopped renewing loses it when that runs out, never because its process
//! looks absent from here (two controllers may share a host name). The holder, in
//! turn, checks before each change that it still holds the lock (`LockGuard`), and
//! stops when it does not.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::Serialize;
use tokio::task::JoinHandle;

use super::guard::{ETCD_TTL, HOST_TTL, Holder, LockGuard};
use super::run::Ctx;
use crate::error::Failure;
use crate::probe::Net;
use crate::ssh::{Cmd, Session, shell_quote};

const RENEW_EVERY: Duration = Duration::from_secs(3);
const HOST_LOCK: &str = "/var/lib/pgha/lock";

/// Why a lock could not be taken: held by another run (worth waiting for with
/// `--lock-wait`), or an error.
enum TakeError {
    Held(Failure),
    Other(Failure),
}

impl From<TakeError> for Failure {
    fn from(e: TakeError) -> Failure {
        match e {
            TakeError::Held(f) | TakeError::Other(f) => f,
        }
    }
}

fn held(what: &str, h: &Holder, ttl: String) -> TakeError {
    TakeError::Held(Failure::error(format!(
        "the cluster lock ({what}) is held by {}{}; nothing was changed. Wait for it to finish \
         (or pass --lock-wait SECS). A holder that crashed or lost its network releases the \
         lock within {ttl}; a lock left behind otherwise can be seen with `pgha lock` and \
         removed with `pgha lock --break`",
        h.describe(),
        h.gone_note()
    )))
}

/// The etcd lock key of a cluster.
pub fn etcd_key(cluster: &str) -> String {
    format!("/pgha/{cluster}/lock")
}

/// One keep-alive of the lease: Some(true) renewed, Some(false) the lease is gone
/// (expired or revoked: etcd answers TTL 0), None no answer in time.
async fn renew(
    keeper: &mut etcd_client::LeaseKeeper,
    stream: &mut etcd_client::LeaseKeepAliveStream,
) -> Option<bool> {
    keeper.keep_alive().await.ok()?;
    match tokio::time::timeout(RENEW_EVERY, stream.message()).await {
        Ok(Ok(Some(r))) => Some(r.ttl() > 0),
        _ => None,
    }
}

async fn etcd_client(net: &Net, endpoints: &[String]) -> Result<Client, String> {
    crate::probe::etcd::connect_any(net, endpoints).await
}

/// Releases still to do when the process is interrupted (Ctrl-C).
enum Release {
    Etcd {
        net: Net,
        endpoints: Vec<String>,
        lease: i64,
    },
    Host {
        session: Session,
        id: String,
    },
}

static HELD: Mutex<Vec<(String, Release)>> = Mutex::new(Vec::new());

fn remember(id: &str, r: Release) {
    HELD.lock().unwrap().push((id.to_string(), r));
}

fn forget(id: &str) {
    HELD.lock().unwrap().retain(|(i, _)| i != id);
}

/// Release every lock this process holds (on Ctrl-C, before exiting).
pub async fn release_all() {
    let all: Vec<(String, Release)> = std::mem::take(&mut *HELD.lock().unwrap());
    for (_, r) in all {
        match r {
            Release::Etcd {
                net,
                endpoints,
                lease,
            } => {
                if let Ok(mut c) = etcd_client(&net, &endpoints).await {
                    let _ = c.lease_revoke(lease).await;
                }
            }
            Release::Host { session, id } => {
                let _ = session.exec(&Cmd::root(host_release_script(&id))).await;
            }
        }
    }
}

struct EtcdLock {
    endpoints: Vec<String>,
    lease: i64,
    keeper: JoinHandle<()>,
}

struct HostLock {
    session: Session,
    refresher: JoinHandle<()>,
}

/// The lock a command holds for its whole run; `release` at the end (also on failure).
pub struct ClusterLock {
    holder: Holder,
    cluster: String,
    net: Net,
    guard: Arc<LockGuard>,
    etcd: Option<EtcdLock>,
    host: Option<HostLock>,
}

impl ClusterLock {
    /// Take the lock: on the first db host when connected to it, and in etcd when
    /// `etcd_exists`. A lock held by another run is waited for up to `wait`, then
    /// refused (exit 1) naming the holder. Steps of `ctx` check it from then on.
    pub async fn acquire(
        ctx: &Ctx<'_>,
        command: &str,
        etcd_exists: bool,
        wait: Duration,
    ) -> Result<ClusterLock, Failure> {
        let deadline = Instant::now() + wait;
        let mut said = false;
        loop {
            match Self::try_acquire(ctx, command, etcd_exists).await {
                Ok(lock) => {
                    ctx.hold_lock(lock.guard.clone());
                    return Ok(lock);
                }
                Err(TakeError::Held(f)) if Instant::now() < deadline => {
                    if !said {
                        ctx.ui.line(format!(
                            "waiting up to {} s for the cluster lock: {}",
                            wait.as_secs(),
                            f.message.split(';').next().unwrap_or_default()
                        ));
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn try_acquire(
        ctx: &Ctx<'_>,
        command: &str,
        etcd_exists: bool,
    ) -> Result<ClusterLock, TakeError> {
        let holder = Holder::me(command);
        let cluster = ctx.inv.cluster.cluster_name.clone();
        let mut lock = ClusterLock {
            guard: Arc::new(LockGuard::new(
                etcd_key(&cluster),
                holder.clone(),
                ctx.ep.net.clone(),
            )),
            holder,
            cluster,
            net: ctx.ep.net.clone(),
            etcd: None,
            host: None,
        };
        let first_db = ctx.db_hosts()[0].clone();
        if ctx.has_session(&first_db) {
            let session = ctx.session(&first_db).map_err(TakeError::Other)?.clone();
            if let Err(f) = lock.take_host(session).await {
                lock.release_inner().await;
                return Err(f);
            }
        }
        if etcd_exists && let Err(f) = lock.take_etcd(&ctx.ep.etcd).await {
            lock.release_inner().await;
            return Err(f);
        }
        Ok(lock)
    }

    /// Also take the etcd lock (a first deploy, once etcd has formed).
    pub async fn add_etcd(&mut self, endpoints: &[String]) -> Result<(), Failure> {
        if self.etcd.is_some() {
            return Ok(());
        }
        Ok(self.take_etcd(endpoints).await?)
    }

    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    // Long by design: the lock's transaction and the keeper task that renews its lease.
    async fn take_etcd(&mut self, endpoints: &[String]) -> Result<(), TakeError> {
        let other = |f: String| TakeError::Other(Failure::error(f));
        let mut c = etcd_client(&self.net, endpoints).await.map_err(other)?;
        let key = etcd_key(&self.cluster);
        let granted = Instant::now();
        let lease = c
            .lease_grant(ETCD_TTL, None)
            .await
            .map_err(|e| other(format!("cluster lock: etcd lease: {e}")))?
            .id();
        let value = serde_json::to_string(&self.holder).expect("holder serializes");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = c
            .txn(txn)
            .await
            .map_err(|e| other(format!("cluster lock: etcd: {e}")))?;
        if !resp.succeeded() {
            // Held: only its lease decides when it ends, never a guess about its holder.
            let _ = c.lease_revoke(lease).await;
            let holder = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .and_then(|kv| serde_json::from_slice::<Holder>(kv.value()).ok()),
                _ => None,
            });
            return Err(match holder {
                Some(h) => held(&format!("etcd key {key}"), &h, format!("{ETCD_TTL} s")),
                None => TakeError::Held(Failure::error(format!(
                    "the cluster lock (etcd key {key}) is held by an unknown holder; nothing was \
                     changed; see `pgha lock`"
                ))),
            });
        }
        let (keeper, stream) = c
            .lease_keep_alive(lease)
            .await
            .map_err(|e| other(format!("cluster lock: etcd keep-alive: {e}")))?;
        self.guard.held_in_etcd(endpoints, lease, granted);
        let eps = endpoints.to_vec();
        let net = self.net.clone();
        let guard = self.guard.clone();
        let keeper_task = tokio::spawn(async move {
            // The lease is the cluster's, not the endpoint's: when the member this
            // client talks to restarts (an upgrade restarts each in turn), keep the
            // same lease alive through any member that answers.
            let mut chan = Some((keeper, stream));
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                let sent = Instant::now();
                let answer = match chan.as_mut() {
                    Some((k, s)) => renew(k, s).await,
                    None => None,
                };
                let answer = match answer {
                    Some(a) => Some(a),
                    None => {
                        chan = None;
                        match etcd_client(&net, &eps).await {
                            Ok(mut c) => match c.lease_keep_alive(lease).await {
                                Ok((mut k, mut s)) => {
                                    let a = renew(&mut k, &mut s).await;
                                    chan = Some((k, s));
                                    a
                                }
                                Err(e) => {
                                    tracing::warn!("cluster lock: renewing its lease: {e}");
                                    None
                                }
                            },
                            Err(e) => {
                                tracing::warn!("cluster lock: renewing its lease: {e}");
                                None
                            }
                        }
                    }
                };
                match answer {
                    Some(true) => guard.renewed_etcd(sent),
                    Some(false) => {
                        guard.lose(format!("its etcd lease {lease:x} was revoked or expired"));
                        return;
                    }
                    None => {}
                }
            }
        });
        remember(
            &self.holder.id,
            Release::Etcd {
                net: self.net.clone(),
                endpoints: endpoints.to_vec(),
                lease,
            },
        );
        self.etcd = Some(EtcdLock {
            endpoints: endpoints.to_vec(),
            lease,
            keeper: keeper_task,
        });
        Ok(())
    }

    async fn take_host(&mut self, session: Session) -> Result<(), TakeError> {
        let script = host_acquire_script(&self.holder);
        let sent = Instant::now();
        let answer = session
            .exec(&Cmd::root(script.clone()).timeout(Duration::from_secs(30)))
            .await
            .and_then(|o| o.ok())
            .map(|o| parse_host_answer(&o.stdout_str()))
            .map_err(|e| {
                TakeError::Other(Failure::error(format!(
                    "cluster lock on {}: {e}",
                    session.host()
                )))
            })?;
        match answer {
            HostAnswer::Acquired => self.guard.refreshed_host(sent),
            HostAnswer::Held(h) => {
                return Err(held(
                    &format!("{HOST_LOCK} on {}", session.host()),
                    &h,
                    format!("{HOST_TTL} s"),
                ));
            }
            HostAnswer::Unreadable(t) => {
                return Err(TakeError::Other(Failure::error(format!(
                    "cluster lock on {}: unexpected answer {t:?}",
                    session.host()
                ))));
            }
        }
        let s2 = session.clone();
        let guard = self.guard.clone();
        let refresher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                let sent = Instant::now();
                let r = s2
                    .exec(&Cmd::root(script.clone()).timeout(Duration::from_secs(20)))
                    .await;
                match r.map(|o| parse_host_answer(&o.stdout_str())) {
                    Ok(HostAnswer::Acquired) => guard.refreshed_host(sent),
                    Ok(HostAnswer::Held(h)) => {
                        guard.lose(format!(
                            "the host lock on {} is held by {}",
                            s2.host(),
                            h.describe()
                        ));
                        return;
                    }
                    _ => tracing::warn!("cluster lock: refreshing the host lock failed; retrying"),
                }
            }
        });
        remember(
            &format!("{}-host", self.holder.id),
            Release::Host {
                session: session.clone(),
                id: self.holder.id.clone(),
            },
        );
        self.host = Some(HostLock { session, refresher });
        Ok(())
    }

    /// Give the lock back (etcd lease revoked, host lock file removed); steps of
    /// `ctx` no longer check it.
    /// Give back the etcd part of the lock and keep the host part (a command that
    /// stops etcd itself): a lease left in a stopped etcd would come back with it
    /// and refuse the next command until it expires.
    pub async fn release_etcd(&mut self) {
        if let Some(e) = self.etcd.take() {
            self.guard.released_etcd();
            e.keeper.abort();
            if let Ok(mut c) = etcd_client(&self.net, &e.endpoints).await {
                let _ = c.lease_revoke(e.lease).await;
            }
        }
    }

    pub async fn release(self, ctx: &Ctx<'_>) {
        ctx.drop_lock();
        self.release_inner().await;
    }

    async fn release_inner(self) {
        if let Some(e) = self.etcd {
            e.keeper.abort();
            if let Ok(mut c) = etcd_client(&self.net, &e.endpoints).await {
                let _ = c.lease_revoke(e.lease).await;
            }
        }
        if let Some(h) = self.host {
            h.refresher.abort();
            let _ = h
                .session
                .exec(&Cmd::root(host_release_script(&self.holder.id)))
                .await;
        }
        forget(&self.holder.id);
        forget(&format!("{}-host", self.holder.id));
    }
}

#[derive(Debug, PartialEq)]
enum HostAnswer {
    Acquired,
    Held(Holder),
    Unreadable(String),
}

fn parse_host_answer(text: &str) -> HostAnswer {
    let mut lines = text.lines();
    match lines.next() {
        Some("ACQUIRED") => HostAnswer::Acquired,
        Some("HELD") => lines
            .next()
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|v| serde_json::from_slice(&v).ok())
            .map(HostAnswer::Held)
            .unwrap_or_else(|| HostAnswer::Unreadable(text.to_string())),
        _ => HostAnswer::Unreadable(text.to_string()),
    }
}

/// Take or refresh the host lock: under flock, a lock file of another run that has
/// not expired (by the host's own clock) wins; otherwise ours is written with a new
/// expiry. Prints ACQUIRED, or HELD and the holder (base64 JSON).
fn host_acquire_script(h: &Holder) -> String {
    let holder = base64::engine::general_purpose::STANDARD
        .encode(serde_json::to_vec(h).expect("holder serializes"));
    format!(
        r#"set -e
f={f}; d=$(dirname "$f"); mkdir -p -m 0700 "$d"
exec 9>"$f.guard"
flock -w 10 9
now=$(date +%s)
if [ -s "$f" ]; then
  id=$(sed -n 's/^id=//p' "$f"); exp=$(sed -n 's/^expires=//p' "$f")
  if [ "$id" != {id} ] && [ "${{exp:-0}}" -gt "$now" ]; then
    echo HELD; sed -n 's/^holder=//p' "$f"; exit 0
  fi
fi
printf 'id=%s\nexpires=%s\nholder=%s\n' {id} "$((now + {ttl}))" {holder} > "$f.tmp"
mv "$f.tmp" "$f"
echo ACQUIRED
"#,
        f = shell_quote(HOST_LOCK),
        id = shell_quote(&h.id),
        ttl = HOST_TTL,
        holder = shell_quote(&holder),
    )
}

fn host_release_script(id: &str) -> String {
    format!(
        r#"f={f}
[ -e "$f" ] || exit 0
exec 9>"$f.guard"; flock -w 10 9
[ "$(sed -n 's/^id=//p' "$f")" = {id} ] && rm -f "$f"
exit 0
"#,
        f = shell_quote(HOST_LOCK),
        id = shell_quote(id)
    )
}

/// What `pgha lock` shows.
#[derive(Debug, Clone, Serialize)]
pub struct LockState {
    /// The etcd lock's holder; None when free (or etcd unreachable: see `etcd_error`).
    pub etcd: Option<Holder>,
    pub etcd_error: Option<String>,
    /// The host lock's holder and seconds until it expires, when connected.
    pub host: Option<(Holder, i64)>,
    pub host_name: Option<String>,
}

/// Read both locks (the host lock only when connected to the first db host).
pub async fn inspect(ctx: &Ctx<'_>) -> LockState {
    let key = etcd_key(&ctx.inv.cluster.cluster_name);
    let (etcd, etcd_error) = match etcd_client(&ctx.ep.net, &ctx.ep.etcd).await {
        Ok(mut c) => match c.get(key, None).await {
            Ok(r) => (
                r.kvs()
                    .first()
                    .and_then(|kv| serde_json::from_slice::<Holder>(kv.value()).ok()),
                None,
            ),
            Err(e) => (None, Some(e.to_string())),
        },
        Err(e) => (None, Some(e)),
    };
    let first = ctx.db_hosts()[0].clone();
    let mut host = None;
    if let Ok(s) = ctx.session(&first) {
        let script = format!(
            "f={f}; [ -s \"$f\" ] || exit 0; echo \"$(($(sed -n 's/^expires=//p' \"$f\") - $(date +%s)))\"; sed -n 's/^holder=//p' \"$f\"",
            f = shell_quote(HOST_LOCK)
        );
        if let Ok(o) = s.exec(&Cmd::root(script)).await {
            let text = o.stdout_str();
            let mut lines = text.lines();
            if let (Some(left), Some(b)) = (lines.next(), lines.next()) {
                let h = base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
                    .and_then(|v| serde_json::from_slice::<Holder>(&v).ok());
                if let (Some(h), Ok(left)) = (h, left.trim().parse::<i64>()) {
                    host = Some((h, left));
                }
            }
        }
    }
    LockState {
        etcd,
        etcd_error,
        host,
        host_name: ctx.has_session(&first).then_some(first),
    }
}

/// Remove both locks whoever holds them (`pgha lock --break`).
pub async fn break_locks(ctx: &Ctx<'_>) -> Result<(), Failure> {
    let key = etcd_key(&ctx.inv.cluster.cluster_name);
    match etcd_client(&ctx.ep.net, &ctx.ep.etcd).await {
        Ok(mut c) => {
            c.delete(key.clone(), None)
                .await
                .map_err(|e| Failure::error(format!("delete {key}: {e}")))?;
        }
        Err(e) => ctx.ui.warn(format!("etcd lock not removed: {e}")),
    }
    let first = ctx.db_hosts()[0].clone();
    if ctx.has_session(&first) {
        ctx.run_on(
            &first,
            "remove the host lock",
            format!("rm -f {}", shell_quote(HOST_LOCK)),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_answers_parse() {
        let h = Holder::me("deploy");
        let b = base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&h).unwrap());
        assert_eq!(parse_host_answer("ACQUIRED\n"), HostAnswer::Acquired);
        assert_eq!(
            parse_host_answer(&format!("HELD\n{b}\n")),
            HostAnswer::Held(h)
        );
        assert!(matches!(
            parse_host_answer("junk"),
            HostAnswer::Unreadable(_)
        ));
    }

    #[test]
    fn holder_description_names_user_host_command_and_time() {
        let h = Holder {
            user: "alice".into(),
            controller: "ctl1".into(),
            command: "pgha deploy".into(),
            pid: 42,
            since: 1_800_000_000,
            id: "x".into(),
        };
        assert_eq!(
            h.describe(),
            "alice@ctl1 running `pgha deploy` since 2027-01-15T08:00:00Z (pid 42)"
        );
    }

    #[test]
    fn the_acquire_script_quotes_the_holder() {
        let mut h = Holder::me("deploy");
        h.user = "o'brien".into();
        let s = host_acquire_script(&h);
        assert!(s.contains("flock -w 10 9"));
        assert!(!s.contains("o'brien"), "the holder travels base64-encoded");
    }
}
