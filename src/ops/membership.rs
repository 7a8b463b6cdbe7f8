//! The cluster's members against the inventory, judged by deploy (and restore)
//! before any change: hosts the inventory adds to etcd join it one at a time
//! (learner, started with the survivors' membership, promoted), db hosts the
//! inventory no longer counts as etcd members leave etcd and stay Patroni
//! members, and members the inventory no longer lists at all stop the run: pgha
//! never removes a member silently (`pgha remove` does, on purpose).

use serde::Serialize;

use super::etcd::MemberInfo;

/// What the running cluster reports about its members.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub etcd: Vec<MemberInfo>,
    /// Patroni's members (names), when a member's REST API answered.
    pub patroni: Vec<String>,
    /// Hosts pgha's record says it deployed that the inventory no longer lists
    /// (name, "db" | "router").
    pub recorded: Vec<(String, &'static str)>,
}

/// The inventory's side: host names and how each would be listed in etcd.
pub struct Layout<'x> {
    pub all: &'x [String],
    pub db: &'x [String],
    pub etcd: &'x [String],
    /// The peer URL a host of the inventory has in etcd.
    pub peer_url: &'x dyn Fn(&str) -> String,
    /// Inventory etcd hosts that have an etcd data directory.
    pub with_data: &'x [String],
}

/// The membership changes a deploy makes before its etcd phase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// Inventory etcd hosts etcd does not list: added as learners, in order.
    pub join: Vec<String>,
    /// Learners an interrupted run added: started (if needed) and promoted.
    pub promote: Vec<(String, u64)>,
    /// db hosts of the inventory that etcd lists but the inventory no longer counts
    /// as etcd members: their member is removed, their etcd stopped.
    pub leave: Vec<(String, MemberInfo)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.join.is_empty() && self.promote.is_empty() && self.leave.is_empty()
    }

    /// One line per change, in the order they are made.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (h, id) in &self.promote {
            out.push(format!(
                "etcd: start learner {id:x} ({h}) and promote it (left by an interrupted run)"
            ));
        }
        for h in &self.join {
            out.push(format!(
                "etcd: add {h} as a learner, start it with the members' membership, promote it"
            ));
        }
        for (h, m) in &self.leave {
            out.push(format!(
                "etcd: remove member {} ({h}); {h} stays a Patroni member",
                m.id_hex()
            ));
        }
        out
    }
}

/// Which host of the inventory an etcd member is: by name, or (a learner that
/// never started has no name) by peer URL.
fn host_of(layout: &Layout, m: &MemberInfo) -> Option<String> {
    if !m.name.is_empty() && layout.all.contains(&m.name) {
        return Some(m.name.clone());
    }
    layout
        .all
        .iter()
        .find(|h| m.peer_urls.contains(&(layout.peer_url)(h)))
        .cloned()
}

/// The changes, or the refusals (each one line, to be followed by "nothing was
/// changed").
pub fn plan(layout: &Layout, obs: &Observed, inventory: &str) -> Result<Changes, Vec<String>> {
    let mut changes = Changes::default();
    let mut refusals = Vec::new();
    let mut listed = Vec::new();
    let remove_hint = |name: &str, what: &str| {
        format!(
            "{name} is {what} but not a host of {inventory}: pgha never removes a member \
             silently. To take it out of the cluster run `pgha remove {inventory} {name}`; to keep \
             it, list it in the inventory again"
        )
    };
    for m in &obs.etcd {
        match host_of(layout, m) {
            None => {
                let name = if m.name.is_empty() {
                    m.peer_urls.join(",")
                } else {
                    m.name.clone()
                };
                refusals.push(remove_hint(
                    &name,
                    &format!("an etcd member ({})", m.peer_urls.join(",")),
                ));
            }
            Some(h) if layout.etcd.contains(&h) => {
                listed.push(h.clone());
                if m.learner {
                    changes.promote.push((h, m.id));
                } else if !layout.with_data.contains(&h) {
                    refusals.push(format!(
                        "{h} is a voting etcd member but has no etcd data directory: a lost member \
                         must be replaced in the running etcd cluster: run `pgha rebuild {inventory} {h}`"
                    ));
                }
            }
            Some(h) if layout.db.contains(&h) => changes.leave.push((h, m.clone())),
            Some(h) => refusals.push(format!(
                "{h} is an etcd member but neither a db host nor in the `etcd` group of {inventory}: \
                 list it in the `etcd` group again, or take it out with `pgha remove {inventory} {h}`"
            )),
        }
    }
    for name in &obs.patroni {
        let said = format!("{name} is ");
        if !layout.db.contains(name) && !refusals.iter().any(|r| r.starts_with(&said)) {
            refusals.push(remove_hint(name, "a Patroni member"));
        }
    }
    for (name, kind) in &obs.recorded {
        let said = format!("{name} is ");
        if !refusals.iter().any(|r| r.starts_with(&said)) {
            let what = if *kind == "router" {
                "a router pgha deployed"
            } else {
                "a db host pgha deployed"
            };
            refusals.push(remove_hint(name, what));
        }
    }
    changes.join = layout
        .etcd
        .iter()
        .filter(|h| !listed.contains(h))
        .cloned()
        .collect();
    if refusals.is_empty() {
        Ok(changes)
    } else {
        Err(refusals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, name: &str, ip: &str, learner: bool) -> MemberInfo {
        MemberInfo {
            id,
            name: name.into(),
            peer_urls: vec![format!("https://{ip}:2380")],
            learner,
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn ip(h: &str) -> String {
        format!("10.0.0.{}", &h[2..])
    }

    fn judge(
        all: &[&str],
        db: &[&str],
        etcd: &[&str],
        with_data: &[&str],
        obs: &Observed,
    ) -> Result<Changes, Vec<String>> {
        let (all, db, etcd, with_data) = (s(all), s(db), s(etcd), s(with_data));
        let peer_url = |h: &str| format!("https://{}:2380", ip(h));
        plan(
            &Layout {
                all: &all,
                db: &db,
                etcd: &etcd,
                peer_url: &peer_url,
                with_data: &with_data,
            },
            obs,
            "inv.yml",
        )
    }

    fn three() -> Vec<MemberInfo> {
        vec![
            m(1, "db1", "10.0.0.1", false),
            m(2, "db2", "10.0.0.2", false),
            m(3, "db3", "10.0.0.3", false),
        ]
    }

    #[test]
    fn a_converged_cluster_has_no_changes() {
        let obs = Observed {
            etcd: three(),
            patroni: s(&["db1", "db2", "db3"]),
            recorded: vec![],
        };
        let c = judge(
            &["db1", "db2", "db3", "router1"],
            &["db1", "db2", "db3"],
            &["db1", "db2", "db3"],
            &["db1", "db2", "db3"],
            &obs,
        )
        .unwrap();
        assert!(c.is_empty(), "{c:?}");
    }

    #[test]
    fn new_etcd_hosts_join_in_order_and_patroni_only_hosts_do_not() {
        let obs = Observed {
            etcd: three(),
            patroni: s(&["db1", "db2", "db3"]),
            recorded: vec![],
        };
        let db = ["db1", "db2", "db3", "db4", "db5", "db6"];
        let c = judge(
            &db,
            &db,
            &["db1", "db2", "db3", "db4", "db5"],
            &["db1", "db2", "db3"],
            &obs,
        )
        .unwrap();
        assert_eq!(c.join, s(&["db4", "db5"]));
        assert!(c.promote.is_empty() && c.leave.is_empty());
        assert_eq!(c.lines().len(), 2);
    }

    #[test]
    fn an_unstarted_learner_is_found_by_its_peer_url_and_promoted() {
        let mut etcd = three();
        etcd.push(m(9, "", "10.0.0.4", true));
        let obs = Observed {
            etcd,
            patroni: vec![],
            recorded: vec![],
        };
        let db = ["db1", "db2", "db3", "db4", "db5"];
        let c = judge(&db, &db, &db, &["db1", "db2", "db3"], &obs).unwrap();
        assert_eq!(c.promote, vec![("db4".to_string(), 9)]);
        assert_eq!(c.join, s(&["db5"]));
    }

    #[test]
    fn a_db_host_out_of_the_etcd_set_leaves_etcd() {
        let mut etcd = three();
        etcd.push(m(4, "db4", "10.0.0.4", false));
        etcd.push(m(5, "db5", "10.0.0.5", false));
        let obs = Observed {
            etcd,
            patroni: s(&["db1", "db2", "db3", "db4"]),
            recorded: vec![],
        };
        let db = ["db1", "db2", "db3", "db4"];
        let r = judge(&db, &db, &["db1", "db2", "db3"], &db, &obs).unwrap_err();
        // db5 is not in the inventory: refused, pointing to pgha remove.
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].contains("pgha remove inv.yml db5"), "{}", r[0]);
        let obs = Observed {
            etcd: obs.etcd[..4].to_vec(),
            patroni: obs.patroni,
            recorded: vec![],
        };
        let c = judge(&db, &db, &["db1", "db2", "db3"], &db, &obs).unwrap();
        assert_eq!(c.leave.len(), 1);
        assert_eq!(c.leave[0].0, "db4");
    }

    #[test]
    fn members_missing_from_the_inventory_are_never_removed_silently() {
        let obs = Observed {
            etcd: three(),
            patroni: s(&["db1", "db2", "db3", "db7"]),
            recorded: vec![("router2".into(), "router"), ("db7".into(), "db")],
        };
        let db = ["db1", "db2"];
        let r = judge(&db, &db, &db, &db, &obs).unwrap_err();
        assert_eq!(
            r.len(),
            3,
            "db3 in etcd, db7 in Patroni (once, though recorded too), router2 recorded: {r:?}"
        );
        assert!(r[0].starts_with("db3 is an etcd member"), "{}", r[0]);
        assert!(
            r[2].starts_with("router2 is a router pgha deployed"),
            "{}",
            r[2]
        );
        assert!(r[2].contains("pgha remove inv.yml router2"), "{}", r[2]);
        assert!(r[1].starts_with("db7 is a Patroni member"), "{}", r[1]);
    }

    #[test]
    fn a_voter_without_data_is_a_lost_member_for_rebuild() {
        let obs = Observed {
            etcd: three(),
            patroni: vec![],
            recorded: vec![],
        };
        let db = ["db1", "db2", "db3"];
        let r = judge(&db, &db, &db, &["db1", "db2"], &obs).unwrap_err();
        assert!(r[0].contains("pgha rebuild inv.yml db3"), "{r:?}");
    }
}
