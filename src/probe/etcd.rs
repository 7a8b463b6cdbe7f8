//! etcd: every endpoint is asked on its own (status, member list, and a read as the
//! health check), so one answering endpoint cannot hide a split or a dead member.

use etcd_client::Client;
use futures_util::future::join_all;
use serde::Serialize;

use super::{Net, PROBE_TIMEOUT};

#[derive(Debug, Clone, Serialize)]
pub struct EndpointHealth {
    pub cluster_id: u64,
    pub member_id: u64,
    pub leader: u64,
    pub version: String,
    /// `name=hexid` of every member this endpoint lists.
    pub members: Vec<String>,
    pub errors: Vec<String>,
    pub db_size: i64,
    pub raft_index: u64,
    pub raft_term: u64,
}

impl EndpointHealth {
    /// This endpoint's own member name (from its member list).
    pub fn name(&self) -> Option<String> {
        self.member_name(self.member_id)
    }

    /// The name of the member with this id, as this endpoint lists it.
    pub fn member_name(&self, id: u64) -> Option<String> {
        let suffix = format!("={id:x}");
        self.members
            .iter()
            .find(|m| m.ends_with(&suffix))
            .map(|m| m.trim_end_matches(&suffix).to_string())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointReport {
    pub endpoint: String,
    pub health: Result<EndpointHealth, String>,
    /// What a member whose read failed did answer (its id, version, raft index).
    pub answered: Option<EndpointHealth>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EtcdReport {
    pub endpoints: Vec<EndpointReport>,
}

/// What a proven quorum looks like.
#[derive(Debug, Clone, Serialize)]
pub struct Quorum {
    pub cluster_id: String,
    pub leader: String,
    pub members: Vec<String>,
    pub version: String,
}

async fn connect(net: &Net, endpoint: &str) -> Result<Client, String> {
    let opts = net.etcd_options(endpoint, PROBE_TIMEOUT);
    Client::connect([endpoint], Some(opts))
        .await
        .map_err(|e| format!("connect: {e}"))
}

/// One endpoint, within `deadline`: the read (the health check) gets the time left,
/// so a member that answers status but cannot serve a read is told apart from one
/// that does not answer at all.
async fn probe_one(
    net: &Net,
    endpoint: &str,
    deadline: tokio::time::Instant,
) -> Result<EndpointHealth, (String, Option<EndpointHealth>)> {
    let mut c = connect(net, endpoint).await.map_err(|e| (e, None))?;
    let status = c
        .status()
        .await
        .map_err(|e| (format!("status: {e}"), None))?;
    let header = status
        .header()
        .ok_or_else(|| ("status: no header".to_string(), None))?;
    let members = c
        .member_list()
        .await
        .map_err(|e| (format!("member list: {e}"), None))?;
    let health = EndpointHealth {
        cluster_id: header.cluster_id(),
        member_id: header.member_id(),
        leader: status.leader(),
        version: status.version().to_string(),
        members: members
            .members()
            .iter()
            .map(|m| format!("{}={:x}", m.name(), m.id()))
            .collect(),
        errors: status.errors().to_vec(),
        db_size: status.db_size(),
        raft_index: status.raft_index(),
        raft_term: status.raft_term(),
    };
    // A linearizable read needs the leader and a quorum: the real health check.
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let read = match tokio::time::timeout(left, c.get("pgha-health", None)).await {
        Ok(r) => r.map(|_| ()).map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {:.1}s", left.as_secs_f32())),
    };
    match read {
        Ok(()) => Ok(health),
        Err(e) => Err((read_failed(&health, &e), Some(health))),
    }
}

/// Why a member that answers status cannot serve a read: with no leader it is in an
/// election or cut off; naming one, it cannot hear it (after a partition that dropped
/// packets heals, etcd's peer streams can stay silent for a minute or two).
fn read_failed(h: &EndpointHealth, error: &str) -> String {
    let term = h.raft_term;
    if h.leader == 0 {
        return format!(
            "answers but knows no leader (raft term {term}), so a read failed: {error}"
        );
    }
    let name = h
        .member_name(h.leader)
        .unwrap_or_else(|| format!("{:x}", h.leader));
    format!(
        "answers and names {name} its leader (raft term {term}) but does not hear it: a read \
         failed: {error}"
    )
}

/// Probe every endpoint (`http://ip:2379`) in parallel.
pub async fn probe(net: &Net, endpoints: &[String]) -> EtcdReport {
    probe_within(net, endpoints, PROBE_TIMEOUT * 2).await
}

/// `probe`, each endpoint given at most `bound` (status keeps to one probe timeout).
pub async fn probe_within(
    net: &Net,
    endpoints: &[String],
    bound: std::time::Duration,
) -> EtcdReport {
    // The read is cut a little before the bound, so what the member did answer is
    // still reported.
    let deadline = tokio::time::Instant::now() + bound.mul_f32(0.9);
    let results = join_all(endpoints.iter().map(|e| async move {
        let probed = tokio::time::timeout(bound, probe_one(net, e, deadline)).await;
        let (health, answered) = match probed {
            Ok(Ok(h)) => (Ok(h), None),
            Ok(Err((why, answered))) => (Err(why), answered),
            Err(_) => (
                Err(format!("no answer within {:.0}s", bound.as_secs_f32())),
                None,
            ),
        };
        EndpointReport {
            endpoint: e.clone(),
            health,
            answered,
        }
    }))
    .await;
    EtcdReport { endpoints: results }
}

impl EtcdReport {
    /// The endpoint and member id of the member named `name`, when it answered.
    pub fn member(&self, name: &str) -> Option<(String, u64)> {
        self.endpoints.iter().find_map(|e| {
            e.health
                .as_ref()
                .ok()
                .filter(|h| h.name().as_deref() == Some(name))
                .map(|h| (e.endpoint.clone(), h.member_id))
        })
    }

    /// Whether any endpoint answered with a working quorum behind it.
    pub fn any_healthy(&self) -> bool {
        self.endpoints.iter().any(|e| e.health.is_ok())
    }

    /// Quorum holds when every endpoint answers, all share one cluster id and one
    /// leader, and the member list has the expected size. Err describes what is off.
    pub fn quorum(&self, expected_members: usize) -> Result<Quorum, String> {
        let mut problems = Vec::new();
        let healthy: Vec<&EndpointHealth> = self
            .endpoints
            .iter()
            .filter_map(|e| match &e.health {
                Ok(h) => Some(h),
                Err(err) => {
                    problems.push(format!("{}: {err}", e.endpoint));
                    None
                }
            })
            .collect();
        let mut cluster_ids: Vec<u64> = healthy.iter().map(|h| h.cluster_id).collect();
        cluster_ids.dedup();
        cluster_ids.sort_unstable();
        cluster_ids.dedup();
        if cluster_ids.len() > 1 {
            problems.push(format!(
                "endpoints report {} different cluster ids (separate one-member clusters?)",
                cluster_ids.len()
            ));
        }
        let mut leaders: Vec<u64> = healthy.iter().map(|h| h.leader).collect();
        leaders.sort_unstable();
        leaders.dedup();
        if leaders.len() != 1 || leaders[0] == 0 {
            problems.push(format!("leaders seen: {leaders:x?}"));
        }
        for h in &healthy {
            if h.members.len() != expected_members {
                problems.push(format!(
                    "member {:x} lists {} members, expected {expected_members}",
                    h.member_id,
                    h.members.len()
                ));
                break;
            }
        }
        if !problems.is_empty() {
            return Err(format!(
                "{} of {} endpoints healthy; {}",
                healthy.len(),
                self.endpoints.len(),
                problems.join("; ")
            ));
        }
        let first = healthy[0];
        let leader_name = first
            .member_name(first.leader)
            .unwrap_or_else(|| format!("{:x}", first.leader));
        Ok(Quorum {
            cluster_id: format!("{:x}", first.cluster_id),
            leader: leader_name,
            members: first
                .members
                .iter()
                .map(|m| m.split('=').next().unwrap_or("").to_string())
                .collect(),
            version: first.version.clone(),
        })
    }
}

/// Whether `key` exists, asked of the first endpoint that answers.
pub async fn key_exists(net: &Net, endpoints: &[String], key: &str) -> Result<bool, String> {
    let mut last = String::from("no endpoints");
    for e in endpoints {
        match connect(net, e).await {
            Ok(mut c) => match c.get(key, None).await {
                Ok(r) => return Ok(!r.kvs().is_empty()),
                Err(err) => last = format!("{e}: {err}"),
            },
            Err(err) => last = format!("{e}: {err}"),
        }
    }
    Err(last)
}

/// A client on the first of these endpoints that answers. (etcd-client balances
/// requests over every endpoint it is given and fails a request sent to a dead
/// one, so pgha gives it one endpoint known to be up.)
pub async fn client(net: &Net, endpoints: &[String]) -> Result<Client, crate::error::Failure> {
    connect_any(net, endpoints)
        .await
        .map_err(crate::error::Failure::error)
}

/// `client`, with the error as text.
pub async fn connect_any(net: &Net, endpoints: &[String]) -> Result<Client, String> {
    let mut last = "no etcd endpoints".to_string();
    for e in endpoints {
        let opts = net.etcd_options(e, std::time::Duration::from_secs(10));
        let attempt = async {
            let mut c = Client::connect([e.as_str()], Some(opts))
                .await
                .map_err(|err| format!("{e}: {err}"))?;
            c.status().await.map_err(|err| format!("{e}: {err}"))?;
            Ok::<_, String>(c)
        };
        match tokio::time::timeout(PROBE_TIMEOUT * 2, attempt).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(err)) => last = err,
            Err(_) => last = format!("{e}: no answer"),
        }
    }
    Err(format!("no etcd endpoint answers (last: {last})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(cluster: u64, member: u64, leader: u64, n: usize) -> EndpointReport {
        EndpointReport {
            endpoint: format!("http://10.0.0.{member}:2379"),
            health: Ok(EndpointHealth {
                cluster_id: cluster,
                member_id: member,
                leader,
                version: "3.5.16".into(),
                members: (1..=n as u64).map(|i| format!("db{i}={i:x}")).collect(),
                errors: vec![],
                db_size: 20480,
                raft_index: 100,
                raft_term: 2,
            }),
            answered: None,
        }
    }

    #[test]
    fn three_agreeing_endpoints_are_a_quorum() {
        let r = EtcdReport {
            endpoints: vec![ok(7, 1, 2, 3), ok(7, 2, 2, 3), ok(7, 3, 2, 3)],
        };
        let q = r.quorum(3).unwrap();
        assert_eq!(q.leader, "db2");
        assert_eq!(q.members, ["db1", "db2", "db3"]);
    }

    #[test]
    fn split_clusters_are_reported() {
        let r = EtcdReport {
            endpoints: vec![ok(7, 1, 1, 1), ok(8, 2, 2, 1), ok(9, 3, 3, 1)],
        };
        let e = r.quorum(3).unwrap_err();
        assert!(e.contains("3 different cluster ids"), "{e}");
    }

    #[test]
    fn a_dead_endpoint_is_named() {
        let mut eps = vec![ok(7, 1, 2, 3), ok(7, 2, 2, 3)];
        eps.push(EndpointReport {
            endpoint: "http://10.0.0.3:2379".into(),
            health: Err("connect: refused".into()),
            answered: None,
        });
        let e = EtcdReport { endpoints: eps }.quorum(3).unwrap_err();
        assert!(e.starts_with("2 of 3 endpoints healthy"), "{e}");
        assert!(e.contains("10.0.0.3:2379: connect: refused"), "{e}");
    }

    #[test]
    fn a_failed_read_says_whether_the_member_hears_a_leader() {
        let said = |leader| EndpointHealth {
            leader,
            raft_term: 9,
            ..ok(7, 1, 1, 3).health.unwrap()
        };
        let e = read_failed(&said(2), "Timeout expired");
        assert!(
            e.contains("names db2 its leader (raft term 9) but does not hear it"),
            "{e}"
        );
        assert!(e.ends_with("Timeout expired"), "{e}");
        let e = read_failed(&said(0), "Timeout expired");
        assert!(e.contains("knows no leader (raft term 9)"), "{e}");
        let e = read_failed(&said(0xcd), "x");
        assert!(e.contains("names cd its leader"), "{e}");
    }
}
