//! Unit tests of `convert`.

use super::*;

fn y(s: &str) -> Yaml {
    yaml_serde::from_str(s).unwrap()
}

#[test]
fn ports() {
    assert_eq!(convert(Kind::Port, &y("5432")).unwrap(), json!(5432));
    assert_eq!(convert(Kind::Port, &y("'2222'")).unwrap(), json!(2222));
    assert!(
        convert(Kind::Port, &y("0")).unwrap_err()[0]
            .1
            .contains("port 0")
    );
    assert!(
        convert(Kind::Port, &y("70000")).unwrap_err()[0]
            .1
            .contains("out of range")
    );
    assert!(
        convert(Kind::Port, &y("54.32")).unwrap_err()[0]
            .1
            .contains("whole number")
    );
    assert!(
        convert(Kind::Port, &y("five")).unwrap_err()[0]
            .1
            .contains("\"five\"")
    );
    assert!(convert(Kind::Port, &y("-1")).is_err());
}

#[test]
fn booleans_accept_ansible_spellings() {
    assert_eq!(convert(Kind::Bool, &y("yes")).unwrap(), json!(true));
    assert_eq!(convert(Kind::Bool, &y("False")).unwrap(), json!(false));
    assert!(convert(Kind::Bool, &y("1")).is_err());
}

#[test]
fn cidrs_and_lists() {
    assert_eq!(
        convert(Kind::Cidrs, &y("[10.1.2.3/24, 192.168.0.7]")).unwrap(),
        json!(["10.1.2.0/24", "192.168.0.7/32"])
    );
    let e = convert(Kind::Cidrs, &y("[10.0.0.0/8, 10.0.0.0/33]")).unwrap_err();
    assert_eq!(e[0].0, vec![Seg::Index(1)]);
    assert!(convert(Kind::Cidrs, &y("10.0.0.0/8")).is_err());
    assert_eq!(convert(Kind::Cidrs, &y("~")).unwrap(), json!([]));
    assert_eq!(
        convert(
            Kind::Registries,
            &y("[10.1.2.3:5050, registry.internal, \"[fd00::1]:5000\"]")
        )
        .unwrap(),
        json!(["10.1.2.3:5050", "registry.internal", "[fd00::1]:5000"])
    );
    for bad in [
        "[\"http://10.1.2.3:5050\"]",
        "[\"reg:99999\"]",
        "[\"reg/path\"]",
        "[\"a b\"]",
        "[\"reg:\"]",
        "[5050]",
    ] {
        assert!(convert(Kind::Registries, &y(bad)).is_err(), "{bad}");
    }
}

#[test]
fn pins_and_params() {
    let p = convert(Kind::AptPins, &y("[{package: patroni, version: '4.0.7*'}]")).unwrap();
    assert_eq!(
        p,
        json!([{"package": "patroni", "version": "4.0.7*", "priority": 1001}])
    );
    let e = convert(Kind::AptPins, &y("[{package: a, version: 17.10}]")).unwrap_err();
    assert_eq!(e[0].0, vec![Seg::Index(0), Seg::key("version")]);
    let p = convert(
        Kind::Params,
        &y("{max_connections: 200, wal_log_hints: true}"),
    )
    .unwrap();
    assert_eq!(p, json!({"max_connections": 200, "wal_log_hints": "on"}));
    let p = convert(Kind::Params, &y("[{option: work_mem, value: 8MB}]")).unwrap();
    assert_eq!(p, json!({"work_mem": "8MB"}));
    assert!(convert(Kind::Params, &y("{a: {b: 1}}")).is_err());
}

#[test]
fn strings_and_names() {
    assert!(convert(Kind::ClusterName, &y("Prod")).is_err());
    assert!(convert(Kind::ClusterName, &y("prod-1_a")).is_ok());
    assert!(convert(Kind::Role, &y("app; drop")).is_err());
    assert!(convert(Kind::Duration, &y("4s")).is_ok());
    assert!(convert(Kind::Duration, &y("4 seconds")).is_err());
    assert_eq!(convert(Kind::Duration, &y("500")).unwrap(), json!("500"));
    assert!(convert(Kind::Address, &y("db1.example.com")).is_ok());
    assert!(convert(Kind::Address, &y("fe80::1")).is_ok());
    assert!(convert(Kind::Address, &y("not an address")).is_err());
    for bad in [
        "/",
        "/var",
        "/etc",
        "/var/lib",
        "/usr/local",
        "/home",
        "/var/lib/postgresql",
        "relative/dir",
        "/srv//pg",
        "/srv/pg/",
        "/srv/./pg",
        "/srv/pg/../x",
        "/data",
        "/tmp/pg",
        "/etc/postgresql/17/main",
        "/proc/1/x",
        "/srv/pg data",
        "/srv/$(id)",
        "/srv/pg;rm",
        "/srv/`x`",
    ] {
        assert!(
            convert(Kind::DataDir, &y(bad)).is_err(),
            "{bad} must be refused as a data directory"
        );
    }
    for good in [
        "/var/lib/postgresql/17/main",
        "/srv/pg/data",
        "/data/pg",
        "/pg/17",
    ] {
        assert!(convert(Kind::DataDir, &y(good)).is_ok(), "{good}");
    }
    let e = format!("{:?}", convert(Kind::DataDir, &y("/var")).unwrap_err());
    assert!(e.contains("wipes this directory"), "{e}");
    for bad in [
        "/var/lib/pg;rm",
        "/var/lib/$(id)",
        "/var/lib/`id`",
        "/var/lib/a|b",
        "/var/lib/a:b",
        "/var/lib/'x'",
        "/var/lib/%s",
    ] {
        let e = convert(Kind::DataDir, &y(&format!("\"{bad}\""))).unwrap_err();
        assert!(e[0].1.contains("use letters, digits"), "{bad}: {e:?}");
    }
    assert!(convert(Kind::DataDir, &y("/srv/pg-17/data_1.x+y")).is_ok());
    for good in [
        "pgha-stack:0123abcd",
        "10.9.0.21:5050/pgha/stack:v1.2-rc_1",
        "registry.example/pgha@sha256:0123456789abcdef",
    ] {
        assert!(convert(Kind::Image, &y(good)).is_ok(), "{good}");
    }
    for bad in [
        "pgha;id",
        "pgha:$(id)",
        "pgha`id`",
        "pgha|cat",
        "--privileged",
        "a b",
        "pgha@sha256:xyz",
        "x//y",
    ] {
        assert!(
            convert(Kind::Image, &y(&format!("\"{bad}\""))).is_err(),
            "{bad}"
        );
    }
    assert!(convert(Kind::Secret, &y("12345")).is_err());
    assert!(convert(Kind::Secret, &y("!vault |\n  $ANSIBLE_VAULT;1.1")).is_err());
}
