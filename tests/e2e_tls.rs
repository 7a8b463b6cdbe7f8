//! End-to-end: a TLS cluster (the default) on its own lab (`pgha-e2e-tls`): deployed
//! from bare hosts and checked over TLS independently of pgha (etcd with a client
//! certificate, Patroni over HTTPS, PostgreSQL through the router with full
//! verification); plain HTTP to etcd and Patroni fails, PostgreSQL without TLS from
//! the router's network is refused, an etcd client certificate of another CA is
//! refused; a re-run changes nothing; `status` and `switchover` work over TLS; a
//! forced renewal rolls new certificates with a writer running, no restart and no
//! acknowledged write lost; roles, databases and extensions from the inventory,
//! logged into through the router, put back after a change by hand, dropped.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use pgha::probe::tls::Tls;
use serde_json::Value;

const LAB: &str = "pgha-e2e-tls";

fn read(path: std::path::PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lab's CA and pgha's client certificate, read from the files deploy wrote.
fn lab_tls(lab: &Lab) -> Tls {
    let dir = lab.info.dir.join("inventory.pki");
    Tls {
        ca_pem: read(dir.join("ca.crt")),
        client_cert_pem: read(dir.join("client-pgha.crt")),
        client_key_pem: read(dir.join("client-pgha.key")),
    }
}

async fn https_json(tls: &Tls, url: &str) -> Result<Value, String> {
    get_json(&pgha::probe::Net::new(Some(tls.clone())), url).await
}

/// The certificates each db host serves on Patroni's REST API and etcd. An error
/// (e.g. a handshake reset while Patroni swaps its certificate) is for the caller
/// to retry.
async fn served(lab: &Lab) -> Result<BTreeSet<String>, String> {
    let mut out = BTreeSet::new();
    let tls = lab_tls(lab);
    for h in lab.db_hosts() {
        for (port, path) in [(8008, "/liveness"), (2379, "/version")] {
            let pem = pgha::probe::tls::served_certificate(&tls, &lab.ip(&h), port, path)
                .await
                .map_err(|e| format!("{h}:{port}: {e}"))?;
            out.insert(pem);
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_cluster_checks_renewal_and_day2_commands() {
    let lab = Lab::up_tls(LAB, "root", 3, true).await;
    let inv = lab.inventory();
    assert!(
        !std::fs::read_to_string(&inv)
            .unwrap()
            .contains("tls: false"),
        "the lab inventory keeps the default (TLS on)"
    );
    let (code, _, _) = pgha(&["deploy", &inv]);
    assert_eq!(code, 0, "deploy with TLS");
    let pki = lab.info.dir.join("inventory.pki");
    let mode = |p: &str| {
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(pki.join(p)).unwrap().permissions(),
        ) & 0o777
    };
    assert_eq!(mode("ca.key"), 0o600, "the CA key is private");
    assert_eq!(mode("host-db1.key"), 0o600, "host keys are private");
    let tls = lab_tls(&lab);

    // etcd over TLS with a client certificate: three members, one cluster id.
    let mut ids = BTreeSet::new();
    for h in lab.db_hosts() {
        let ep = format!("https://{}:2379", lab.ip(&h));
        let opts = etcd_client::ConnectOptions::new().with_tls(tls.etcd_options());
        let mut c = etcd_client::Client::connect([ep.as_str()], Some(opts))
            .await
            .expect("etcd over TLS");
        let m = c.member_list().await.expect("member list");
        assert_eq!(m.members().len(), 3, "etcd members seen from {h}");
        assert!(
            m.members()
                .iter()
                .all(|m| m.peer_urls().iter().all(|u| u.starts_with("https://"))),
            "peers talk TLS"
        );
        ids.insert(c.status().await.unwrap().header().unwrap().cluster_id());
    }
    assert_eq!(ids.len(), 1, "one etcd cluster id");

    // Patroni over HTTPS: a leader and two streaming replicas.
    let leader = eventually(
        "a leader and two streaming replicas over HTTPS",
        120,
        || async {
            let v = https_json(&tls, &format!("https://{}:8008/cluster", lab.ip("db1"))).await?;
            let m = v["members"].as_array().cloned().unwrap_or_default();
            let streaming = m
                .iter()
                .filter(|x| x["state"] == "streaming" && x["lag"] == 0)
                .count();
            let leader = m
                .iter()
                .find(|x| x["role"] == "leader")
                .and_then(|x| x["name"].as_str().map(str::to_string));
            match leader {
                Some(l) if streaming == 2 => Ok(l),
                _ => Err(format!("{v}")),
            }
        },
    )
    .await;

    // Plain HTTP to etcd's client port and to Patroni's REST API fails.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    for url in [
        format!("http://{}:2379/version", lab.ip("db1")),
        format!("http://{}:8008/cluster", lab.ip("db1")),
    ] {
        let r = plain.get(&url).send().await;
        assert!(
            r.as_ref().map(|r| !r.status().is_success()).unwrap_or(true),
            "plain HTTP refused at {url}: {r:?}"
        );
    }

    // An etcd client certificate from another CA is refused.
    let (other_ca, other_cert, other_key) = other_ca_client();
    let foreign = Tls {
        ca_pem: tls.ca_pem.clone(),
        client_cert_pem: other_cert,
        client_key_pem: other_key,
    };
    let _ = other_ca;
    let ep = format!("https://{}:2379", lab.ip("db1"));
    let opts = etcd_client::ConnectOptions::new()
        .with_timeout(Duration::from_secs(3))
        .with_connect_timeout(Duration::from_secs(3))
        .with_tls(foreign.etcd_options());
    let refused = match etcd_client::Client::connect([ep.as_str()], Some(opts)).await {
        Ok(mut c) => c.member_list().await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "etcd refuses a client certificate of another CA");

    // PostgreSQL: verify-full through the router works; no TLS from the router's
    // network is refused.
    let pw = lab.secret("superuser_password");
    let c = pg(&lab.target(), 5000)
        .await
        .expect("verify-full through :5000");
    let ssl: bool = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the session through the router is encrypted");
    c.batch_execute("CREATE TABLE tl (id int PRIMARY KEY, note text)")
        .await
        .unwrap();
    let (code, _) = lab.sh("router1", "command -v psql >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client-17 >/dev/null 2>&1; true");
    assert_eq!(code, 0);
    let (code, out) = lab.sh(
        "router1",
        &format!(
            "PGPASSWORD='{pw}' psql 'host={} port=5432 user=postgres dbname=postgres sslmode=disable connect_timeout=5' -c 'select 1' 2>&1",
            lab.ip(&leader)
        ),
    );
    assert_ne!(code, 0, "a connection without TLS is refused: {out}");
    assert!(
        out.contains("no encryption") || out.contains("pg_hba"),
        "{out}"
    );

    // A re-run changes nothing.
    let (code, out, _) = pgha(&["deploy", &inv, "--output", "json"]);
    assert_eq!(code, 0);
    assert_eq!(json_doc(&out)["changed"], 0, "a TLS re-run changes nothing");

    // status and switchover over TLS; status shows certificate expiry.
    let (code, out, _) = pgha(&["status", &inv, "--output", "json"]);
    assert_eq!(code, 0, "status over TLS: {out}");
    let doc = json_doc(&out);
    assert_eq!(doc["leader"], leader.as_str());
    let certs = doc["certificates"].as_array().expect("certificates");
    assert_eq!(certs.len(), 6, "patroni and etcd on each db host: {doc}");
    assert!(
        certs
            .iter()
            .all(|c| c["days_left"].as_i64().is_some_and(|d| d > 300)),
        "{doc}"
    );
    // The CA's own expiry: pgha's CA is good for ten years, so no warning.
    let ca = &doc["ca"];
    assert!(
        ca["days_left"].as_i64().is_some_and(|d| d > 3000) && ca["warning"].is_null(),
        "{doc}"
    );
    let (code, _, _) = pgha(&["switchover", &inv]);
    assert_eq!(code, 0, "switchover over TLS");

    // Forced renewal: every certificate re-issued and rolled out with a writer
    // running: no restart, nothing lost, the cluster serving.
    let before_certs = eventually("every endpoint to serve its certificate", 30, || {
        served(&lab)
    })
    .await;
    let before_start = start_times_tls(&lab, &tls).await;
    let writer = writer_going(&lab, "tl", 1).await;
    let text = std::fs::read_to_string(&inv).unwrap();
    std::fs::write(
        &inv,
        text.replacen("vars:\n", "vars:\n    tls_renew_before_days: 400\n", 1),
    )
    .unwrap();
    let (code, _, _) = pgha(&["deploy", &inv]);
    assert_eq!(code, 0, "deploy renewing every certificate");
    std::fs::write(&inv, &text).unwrap();
    let renewed = eventually(
        "every endpoint to serve its new certificate",
        60,
        || async {
            let now = served(&lab).await?;
            if now.is_disjoint(&before_certs) {
                Ok(now)
            } else {
                Err("old certificates still served".to_string())
            }
        },
    )
    .await;
    assert_eq!(renewed.len(), before_certs.len());
    acked(&writer, 20, Instant::now(), None).await;
    let acked = writer.stop().await;
    assert!(acked.len() > 20, "the writer wrote during the renewal");
    assert_no_loss(&lab, "tl", &acked).await;
    assert_eq!(
        start_times_tls(&lab, &tls).await,
        before_start,
        "certificates renewed without restarting PostgreSQL"
    );
    let (code, out, _) = pgha(&["deploy", &inv, "--output", "json"]);
    assert_eq!(code, 0);
    assert_eq!(
        json_doc(&out)["changed"],
        0,
        "after the renewal a re-run changes nothing"
    );
    roles_databases_and_extensions(&lab, &inv).await;
    verify_every_backup(&lab);
}

/// A connection through the router's write port as `user` into `db` (TLS verified).
async fn login(
    lab: &Lab,
    user: &str,
    password: &str,
    db: &str,
) -> Result<tokio_postgres::Client, String> {
    let ep = pgha::probe::sql::Endpoint {
        host: lab.router(),
        port: 5000,
        user: user.into(),
        password: password.into(),
        dbname: db.into(),
    };
    pgha::probe::sql::connect_bounded(&lab.net(), &ep, Duration::from_secs(5)).await
}

/// The first column of each row of `sql` on the primary, as text.
async fn column(lab: &Lab, db: &str, sql: &str) -> Vec<String> {
    let c = login(lab, "postgres", &lab.secret("superuser_password"), db)
        .await
        .unwrap_or_else(|e| panic!("superuser into {db}: {e}"));
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect()
}

/// postgresql_users / postgresql_databases: created with their extension packages
/// on every db host and logins through the router; a re-run changes nothing; a
/// role changed by hand is put back; dropping a database with a session is refused
/// with the count and changes nothing; without the session both are dropped.
async fn roles_databases_and_extensions(lab: &Lab, inv: &str) {
    let base = std::fs::read_to_string(inv).unwrap();
    let with = |extra: &str| base.replacen("vars:\n", &format!("vars:\n{extra}"), 1);
    let present = "    postgresql_users:
      - name: reporting
        member_of: [readers]
        connection_limit: 7
        cidrs: [10.99.0.0/16]
      - {name: readers, login: false}
    postgresql_databases:
      - name: reports
        owner: reporting
        locale: C.UTF-8
        encoding: UTF8
        extensions: [pg_trgm, vector]
        cidrs: [10.98.0.0/16]
";
    std::fs::write(inv, with(present)).unwrap();
    let (code, out, err) = pgha(&["deploy", inv, "--output", "json"]);
    assert_eq!(code, 0, "deploy with roles and databases: {out} {err}");
    let password = lab.secret("user.reporting");
    assert_eq!(password.len(), 32, "generated into the secrets file");
    assert!(
        !out.contains(&password) && !err.contains(&password),
        "never printed"
    );
    let c = login(lab, "reporting", &password, "reports")
        .await
        .unwrap_or_else(|e| panic!("reporting logs into reports through the router: {e}"));
    let row = c
        .query_one("select current_user::text, current_database()::text", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("reporting".into(), "reports".into())
    );
    // The extension works for its owner: pgvector's operator.
    let d: f64 = c
        .query_one("select ('[1,2]'::vector <-> '[4,6]'::vector)::float8", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(d, 5.0);
    drop(c);
    let mut exts = column(
        lab,
        "reports",
        "select extname::text from pg_extension order by 1",
    )
    .await;
    exts.retain(|e| e != "plpgsql");
    assert_eq!(exts, ["pg_trgm", "vector"]);
    assert_eq!(
        column(lab, "postgres", "select rolconnlimit::text || ' ' || rolcanlogin::text from pg_roles where rolname = 'reporting'").await,
        ["7 true"]
    );
    assert_eq!(
        column(lab, "postgres", "select b.rolname::text from pg_auth_members m join pg_roles a on a.oid = m.member join pg_roles b on b.oid = m.roleid where a.rolname = 'reporting'").await,
        ["readers"]
    );
    assert_eq!(
        column(
            lab,
            "postgres",
            "select rolcanlogin::text from pg_roles where rolname = 'readers'"
        )
        .await,
        ["false"]
    );
    assert_eq!(
        column(lab, "postgres", "select datcollate || ' ' || pg_encoding_to_char(encoding) from pg_database where datname = 'reports'").await,
        ["C.UTF-8 UTF8"]
    );
    for h in lab.db_hosts() {
        let (rc, _) = lab.sh(
            &h,
            "dpkg-query -W -f='${db:Status-Abbrev}' postgresql-17-pgvector | grep -q '^ii'",
        );
        assert_eq!(rc, 0, "{h}: pgvector's package installed");
        // pg_hba as PostgreSQL reads it (Patroni writes it on the reload): the
        // role's and the database's networks.
        eventually(&format!("{h}: the new pg_hba rules"), 30, || async {
            let (_, rules) = lab.sh(
                &h,
                "runuser -u postgres -- psql -X -At -c \"select type, database::text, user_name::text, address from pg_hba_file_rules where address like '10.9%'\"",
            );
            if rules.contains("hostssl|{all}|{reporting}|10.99.0.0")
                && rules.contains("hostssl|{reports}|{all}|10.98.0.0")
            {
                Ok(())
            } else {
                Err(rules)
            }
        })
        .await;
    }
    let (code, out, _) = pgha(&["deploy", inv, "--output", "json"]);
    assert_eq!(code, 0);
    assert_eq!(
        json_doc(&out)["changed"],
        0,
        "a re-run changes nothing: {out}"
    );
    // Changed by hand: put back by the next deploy.
    column(
        lab,
        "postgres",
        "alter role reporting superuser connection limit 1; revoke readers from reporting",
    )
    .await;
    let (code, _, _) = pgha(&["deploy", inv]);
    assert_eq!(code, 0);
    assert_eq!(
        column(lab, "postgres", "select rolsuper::text || ' ' || rolconnlimit::text || ' ' || pg_has_role('reporting', 'readers', 'member')::text from pg_roles where rolname = 'reporting'").await,
        ["false 7 true"]
    );
    // Marked absent while a session is in the database: refused, nothing changed.
    let absent = "    postgresql_users:
      - {name: reporting, state: absent}
      - {name: readers, state: absent}
    postgresql_databases:
      - {name: reports, state: absent}
";
    std::fs::write(inv, with(absent)).unwrap();
    let line = 1 + std::fs::read_to_string(inv)
        .unwrap()
        .lines()
        .position(|l| l.contains("{name: reports, state: absent}"))
        .unwrap();
    let session = login(lab, "reporting", &password, "reports").await.unwrap();
    let (code, _, err) = pgha(&["deploy", inv]);
    assert_eq!(code, 4, "refused: {err}");
    assert!(
        err.contains(&format!(
            "inventory.yml:{line}: postgresql_databases `reports`"
        )) && err.contains("1 session(s) are connected"),
        "{err}"
    );
    let reports = || {
        column(
            lab,
            "postgres",
            "select count(*)::text from pg_database where datname = 'reports'",
        )
    };
    assert_eq!(reports().await, ["1"], "the refused deploy dropped nothing");
    drop(session);
    eventually("the session to end", 30, || async {
        let n = column(
            lab,
            "postgres",
            "select count(*)::text from pg_stat_activity where datname = 'reports'",
        )
        .await;
        if n == ["0"] {
            Ok(())
        } else {
            Err(format!("{n:?}"))
        }
    })
    .await;
    let (code, _, err) = pgha(&["deploy", inv]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(reports().await, ["0"], "dropped once no session was left");
    assert_eq!(
        column(
            lab,
            "postgres",
            "select count(*)::text from pg_roles where rolname in ('reporting', 'readers')"
        )
        .await,
        ["0"]
    );
    assert!(
        login(lab, "reporting", &password, "postgres")
            .await
            .is_err(),
        "a dropped role cannot log in"
    );
    std::fs::write(inv, &base).unwrap();
}

/// Each db host's postmaster start time, from Patroni's `/patroni` (retried: the
/// REST API may be swapping its certificate).
async fn start_times_tls(lab: &Lab, tls: &Tls) -> Vec<String> {
    eventually("Patroni's /patroni on every db host", 30, || async {
        let mut v = Vec::new();
        for h in lab.db_hosts() {
            let st = https_json(tls, &format!("https://{}:8008/patroni", lab.ip(&h)))
                .await
                .map_err(|e| format!("{h}: {e}"))?;
            v.push(postmaster_start(&st));
        }
        Ok(v)
    })
    .await
}

/// A CA and a client certificate it issued, unrelated to the lab's.
fn other_ca_client() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "other CA");
    let ca = p.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(p, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut c = rcgen::CertificateParams::new(vec!["pgha".to_string()]).unwrap();
    c.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = c.signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}
