//! The variables pgha understands: names, aliases, kinds and scopes, and "did you
//! mean" for misspelt names. Checking a value against its kind is `convert`'s.

use yaml_serde::Value as Yaml;

/// What a variable configures, which decides how its value is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Per host: how to reach it over SSH.
    Connection,
    /// One value for the whole cluster.
    Cluster,
    /// A password, inline (one value for the whole cluster).
    Secret,
    /// A file holding a password (`<name>_file`).
    SecretFile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `cluster_name`: `^[a-z0-9][a-z0-9_-]*$`.
    ClusterName,
    /// A PostgreSQL role or database name.
    Role,
    /// An IP address or DNS name.
    Address,
    /// A Unix user name.
    User,
    Port,
    Int {
        min: u64,
        max: u64,
    },
    Bool,
    /// An HAProxy time (`4s`, `30m`, `500ms`; a bare number is milliseconds).
    Duration,
    /// A directory pgha may wipe as root (PostgreSQL's data directory): absolute,
    /// normalized, at least two levels deep, not a system directory.
    DataDir,
    /// A path on this machine (relative to the inventory's directory, `~` expanded).
    LocalPath,
    InstallMethod,
    /// `push` or `registry`: how docker images reach the hosts.
    ImageSource,
    /// Free text on one line (a storage driver name).
    Text,
    /// A Docker image reference (`name[:tag][@digest]`): it reaches `docker`
    /// command lines on the hosts.
    Image,
    Cidrs,
    /// Registries as `host[:port]` (Docker's `insecure-registries`).
    Registries,
    /// `http://` or `https://` URLs (Alertmanager's webhooks).
    Urls,
    AptSources,
    AptPins,
    Params,
    /// `postgresql_users`: a list of roles.
    Users,
    /// `postgresql_databases`: a list of databases.
    Databases,
    Secret,
    /// One of a fixed set of words.
    OneOf(&'static [&'static str]),
    /// A systemd calendar event (`OnCalendar=`), or empty for none.
    Calendar,
    /// A size in bytes, as pgBackRest writes it (`4GiB`, `512MB`, `1048576`).
    Size,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct KeySpec {
    pub name: &'static str,
    /// The name the value is resolved under (aliases share it).
    pub canonical: &'static str,
    pub scope: Scope,
    pub kind: Kind,
}

const fn k(name: &'static str, scope: Scope, kind: Kind) -> KeySpec {
    KeySpec {
        name,
        canonical: name,
        scope,
        kind,
    }
}

const fn alias(name: &'static str, canonical: &'static str, kind: Kind) -> KeySpec {
    KeySpec {
        name,
        canonical,
        scope: Scope::Connection,
        kind,
    }
}

const U32: Kind = Kind::Int {
    min: 0,
    max: u32::MAX as u64,
};
const POS_U32: Kind = Kind::Int {
    min: 1,
    max: u32::MAX as u64,
};

use Scope::{Cluster as C, Connection as Conn, Secret as S, SecretFile as SF};

/// Every variable pgha reads. Cluster keys are in README order.
pub(crate) const KEYS: &[KeySpec] = &[
    k("address", Conn, Kind::Address),
    alias("ansible_host", "address", Kind::Address),
    alias("ansible_ssh_host", "address", Kind::Address),
    k("ssh_port", Conn, Kind::Port),
    alias("ansible_port", "ssh_port", Kind::Port),
    alias("ansible_ssh_port", "ssh_port", Kind::Port),
    k("ssh_user", Conn, Kind::User),
    alias("ansible_user", "ssh_user", Kind::User),
    alias("ansible_ssh_user", "ssh_user", Kind::User),
    k("ssh_private_key_file", Conn, Kind::LocalPath),
    alias(
        "ansible_ssh_private_key_file",
        "ssh_private_key_file",
        Kind::LocalPath,
    ),
    alias(
        "ansible_private_key_file",
        "ssh_private_key_file",
        Kind::LocalPath,
    ),
    k("become", Conn, Kind::Bool),
    alias("ansible_become", "become", Kind::Bool),
    k("pgha_known_hosts", C, Kind::LocalPath),
    k("cluster_name", C, Kind::ClusterName),
    k("install_method", C, Kind::InstallMethod),
    k("postgresql_version", C, Kind::Int { min: 13, max: 18 }),
    k("postgresql_port", C, Kind::Port),
    k("postgresql_data_dir", C, Kind::DataDir),
    k("postgresql_parameters", C, Kind::Params),
    k("patroni_rest_port", C, Kind::Port),
    k("patroni_ttl", C, POS_U32),
    k("patroni_loop_wait", C, POS_U32),
    k("patroni_retry_timeout", C, POS_U32),
    k(
        "patroni_maximum_lag_on_failover",
        C,
        Kind::Int {
            min: 0,
            max: i64::MAX as u64,
        },
    ),
    k("synchronous_mode", C, Kind::Bool),
    k("synchronous_mode_strict", C, Kind::Bool),
    k("synchronous_node_count", C, U32),
    k("etcd_client_port", C, Kind::Port),
    k("etcd_peer_port", C, Kind::Port),
    k("haproxy_write_port", C, Kind::Port),
    k("haproxy_read_port", C, Kind::Port),
    k("haproxy_stats_port", C, Kind::Port),
    k("haproxy_maxconn", C, POS_U32),
    k("haproxy_timeout_connect", C, Kind::Duration),
    k("haproxy_timeout_client", C, Kind::Duration),
    k("haproxy_timeout_server", C, Kind::Duration),
    k("haproxy_check_inter", C, Kind::Duration),
    k("haproxy_check_fastinter", C, Kind::Duration),
    k("haproxy_check_downinter", C, Kind::Duration),
    k("haproxy_check_fall", C, POS_U32),
    k("haproxy_check_rise", C, POS_U32),
    k(
        "haproxy_replica_max_lag",
        C,
        Kind::Int {
            min: 0,
            max: i64::MAX as u64,
        },
    ),
    k("exporter_port", C, Kind::Port),
    k("client_cidrs", C, Kind::Cidrs),
    k("superuser_name", C, Kind::Role),
    k("replication_user", C, Kind::Role),
    k("rewind_user", C, Kind::Role),
    k("monitor_user", C, Kind::Role),
    k("app_user", C, Kind::Role),
    k("app_database", C, Kind::Role),
    k("postgresql_users", C, Kind::Users),
    k("postgresql_databases", C, Kind::Databases),
    k("apt_sources", C, Kind::AptSources),
    k("apt_pins", C, Kind::AptPins),
    k(
        "apt_cache_valid_time",
        C,
        Kind::Int {
            min: 0,
            max: i64::MAX as u64,
        },
    ),
    k("allow_router_on_db", C, Kind::Bool),
    k("docker_image", C, Kind::Image),
    k("docker_image_etcd", C, Kind::Image),
    k("docker_image_postgres", C, Kind::Image),
    k("docker_image_haproxy", C, Kind::Image),
    k("docker_image_pgbouncer", C, Kind::Image),
    k("docker_image_exporter", C, Kind::Image),
    k("docker_image_monitoring", C, Kind::Image),
    k("docker_image_source", C, Kind::ImageSource),
    k("docker_storage_driver", C, Kind::Text),
    k("docker_insecure_registries", C, Kind::Registries),
    k("tls", C, Kind::Bool),
    k("tls_ca_cert_file", C, Kind::LocalPath),
    k("tls_ca_key_file", C, Kind::LocalPath),
    k("tls_cert_validity_days", C, Kind::Int { min: 1, max: 3650 }),
    k("tls_renew_before_days", C, Kind::Int { min: 0, max: 3650 }),
    k("tls_cert_file", Conn, Kind::LocalPath),
    k("tls_key_file", Conn, Kind::LocalPath),
    k("backup_enabled", C, Kind::Bool),
    k("backup_repo_type", C, Kind::OneOf(&["posix", "s3"])),
    k("backup_repo_path", C, Kind::DataDir),
    k("backup_s3_endpoint", C, Kind::Text),
    k("backup_s3_port", C, Kind::Port),
    k("backup_s3_bucket", C, Kind::Text),
    k("backup_s3_region", C, Kind::Text),
    k("backup_s3_uri_style", C, Kind::OneOf(&["path", "host"])),
    k("backup_s3_ca", C, Kind::OneOf(&["system", "pgha"])),
    k("backup_port", C, Kind::Port),
    k("backup_encryption", C, Kind::Bool),
    k("backup_retention_full", C, Kind::Int { min: 1, max: 100 }),
    k("backup_retention_diff", C, Kind::Int { min: 1, max: 1000 }),
    k(
        "backup_compress_type",
        C,
        Kind::OneOf(&["zst", "lz4", "gz", "bz2", "none"]),
    ),
    k("backup_process_max", C, Kind::Int { min: 1, max: 64 }),
    k("backup_schedule_full", C, Kind::Calendar),
    k("backup_schedule_diff", C, Kind::Calendar),
    k("backup_schedule_incr", C, Kind::Calendar),
    k("backup_schedule_verify", C, Kind::Calendar),
    k("backup_archive_async", C, Kind::Bool),
    k("backup_archive_push_queue_max", C, Kind::Size),
    k(
        "backup_max_age_hours",
        C,
        Kind::Int {
            min: 1,
            max: 24 * 366,
        },
    ),
    k(
        "backup_archive_fail_minutes",
        C,
        Kind::Int {
            min: 1,
            max: 24 * 60,
        },
    ),
    k("monitoring_enabled", C, Kind::Bool),
    k("prometheus_port", C, Kind::Port),
    k("alertmanager_port", C, Kind::Port),
    k("node_exporter_port", C, Kind::Port),
    k("etcd_metrics_port", C, Kind::Port),
    k("pgbackrest_exporter_port", C, Kind::Port),
    k(
        "monitoring_scrape_interval",
        C,
        Kind::Int { min: 5, max: 300 },
    ),
    k(
        "monitoring_retention_days",
        C,
        Kind::Int { min: 1, max: 3650 },
    ),
    k("monitoring_retention_size", C, Kind::Size),
    k(
        "alert_replica_lag_seconds",
        C,
        Kind::Int {
            min: 1,
            max: 86_400,
        },
    ),
    k("alert_webhook_urls", C, Kind::Urls),
    k("alert_email_to", C, Kind::Text),
    k("alert_email_from", C, Kind::Text),
    k("alert_smtp_smarthost", C, Kind::Text),
    k("alert_smtp_require_tls", C, Kind::Bool),
    k("pgbouncer_enabled", C, Kind::Bool),
    k("pgbouncer_port", C, Kind::Port),
    k(
        "pgbouncer_pool_mode",
        C,
        Kind::OneOf(&["transaction", "session", "statement"]),
    ),
    k(
        "pgbouncer_max_client_conn",
        C,
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
    ),
    k(
        "pgbouncer_default_pool_size",
        C,
        Kind::Int {
            min: 1,
            max: 10_000,
        },
    ),
    k(
        "pgbouncer_max_prepared_statements",
        C,
        Kind::Int {
            min: 0,
            max: 1_000_000,
        },
    ),
    k("pgbouncer_pause_timeout", C, Kind::Int { min: 1, max: 300 }),
    k("pgbouncer_auth_user", C, Kind::Role),
    k("pgbouncer_exporter_port", C, Kind::Port),
    k("superuser_password", S, Kind::Secret),
    k("replication_password", S, Kind::Secret),
    k("rewind_password", S, Kind::Secret),
    k("monitor_password", S, Kind::Secret),
    k("app_password", S, Kind::Secret),
    k("patroni_api_password", S, Kind::Secret),
    k("haproxy_stats_password", S, Kind::Secret),
    k("pgbouncer_auth_password", S, Kind::Secret),
    k("backup_cipher_pass", S, Kind::Secret),
    k("backup_s3_key", S, Kind::Secret),
    k("backup_s3_key_secret", S, Kind::Secret),
    k("superuser_password_file", SF, Kind::LocalPath),
    k("replication_password_file", SF, Kind::LocalPath),
    k("rewind_password_file", SF, Kind::LocalPath),
    k("monitor_password_file", SF, Kind::LocalPath),
    k("app_password_file", SF, Kind::LocalPath),
    k("patroni_api_password_file", SF, Kind::LocalPath),
    k("haproxy_stats_password_file", SF, Kind::LocalPath),
    k("pgbouncer_auth_password_file", SF, Kind::LocalPath),
    k("backup_cipher_pass_file", SF, Kind::LocalPath),
    k("backup_s3_key_file", SF, Kind::LocalPath),
    k("backup_s3_key_secret_file", SF, Kind::LocalPath),
];

/// Ansible variables that are accepted without comment (they belong to Ansible itself).
const ANSIBLE_KNOWN: &[&str] = &[
    "ansible_connection",
    "ansible_password",
    "ansible_ssh_pass",
    "ansible_ssh_password",
    "ansible_ssh_common_args",
    "ansible_ssh_extra_args",
    "ansible_sftp_extra_args",
    "ansible_scp_extra_args",
    "ansible_ssh_pipelining",
    "ansible_ssh_executable",
    "ansible_become_method",
    "ansible_become_user",
    "ansible_become_password",
    "ansible_become_pass",
    "ansible_become_exe",
    "ansible_become_flags",
    "ansible_sudo",
    "ansible_sudo_pass",
    "ansible_shell_type",
    "ansible_shell_executable",
    "ansible_python_interpreter",
    "ansible_timeout",
];

pub(crate) fn spec(name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|s| s.name == name)
}

/// Names a user may mean when writing a pgha setting (no `ansible_` aliases).
fn candidates() -> impl Iterator<Item = &'static str> {
    KEYS.iter()
        .map(|s| s.name)
        .filter(|n| !n.starts_with("ansible_"))
}

/// The known pgha key `key` is most likely a misspelling of, if any.
///
/// Close means: equal ignoring case and `-`/`_`, or a Damerau-Levenshtein
/// distance of at most 2 (names of 10+ characters) or 1 (5+ characters).
/// Stricter than a plain similarity score on purpose: Ansible inventories carry
/// many variables of other playbooks with similar prefixes (`postgresql_users`),
/// which must load with a warning, not fail.
pub(crate) fn did_you_mean(key: &str) -> Option<&'static str> {
    if key.starts_with("ansible_") {
        return None;
    }
    let norm = |s: &str| {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect::<String>()
    };
    let lower = key.to_ascii_lowercase().replace('-', "_");
    let mut best: Option<(usize, &'static str)> = None;
    for cand in candidates() {
        if norm(key) == norm(cand) {
            return Some(cand);
        }
        let allowed = if cand.len() >= 10 {
            2
        } else if cand.len() >= 5 {
            1
        } else {
            0
        };
        let d = strsim::damerau_levenshtein(&lower, cand);
        if d <= allowed && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, cand));
        }
    }
    best.map(|(_, c)| c)
}

/// For an `ansible_*` variable that is not one Ansible knows: the alias it is
/// probably a misspelling of (`ansible_hosts` -> `ansible_host`).
pub(crate) fn ansible_did_you_mean(key: &str) -> Option<&'static str> {
    if !key.starts_with("ansible_") || ANSIBLE_KNOWN.contains(&key) || spec(key).is_some() {
        return None;
    }
    KEYS.iter()
        .map(|s| s.name)
        .filter(|n| n.starts_with("ansible_"))
        .find(|n| strsim::damerau_levenshtein(key, n) <= 1)
}

/// A short description of a YAML value for error messages (no secret ever goes through here).
pub(crate) fn describe(v: &Yaml) -> String {
    match v {
        Yaml::Null => "nothing (an empty value)".into(),
        Yaml::Bool(b) => format!("the boolean `{b}`"),
        Yaml::Number(n) => format!("the number `{n}`"),
        Yaml::String(s) => {
            let short: String = s.chars().take(40).collect();
            let dots = if s.chars().count() > 40 { "..." } else { "" };
            format!("the string \"{short}{dots}\"")
        }
        Yaml::Sequence(_) => "a list".into(),
        Yaml::Mapping(_) => "a mapping".into(),
        Yaml::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// Whether a variable of this name holds a secret and must never be shown.
pub(crate) fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    (n.contains("pass") || n.contains("secret") || n.contains("token")) && !n.ends_with("_file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_you_mean_catches_typos() {
        assert_eq!(did_you_mean("postgres_version"), Some("postgresql_version"));
        assert_eq!(
            did_you_mean("postgresql_verison"),
            Some("postgresql_version")
        );
        assert_eq!(did_you_mean("PostgreSQL_Port"), Some("postgresql_port"));
        assert_eq!(did_you_mean("patroni-ttl"), Some("patroni_ttl"));
        assert_eq!(did_you_mean("synchronus_mode"), Some("synchronous_mode"));
        assert_eq!(did_you_mean("clustername"), Some("cluster_name"));
        assert_eq!(
            did_you_mean("superuser_pasword"),
            Some("superuser_password")
        );
    }

    #[test]
    fn did_you_mean_leaves_other_playbooks_alone() {
        for other in [
            "postgresql_packages",
            "ntp_servers",
            "timezone",
            "patroni_cluster_name",
            "with_haproxy_load_balancing",
            "node_exporter_version",
            "ansible_python_interpreter",
            "app_env",
        ] {
            assert_eq!(did_you_mean(other), None, "{other}");
        }
    }

    #[test]
    fn ansible_typos() {
        assert_eq!(ansible_did_you_mean("ansible_hosts"), Some("ansible_host"));
        assert_eq!(ansible_did_you_mean("ansible_host"), None);
        assert_eq!(ansible_did_you_mean("ansible_connection"), None);
        assert_eq!(ansible_did_you_mean("ansible_facts_cache"), None);
    }

    #[test]
    fn secret_names() {
        assert!(is_secret_name("superuser_password"));
        assert!(is_secret_name("ansible_ssh_pass"));
        assert!(is_secret_name("api_token"));
        assert!(!is_secret_name("superuser_password_file"));
        assert!(!is_secret_name("cluster_name"));
    }
}
