//! Who holds the cluster lock (`Holder`), and whether this run still does
//! (`LockGuard`): the lock's keepers record each renewal here, and every step that
//! changes the cluster asks it first (through `Ctx::ensure_locked`). Knows nothing
//! of how the lock is taken (`lock`).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::Client;
use serde::{Deserialize, Serialize};

use crate::error::Failure;
use crate::probe::Net;
use crate::probe::etcd::connect_any;

/// Seconds an etcd lock outlives a holder that stopped renewing it. As long as
/// the host lock's expiry: an etcd starved for seconds on a loaded host (keep-alives
/// unanswered for over 10 s were seen on the 2-CPU lab) must not take the lock from
/// a live run, and a dead holder's host lock keeps it 30 s anyway.
pub const ETCD_TTL: i64 = 30;
/// Seconds a host lock outlives a holder that stopped refreshing it.
pub const HOST_TTL: u64 = 30;

/// Who holds the lock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Holder {
    pub user: String,
    pub controller: String,
    pub command: String,
    pub pid: u32,
    /// Seconds since the epoch.
    pub since: u64,
    /// Random id of the run, to tell our own lock from another's.
    pub id: String,
}

impl Holder {
    pub fn me(command: &str) -> Holder {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| current_user());
        let controller = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Holder {
            user,
            controller,
            command: command.to_string(),
            pid: std::process::id(),
            since: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            id: String::new(),
        }
        .with_run_id()
    }

    /// A run id unique to this run: a random token beside the controller and pid,
    /// so two controllers with one name (containers, `localhost`) never match.
    fn with_run_id(mut self) -> Holder {
        self.id = format!(
            "{}:{}:{:016x}",
            self.controller,
            self.pid,
            rand::random::<u64>()
        );
        self
    }

    /// A note for a refusal: the holder ran here and its process is gone, so its
    /// lock will expire (it is never taken over for that: another controller may
    /// share this host name).
    pub(super) fn gone_note(&self) -> String {
        let here = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        if self.controller == here && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
        {
            format!(
                " (no process {} runs on this machine: if that was this holder, its lock \
                 expires by itself)",
                self.pid
            )
        } else {
            String::new()
        }
    }

    pub fn describe(&self) -> String {
        let since = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(self.since));
        format!(
            "{}@{} running `{}` since {since} (pid {})",
            self.user, self.controller, self.command, self.pid
        )
    }
}

/// The user name of this process from /etc/passwd (USER is not always set: cron,
/// containers), else its uid.
fn current_user() -> String {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_string))
        })
        .unwrap_or_else(|| "?".into());
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid).then(|| f[0].to_string())
            })
        })
        .unwrap_or(format!("uid {uid}"))
}

/// The etcd part of a held lock, as the guard checks it.
#[derive(Clone)]
struct EtcdHold {
    endpoints: Vec<String>,
    lease: i64,
    /// When the last keep-alive that etcd answered was sent: the lease lives at
    /// least ETCD_TTL from then unless revoked.
    renewed: Instant,
}

#[derive(Default)]
struct GuardState {
    etcd: Option<EtcdHold>,
    /// When the last host-lock refresh that succeeded was sent.
    host: Option<Instant>,
    lost: Option<String>,
}

/// Seconds a renewal proves the etcd lease alive when etcd cannot be asked
/// directly (the lease's TTL less a renewal period and a margin).
const ETCD_CONFIRM: Duration = Duration::from_secs(ETCD_TTL as u64 - 4);
/// The same for the host lock.
const HOST_CONFIRM: Duration = Duration::from_secs(HOST_TTL - 5);

/// Whether this run still holds the cluster lock. The keepers record each renewal;
/// `check` (through `Ctx::ensure_locked`, before every step that changes the
/// cluster) asks etcd whether the key is still this run's, and fails once the lock
/// is lost, naming the loss and the step it stopped before.
pub struct LockGuard {
    key: String,
    holder: Holder,
    net: Net,
    state: Mutex<GuardState>,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl LockGuard {
    pub(super) fn new(key: String, holder: Holder, net: Net) -> LockGuard {
        LockGuard {
            key,
            holder,
            net,
            state: Mutex::new(GuardState::default()),
            client: tokio::sync::Mutex::new(None),
        }
    }

    pub(super) fn lose(&self, why: String) {
        let mut s = self.state.lock().unwrap();
        if s.lost.is_none() {
            tracing::warn!("cluster lock lost: {why}");
            s.lost = Some(why);
        }
    }

    /// The id of the run holding it.
    pub fn holder_id(&self) -> &str {
        &self.holder.id
    }

    /// Why the lock was lost, once it was.
    pub fn lost(&self) -> Option<String> {
        self.state.lock().unwrap().lost.clone()
    }

    /// The lock is held in etcd now, under `lease` granted at `granted`.
    pub(super) fn held_in_etcd(&self, endpoints: &[String], lease: i64, granted: Instant) {
        self.state.lock().unwrap().etcd = Some(EtcdHold {
            endpoints: endpoints.to_vec(),
            lease,
            renewed: granted,
        });
    }

    /// The etcd part was given back (etcd is about to stop): only the host lock
    /// is checked from now on.
    pub(super) fn released_etcd(&self) {
        self.state.lock().unwrap().etcd = None;
    }

    pub(super) fn renewed_etcd(&self, sent: Instant) {
        if let Some(e) = self.state.lock().unwrap().etcd.as_mut() {
            e.renewed = e.renewed.max(sent);
        }
    }

    pub(super) fn refreshed_host(&self, sent: Instant) {
        let mut s = self.state.lock().unwrap();
        s.host = Some(s.host.map_or(sent, |h| h.max(sent)));
    }

    /// The lock key's value and lease as etcd has it now (None: no key).
    async fn read_key(&self, endpoints: &[String]) -> Result<Option<(Vec<u8>, i64)>, String> {
        let mut slot = self.client.lock().await;
        if slot.is_none() {
            *slot = Some(connect_any(&self.net, endpoints).await?);
        }
        let c = slot.as_mut().expect("client set above");
        let got =
            tokio::time::timeout(Duration::from_secs(3), c.get(self.key.as_str(), None)).await;
        match got {
            Ok(Ok(r)) => Ok(r.kvs().first().map(|kv| (kv.value().to_vec(), kv.lease()))),
            Ok(Err(e)) => {
                *slot = None;
                Err(e.to_string())
            }
            Err(_) => {
                *slot = None;
                Err("no answer within 3 s".into())
            }
        }
    }

    /// Ok while this run holds the lock; otherwise the failure that stops the
    /// command before `step`.
    pub async fn check(&self, step: &str) -> Result<(), Failure> {
        let (etcd, host) = {
            let s = self.state.lock().unwrap();
            (s.etcd.clone(), s.host)
        };
        if let Some(sent) = host
            && sent.elapsed() > HOST_CONFIRM
        {
            self.lose(format!(
                "the host lock was not refreshed for {} s",
                sent.elapsed().as_secs()
            ));
        }
        if let Some(e) = etcd
            && self.lost().is_none()
        {
            match self.read_key(&e.endpoints).await {
                Ok(Some((value, lease))) => {
                    let h = serde_json::from_slice::<Holder>(&value).ok();
                    if lease != e.lease || h.as_ref().is_none_or(|h| h.id != self.holder.id) {
                        self.lose(format!(
                            "etcd key {} now holds {}",
                            self.key,
                            h.map_or("another value".into(), |h| h.describe())
                        ));
                    }
                }
                Ok(None) => self.lose(format!(
                    "etcd key {} is gone (its lease was revoked or expired)",
                    self.key
                )),
                Err(err) if e.renewed.elapsed() > ETCD_CONFIRM => self.lose(format!(
                    "etcd could not confirm it ({err}) and it was last renewed {} s ago",
                    e.renewed.elapsed().as_secs()
                )),
                // etcd briefly unreachable (a member restarting) with a recent
                // renewal: the lease is alive.
                Err(_) => {}
            }
        }
        match self.lost() {
            None => Ok(()),
            Some(why) => Err(Failure::error(format!(
                "the cluster lock was lost ({why}); stopped before \"{step}\". What this run \
                 changed until then is in the recap; check the cluster (`pgha status`) and run \
                 the command again when the lock is free (`pgha lock`)"
            ))),
        }
    }
}
