//! Taking a cluster down for good (`pgha destroy`): what each host runs, in the
//! order clients are cut off first and etcd goes last. Pure: the shell of each step.

use crate::engine::desired::{self, HostDesired};
use crate::install;
use crate::inventory::Cluster;
use crate::ssh::shell_quote;

/// Stop, disable (native) or remove (docker) these roles of a host; nothing when
/// the host does not have them.
pub fn stop_script(d: &HostDesired, roles: &[&str]) -> String {
    let mut s = String::new();
    for r in roles {
        if let Some(role) = d.role(r) {
            s.push_str(&install::remove(role));
            s.push('\n');
            s.push_str(&install::disable(role));
            s.push('\n');
        }
    }
    if s.is_empty() { "true".into() } else { s }
}

/// The repository host's scheduled backups and restore tests: stopped, their
/// timers disabled and removed.
pub fn timers_script() -> String {
    "for t in /etc/systemd/system/pgha-backup-*.timer; do [ -e \"$t\" ] || continue; \
     systemctl disable --now --quiet \"$(basename \"$t\")\" || true; rm -f \"$t\"; done\n\
     systemctl stop 'pgha-backup@*.service' pgha-backup-verify.service 2>/dev/null || true\n\
     systemctl daemon-reload"
        .into()
}

/// A db host's PostgreSQL data and pgBackRest's queue, removed (under docker also
/// the socket volume its containers shared).
pub fn wipe_db_script(c: &Cluster) -> String {
    let mut s = format!(
        "rm -rf {} /var/spool/pgbackrest/archive",
        shell_quote(&c.postgresql_data_dir)
    );
    if c.install_method == crate::inventory::InstallMethod::Docker {
        s.push_str(&format!(
            "\ndocker volume rm {} >/dev/null 2>&1 || true",
            install::PG_SOCKET_VOLUME
        ));
    }
    s
}

/// etcd's data, removed (a deploy then bootstraps a new etcd cluster).
pub fn wipe_etcd_script(c: &Cluster) -> String {
    format!(
        "rm -rf {} /var/lib/etcd/default",
        shell_quote(&desired::etcd_data_dir(c))
    )
}

/// A directory repository, moved aside (kept, out of the way of a new cluster's
/// stanza) or deleted.
pub fn repository_script(c: &Cluster, stamp: i64, delete: bool) -> String {
    let repo = shell_quote(&c.backup_repo_path);
    if delete {
        format!("rm -rf {repo}")
    } else {
        format!(
            "if [ -d {repo} ]; then mv {repo} {}; echo kept; fi",
            shell_quote(&aside(c, stamp))
        )
    }
}

/// Where a destroyed cluster's directory repository is kept.
pub fn aside(c: &Cluster, stamp: i64) -> String {
    format!("{}.destroyed-{stamp}", c.backup_repo_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_is_kept_aside_unless_deleted() {
        let c = Cluster::default();
        assert_eq!(
            repository_script(&c, 42, false),
            "if [ -d /var/lib/pgbackrest ]; then mv /var/lib/pgbackrest /var/lib/pgbackrest.destroyed-42; echo kept; fi"
        );
        assert_eq!(
            repository_script(&c, 42, true),
            "rm -rf /var/lib/pgbackrest"
        );
        assert_eq!(
            wipe_db_script(&c),
            "rm -rf /var/lib/postgresql/17/main /var/spool/pgbackrest/archive"
        );
        assert!(timers_script().contains("systemctl disable --now --quiet"));
    }
}
