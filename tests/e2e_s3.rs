//! End-to-end: backups to an S3 repository on their own lab (`pgha-e2e-s3`). The S3
//! server is moto's (Debian's `python3-moto` in server mode) on the router, over
//! HTTPS (an HAProxy in front) with a certificate from the cluster's CA (pgBackRest 2.55 speaks only
//! HTTPS to S3). A cluster deployed without backups is switched to an S3
//! repository: refused (exit 4, naming the key) while the S3 keys are missing,
//! then deployed; the stanza, WAL and backups are objects in the bucket, not
//! files on the backup host; `backup run`/`list` agree with `pgbackrest info`;
//! a point-in-time restore from the bucket brings a dropped table back, and the
//! new full backup passes `backup verify`; a wrong cipher pass fails the deploy
//! naming it.

mod common;
use common::*;

const LAB: &str = "pgha-e2e-s3";
const S3_PORT: u16 = 9000;
const BUCKET: &str = "pgha-e2e";
/// Distinctive values: pgha redacts every secret from its output, short common
/// words would disappear from it too.
const KEY: &str = "PGHAE2ES3ACCESSKEY01";
const KEY_SECRET: &str = "pghaE2eS3SecretKey0000000000000000000001";

/// moto's S3 server on the router behind a TLS front (a second HAProxy with the
/// router's certificate from the cluster CA): moto's own TLS closes each
/// connection without a TLS close, which pgBackRest refuses on a write. The
/// bucket created. Returns the endpoint's address.
async fn s3_server(lab: &Lab) -> String {
    let ip = lab.ip(BACKUP_REPO);
    let pki = lab.info.dir.join("inventory.pki");
    let read = |f: &str| std::fs::read_to_string(pki.join(f)).expect("the lab's certificates");
    let (cert, key, ca) = (
        read(&format!("host-{BACKUP_REPO}.crt")),
        read(&format!("host-{BACKUP_REPO}.key")),
        read("ca.crt"),
    );
    let script = format!(
        "set -e
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q python3-moto python3-flask-cors >/dev/null
install -d -m 0700 /etc/pgha-s3
cat > /etc/pgha-s3/server.pem <<'EOF'
{cert}{key}EOF
cat > /etc/pgha-s3/ca.pem <<'EOF'
{ca}EOF
cat > /etc/pgha-s3/haproxy.cfg <<'EOF'
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend s3_tls
    bind {ip}:{S3_PORT} ssl crt /etc/pgha-s3/server.pem
    default_backend moto
backend moto
    server moto 127.0.0.1:9001
EOF
systemctl stop pgha-s3 pgha-s3-tls 2>/dev/null || true
systemd-run --unit=pgha-s3 moto_server -H 127.0.0.1 -p 9001
systemd-run --unit=pgha-s3-tls /usr/sbin/haproxy -Ws -f /etc/pgha-s3/haproxy.cfg"
    );
    let (code, out, err) = lab.sh_err(BACKUP_REPO, &script);
    assert_eq!(code, 0, "moto's S3 server on {BACKUP_REPO}:\n{out}\n{err}");
    eventually("moto's S3 server to answer over HTTPS", 120, || async {
        let (code, out, err) = lab.sh_err(
            BACKUP_REPO,
            &format!(
                "curl -sS --fail --cacert /etc/pgha-s3/ca.pem -X PUT https://{ip}:{S3_PORT}/{BUCKET}"
            ),
        );
        if code == 0 {
            Ok(())
        } else {
            Err(format!("exit {code}: {out}{err}"))
        }
    })
    .await;
    ip
}

/// Whether the bucket holds an object of that key (listed by its prefix).
fn has_object(lab: &Lab, ip: &str, key: &str) -> bool {
    let (code, out, err) = lab.sh_err(
        BACKUP_REPO,
        &format!(
            "curl -sS --fail --cacert /etc/pgha-s3/ca.pem 'https://{ip}:{S3_PORT}/{BUCKET}?list-type=2&prefix={key}'"
        ),
    );
    assert_eq!(code, 0, "list the bucket: {err}");
    out.contains(&format!("<Key>{key}</Key>"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_and_point_in_time_restore_on_s3() {
    let (lab, inv, leader) = deployed_without_backups(LAB).await;
    let ip = s3_server(&lab).await;

    // Backups on, to the bucket: refused while the keys are missing.
    let text = std::fs::read_to_string(&inv).unwrap();
    assert!(text.contains("    backup_enabled: false\n"), "{text}");
    let with = text.replace(
        "    backup_enabled: false\n",
        &format!(
            "    backup_repo_type: s3\n    backup_repo_path: /pgha/repo\n    backup_s3_endpoint: {ip}\n    \
             backup_s3_port: {S3_PORT}\n    backup_s3_bucket: {BUCKET}\n    backup_s3_ca: pgha\n"
        ),
    ) + &format!("    backup:\n      hosts:\n        {BACKUP_REPO}:\n");
    std::fs::write(&inv, with).unwrap();
    let (code, _, err) = pgha(&["deploy", &inv]);
    assert_eq!(code, 4, "refused without the S3 keys:\n{err}");
    assert!(err.contains("backup_s3_key"), "names the key: {err}");
    assert_eq!(
        lab.psql(&leader, "SHOW archive_command"),
        "/bin/true",
        "nothing was changed"
    );
    let secrets = lab.info.dir.join("inventory.secrets.yml");
    let mut s = std::fs::read_to_string(&secrets).unwrap();
    s.push_str(&format!(
        "backup_s3_key: {KEY}\nbackup_s3_key_secret: {KEY_SECRET}\n"
    ));
    std::fs::write(&secrets, s).unwrap();
    let (code, out, err) = pgha(&["deploy", &inv]);
    assert_eq!(code, 0, "deploy with an S3 repository:\n{out}\n{err}");
    assert!(
        !out.contains(KEY_SECRET) && !err.contains(KEY_SECRET) && !out.contains(KEY),
        "the S3 keys never appear in pgha's output"
    );
    let info = repo_info(&lab);
    assert_eq!(
        newest(&info)["type"],
        "full",
        "the first full backup: {info}"
    );
    let stanza = lab.cluster_name();
    for key in [
        format!("pgha/repo/backup/{stanza}/backup.info"),
        format!("pgha/repo/archive/{stanza}/archive.info"),
    ] {
        assert!(has_object(&lab, &ip, &key), "the bucket holds {key}");
    }
    let (code, _) = lab.sh(BACKUP_REPO, "test -e /var/lib/pgbackrest/backup");
    assert_ne!(
        code, 0,
        "nothing of the repository on the backup host's disk"
    );

    // A full backup under a writer; list and pgBackRest agree.
    lab.psql(&leader, "CREATE TABLE s3_w (id int PRIMARY KEY, note text)");
    let writer = writer_going(&lab, "s3_w", 1).await;
    full_backup_listed(&lab, &inv);

    // Point in time: a table back from the bucket.
    point_in_time_marker(&lab, &inv, &leader, writer, "s3_w").await;

    // A wrong cipher pass: deploy fails naming it; the right one brings it back.
    let kept = std::fs::read_to_string(&secrets).unwrap();
    let right = kept
        .lines()
        .find(|l| l.starts_with("backup_cipher_pass:"))
        .expect("the generated cipher pass")
        .to_string();
    std::fs::write(
        &secrets,
        kept.replace(
            &right,
            "backup_cipher_pass: pghaWrongCipherPass000000000001",
        ),
    )
    .unwrap();
    let (code, out, err) = pgha(&["deploy", &inv]);
    assert_ne!(code, 0, "deploy with a wrong cipher pass:\n{out}\n{err}");
    assert!(
        err.contains("`backup_cipher_pass` must be the one"),
        "names the cipher pass: {err}"
    );
    std::fs::write(&secrets, &kept).unwrap();
    let (code, out, err) = pgha(&["deploy", &inv]);
    assert_eq!(code, 0, "deploy with the right pass again:\n{out}\n{err}");
    verify_every_backup(&lab);
}
