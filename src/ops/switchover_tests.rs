//! Unit tests of `switchover`.

use super::*;

fn view(json: &str) -> ClusterView {
    serde_json::from_str(json).unwrap()
}

const HEALTHY: &str = r#"{"members": [
  {"name": "db1", "role": "leader", "state": "running", "timeline": 3},
  {"name": "db2", "role": "sync_standby", "state": "streaming", "timeline": 3, "lag": 0},
  {"name": "db3", "role": "replica", "state": "streaming", "timeline": 3, "lag": 0}
]}"#;

#[test]
fn without_a_target_the_synchronous_standby_is_chosen() {
    let v = view(HEALTHY);
    assert_eq!(
        choose_candidate(&v, None, true, 0).unwrap(),
        ("db1".into(), "db2".into())
    );
}

#[test]
fn without_synchronous_mode_the_least_lagging_replica_is_chosen() {
    let v = view(
        r#"{"members": [
      {"name": "db1", "role": "leader", "state": "running", "timeline": 1},
      {"name": "db2", "role": "replica", "state": "streaming", "timeline": 1, "lag": 500},
      {"name": "db3", "role": "replica", "state": "streaming", "timeline": 1, "lag": 10}
    ]}"#,
    );
    assert_eq!(choose_candidate(&v, None, false, 1000).unwrap().1, "db3");
    let e = choose_candidate(&v, None, false, 5).unwrap_err();
    assert!(
        e.contains("db2 lags 500") && e.contains("db3 lags 10"),
        "{e}"
    );
}

#[test]
fn refusals_name_the_reason() {
    let v = view(HEALTHY);
    let e = choose_candidate(&v, Some("db1"), true, 0).unwrap_err();
    assert!(e.contains("db1 is the leader already"), "{e}");
    let e = choose_candidate(&v, Some("db9"), true, 0).unwrap_err();
    assert!(e.contains("db9 is not a member"), "{e}");
    let e = choose_candidate(&v, Some("db3"), true, 0).unwrap_err();
    assert!(
        e.contains("not the synchronous standby") && e.contains("db2"),
        "{e}"
    );
    assert_eq!(
        choose_candidate(&v, Some("db3"), false, 0).unwrap().1,
        "db3"
    );
}

#[test]
fn unhealthy_clusters_are_refused() {
    let paused = view(&HEALTHY.replacen('{', r#"{"pause": true, "#, 1));
    assert!(
        choose_candidate(&paused, None, true, 0)
            .unwrap_err()
            .contains("paused")
    );
    let leaderless = view(
        r#"{"members": [{"name": "db2", "role": "replica", "state": "streaming", "lag": 0}]}"#,
    );
    assert!(
        choose_candidate(&leaderless, None, true, 0)
            .unwrap_err()
            .contains("no running leader")
    );
    let stale = view(
        r#"{"members": [
      {"name": "db1", "role": "leader", "state": "running", "timeline": 3},
      {"name": "db2", "role": "sync_standby", "state": "running", "timeline": 2, "lag": 0},
      {"name": "db3", "role": "replica", "state": "streaming", "timeline": 3, "lag": 0, "tags": {"nofailover": true}}
    ]}"#,
    );
    let e = choose_candidate(&stale, None, false, 0).unwrap_err();
    assert!(e.contains("db2 is running, not streaming"), "{e}");
    assert!(e.contains("db3 is tagged nofailover"), "{e}");
}

#[test]
fn an_asynchronous_replica_named_must_become_synchronous_first() {
    let v = view(HEALTHY);
    assert!(must_become_sync(&v, "db3", 0).unwrap());
    // The synchronous standby itself, the leader, or an unknown member: nothing
    // to widen (choose_candidate names what is wrong with the last two).
    assert!(!must_become_sync(&v, "db2", 0).unwrap());
    assert!(!must_become_sync(&v, "db1", 0).unwrap());
    assert!(!must_become_sync(&v, "db9", 0).unwrap());
    let lagging = view(&HEALTHY.replace(
        r#""role": "replica", "state": "streaming", "timeline": 3, "lag": 0"#,
        r#""role": "replica", "state": "streaming", "timeline": 3, "lag": 900"#,
    ));
    assert!(!must_become_sync(&lagging, "db3", 0).unwrap());
    let nosync = view(&HEALTHY.replace(
        r#""role": "replica", "state": "streaming", "timeline": 3, "lag": 0"#,
        r#""role": "replica", "state": "streaming", "timeline": 3, "lag": 0, "tags": {"nosync": true}"#,
    ));
    let e = must_become_sync(&nosync, "db3", 0).unwrap_err();
    assert!(e.contains("db3 is tagged nosync"), "{e}");
}
