//! Unit tests of `verdict`.

use super::*;

const BOUNDS: Bounds = Bounds {
    max_lag: 1_048_576,
    read_max_lag: 16 << 20,
    synchronous_mode: true,
    renew_before_days: 30,
};

fn member(name: &str, role: &str, state: &str, tl: u64, lag: Option<u64>) -> MemberState {
    MemberState {
        name: name.into(),
        address: format!("10.0.0.{}", &name[2..]),
        reachable: true,
        role: role.into(),
        state: state.into(),
        timeline: Some(tl),
        lag_bytes: lag,
        replication_state: (state == "streaming").then(|| "streaming".into()),
        server_version: Some("17.12".into()),
        patroni_version: Some("4.0.7".into()),
        pending_restart: false,
        tags: BTreeMap::new(),
        error: None,
    }
}

fn etcd_ok(name: &str, leader: bool) -> EtcdMemberState {
    EtcdMemberState {
        name: name.into(),
        endpoint: format!("http://{name}:2379"),
        healthy: true,
        id: Some("1".into()),
        leader,
        version: Some("3.5.16".into()),
        db_size_bytes: Some(20480),
        raft_index: Some(10),
        error: None,
    }
}

fn backends(write: &[(&str, &str)], read: &[(&str, &str)]) -> haproxy::Backends {
    let mut b = haproxy::Backends::default();
    for (proxy, list) in [("primary", write), ("replicas", read)] {
        b.proxies.insert(
            proxy.into(),
            list.iter()
                .map(|(s, st)| (s.to_string(), st.to_string()))
                .collect(),
        );
    }
    b
}

fn healthy_members() -> Vec<MemberState> {
    vec![
        member("db1", "leader", "running", 2, None),
        member("db2", "sync_standby", "streaming", 2, Some(0)),
        member("db3", "replica", "streaming", 2, Some(0)),
    ]
}

fn snap(members: Vec<MemberState>, b: haproxy::Backends) -> Snapshot {
    let r = router("router1", "10.0.0.101", Ok(b), &members, &BOUNDS);
    assemble(
        "pgha",
        Parts {
            members,
            etcd: vec![
                etcd_ok("db1", true),
                etcd_ok("db2", false),
                etcd_ok("db3", false),
            ],
            routers: vec![r],
            exporters: vec![ExporterState {
                name: "db1".into(),
                pg_up: Some(true),
                error: None,
            }],
            certificates: vec![],
            ca: None,
            poolers: vec![],
        },
        false,
        &BOUNDS,
    )
}

fn good_backends() -> haproxy::Backends {
    backends(
        &[("db1", "UP"), ("db2", "DOWN"), ("db3", "DOWN")],
        &[("db1", "DOWN"), ("db2", "UP"), ("db3", "UP")],
    )
}

#[test]
fn a_healthy_cluster_is_healthy() {
    let s = snap(healthy_members(), good_backends());
    assert_eq!(s.verdict.line(), "healthy");
    assert!(s.healthy && s.etcd_quorum);
    assert_eq!(s.leader.as_deref(), Some("db1"));
    assert!(s.routers[0].agrees);
}

#[test]
fn a_member_on_an_old_timeline_or_not_streaming_is_degraded() {
    let mut m = healthy_members();
    m[2] = member("db3", "replica", "running", 1, Some(97_000));
    let s = snap(m, good_backends());
    assert_eq!(s.verdict.level, Level::Degraded);
    let line = s.verdict.line();
    assert!(line.contains("db3 is running, not streaming"), "{line}");
    // HAProxy still sending reads to it disagrees with Patroni.
    assert!(
        line.contains("reads go to db3 which may not serve them"),
        "{line}"
    );
    let mut m = healthy_members();
    m[2].timeline = Some(1);
    let line = snap(m, good_backends()).verdict.line();
    assert!(
        line.contains("db3 on timeline 1, the leader on 2"),
        "{line}"
    );
}

#[test]
fn an_unreachable_member_is_named() {
    let mut m = healthy_members();
    m[2].reachable = false;
    m[2].state = "unreachable".into();
    let b = backends(
        &[("db1", "UP"), ("db2", "DOWN"), ("db3", "DOWN")],
        &[("db1", "DOWN"), ("db2", "UP"), ("db3", "DOWN")],
    );
    let s = snap(m, b);
    assert_eq!(s.verdict.line(), "degraded: db3 unreachable");
    assert!(!s.healthy);
}

#[test]
fn no_leader_or_no_quorum_is_down() {
    let mut m = healthy_members();
    m[0].reachable = false;
    m[0].state = "unreachable".into();
    let s = snap(m, good_backends());
    assert_eq!(s.verdict.level, Level::Down);
    assert!(
        s.verdict.line().starts_with("down: no running leader"),
        "{}",
        s.verdict.line()
    );
    let mut s = snap(healthy_members(), good_backends());
    s.etcd[1].healthy = false;
    s.etcd[2].healthy = false;
    s.etcd_quorum = false;
    let v = verdict(&s, &BOUNDS);
    assert_eq!(v.level, Level::Down);
    assert!(v.reasons[0].contains("etcd has no quorum (1 of 3"), "{v:?}");
}

#[test]
fn writes_to_the_wrong_server_disagree() {
    let b = backends(
        &[("db1", "UP"), ("db2", "UP"), ("db3", "DOWN")],
        &[("db1", "DOWN"), ("db2", "UP"), ("db3", "UP")],
    );
    let s = snap(healthy_members(), b);
    assert!(!s.routers[0].agrees);
    assert!(
        s.verdict.line().contains("writes go to [db1, db2]"),
        "{}",
        s.verdict.line()
    );
}

#[test]
fn server_versions_read_like_postgres_prints_them() {
    assert_eq!(server_version(&Value::from(170012)).unwrap(), "17.12");
    assert_eq!(server_version(&Value::from(130022)).unwrap(), "13.22");
}

fn ca_info(not_after: u64) -> crate::pki::CertInfo {
    crate::pki::CertInfo {
        not_after,
        names: Default::default(),
        issuer: "CN=pgha CA prod, O=pgha".into(),
        subject: "CN=pgha CA prod, O=pgha".into(),
        authority_key_id: false,
    }
}

#[test]
fn the_ca_expiry_is_in_the_model_with_a_warning_a_year_ahead() {
    const DAY: u64 = 86_400;
    let now = 1_900_000_000;
    let far = ca_state(&ca_info(now + 400 * DAY), now);
    assert_eq!((far.days_left, &far.warning), (400, &None));
    assert_eq!(far.not_after, crate::pki::rfc3339(now + 400 * DAY));
    let near = ca_state(&ca_info(now + 365 * DAY), now);
    assert_eq!(near.days_left, 365);
    assert!(near.warning.as_deref().unwrap().contains("365 day(s)"));
    let mut s = snap(healthy_members(), good_backends());
    s.ca = Some(near);
    let j = serde_json::to_value(&s).unwrap();
    assert_eq!(j["ca"]["days_left"], 365);
    assert!(j["ca"]["not_after"].is_string() && j["ca"]["warning"].is_string());
    // A warning, not a fault.
    assert_eq!(verdict(&s, &BOUNDS).level, Level::Healthy);
    s.ca = Some(ca_state(&ca_info(now - DAY), now));
    let v = verdict(&s, &BOUNDS);
    assert_eq!(v.level, Level::Degraded);
    assert!(v.reasons[0].contains("cluster CA expired"), "{v:?}");
}

#[test]
fn backups_are_judged_by_age_and_archiving() {
    let bounds = BackupBounds {
        max_age_secs: Some(26 * 3600),
        archive_fail_secs: 300,
    };
    let ok = BackupState {
        repository: "router1".into(),
        newest: Some(("L".into(), "diff".into(), 3600)),
        backups: 2,
        repository_error: None,
        last_archived_wal: Some("000000010000000000000009".into()),
        last_archived_age_secs: Some(30),
        archive_failed_count: 3,
        archive_failing_secs: None,
        archiver_error: None,
    };
    assert!(
        backup_faults(&ok, &bounds).is_empty(),
        "old failures that healed are fine"
    );
    let stale = BackupState {
        newest: Some(("L".into(), "full".into(), 30 * 3600)),
        ..ok.clone()
    };
    let f = backup_faults(&stale, &bounds);
    assert!(
        f[0].contains("30h old, over backup_max_age_hours 26"),
        "{f:?}"
    );
    let unchecked = BackupBounds {
        max_age_secs: None,
        ..bounds
    };
    assert!(backup_faults(&stale, &unchecked).is_empty());
    let failing = BackupState {
        archive_failing_secs: Some(400),
        ..ok.clone()
    };
    let f = backup_faults(&failing, &bounds);
    assert!(f[0].contains("WAL archiving has failed for 6m"), "{f:?}");
    let brief = BackupState {
        archive_failing_secs: Some(120),
        ..ok.clone()
    };
    assert!(
        backup_faults(&brief, &bounds).is_empty(),
        "a brief failure is not yet a fault"
    );
    let none = BackupState {
        newest: None,
        ..ok.clone()
    };
    assert!(backup_faults(&none, &bounds)[0].contains("no backup in the repository"));
    let unreadable = BackupState {
        repository_error: Some("no SSH session to router1".into()),
        ..ok
    };
    assert!(backup_faults(&unreadable, &bounds)[0].contains("not readable"));
}

#[test]
fn a_paused_or_silent_pooler_is_degraded() {
    let mut s = snap(healthy_members(), good_backends());
    let pooler = |paused: bool, error: Option<&str>| PoolerState {
        router: "router1".into(),
        clients: 7,
        waiting: 7,
        servers: 0,
        maxwait: 3,
        paused,
        error: error.map(str::to_string),
    };
    s.poolers = vec![pooler(false, None)];
    assert_eq!(verdict(&s, &BOUNDS).level, Level::Healthy);
    s.poolers = vec![pooler(true, None)];
    let v = verdict(&s, &BOUNDS);
    assert_eq!(v.level, Level::Degraded);
    assert_eq!(
        v.reasons,
        ["pooler on router1 paused: its 7 client(s) wait (`pgha pool resume`)"]
    );
    s.poolers = vec![pooler(false, Some("connection refused"))];
    let v = verdict(&s, &BOUNDS);
    assert_eq!(
        v.reasons,
        ["pooler on router1 not answering (connection refused)"]
    );
}

#[test]
fn lag_is_read_from_the_members_own_positions_when_known() {
    // Right after a WAL switch: the cluster view (positions published once per
    // loop_wait) shows a whole segment of lag that the replicas' own answers,
    // read at once, do not.
    let view: patroni::ClusterView = serde_json::from_value(serde_json::json!({"members": [
        {"name": "db1", "role": "leader", "state": "running", "timeline": 1},
        {"name": "db2", "role": "sync_standby", "state": "streaming", "timeline": 1, "lag": 16_823_776},
        {"name": "db3", "role": "replica", "state": "streaming", "timeline": 1, "lag": 16_823_776}
    ]}))
    .unwrap();
    let names = ["db1", "db2", "db3"].map(String::from);
    let addresses = ["10.0.0.1", "10.0.0.2", "10.0.0.3"].map(String::from);
    let statuses = vec![
        Ok(serde_json::json!({"role": "primary", "xlog": {"location": 117_440_672}})),
        Ok(serde_json::json!({"role": "replica",
            "xlog": {"received_location": 117_440_672, "replayed_location": 117_440_512}})),
        // No position in its answer: the cluster view's lag stands.
        Ok(serde_json::json!({"role": "replica"})),
    ];
    let m = members(&names, &addresses, Some(&view), &statuses);
    assert_eq!(m[0].lag_bytes, None, "the leader has no lag");
    assert_eq!(m[1].lag_bytes, Some(0));
    assert_eq!(m[2].lag_bytes, Some(16_823_776));
    let behind = vec![
        statuses[0].clone(),
        Ok(serde_json::json!({"role": "replica", "xlog": {"received_location": 100_000_000}})),
        statuses[2].clone(),
    ];
    let m = members(&names, &addresses, Some(&view), &behind);
    assert_eq!(m[1].lag_bytes, Some(17_440_672), "a replica really behind");
}

#[test]
fn tags_pgha_sets_everywhere_are_no_news() {
    let mut m = healthy_members();
    for x in &mut m {
        x.tags.insert("clonefrom".into(), Value::Bool(true));
    }
    m[2].tags.insert("nofailover".into(), Value::Bool(true));
    m[1].tags.insert("nosync".into(), Value::Bool(false));
    let s = snap(m, good_backends());
    assert_eq!(s.verdict.line(), "healthy");
    let tagged: Vec<&String> = s
        .verdict
        .notes
        .iter()
        .filter(|n| n.contains("tagged"))
        .collect();
    assert_eq!(tagged, ["db3 tagged nofailover"]);
}

#[test]
fn an_etcd_member_that_answered_but_failed_its_read_keeps_what_it_said() {
    use crate::probe::etcd::{EndpointHealth, EndpointReport, EtcdReport};
    let said = EndpointHealth {
        cluster_id: 7,
        member_id: 0xab,
        leader: 0,
        version: "3.5.16".into(),
        members: vec!["db1=ab".into()],
        errors: vec![],
        db_size: 4096,
        raft_index: 41,
        raft_term: 3,
    };
    let report = EtcdReport {
        endpoints: vec![
            EndpointReport {
                endpoint: "https://10.0.0.1:2379".into(),
                health: Err("answers but knows no leader (raft term 3), so a read failed".into()),
                answered: Some(said),
            },
            EndpointReport {
                endpoint: "https://10.0.0.2:2379".into(),
                health: Err("no answer within 3s".into()),
                answered: None,
            },
        ],
    };
    let m = etcd_members(&["db1".into(), "db2".into()], &report);
    assert!(!m[0].healthy && !m[0].leader);
    assert_eq!(m[0].id.as_deref(), Some("ab"));
    assert_eq!(m[0].raft_index, Some(41));
    assert_eq!(m[0].version.as_deref(), Some("3.5.16"));
    assert!(m[0].error.as_deref().unwrap().contains("knows no leader"));
    assert_eq!((m[1].id.as_deref(), m[1].raft_index), (None, None));
}
