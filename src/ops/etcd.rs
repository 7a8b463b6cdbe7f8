//! etcd actions: who leads, handing leadership to another member before its
//! leader is restarted, and the waits around member restarts.

use std::time::Duration;

use etcd_client::Client;

use super::run::Ctx;
use super::waits;
use crate::error::Failure;
use crate::probe::etcd;

/// Bound for quorum with every member healthy after a member restart.
pub const QUORUM: Duration = Duration::from_secs(90);
/// Bound of the wait for every member before etcd's leadership is placed.
const PLACEMENT: Duration = Duration::from_secs(30);

/// The etcd leader's member name, from a healthy endpoint.
pub async fn leader(ctx: &Ctx<'_>) -> Result<String, Failure> {
    let q = waits::wait_etcd_quorum(&ctx.ep, QUORUM).await?;
    Ok(q.leader)
}

/// Hand etcd leadership to `to` (by member name) so that restarting the current
/// leader costs no election while Patroni talks to etcd. Asked of the leader itself.
/// Raft gives a transfer up after one election timeout when the transferee does not
/// catch up in time (seen on a loaded lab right after `to` restarted), and etcd then
/// answers nothing until the client's deadline: asked again, of whoever leads then,
/// up to `MOVE_ATTEMPTS` times.
pub async fn move_leader(ctx: &Ctx<'_>, from: &str, to: &str) -> Result<(), Failure> {
    let mut leader = from.to_string();
    // The last attempt's error; None once the leadership moved or is moving.
    let mut failed: Option<String> = None;
    for attempt in 1..=MOVE_ATTEMPTS {
        if attempt > 1 {
            // The earlier attempt's transfer may have completed after all.
            let q = waits::wait_etcd_quorum(&ctx.ep, QUORUM).await?;
            if q.leader == to {
                failed = None;
                break;
            }
            leader = q.leader;
        }
        match ask_move(ctx, &leader, to).await {
            Ok(()) => {
                failed = None;
                break;
            }
            Err(e) => {
                tracing::debug!("etcd: move leadership, attempt {attempt}: {}", e.message);
                failed = Some(e.message);
            }
        }
    }
    if let Some(last) = failed {
        return Err(Failure::error(format!("{last} ({MOVE_ATTEMPTS} attempts)")));
    }
    crate::wait::until(&format!("etcd member {to} to lead"), QUORUM, || async {
        let q = etcd::probe(&ctx.ep.net, &ctx.ep.etcd)
            .await
            .quorum(ctx.ep.etcd.len())?;
        if q.leader == to {
            Ok(())
        } else {
            Err(format!("leader {}", q.leader))
        }
    })
    .await?;
    Ok(())
}

/// Attempts of a leadership move; each waits `MOVE_ANSWER` at most (a transfer
/// takes well under a second, and raft gives it up after the 1 s election timeout).
const MOVE_ATTEMPTS: u32 = 3;
const MOVE_ANSWER: Duration = Duration::from_secs(5);

/// One MoveLeader request, sent to the leader `from`.
async fn ask_move(ctx: &Ctx<'_>, from: &str, to: &str) -> Result<(), Failure> {
    let report = etcd::probe(&ctx.ep.net, &ctx.ep.etcd).await;
    let (from_ep, _) = report
        .member(from)
        .ok_or_else(|| Failure::error(format!("etcd member {from} does not answer")))?;
    let (_, to_id) = report
        .member(to)
        .ok_or_else(|| Failure::error(format!("etcd member {to} does not answer")))?;
    ctx.ensure_locked(&format!("etcd: move leadership {from} -> {to}"))
        .await?;
    if crate::testpoint::fail_once("etcd:move-leader") {
        return Err(Failure::error(format!(
            "etcd: move leadership {from} -> {to}: failed at the test's request"
        )));
    }
    let opts = ctx.ep.net.etcd_options(&from_ep, MOVE_ANSWER);
    let mut c = Client::connect([from_ep.as_str()], Some(opts))
        .await
        .map_err(|e| Failure::error(format!("etcd {from}: {e}")))?;
    c.move_leader(to_id)
        .await
        .map_err(|e| Failure::error(format!("etcd: move leadership {from} -> {to}: {e}")))?;
    // As if the answer were lost after the transfer happened: the next attempt must
    // find the leadership moved and call it done.
    if crate::testpoint::fail_once("etcd:move-leader-answer") {
        return Err(Failure::error(format!(
            "etcd: move leadership {from} -> {to}: answer dropped at the test's request"
        )));
    }
    Ok(())
}

/// The member to hand etcd leadership to: best a healthy member that is neither the
/// Patroni leader nor a synchronous standby, else one that is not the leader.
/// None when etcd's leader already sits well or nobody better can take it. Pure.
pub fn apart_from(
    etcd_leader: &str,
    patroni_leader: &str,
    sync: &[String],
    healthy: &[String],
) -> Option<String> {
    let is_sync = |m: &str| sync.iter().any(|s| s == m);
    let neither = |m: &str| m != patroni_leader && !is_sync(m);
    if neither(etcd_leader) {
        return None;
    }
    let best = healthy.iter().find(|m| neither(m));
    let other = healthy.iter().find(|m| *m != patroni_leader);
    match (best, etcd_leader == patroni_leader) {
        (Some(b), _) => Some(b.clone()),
        (None, true) => other.cloned(),
        (None, false) => None,
    }
}

/// Keep etcd's leader off the Patroni leader's host, and off the synchronous
/// standby's when another member can take it. Losing a host that leads both etcd
/// and Patroni costs an etcd election, and etcd's new leader renews every lease to
/// its full TTL (leases are not checkpointed below 5 minutes), so Patroni's leader
/// key outlives its dead holder by a whole `ttl` more: measured on the lab, 23-26 s
/// without writes instead of 17-22 s. But losing the etcd leader's host always
/// costs an election, and during one Patroni 4.0.7 can fail to renew its leader
/// key and demote a healthy leader (patroni#3407, fixed in 4.0.9): so the etcd
/// leader goes where its loss hurts least, the asynchronous replica. Best effort
/// (a warning when it cannot): nothing is wrong with the cluster either way.
/// Whether the leadership may have moved (it did, or a move failed midway).
pub async fn keep_apart(ctx: &Ctx<'_>) -> bool {
    match try_keep_apart(ctx).await {
        Ok(moved) => moved,
        Err(e) => {
            ctx.ui.warn(format!(
                "could not move etcd leadership off the Patroni leader's host: {}",
                e.message
            ));
            true
        }
    }
}

/// Patroni's view and its leader, when that leader's host also runs etcd.
async fn patroni_leader_on_etcd(
    ctx: &Ctx<'_>,
) -> Result<Option<(crate::probe::patroni::ClusterView, String)>, Failure> {
    let view = crate::probe::patroni::cluster_any(&ctx.ep.net, &ctx.ep.patroni_apis())
        .await
        .map_err(Failure::error)?;
    Ok(match view.leader().map(|l| l.name.clone()) {
        Some(leader) if ctx.etcd_hosts().contains(&leader) => Some((view, leader)),
        _ => None,
    })
}

async fn try_keep_apart(ctx: &Ctx<'_>) -> Result<bool, Failure> {
    if patroni_leader_on_etcd(ctx).await?.is_none() {
        return Ok(false);
    }
    // A wait, not one probe: a member that has just come back (a healed
    // partition, a restart) can miss one probe's timeout while the quorum is fine,
    // and deploy's short path reaches here without the etcd phase's own wait. A
    // shorter deadline than QUORUM's: this placement is best effort, and a member
    // really down should cost a command a warning, not a minute and a half.
    let q = waits::wait_etcd_quorum(&ctx.ep, PLACEMENT).await?;
    // Patroni's view read after the wait: a failover during a long wait would
    // otherwise send etcd's leadership to the new Patroni leader's host.
    let Some((view, patroni_leader)) = patroni_leader_on_etcd(ctx).await? else {
        return Ok(false);
    };
    // Quorum means every endpoint answered: each member is healthy.
    let healthy = q.members.clone();
    let sync: Vec<String> = view
        .members
        .iter()
        .filter(|m| m.role == "sync_standby")
        .map(|m| m.name.clone())
        .collect();
    let Some(to) = apart_from(&q.leader, &patroni_leader, &sync, &healthy) else {
        return Ok(false);
    };
    if let Err(e) = move_leader(ctx, &q.leader, &to).await {
        // The new primary's callback (pgha-role-change) may have moved it first.
        let now = etcd::probe(&ctx.ep.net, &ctx.ep.etcd).await;
        match now.quorum(ctx.ep.etcd.len()) {
            Ok(n) if n.leader != patroni_leader => return Ok(true),
            _ => return Err(e),
        }
    }
    ctx.ui.host(
        "etcd",
        format!(
            "leadership moved {} -> {to} (off the Patroni leader's and the synchronous standby's hosts)",
            q.leader
        ),
    );
    Ok(true)
}

/// One etcd member as the cluster lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MemberInfo {
    pub id: u64,
    /// Empty until a newly added member has started.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub learner: bool,
}

impl MemberInfo {
    pub fn id_hex(&self) -> String {
        format!("{:x}", self.id)
    }
}

fn infos(members: &[etcd_client::Member]) -> Vec<MemberInfo> {
    members
        .iter()
        .map(|m| MemberInfo {
            id: m.id(),
            name: m.name().to_string(),
            peer_urls: m.peer_urls().to_vec(),
            learner: m.is_learner(),
        })
        .collect()
}

pub async fn members(c: &mut Client) -> Result<Vec<MemberInfo>, Failure> {
    let r = c
        .member_list()
        .await
        .map_err(|e| Failure::error(format!("etcd member list: {e}")))?;
    Ok(infos(r.members()))
}

/// Remove a member. etcd refuses while the members left have not all been
/// connected to its leader for 5 s (a member that just joined or restarted): it
/// is asked again until it agrees.
pub async fn remove(c: &mut Client, m: &MemberInfo) -> Result<(), Failure> {
    let outcome = crate::wait::until(
        &format!(
            "etcd to accept the removal of member {} ({})",
            m.id_hex(),
            m.name
        ),
        QUORUM,
        || {
            let mut c = c.clone();
            async move {
                match c.member_remove(m.id).await {
                    Ok(_) => Ok(Ok(())),
                    Err(e)
                        if e.to_string().contains("unhealthy cluster")
                            || e.to_string().contains("not enough started members") =>
                    {
                        Err(e.to_string())
                    }
                    Err(e) => Ok(Err(e.to_string())),
                }
            }
        },
    )
    .await?;
    outcome.map_err(|e| {
        Failure::error(format!(
            "etcd: remove member {} ({}): {e}",
            m.id_hex(),
            m.name
        ))
    })
}

/// Add a learner (a non-voting member: no quorum check, so this works with a
/// member down) and return its id and the membership after the add. etcd refuses
/// any add ("unhealthy cluster") until its leader has been connected to every
/// voter for 5 s, so right after a promotion it is asked again until it agrees.
pub async fn add_learner(
    c: &mut Client,
    peer_url: &str,
) -> Result<(u64, Vec<MemberInfo>), Failure> {
    let outcome = crate::wait::until(
        &format!("etcd to accept {peer_url} as a learner (every voter connected for 5 s)"),
        QUORUM,
        || {
            let mut c = c.clone();
            async move {
                match c
                    .member_add(
                        [peer_url],
                        Some(etcd_client::MemberAddOptions::new().with_is_learner()),
                    )
                    .await
                {
                    Ok(r) => Ok(Ok(r)),
                    Err(e) if e.to_string().contains("unhealthy cluster") => Err(e.to_string()),
                    Err(e) => Ok(Err(e.to_string())),
                }
            }
        },
    )
    .await?;
    let r = outcome.map_err(|e| Failure::error(format!("etcd: add learner {peer_url}: {e}")))?;
    let id = r
        .member()
        .map(|m| m.id())
        .ok_or_else(|| Failure::error("etcd: member add returned no member"))?;
    Ok((id, members(c).await?))
}

/// `ETCD_INITIAL_CLUSTER` for a member joining this membership: every member's
/// name and peer URL, the joining (not yet started, unnamed) one under `name`.
pub fn initial_cluster(members: &[MemberInfo], joining_id: u64, name: &str) -> String {
    members
        .iter()
        .flat_map(|m| {
            let n = if m.id == joining_id {
                name
            } else {
                m.name.as_str()
            };
            m.peer_urls.iter().map(move |u| format!("{n}={u}"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Promote a learner once it caught up with the leader (etcd refuses before).
pub async fn promote(c: &mut Client, id: u64) -> Result<(), Failure> {
    crate::wait::until(
        &format!("etcd learner {id:x} to catch up and be promoted"),
        QUORUM,
        || {
            let mut c = c.clone();
            async move {
                c.member_promote(id)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await?;
    Ok(())
}

/// Save a snapshot of the etcd data to `path` (mode 0600) from one endpoint.
pub async fn snapshot(
    net: &crate::probe::Net,
    endpoint: &str,
    path: &std::path::Path,
) -> Result<u64, Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut c = etcd::client(net, &[endpoint.to_string()]).await?;
    let mut stream = c
        .snapshot()
        .await
        .map_err(|e| Failure::error(format!("etcd snapshot from {endpoint}: {e}")))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Failure::error(format!("cannot create {}: {e}", path.display())))?;
    let mut total = 0u64;
    while let Some(r) = stream
        .message()
        .await
        .map_err(|e| Failure::error(format!("etcd snapshot from {endpoint}: {e}")))?
    {
        f.write_all(r.blob())
            .map_err(|e| Failure::error(format!("writing {}: {e}", path.display())))?;
        total += r.blob().len() as u64;
    }
    f.sync_all()
        .map_err(|e| Failure::error(format!("writing {}: {e}", path.display())))?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_leadership_leaves_the_patroni_leaders_host_only() {
        let healthy: Vec<String> = ["db1", "db2", "db3"].map(String::from).to_vec();
        let sync = ["db2".to_string()];
        // Off the leader, onto the asynchronous replica.
        assert_eq!(
            apart_from("db1", "db1", &sync, &healthy),
            Some("db3".into())
        );
        // Off the synchronous standby too.
        assert_eq!(
            apart_from("db2", "db1", &sync, &healthy),
            Some("db3".into())
        );
        assert_eq!(apart_from("db3", "db1", &sync, &healthy), None);
        // Two members: off the leader onto the standby; nowhere better otherwise.
        let two = ["db1".to_string(), "db2".to_string()];
        assert_eq!(apart_from("db1", "db1", &sync, &two), Some("db2".into()));
        assert_eq!(apart_from("db2", "db1", &sync, &two), None);
        assert_eq!(apart_from("db1", "db1", &sync, &["db1".to_string()]), None);
    }

    #[test]
    fn the_joining_member_is_named_in_the_initial_cluster() {
        let m = vec![
            MemberInfo {
                id: 1,
                name: "db1".into(),
                peer_urls: vec!["http://10.0.0.11:2380".into()],
                learner: false,
            },
            MemberInfo {
                id: 9,
                name: String::new(),
                peer_urls: vec!["http://10.0.0.52:2380".into()],
                learner: true,
            },
            MemberInfo {
                id: 3,
                name: "db3".into(),
                peer_urls: vec!["http://10.0.0.13:2380".into()],
                learner: false,
            },
        ];
        assert_eq!(
            initial_cluster(&m, 9, "db2"),
            "db1=http://10.0.0.11:2380,db2=http://10.0.0.52:2380,db3=http://10.0.0.13:2380"
        );
    }
}
