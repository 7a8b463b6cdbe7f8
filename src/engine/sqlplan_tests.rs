use super::*;
use crate::engine::facts::DatabaseFact;
use crate::inventory::{PgDatabase, PgExtension, Secret};

fn secrets() -> Secrets {
    let s = Secret::new;
    Secrets {
        superuser_password: s("su"),
        replication_password: s("re"),
        rewind_password: s("rw"),
        monitor_password: s("mon"),
        app_password: s("app"),
        patroni_api_password: s("api"),
        haproxy_stats_password: s("st"),
        pgbouncer_auth_password: s("pb"),
        backup_cipher_pass: s("ci"),
        backup_s3_key: s(""),
        backup_s3_key_secret: s(""),
        users: [("reporting".to_string(), s("rep-pw"))].into(),
    }
}

fn user(name: &str) -> PgUser {
    PgUser {
        name: name.into(),
        login: true,
        attributes: vec![],
        member_of: vec![],
        cidrs: vec![],
        password_file: None,
        connection_limit: -1,
        absent: false,
    }
}

fn database(name: &str, owner: &str) -> PgDatabase {
    PgDatabase {
        name: name.into(),
        owner: Some(owner.into()),
        encoding: None,
        locale: None,
        extensions: vec![],
        cidrs: vec![],
        absent: false,
    }
}

fn role(name: &str, password: &str) -> RoleFact {
    RoleFact {
        name: name.into(),
        verifier: scram::verifier(password),
        can_login: true,
        pg_monitor: false,
        attributes: vec![],
        connection_limit: -1,
        member_of: vec![],
    }
}

/// A primary holding pgha's own roles and database as they should be.
fn converged() -> SqlFacts {
    let mut f = SqlFacts::default();
    let mut monitor = role("pgha_monitor", "mon");
    monitor.pg_monitor = true;
    f.roles.insert("pgha_monitor".into(), monitor);
    f.roles.insert("app".into(), role("app", "app"));
    f.roles
        .insert("pg_read_all_data".into(), role("pg_read_all_data", ""));
    f.databases.insert(
        "app".into(),
        DatabaseFact {
            owner: "app".into(),
            ..Default::default()
        },
    );
    f
}

fn cluster() -> Cluster {
    Cluster {
        monitor_user: "pgha_monitor".into(),
        ..Default::default()
    }
}

#[test]
fn pghas_own_roles_alone_need_nothing_when_converged() {
    assert_eq!(plan_sql(&cluster(), &secrets(), &converged()), Ok(vec![]));
}

#[test]
fn a_new_role_and_database_are_created_in_order_with_their_extension() {
    let mut c = cluster();
    let mut u = user("reporting");
    u.member_of = vec!["pg_read_all_data".into()];
    u.attributes = vec!["createdb".into()];
    c.postgresql_users = vec![u];
    let mut d = database("reports", "reporting");
    d.extensions = vec![PgExtension {
        name: "pg_trgm".into(),
        absent: false,
    }];
    c.postgresql_databases = vec![d];
    let changes = plan_sql(&c, &secrets(), &converged()).unwrap();
    let text: Vec<String> = changes.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "create role reporting",
            "grant pg_read_all_data to reporting",
            "create database reports owned by reporting",
            "create extension pg_trgm in database reports",
        ]
    );
    let sql = sql_statements(&c, &secrets(), &changes);
    assert!(
        sql[0].starts_with(
            "CREATE ROLE \"reporting\" WITH LOGIN NOSUPERUSER CREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT -1 PASSWORD 'SCRAM-SHA-256$"
        ),
        "{sql:?}"
    );
    assert!(
        !sql.iter().any(|s| s.contains("rep-pw")),
        "no password in plain text"
    );
    assert_eq!(sql[3], "\\connect \"reports\"");
    assert_eq!(
        sql[4],
        "CREATE EXTENSION IF NOT EXISTS \"pg_trgm\" CASCADE;"
    );
}

#[test]
fn a_converged_role_needs_nothing_and_a_drifted_one_is_altered_and_regranted() {
    let mut c = cluster();
    let mut u = user("reporting");
    u.member_of = vec!["pg_read_all_data".into()];
    c.postgresql_users = vec![u];
    let mut have = converged();
    let mut r = role("reporting", "rep-pw");
    r.member_of = vec!["pg_read_all_data".into()];
    have.roles.insert("reporting".into(), r.clone());
    assert_eq!(plan_sql(&c, &secrets(), &have), Ok(vec![]));
    // Changed by hand: a superuser, another membership, an old password.
    r.attributes = vec!["superuser".into()];
    r.member_of = vec!["pg_monitor".into()];
    r.verifier = scram::verifier("old");
    have.roles.insert("reporting".into(), r);
    let text: Vec<String> = plan_sql(&c, &secrets(), &have)
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        text,
        [
            "alter role reporting (attributes, password)",
            "grant pg_read_all_data to reporting",
            "revoke pg_monitor from reporting",
        ]
    );
}

#[test]
fn absent_entries_are_dropped_databases_before_roles_and_only_when_there() {
    let mut c = cluster();
    let mut u = user("old");
    u.absent = true;
    c.postgresql_users = vec![u];
    let mut d = database("olddb", "old");
    d.absent = true;
    c.postgresql_databases = vec![d];
    // Not there: nothing to do.
    assert_eq!(plan_sql(&c, &secrets(), &converged()), Ok(vec![]));
    let mut have = converged();
    have.roles.insert("old".into(), role("old", "x"));
    have.databases
        .insert("olddb".into(), DatabaseFact::default());
    let changes = plan_sql(&c, &secrets(), &have).unwrap();
    assert_eq!(
        changes,
        [
            SqlChange::DropDatabase {
                name: "olddb".into()
            },
            SqlChange::DropRole { name: "old".into() },
        ]
    );
}

#[test]
fn a_connected_database_is_not_dropped_and_the_refusal_counts_sessions() {
    let mut c = cluster();
    let mut d = database("busy", "app");
    d.absent = true;
    c.postgresql_databases = vec![d];
    let mut have = converged();
    have.databases.insert(
        "busy".into(),
        DatabaseFact {
            connections: 2,
            ..Default::default()
        },
    );
    let refusals = plan_sql(&c, &secrets(), &have).unwrap_err();
    assert_eq!(refusals.len(), 1);
    assert!(
        refusals[0]
            .to_string()
            .contains("2 session(s) are connected"),
        "{}",
        refusals[0]
    );
}

#[test]
fn encoding_locale_and_missing_roles_are_refused_by_name() {
    let mut c = cluster();
    let mut d = database("latin", "app");
    d.encoding = Some("LATIN1".into());
    d.locale = Some("C.UTF-8".into());
    let mut u = user("reporting");
    u.member_of = vec!["nosuchrole".into()];
    c.postgresql_users = vec![u];
    c.postgresql_databases = vec![d, database("orphan", "ghost")];
    let mut have = converged();
    have.databases.insert(
        "latin".into(),
        DatabaseFact {
            owner: "app".into(),
            encoding: "UTF8".into(),
            collate: "C.utf8".into(),
            ctype: "C.utf8".into(),
            ..Default::default()
        },
    );
    let text: Vec<String> = plan_sql(&c, &secrets(), &have)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(text.len(), 3, "{text:#?}");
    assert!(text[0].contains("role `nosuchrole`"), "{text:#?}");
    assert!(text[1].contains("encoding UTF8"), "{text:#?}");
    assert!(
        text[2].contains("`orphan`") && text[2].contains("`ghost`"),
        "the locale C.UTF-8 equals C.utf8, so no locale refusal: {text:#?}"
    );
}

#[test]
fn a_group_role_takes_no_password_and_an_extension_is_dropped_in_its_database() {
    let mut c = cluster();
    let mut g = user("readers");
    g.login = false;
    c.postgresql_users = vec![g];
    let mut d = database("reports", "app");
    d.extensions = vec![PgExtension {
        name: "hstore".into(),
        absent: true,
    }];
    c.postgresql_databases = vec![d];
    let mut have = converged();
    have.databases.insert(
        "reports".into(),
        DatabaseFact {
            owner: "app".into(),
            extensions: ["hstore".to_string()].into(),
            ..Default::default()
        },
    );
    let changes = plan_sql(&c, &secrets(), &have).unwrap();
    let sql = sql_statements(&c, &secrets(), &changes);
    assert_eq!(
        sql,
        [
            "CREATE ROLE \"readers\" WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT -1;",
            "\\connect \"reports\"",
            "DROP EXTENSION IF EXISTS \"hstore\";",
        ]
    );
}

#[test]
fn entries_are_found_by_name_in_the_inventory_text() {
    let text = "all:\n  vars:\n    postgresql_users:\n      - name: a\n      - b\n      - {name: c, state: absent}\n    postgresql_databases:\n      - name: \"a\"\n        owner: b\n      - {db: d}\n";
    assert_eq!(line_of(text, "postgresql_users", "a"), Some(4));
    assert_eq!(line_of(text, "postgresql_users", "b"), Some(5));
    assert_eq!(line_of(text, "postgresql_users", "c"), Some(6));
    assert_eq!(line_of(text, "postgresql_databases", "a"), Some(8));
    assert_eq!(line_of(text, "postgresql_databases", "d"), Some(10));
    assert_eq!(line_of(text, "postgresql_databases", "zz"), None);
}

/// With pooling on: PgBouncer's auth user and its lookup function are created,
/// then nothing is asked while both are as they should be; a lookup of an older
/// version is replaced. The function never returns a superuser's or an expired
/// password, runs with a fixed search_path, and only the auth user may call it.
#[test]
fn pooling_creates_the_auth_user_and_its_lookup_once() {
    let mut c = cluster();
    c.pgbouncer_enabled = true;
    c.pgbouncer_auth_user = "pgha_pgbouncer".into();
    let mut have = converged();
    let changes = plan_sql(&c, &secrets(), &have).unwrap();
    assert_eq!(
        changes,
        vec![
            SqlChange::LoginRole {
                name: "pgha_pgbouncer".into(),
                create: true
            },
            SqlChange::PoolerLookup {
                user: "pgha_pgbouncer".into()
            },
        ]
    );
    let sql = sql_statements(&c, &secrets(), &changes).join("\n");
    assert!(sql.contains("CREATE ROLE \"pgha_pgbouncer\" WITH LOGIN PASSWORD 'SCRAM-SHA-256$"));
    assert!(
        !sql.contains("'pb'"),
        "the password goes as a verifier: {sql}"
    );
    for must in [
        "SECURITY DEFINER SET search_path = pg_catalog, pg_temp",
        "AND NOT a.rolsuper",
        "a.rolvaliduntil IS NULL OR a.rolvaliduntil > pg_catalog.now()",
        "REVOKE ALL ON FUNCTION pgha.pgbouncer_lookup(text) FROM PUBLIC;",
        "GRANT EXECUTE ON FUNCTION pgha.pgbouncer_lookup(text) TO \"pgha_pgbouncer\";",
        "REVOKE ALL ON SCHEMA pgha FROM PUBLIC;",
    ] {
        assert!(sql.contains(must), "{must}:\n{sql}");
    }
    have.roles
        .insert("pgha_pgbouncer".into(), role("pgha_pgbouncer", "pb"));
    have.pooler_lookup = Some(crate::engine::sqlplan::POOLER_LOOKUP_VERSION.into());
    assert_eq!(plan_sql(&c, &secrets(), &have), Ok(vec![]));
    have.pooler_lookup = Some("pgha pgbouncer lookup v0".into());
    assert_eq!(
        plan_sql(&c, &secrets(), &have),
        Ok(vec![SqlChange::PoolerLookup {
            user: "pgha_pgbouncer".into()
        }])
    );
    // Pooling off: nothing about it is asked.
    c.pgbouncer_enabled = false;
    have.pooler_lookup = None;
    have.roles.remove("pgha_pgbouncer");
    assert_eq!(plan_sql(&c, &secrets(), &have), Ok(vec![]));
}
