//! One host's place in the cluster as a rebuild or a deploy changes it: where its
//! etcd membership stands, the safe replacement of that member (learner,
//! promotion), hosts joining and leaving etcd as the inventory says
//! (`ops::membership` judges which), the checks right before its data is wiped and
//! the wipe itself, and a snapshot of etcd taken before the membership changes.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::converge::Converge;
use super::endpoints::scheme;
use super::etcd::{self as etcd_ops, MemberInfo};
use super::membership::Changes;
use super::run::{Ctx, host_failed};
use super::waits;
use crate::engine::{apply, desired};
use crate::error::Failure;
use crate::install;
use crate::probe::{etcd, patroni};
use crate::ssh::shell_quote;

/// Where the target's etcd membership stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum EtcdState {
    /// A healthy voter at the target's address: nothing to do.
    Done,
    /// Added as a learner by an interrupted rebuild: start it (if needed) and promote.
    Learner { id: u64 },
    /// Remove these members (the old one, stale ones), then add the new one.
    Replace { remove: Vec<MemberInfo> },
}

/// A host of the inventory, as its membership is changed.
pub struct Member<'c, 'a> {
    ctx: &'c Ctx<'a>,
    pub name: String,
    /// Other etcd hosts of the inventory still to join (deploy adds several, one
    /// at a time): left out of the quorum proofs and the client's endpoints.
    pending: Vec<String>,
}

pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// Whether etcd keeps its quorum once the members `going` are removed, judged on
/// the voters left and how many of them the inventory's endpoints report healthy
/// (`healthy`: member names); the reason when it would not.
pub fn keeps_quorum(
    members: &[MemberInfo],
    going: &[u64],
    healthy: &[String],
) -> Result<(), String> {
    let left: Vec<&MemberInfo> = members
        .iter()
        .filter(|m| !m.learner && !going.contains(&m.id))
        .collect();
    let healthy_left = left.iter().filter(|m| healthy.contains(&m.name)).count();
    if healthy_left < quorum(left.len()) {
        Err(format!(
            "{} voter(s) would be left, {healthy_left} of them healthy, and {} are needed for \
             quorum: bring the other members back first",
            left.len(),
            quorum(left.len())
        ))
    } else {
        Ok(())
    }
}

/// Names of the etcd members the inventory's endpoints report healthy.
pub async fn healthy_etcd_names(ctx: &Ctx<'_>) -> Vec<String> {
    etcd::probe(&ctx.ep.net, &ctx.ep.etcd)
        .await
        .endpoints
        .iter()
        .filter_map(|e| e.health.as_ref().ok().and_then(|h| h.name()))
        .collect()
}

impl<'c, 'a> Member<'c, 'a> {
    pub fn new(ctx: &'c Ctx<'a>, name: &str) -> Self {
        Member {
            ctx,
            name: name.to_string(),
            pending: Vec::new(),
        }
    }

    pub fn pending(mut self, hosts: Vec<String>) -> Self {
        self.pending = hosts;
        self
    }

    /// The etcd client endpoints of the inventory's etcd hosts but the pending ones.
    fn etcd_endpoints(&self) -> Vec<String> {
        let c = &self.ctx.inv.cluster;
        let skip: Vec<String> = self
            .pending
            .iter()
            .filter_map(|h| self.ctx.inv.host(h))
            .map(|h| format!("{}://{}:{}", scheme(c.tls), h.ip, c.etcd_client_port))
            .collect();
        self.ctx
            .ep
            .etcd
            .iter()
            .filter(|e| !skip.contains(e))
            .cloned()
            .collect()
    }

    pub fn address(&self) -> String {
        self.ctx
            .inv
            .host(&self.name)
            .map(|h| h.ip.to_string())
            .unwrap_or_default()
    }

    pub fn peer_url(&self) -> String {
        format!(
            "{}://{}:{}",
            scheme(self.ctx.inv.cluster.tls),
            self.address(),
            self.ctx.inv.cluster.etcd_peer_port
        )
    }

    /// Patroni's view of the cluster from the other members (the host's own
    /// Patroni may be gone, or may be the one that moved).
    pub async fn others_view(&self) -> Result<patroni::ClusterView, String> {
        let others: Vec<String> = self
            .ctx
            .ep
            .patroni
            .iter()
            .filter(|(n, _)| *n != self.name)
            .map(|(_, api)| api.clone())
            .collect();
        patroni::cluster_any(&self.ctx.ep.net, &others).await
    }

    /// The etcd client endpoints of every other member.
    fn etcd_survivors(&self) -> Vec<String> {
        let c = &self.ctx.inv.cluster;
        let own = format!(
            "{}://{}:{}",
            scheme(c.tls),
            self.address(),
            c.etcd_client_port
        );
        self.etcd_endpoints()
            .into_iter()
            .filter(|e| *e != own)
            .collect()
    }

    /// Right before a wipe of a db host: it is not the leader and another member
    /// leads, judged from a fresh view (a switchover may have moved leadership onto
    /// it since the rebuild was assessed).
    pub async fn safe_to_wipe(&self) -> Result<(), Failure> {
        let t = &self.name;
        let refuse = |why: String| {
            Failure::error(format!(
                "rebuild of {t} stopped before wiping it; nothing was wiped or changed: {why}"
            ))
        };
        let view = self
            .others_view()
            .await
            .map_err(|e| refuse(format!("no other member's Patroni answers ({e})")))?;
        match view.leader() {
            Some(l) if l.name == *t => {
                return Err(refuse(format!(
                    "{t} leads the cluster now; hand leadership over first: `pgha switchover {}`",
                    self.ctx.inv.path.display()
                )));
            }
            Some(_) => {}
            None => {
                return Err(refuse(format!(
                    "no member leads the cluster now ({})",
                    view.summary()
                )));
            }
        }
        if let Ok(st) = patroni::status(&self.ctx.ep.net, &self.ctx.api(t)).await
            && st["role"] == "primary"
        {
            return Err(refuse(format!("{t}'s Patroni says it is a primary")));
        }
        Ok(())
    }

    /// Where its etcd membership stands, or the refusal when replacing it would
    /// cost etcd its quorum.
    pub async fn etcd_state(
        &self,
        refuse: &dyn Fn(String) -> Failure,
    ) -> Result<EtcdState, Failure> {
        let t = &self.name;
        let mut c = etcd::client(&self.ctx.ep.net, &self.etcd_survivors())
            .await
            .map_err(|e| refuse(format!("no other etcd member answers ({e})")))?;
        let members = etcd_ops::members(&mut c).await?;
        let report = etcd::probe(&self.ctx.ep.net, &self.ctx.ep.etcd).await;
        let healthy_names: Vec<String> = report
            .endpoints
            .iter()
            .filter_map(|e| e.health.as_ref().ok().and_then(|h| h.name()))
            .collect();
        let url = self.peer_url();
        let ours = |m: &MemberInfo| m.name == *t || m.peer_urls.contains(&url);
        let etcd_names = self.ctx.etcd_hosts();
        if let Some(m) = members.iter().find(|m| m.peer_urls.contains(&url)) {
            if m.learner {
                return Ok(EtcdState::Learner { id: m.id });
            }
            if m.name == *t && healthy_names.contains(t) {
                return Ok(EtcdState::Done);
            }
        }
        let remove: Vec<MemberInfo> = members
            .iter()
            .filter(|m| ours(m) || (!m.name.is_empty() && !etcd_names.contains(&m.name)))
            .cloned()
            .collect();
        let going: Vec<u64> = remove.iter().map(|m| m.id).collect();
        keeps_quorum(&members, &going, &healthy_names)
            .map_err(|why| refuse(format!("removing {t}'s etcd member: {why}")))?;
        Ok(EtcdState::Replace { remove })
    }

    /// A snapshot of etcd's data from a healthy survivor, kept beside the inventory.
    pub async fn save_etcd_snapshot(&self, dir: &Path) -> Result<PathBuf, Failure> {
        let report = etcd::probe(&self.ctx.ep.net, &self.ctx.ep.etcd).await;
        let survivor = report
            .endpoints
            .iter()
            .find(|e| {
                e.health
                    .as_ref()
                    .is_ok_and(|h| h.name().as_deref() != Some(&self.name))
            })
            .map(|e| e.endpoint.clone())
            .ok_or_else(|| Failure::error("no healthy etcd member to take a snapshot from"))?;
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let stem = self
            .ctx
            .inv
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "inventory".into());
        let path = dir.join(format!("{stem}.etcd-snapshot-{stamp}.db"));
        let bytes = etcd_ops::snapshot(&self.ctx.ep.net, &survivor, &path).await?;
        self.ctx.ui.host(
            "etcd",
            format!(
                "snapshot of {survivor} saved to {} ({bytes} bytes)",
                path.display()
            ),
        );
        Ok(path)
    }

    /// Stop what may run on the target and remove its data directories (etcd's only
    /// when its membership is replaced).
    pub async fn wipe(
        &self,
        conv: &Converge<'_, '_>,
        data: bool,
        etcd: bool,
    ) -> Result<(), Failure> {
        if data {
            self.safe_to_wipe().await?;
        }
        let c = &self.ctx.inv.cluster;
        let roles = &conv.desired[&self.name];
        let mut script = String::new();
        if data {
            // The last word is the host's own: a PostgreSQL that runs as a primary
            // there is never stopped or wiped (exit 3 is reported below).
            script.push_str(&format!(
                "r=$({} -Atq -c 'SELECT pg_is_in_recovery()' 2>/dev/null || true)
                 if [ \"$r\" = f ]; then echo 'PostgreSQL on this host is a primary' >&2; exit 3; fi
",
                install::psql(c)
            ));
        }
        for r in ["patroni", "exporter"] {
            if let Some(role) = roles.role(r) {
                script.push_str(&install::remove(role));
                script.push('\n');
            }
        }
        if data {
            script.push_str(&format!("rm -rf {}\n", shell_quote(&c.postgresql_data_dir)));
        }
        if etcd && let Some(role) = roles.role("etcd") {
            script.push_str(&format!(
                "{}\nrm -rf /var/lib/etcd/default {}\n",
                install::remove(role),
                shell_quote(&desired::etcd_data_dir(c))
            ));
        }
        self.ctx.run_on(&self.name, "wipe", script).await?;
        self.ctx.ui.host(&self.name, "data directories wiped");
        Ok(())
    }

    /// Replace the target's etcd member the safe way, then make every etcd host's
    /// configuration file what deploy renders (no restarts: those values are read
    /// only when a data directory is empty).
    // Long by design: etcd's runtime-reconfiguration procedure, in its order.
    pub async fn replace_etcd_member(
        &self,
        state: &EtcdState,
        conv: &Converge<'_, '_>,
    ) -> Result<(), Failure> {
        let t = &self.name;
        let c = &self.ctx.inv.cluster;
        self.ctx.ensure_locked("etcd: replace the member").await?;
        let mut client = etcd::client(&self.ctx.ep.net, &self.etcd_survivors()).await?;
        let id = match state {
            EtcdState::Done => None,
            EtcdState::Learner { id } => Some(*id),
            EtcdState::Replace { remove } => {
                for m in remove {
                    etcd_ops::remove(&mut client, m).await?;
                    self.ctx.ui.host(
                        "etcd",
                        format!("removed member {} ({})", m.id_hex(), m.name),
                    );
                    self.ctx.ui.changed(t, 1);
                }
                let (id, _) = etcd_ops::add_learner(&mut client, &self.peer_url()).await?;
                self.ctx
                    .ui
                    .host("etcd", format!("added {t} as learner {id:x}"));
                Some(id)
            }
        };
        let env = conv.desired[t]
            .files()
            .find(|f| f.path == "/etc/default/etcd")
            .cloned()
            .ok_or_else(|| Failure::error(format!("{t}: no etcd configuration rendered")))?;
        if let Some(id) = id {
            let members = etcd_ops::members(&mut client).await?;
            let initial = etcd_ops::initial_cluster(&members, id, t);
            let mut joining = env.clone();
            joining.content =
                joining_env(&String::from_utf8_lossy(&env.content), &initial).into_bytes();
            // Every file of the member (its TLS certificate and key too), the
            // configuration in its joining form.
            let mut files: Vec<&desired::DesiredFile> = conv
                .role(t, "etcd")
                .map_err(Failure::from)?
                .files
                .iter()
                .filter(|f| f.path != env.path)
                .collect();
            files.push(&joining);
            let s = self.ctx.session(t)?;
            apply::write_files(s, &files)
                .await
                .map_err(|e| host_failed(format!("{t}: write etcd's files: {e:#}")))?;
            let dir = desired::etcd_data_dir(c);
            let role = conv.role(t, "etcd").map_err(Failure::from)?;
            let running = self
                .ctx
                .run_on(
                    t,
                    "etcd state",
                    format!("if {}; then echo active; fi", install::is_active(role)),
                )
                .await?;
            if running.trim() != "active" {
                self.ctx
                    .run_on(
                        t,
                        "start etcd",
                        format!(
                            "rm -rf /var/lib/etcd/default {d}\ninstall -d -o etcd -g etcd -m 0700 {d}\n{}\n{}",
                            install::enable(role),
                            install::start(role, true),
                            d = shell_quote(&dir)
                        ),
                    )
                    .await?;
            }
            self.ctx
                .ui
                .host(t, format!("etcd started, joining as {initial}"));
            etcd_ops::promote(&mut client, id).await?;
            self.ctx
                .ui
                .host("etcd", format!("{t} promoted to a voting member"));
        }
        waits::wait_etcd_quorum_of(&self.ctx.ep, &self.etcd_endpoints(), etcd_ops::QUORUM).await?;
        // The survivors' files name the new address too; no restart needed.
        for h in self.ctx.etcd_hosts() {
            if self.pending.contains(&h) {
                continue;
            }
            let f = conv.desired[&h]
                .files()
                .find(|f| f.path == "/etc/default/etcd")
                .cloned()
                .ok_or_else(|| Failure::error(format!("{h}: no etcd configuration rendered")))?;
            let s = self.ctx.session(&h)?;
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&f.content));
            if s.sha256(&f.path).await.map_err(Failure::from)?.as_deref() != Some(sha.as_str()) {
                apply::write_files(s, &[&f])
                    .await
                    .map_err(|e| host_failed(format!("{h}: write /etc/default/etcd: {e:#}")))?;
            }
        }
        let q = waits::wait_etcd_quorum_of(&self.ctx.ep, &self.etcd_endpoints(), etcd_ops::QUORUM)
            .await?;
        self.ctx.ui.host(
            "etcd",
            format!(
                "{} voters healthy, leader {}, cluster id {}",
                q.members.len(),
                q.leader,
                q.cluster_id
            ),
        );
        Ok(())
    }
}

impl Converge<'_, '_> {
    /// Make etcd's membership what the inventory says, before the etcd phase:
    /// learners first (one at a time, each proven healthy before the next), then
    /// the members that leave. Packages must be in on the joining hosts.
    pub async fn converge_members(&self, changes: &Changes) -> Result<(), Failure> {
        if changes.is_empty() {
            return Ok(());
        }
        let phase = self.ctx.ui.phase("members");
        let pending: Vec<String> = changes
            .join
            .iter()
            .chain(changes.promote.iter().map(|(h, _)| h))
            .cloned()
            .collect();
        let mut done = Vec::new();
        for (h, id) in &changes.promote {
            phase.set(format!("etcd: promoting {h}"));
            let others = without(&pending, &done, h);
            Member::new(self.ctx, h)
                .pending(others)
                .replace_etcd_member(&EtcdState::Learner { id: *id }, self)
                .await?;
            done.push(h.clone());
        }
        for h in &changes.join {
            phase.set(format!("etcd: {h} joins"));
            self.ctx.ensure_locked(&format!("etcd: {h} joins")).await?;
            // Not a member: whatever etcd left there (a member removed earlier,
            // Debian's one-member default) must not start with the new membership.
            let role = self.role(h, "etcd").map_err(Failure::from)?;
            self.ctx
                .run_on(
                    h,
                    "clear etcd before it joins",
                    format!(
                        "{}\nrm -rf /var/lib/etcd/default {}",
                        install::stop(role),
                        shell_quote(&desired::etcd_data_dir(&self.inv.cluster))
                    ),
                )
                .await?;
            let others = without(&pending, &done, h);
            Member::new(self.ctx, h)
                .pending(others)
                .replace_etcd_member(&EtcdState::Replace { remove: vec![] }, self)
                .await?;
            self.ctx.ui.changed(h, 1);
            done.push(h.clone());
        }
        for (h, m) in &changes.leave {
            phase.set(format!("etcd: {h} leaves"));
            self.leave_etcd(h, m).await?;
        }
        let q = waits::wait_etcd_quorum(&self.ctx.ep, etcd_ops::QUORUM).await?;
        phase.done(format!(
            "etcd: {} voters ({}), leader {}",
            q.members.len(),
            self.ctx.etcd_hosts().join(", "),
            q.leader
        ));
        Ok(())
    }

    /// A db host leaves etcd: its member removed (only with quorum kept among the
    /// inventory's etcd members), then its etcd stopped, disabled and its data
    /// removed (a removed member can never start on that data again).
    pub async fn leave_etcd(&self, host: &str, m: &MemberInfo) -> Result<(), Failure> {
        self.ctx
            .ensure_locked(&format!("etcd: {host} leaves"))
            .await?;
        let mut client = etcd::client(&self.ctx.ep.net, &self.ctx.ep.etcd).await?;
        let members = etcd_ops::members(&mut client).await?;
        let healthy = healthy_etcd_names(self.ctx).await;
        keeps_quorum(&members, &[m.id], &healthy)
            .map_err(|why| host_failed(format!("etcd: {host} cannot leave: {why}")))?;
        if members.iter().any(|x| x.id == m.id) {
            etcd_ops::remove(&mut client, m).await?;
        }
        self.ctx.ui.host(
            "etcd",
            format!("removed member {} ({host}): it left etcd", m.id_hex()),
        );
        self.stop_etcd_on(host).await?;
        self.ctx.ui.changed(host, 1);
        Ok(())
    }

    /// etcd stopped and disabled on a host that is no longer a member, its data
    /// directory and configuration removed.
    pub async fn stop_etcd_on(&self, host: &str) -> Result<(), Failure> {
        // The host's own desired state has no etcd role any more: any member's
        // definition names the same unit or container.
        let role = self
            .ctx
            .etcd_hosts()
            .iter()
            .find_map(|h| self.desired.get(h).and_then(|d| d.role("etcd")))
            .ok_or_else(|| Failure::error("no etcd member in the inventory"))?;
        self.ctx
            .run_on(
                host,
                "stop etcd",
                format!(
                    "{}\n{}\nrm -rf /var/lib/etcd/default {} /etc/default/etcd",
                    install::remove(role),
                    install::disable(role),
                    shell_quote(&desired::etcd_data_dir(&self.inv.cluster))
                ),
            )
            .await?;
        self.ctx
            .ui
            .host(host, "etcd stopped and disabled, its data removed");
        Ok(())
    }
}

/// The pending hosts other than `h` and those done.
fn without(pending: &[String], done: &[String], h: &str) -> Vec<String> {
    pending
        .iter()
        .filter(|p| *p != h && !done.contains(p))
        .cloned()
        .collect()
}

/// Members of another name (a renamed host): their key in etcd and their
/// replication slot on the leader go, so nothing waits for them.
pub async fn remove_stale_members(
    ctx: &Ctx<'_>,
    stale: &[String],
    leader: &str,
) -> Result<(), Failure> {
    ctx.ensure_locked("remove stale Patroni members").await?;
    let c = &ctx.inv.cluster;
    let mut client = etcd::client(&ctx.ep.net, &ctx.ep.etcd).await?;
    for m in stale {
        let key = format!("/service/{}/members/{m}", c.cluster_name);
        client
            .delete(key.clone(), None)
            .await
            .map_err(|e| Failure::error(format!("etcd: delete {key}: {e}")))?;
        let slot = m
            .chars()
            .map(|ch| {
                if ch.is_ascii_alphanumeric() {
                    ch.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect::<String>();
        let sql = format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = '{slot}' AND NOT active"
        );
        ctx.run_on(
            leader,
            "drop a stale replication slot",
            format!("{} -Atq -c {}", install::psql(c), shell_quote(&sql)),
        )
        .await?;
        ctx.ui
            .host("patroni", format!("stale member {m}: key and slot removed"));
    }
    Ok(())
}

/// etcd's environment file for a member joining a running cluster: the survivors'
/// exact membership and state `existing`.
fn joining_env(rendered: &str, initial_cluster: &str) -> String {
    rendered
        .lines()
        .map(|l| {
            if l.starts_with("ETCD_INITIAL_CLUSTER=") {
                format!("ETCD_INITIAL_CLUSTER=\"{initial_cluster}\"")
            } else if l.starts_with("ETCD_INITIAL_CLUSTER_STATE=") {
                "ETCD_INITIAL_CLUSTER_STATE=\"existing\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joining_member_starts_with_the_survivors_membership() {
        let rendered = "ETCD_NAME=\"db2\"\nETCD_INITIAL_CLUSTER=\"db1=a,db2=b,db3=c\"\nETCD_INITIAL_CLUSTER_TOKEN=\"t\"\nETCD_INITIAL_CLUSTER_STATE=\"new\"\n";
        let out = joining_env(rendered, "db1=a,db2=z,db3=c");
        assert_eq!(
            out,
            "ETCD_NAME=\"db2\"\nETCD_INITIAL_CLUSTER=\"db1=a,db2=z,db3=c\"\nETCD_INITIAL_CLUSTER_TOKEN=\"t\"\nETCD_INITIAL_CLUSTER_STATE=\"existing\"\n"
        );
    }

    #[test]
    fn a_removal_keeps_quorum_only_with_enough_healthy_voters_left() {
        let m = |id: u64, name: &str, learner: bool| MemberInfo {
            id,
            name: name.into(),
            peer_urls: vec![],
            learner,
        };
        let members = [
            m(1, "db1", false),
            m(2, "db2", false),
            m(3, "db3", false),
            m(4, "db4", false),
            m(5, "", true),
        ];
        let healthy = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // 4 voters -> 3 left, 2 of them healthy: quorum of 3 is 2.
        assert!(keeps_quorum(&members, &[4], &healthy(&["db1", "db2"])).is_ok());
        // 2 left of which 1 healthy: quorum of 2 is 2.
        let why = keeps_quorum(&members, &[3, 4], &healthy(&["db1"])).unwrap_err();
        assert!(
            why.starts_with("2 voter(s) would be left, 1 of them healthy, and 2"),
            "{why}"
        );
        // The learner counts for nothing.
        assert!(keeps_quorum(&members, &[1, 2], &healthy(&["db3", "db4"])).is_ok());
    }

    #[test]
    fn quorum_sizes() {
        assert_eq!(quorum(2), 2);
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(4), 3);
    }
}
