//! Typed inventory: what `inventory::load` produces. Plain data, no I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Serialize;

/// A secret string. Never printed: Debug, Display and Serialize show a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The real value, for rendering into files and connecting. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstallMethod {
    Native,
    Docker,
}

/// How to reach one host over SSH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshTarget {
    /// Inventory name, used in every message.
    pub host: String,
    /// Address or DNS name to connect to.
    pub address: String,
    pub port: u16,
    pub user: String,
    /// Private key file; None means: try ssh-agent, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa.
    pub key_file: Option<PathBuf>,
    /// Run privileged commands through `sudo -n` (when user is not root).
    pub become_: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub name: String,
    pub ssh: SshTarget,
    /// The address other cluster members use to reach this host (an IP: used in
    /// pg_hba, etcd URLs, HAProxy). Resolved from ansible_host / address.
    pub ip: IpAddr,
    /// Every group the host belongs to, directly or through children.
    pub groups: Vec<String>,
    /// Effective variables after Ansible precedence (all < parent groups < child groups < host),
    /// secrets redacted on output by the printer.
    pub vars: BTreeMap<String, serde_json::Value>,
    /// The user's own certificate and key for this host (TLS), instead of pgha's.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

impl Host {
    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }
}

/// One apt pin (written to /etc/apt/preferences.d/pgha).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AptPin {
    pub package: String,
    pub version: String,
    pub priority: i32,
}

/// A role from `postgresql_users`. Its attributes and memberships are exactly what
/// the inventory says (pgha alters the role to match); it is dropped only when
/// marked `state: absent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PgUser {
    pub name: String,
    /// LOGIN (the default) with a password; `login: false` makes a group role.
    pub login: bool,
    /// Role attributes besides LOGIN that are on, sorted lowercase words out of
    /// superuser, createdb, createrole, replication, bypassrls, noinherit.
    pub attributes: Vec<String>,
    /// The roles it is a member of (granted; memberships not listed are revoked).
    pub member_of: Vec<String>,
    /// Networks it may log in from (pg_hba, every database), besides the routers.
    pub cidrs: Vec<String>,
    /// Where its password is (else generated into the secrets file).
    pub password_file: Option<String>,
    /// CONNECTION LIMIT (-1: none).
    pub connection_limit: i64,
    pub absent: bool,
}

/// An extension of a database: created with `CREATE EXTENSION`, dropped only when
/// marked `state: absent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PgExtension {
    pub name: String,
    pub absent: bool,
}

/// A database from `postgresql_databases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PgDatabase {
    pub name: String,
    /// Its owner (default: the superuser).
    pub owner: Option<String>,
    /// Fixed at creation (PostgreSQL cannot change them afterwards); None: the
    /// cluster's own (template1's).
    pub encoding: Option<String>,
    pub locale: Option<String>,
    pub extensions: Vec<PgExtension>,
    /// Networks that may connect to it (pg_hba, every role), besides the routers.
    pub cidrs: Vec<String>,
    pub absent: bool,
}

/// Cluster-wide settings with documented defaults (README "Inventory reference").
#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    pub cluster_name: String,
    pub install_method: InstallMethod,
    pub postgresql_version: u32,
    pub postgresql_port: u16,
    pub postgresql_data_dir: String,
    /// Extra/overriding PostgreSQL parameters (Patroni dynamic config).
    pub postgresql_parameters: BTreeMap<String, serde_json::Value>,
    pub patroni_rest_port: u16,
    pub patroni_ttl: u32,
    pub patroni_loop_wait: u32,
    pub patroni_retry_timeout: u32,
    pub patroni_maximum_lag_on_failover: u64,
    pub synchronous_mode: bool,
    pub synchronous_mode_strict: bool,
    pub synchronous_node_count: u32,
    pub etcd_client_port: u16,
    pub etcd_peer_port: u16,
    pub haproxy_write_port: u16,
    pub haproxy_read_port: u16,
    pub haproxy_stats_port: u16,
    pub haproxy_maxconn: u32,
    pub haproxy_timeout_connect: String,
    pub haproxy_timeout_client: String,
    pub haproxy_timeout_server: String,
    pub haproxy_check_inter: String,
    pub haproxy_check_fastinter: String,
    pub haproxy_check_downinter: String,
    pub haproxy_check_fall: u32,
    pub haproxy_check_rise: u32,
    /// Bytes a replica may lag behind the leader and still serve the read port.
    pub haproxy_replica_max_lag: u64,
    pub exporter_port: u16,
    /// Networks allowed to connect to PostgreSQL (besides DB hosts and routers).
    pub client_cidrs: Vec<IpNet>,
    pub superuser_name: String,
    pub replication_user: String,
    pub rewind_user: String,
    pub monitor_user: String,
    pub app_user: String,
    pub app_database: String,
    /// The user's own roles and databases (besides pgha's and app_user/app_database).
    pub postgresql_users: Vec<PgUser>,
    pub postgresql_databases: Vec<PgDatabase>,
    /// Extra apt source lines (written to /etc/apt/sources.list.d/pgha.list).
    pub apt_sources: Vec<String>,
    pub apt_pins: Vec<AptPin>,
    /// Skip `apt-get update` when the package lists are younger than this (seconds).
    pub apt_cache_valid_time: u64,
    /// Allow a host to be in both `db` and `router` (a warning instead of an error).
    pub allow_router_on_db: bool,
    /// install_method docker: the image of every component (default: pgha's own,
    /// built by `pgha images build`), and per component overrides.
    pub docker_image: String,
    pub docker_image_etcd: String,
    pub docker_image_postgres: String,
    pub docker_image_haproxy: String,
    pub docker_image_pgbouncer: String,
    pub docker_image_exporter: String,
    /// Prometheus, Alertmanager and the node and pgBackRest exporters.
    pub docker_image_monitoring: String,
    /// `push`: copied from this machine's Docker; `registry`: hosts pull them.
    pub docker_image_source: String,
    /// Docker's storage driver on the hosts (empty: Docker's default; the lab: vfs).
    pub docker_storage_driver: String,
    /// Registries the hosts' Docker may reach over plain HTTP (or TLS it cannot
    /// verify): `insecure-registries` in daemon.json.
    pub docker_insecure_registries: Vec<String>,
    /// TLS for etcd (client and peer, with client certificates), Patroni's REST API
    /// and PostgreSQL, with certificates from the cluster CA.
    pub tls: bool,
    /// The user's own CA (certificate, and key for pgha to issue host certificates).
    pub tls_ca_cert_file: Option<PathBuf>,
    pub tls_ca_key_file: Option<PathBuf>,
    pub tls_cert_validity_days: u64,
    pub tls_renew_before_days: u64,
    /// Backups with pgBackRest to a repository on the `backup` group's host, WAL
    /// archiving from the leader, scheduled backups (systemd timers on that host).
    pub backup_enabled: bool,
    /// Where the repository lives: `posix` (a directory on the backup host) or
    /// `s3` (a bucket, reached from the backup host only).
    pub backup_repo_type: String,
    /// The repository's directory on the backup host (with s3: its path in the bucket).
    pub backup_repo_path: String,
    /// The S3 endpoint (host name or address), its port, bucket and region.
    pub backup_s3_endpoint: String,
    pub backup_s3_port: u16,
    pub backup_s3_bucket: String,
    pub backup_s3_region: String,
    /// `path` (most self-hosted servers) or `host` (virtual-hosted buckets).
    pub backup_s3_uri_style: String,
    /// Which CAs verify the S3 endpoint's certificate: `system` (the backup
    /// host's), or `pgha` (the cluster CA signed it).
    pub backup_s3_ca: String,
    /// pgBackRest's TLS server (on the db hosts and the backup host).
    pub backup_port: u16,
    /// Encrypt the repository (aes-256-cbc, pass `backup_cipher_pass`).
    pub backup_encryption: bool,
    pub backup_retention_full: u32,
    pub backup_retention_diff: u32,
    pub backup_compress_type: String,
    pub backup_process_max: u32,
    /// systemd calendar events; empty: no such timer.
    pub backup_schedule_full: String,
    pub backup_schedule_diff: String,
    pub backup_schedule_incr: String,
    pub backup_schedule_verify: String,
    pub backup_archive_async: bool,
    /// Past this much WAL waiting for the repository, pgBackRest drops it (a hole
    /// in the recovery window) instead of filling the db host's disk.
    pub backup_archive_push_queue_max: String,
    /// `status` is degraded when the newest backup is older (0: not checked).
    /// Default: the longest gap between scheduled backups plus 2 hours.
    pub backup_max_age_hours: u32,
    /// `status` is degraded when archiving has failed for this long.
    pub backup_archive_fail_minutes: u32,
    /// Prometheus, Alertmanager (on the `monitor` group's host, default the first
    /// router) and node_exporter on every host, with pgha's alert rules.
    pub monitoring_enabled: bool,
    pub prometheus_port: u16,
    pub alertmanager_port: u16,
    pub node_exporter_port: u16,
    /// etcd's plain-HTTP `/metrics` and `/health` (no client certificate), on the
    /// member's own address.
    pub etcd_metrics_port: u16,
    pub pgbackrest_exporter_port: u16,
    /// Seconds between scrapes (and rule evaluations).
    pub monitoring_scrape_interval: u32,
    /// How long Prometheus keeps samples, in days, and the most disk it may use.
    pub monitoring_retention_days: u32,
    pub monitoring_retention_size: String,
    /// The replica-lag alert's bound, in seconds.
    pub alert_replica_lag_seconds: u32,
    /// Alertmanager's receivers: webhooks (JSON, Alertmanager's version 4), and
    /// email through an SMTP relay.
    pub alert_webhook_urls: Vec<String>,
    pub alert_email_to: String,
    pub alert_email_from: String,
    pub alert_smtp_smarthost: String,
    pub alert_smtp_require_tls: bool,
    /// PgBouncer on every router in front of HAProxy's write port (README
    /// "Connection pooling").
    pub pgbouncer_enabled: bool,
    /// The pooled write port on each router's address.
    pub pgbouncer_port: u16,
    pub pgbouncer_pool_mode: String,
    pub pgbouncer_max_client_conn: u32,
    pub pgbouncer_default_pool_size: u32,
    pub pgbouncer_max_prepared_statements: u32,
    /// Seconds a planned operation waits for the poolers' PAUSE (transactions in
    /// flight to finish) before it resumes them and gives up.
    pub pgbouncer_pause_timeout: u32,
    /// The role PgBouncer looks passwords up with (auth_query) and pgha administers
    /// it as.
    pub pgbouncer_auth_user: String,
    /// PgBouncer's exporter on each router (with monitoring).
    pub pgbouncer_exporter_port: u16,
}

impl Cluster {
    /// The repository is an S3 bucket.
    pub fn s3(&self) -> bool {
        self.backup_repo_type == "s3"
    }

    /// `monitoring_retention_size` in MiB (Prometheus's `MB` are powers of two).
    pub fn monitoring_retention_mib(&self) -> u64 {
        super::convert::size_bytes(&self.monitoring_retention_size).unwrap_or(0) / (1024 * 1024)
    }

    /// The pgBackRest stanza: the cluster's name.
    pub fn stanza(&self) -> &str {
        &self.cluster_name
    }
}

impl Default for Cluster {
    /// The documented defaults (README "Inventory reference").
    fn default() -> Self {
        Cluster {
            cluster_name: "pgha".into(),
            install_method: InstallMethod::Native,
            postgresql_version: 17,
            postgresql_port: 5432,
            postgresql_data_dir: "/var/lib/postgresql/17/main".into(),
            postgresql_parameters: BTreeMap::new(),
            patroni_rest_port: 8008,
            patroni_ttl: 20,
            patroni_loop_wait: 2,
            patroni_retry_timeout: 8,
            patroni_maximum_lag_on_failover: 1_048_576,
            synchronous_mode: true,
            synchronous_mode_strict: false,
            synchronous_node_count: 1,
            etcd_client_port: 2379,
            etcd_peer_port: 2380,
            haproxy_write_port: 5000,
            haproxy_read_port: 5001,
            haproxy_stats_port: 8404,
            haproxy_maxconn: 1000,
            haproxy_timeout_connect: "1s".into(),
            haproxy_timeout_client: "30m".into(),
            haproxy_timeout_server: "30m".into(),
            haproxy_check_inter: "1s".into(),
            haproxy_check_fastinter: "250ms".into(),
            haproxy_check_downinter: "250ms".into(),
            haproxy_check_fall: 2,
            haproxy_check_rise: 1,
            haproxy_replica_max_lag: 16 * 1024 * 1024,
            exporter_port: 9187,
            client_cidrs: Vec::new(),
            superuser_name: "postgres".into(),
            replication_user: "replicator".into(),
            rewind_user: "rewind_user".into(),
            monitor_user: "pgha_monitor".into(),
            app_user: "app".into(),
            postgresql_users: Vec::new(),
            postgresql_databases: Vec::new(),
            app_database: "app".into(),
            apt_sources: Vec::new(),
            apt_pins: Vec::new(),
            apt_cache_valid_time: 86_400,
            allow_router_on_db: false,
            docker_image: String::new(),
            docker_image_etcd: String::new(),
            docker_image_postgres: String::new(),
            docker_image_haproxy: String::new(),
            docker_image_pgbouncer: String::new(),
            docker_image_exporter: String::new(),
            docker_image_monitoring: String::new(),
            docker_image_source: "push".into(),
            docker_storage_driver: String::new(),
            docker_insecure_registries: Vec::new(),
            tls: true,
            tls_ca_cert_file: None,
            tls_ca_key_file: None,
            tls_cert_validity_days: 365,
            tls_renew_before_days: 30,
            backup_enabled: true,
            backup_repo_type: "posix".into(),
            backup_repo_path: "/var/lib/pgbackrest".into(),
            backup_s3_endpoint: String::new(),
            backup_s3_port: 443,
            backup_s3_bucket: String::new(),
            backup_s3_region: "us-east-1".into(),
            backup_s3_uri_style: "path".into(),
            backup_s3_ca: "system".into(),
            backup_port: 8432,
            backup_encryption: true,
            backup_retention_full: 2,
            backup_retention_diff: 7,
            backup_compress_type: "zst".into(),
            backup_process_max: 2,
            backup_schedule_full: "Sun *-*-* 01:00:00".into(),
            backup_schedule_diff: "Mon..Sat *-*-* 01:00:00".into(),
            backup_schedule_incr: String::new(),
            backup_schedule_verify: "Sun *-*-* 05:00:00".into(),
            backup_archive_async: true,
            backup_archive_push_queue_max: "4GiB".into(),
            backup_max_age_hours: 26,
            backup_archive_fail_minutes: 5,
            monitoring_enabled: true,
            prometheus_port: 9090,
            alertmanager_port: 9093,
            node_exporter_port: 9100,
            etcd_metrics_port: 2381,
            pgbackrest_exporter_port: 9854,
            monitoring_scrape_interval: 15,
            monitoring_retention_days: 15,
            monitoring_retention_size: "2GiB".into(),
            alert_replica_lag_seconds: 60,
            alert_webhook_urls: Vec::new(),
            alert_email_to: String::new(),
            alert_email_from: String::new(),
            alert_smtp_smarthost: String::new(),
            alert_smtp_require_tls: true,
            pgbouncer_enabled: false,
            pgbouncer_port: 6432,
            pgbouncer_pool_mode: "transaction".into(),
            pgbouncer_max_client_conn: 5000,
            pgbouncer_default_pool_size: 20,
            pgbouncer_max_prepared_statements: 200,
            pgbouncer_pause_timeout: 10,
            pgbouncer_auth_user: "pgha_pgbouncer".into(),
            pgbouncer_exporter_port: 9127,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Secrets {
    pub superuser_password: Secret,
    pub replication_password: Secret,
    pub rewind_password: Secret,
    pub monitor_password: Secret,
    pub app_password: Secret,
    /// Basic auth for Patroni's unsafe REST endpoints (restart, switchover, config).
    pub patroni_api_password: Secret,
    /// Basic auth for HAProxy's stats page (user `pgha`), which pgha's probes read.
    pub haproxy_stats_password: Secret,
    /// The password of `pgbouncer_auth_user`.
    pub pgbouncer_auth_password: Secret,
    /// The backup repository's encryption pass (pgBackRest `repo1-cipher-pass`):
    /// without it the backups cannot be read. Keep a copy away from the cluster.
    pub backup_cipher_pass: Secret,
    /// The S3 repository's access key and secret key (given by the user, never
    /// generated; empty unless the repository is S3).
    pub backup_s3_key: Secret,
    pub backup_s3_key_secret: Secret,
    /// The passwords of `postgresql_users`' login roles, by role name.
    pub users: BTreeMap<String, Secret>,
}

impl Secrets {
    /// All secret values, for redaction of diffs and error text.
    pub fn all(&self) -> Vec<&Secret> {
        let mut all = vec![
            &self.superuser_password,
            &self.replication_password,
            &self.rewind_password,
            &self.monitor_password,
            &self.app_password,
            &self.patroni_api_password,
            &self.haproxy_stats_password,
            &self.pgbouncer_auth_password,
            &self.backup_cipher_pass,
            &self.backup_s3_key,
            &self.backup_s3_key_secret,
        ];
        all.extend(self.users.values());
        all
    }

    /// Replace every secret value occurring in `text` with `<redacted>`, in each form
    /// it takes in files, commands and URLs (see `encodings`), and every private key.
    /// Diffs are masked by structure first (engine::mask); this is the net under it,
    /// and the only one for error text and logs.
    pub fn redact(&self, text: &str) -> String {
        let mut forms: Vec<String> = self
            .all()
            .iter()
            .filter(|s| !s.expose().is_empty())
            .flat_map(|s| encodings(s.expose()))
            .collect();
        // Longest first: an encoding may contain another form of the same secret.
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        forms.dedup();
        let mut out = text.to_string();
        for f in forms {
            out = out.replace(&f, "<redacted>");
        }
        redact_private_keys(&out)
    }
}

/// The forms a secret takes where pgha writes it: raw; JSON-escaped, plain and as
/// minijinja's HTML-safe `tojson` (`<` `>` `&` `'` as \u00XX); YAML single-quoted
/// (`''`); sh single-quoted (`'\''`, also HAProxy's); env-file double-quoted
/// (backslash before `" \ $` and backtick); URL-encoded, in the variants encoders
/// produce (see `URL_FORMS`).
pub fn encodings(secret: &str) -> Vec<String> {
    let quoted = serde_json::to_string(secret).unwrap_or_default();
    let json = quoted
        .strip_prefix('"')
        .and_then(|j| j.strip_suffix('"'))
        .unwrap_or(&quoted)
        .to_string();
    let html_safe = json
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\'', "\\u0027");
    let mut env = String::new();
    for c in secret.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            env.push('\\');
        }
        env.push(c);
    }
    let mut forms = vec![
        secret.to_string(),
        json,
        html_safe,
        secret.replace('\'', "''"),
        secret.replace('\'', r"'\''"),
        env,
    ];
    for (raw, upper) in URL_FORMS {
        let url = percent_encode(secret, raw, upper);
        forms.push(url.replace("%20", "+"));
        forms.push(url);
    }
    forms
}

/// URL encodings of a password: (characters left as they are besides letters,
/// digits and `- . _ ~`, upper case hex). Everything encoded; Go's net/url
/// userinfo (postgres_exporter builds its DSN with it); the WHATWG userinfo set
/// (the `url` crate, browsers).
const URL_FORMS: [(&str, bool); 4] = [
    ("", true),
    ("", false),
    ("$&+,;=", true),
    ("!$%&'()*+,", true),
];

fn percent_encode(s: &str, raw: &str, upper: bool) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || raw.as_bytes().contains(&b) {
            out.push(b as char);
        } else if upper {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// Every PEM private key block replaced by `<redacted private key>`.
pub fn redact_private_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let head_end = rest[start..].find("-----\n").map(|i| start + i);
        let is_key = head_end.is_some_and(|e| rest[start..e].ends_with("PRIVATE KEY"));
        let end = rest[start..].find("-----END ").and_then(|i| {
            rest[start + i..]
                .find("KEY-----")
                .map(|j| start + i + j + 8)
        });
        match (is_key, end) {
            (true, Some(end)) => {
                out.push_str(&rest[..start]);
                out.push_str("<redacted private key>");
                rest = &rest[end..];
            }
            _ => {
                out.push_str(&rest[..start + 11]);
                rest = &rest[start + 11..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Where a secret's value came from (shown by `pgha inventory`, never the value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SecretSource {
    /// Written inline in the inventory.
    Inventory,
    /// Read from the file named by `<name>_file`.
    File { path: PathBuf },
    /// Generated by pgha and kept in the secrets file.
    SecretsFile { path: PathBuf },
    /// Set nowhere yet: generated into the secrets file on the first run that
    /// writes it (`deploy`). The in-memory value is random and not kept.
    Pending { path: PathBuf },
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inventory => f.write_str("inventory"),
            SecretSource::File { path } => write!(f, "file {}", path.display()),
            SecretSource::SecretsFile { path } => write!(f, "generated in {}", path.display()),
            SecretSource::Pending { path } => {
                write!(f, "<generated on first deploy> into {}", path.display())
            }
        }
    }
}

/// A risky-but-legal choice, printed before the command runs.
#[derive(Debug, Clone, Serialize)]
pub struct Warning {
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub path: PathBuf,
    /// Hosts in file order (the first db host bootstraps a new cluster).
    pub hosts: Vec<Host>,
    /// Group name -> member host names (children resolved), file order.
    pub groups: BTreeMap<String, Vec<String>>,
    pub cluster: Cluster,
    pub secrets: Secrets,
    /// Where generated secrets are kept (mode 0600).
    pub secrets_path: PathBuf,
    /// Where each secret came from, by name (`superuser_password`, ...).
    pub secret_sources: BTreeMap<String, SecretSource>,
    /// known_hosts file to verify host keys against, from `pgha_known_hosts`
    /// (relative to the inventory's directory). None: the SSH default.
    pub known_hosts: Option<PathBuf>,
    pub warnings: Vec<Warning>,
}

/// Secrets added after clusters were deployed without them: a secrets file may lack
/// them until the next `deploy` adds them, and the commands that only use them
/// (the stats page answers without a password until then) work meanwhile.
pub const ADDED_LATER: [&str; 2] = ["haproxy_stats_password", "backup_cipher_pass"];

impl Inventory {
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }
    /// Refuse when a secret the cluster was deployed with is not known: a day-2
    /// command must use the passwords the deploy generated, not new random ones.
    pub fn require_secrets(&self) -> Result<(), String> {
        let pending: Vec<&str> = self
            .secret_sources
            .iter()
            .filter(|(k, s)| {
                matches!(s, SecretSource::Pending { .. }) && !ADDED_LATER.contains(&k.as_str())
            })
            .map(|(k, _)| k.as_str())
            .collect();
        if pending.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} not set and not in {}: this command needs the passwords `pgha deploy` generated \
                 (is this the inventory the cluster was deployed with?)",
                pending.join(", "),
                self.secrets_path.display()
            ))
        }
    }
    fn members(&self, group: &str) -> Vec<&Host> {
        self.hosts.iter().filter(|h| h.in_group(group)).collect()
    }
    pub fn db_hosts(&self) -> Vec<&Host> {
        self.members("db")
    }
    pub fn router_hosts(&self) -> Vec<&Host> {
        self.members("router")
    }
    /// The backup repository's host (`backup` group), when backups are on.
    pub fn backup_host(&self) -> Option<&Host> {
        if !self.cluster.backup_enabled {
            return None;
        }
        self.members("backup").into_iter().next()
    }
    /// The monitoring host (`monitor` group, default the first router), when
    /// monitoring is on.
    pub fn monitor_host(&self) -> Option<&Host> {
        if !self.cluster.monitoring_enabled {
            return None;
        }
        let m = self.members("monitor");
        if m.is_empty() {
            self.router_hosts().into_iter().next()
        } else {
            m.into_iter().next()
        }
    }
    /// The `etcd` group when given, else the first 3 db hosts (the first 5 once
    /// there are 5 or more): etcd stays odd, and db hosts beyond it are Patroni
    /// members only.
    pub fn etcd_hosts(&self) -> Vec<&Host> {
        if self.groups.get("etcd").is_some_and(|g| !g.is_empty()) {
            self.members("etcd")
        } else {
            let mut db = self.db_hosts();
            db.truncate(default_etcd_size(db.len()));
            db
        }
    }
}

/// How many of `db` db hosts are etcd members when no `etcd` group is given:
/// 5 from 5 hosts on, 3 from 3 or 4 (an even count adds no fault tolerance), all
/// of fewer (which validation refuses).
pub fn default_etcd_size(db: usize) -> usize {
    match db {
        0..=3 => db,
        4 => 3,
        _ => 5,
    }
}
