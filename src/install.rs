//! How a component is installed, started, stopped and reloaded: the one place where
//! the two install methods differ. `native`: Debian packages and their systemd
//! units. `docker`: Debian's docker.io on the host and each component in its own
//! container (host networking, configuration and data bind-mounted, restarted by
//! Docker's policy, recreated only when its image or run spec changes). Everything
//! else (rendering, plans, rollout order, probes) is the same for both.
//!
//! Layer 2: imports engine (desired state) and layer 0/1; never ops or commands.

use crate::engine::desired::{ContainerSpec, DesiredRole, SPEC_LABEL};
use crate::inventory::{Cluster, InstallMethod};
use crate::ssh::shell_quote;

fn unit(role: &DesiredRole) -> String {
    format!(
        "{}.service",
        role.services.first().cloned().unwrap_or_default()
    )
}

/// Start a role's service (a no-op when it runs). `no_block`: do not wait for it to
/// report ready (an etcd member of a cluster still forming cannot).
pub fn start(role: &DesiredRole, no_block: bool) -> String {
    match &role.container {
        None => format!(
            "systemctl start{} {}",
            if no_block { " --no-block" } else { "" },
            shell_quote(&unit(role))
        ),
        Some(c) => ensure(
            c,
            &format!("docker start {} >/dev/null", shell_quote(&c.name)),
        ),
    }
}

/// The container created (or re-created when its spec changed) and running; when it
/// exists with this spec, `same` runs instead (start it, or restart it).
fn ensure(c: &ContainerSpec, same: &str) -> String {
    let name = shell_quote(&c.name);
    let run = run_args(c);
    format!(
        r#"have=$(docker inspect -f '{{{{index .Config.Labels "{SPEC_LABEL}"}}}}' {name} 2>/dev/null || true)
if [ "$have" = {spec} ]; then
  {same}
else
  if [ -n "$have" ]; then docker stop -t {t} {name} >/dev/null 2>&1 || true; docker rm -f {name} >/dev/null; fi
  {prepare}docker {run} >/dev/null
fi"#,
        spec = shell_quote(&c.spec),
        t = c.stop_timeout,
        prepare = c
            .prepare
            .as_deref()
            .map(|p| format!("{p}\n  "))
            .unwrap_or_default(),
    )
}

pub fn stop(role: &DesiredRole) -> String {
    match &role.container {
        None => format!(
            "systemctl stop {} 2>/dev/null || true",
            shell_quote(&unit(role))
        ),
        Some(c) => format!(
            "docker stop -t {} {} >/dev/null 2>&1 || true",
            c.stop_timeout,
            shell_quote(&c.name)
        ),
    }
}

/// Stop and forget it (a rebuild wipes the host).
pub fn remove(role: &DesiredRole) -> String {
    match &role.container {
        None => stop(role),
        Some(c) => format!(
            "{}\ndocker rm -f {} >/dev/null 2>&1 || true",
            stop(role),
            shell_quote(&c.name)
        ),
    }
}

/// Stop and start again with the configuration on disk. A container is re-created:
/// Docker reads its env file only when it creates it, and a new spec (a new image)
/// means a new container anyway.
pub fn restart(role: &DesiredRole, no_block: bool) -> String {
    match &role.container {
        None => format!(
            "systemctl restart{} {}",
            if no_block { " --no-block" } else { "" },
            shell_quote(&unit(role))
        ),
        Some(c) => {
            let name = shell_quote(&c.name);
            format!(
                "docker stop -t {t} {name} >/dev/null 2>&1 || true\n\
                 docker rm -f {name} >/dev/null 2>&1 || true\n\
                 {prepare}docker {run} >/dev/null",
                t = c.stop_timeout,
                prepare = c
                    .prepare
                    .as_deref()
                    .map(|p| format!("{p}\n"))
                    .unwrap_or_default(),
                run = run_args(c),
            )
        }
    }
}

fn run_args(c: &ContainerSpec) -> String {
    c.run_args
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Re-read configuration: the unit's reload, or the component's reload signal.
pub fn reload(role: &DesiredRole) -> String {
    match &role.container {
        None => format!("systemctl reload {}", shell_quote(&unit(role))),
        // The signal is sent from inside the container: `docker kill -s` marks a
        // container as stopped by hand (moby's killWithSignal), so its restart
        // policy would no longer bring it back after a reboot or a crash.
        Some(c) => match &c.reload_signal {
            Some(sig) => format!("docker exec {} sh -c 'kill -{sig} 1'", shell_quote(&c.name)),
            None => format!(
                "docker restart -t {} {} >/dev/null",
                c.stop_timeout,
                shell_quote(&c.name)
            ),
        },
    }
}

/// Start at boot (a container's restart policy does that: nothing to do).
pub fn enable(role: &DesiredRole) -> String {
    match &role.container {
        None => format!("systemctl enable --quiet {}", shell_quote(&unit(role))),
        Some(_) => "true".into(),
    }
}

/// Keep a role's service from starting at boot (a container is removed instead:
/// `remove`).
pub fn disable(role: &DesiredRole) -> String {
    match &role.container {
        None => format!(
            "systemctl disable --quiet {} 2>/dev/null || true",
            shell_quote(&unit(role))
        ),
        Some(_) => "true".into(),
    }
}

/// Stop a service for good (its role turned off): the unit stopped and disabled,
/// or its container removed (its restart policy would bring it back).
pub fn retire(service: &str, container: Option<&str>) -> String {
    match container {
        None => format!(
            "systemctl disable --now --quiet {}",
            shell_quote(&format!("{service}.service"))
        ),
        Some(c) => format!("docker rm -f {} >/dev/null", shell_quote(c)),
    }
}

/// A shell test that succeeds when the service runs.
pub fn is_active(role: &DesiredRole) -> String {
    match &role.container {
        None => format!("systemctl is-active -q {}", shell_quote(&unit(role))),
        Some(c) => format!(
            "[ \"$(docker inspect -f '{{{{.State.Running}}}}' {} 2>/dev/null)\" = true ]",
            shell_quote(&c.name)
        ),
    }
}

/// The PID of the service's main process on the host (0 or empty when none).
pub fn main_pid(role: &DesiredRole) -> String {
    match &role.container {
        None => format!(
            "$(systemctl show -p MainPID --value {})",
            shell_quote(&unit(role))
        ),
        Some(c) => format!(
            "$(docker inspect -f '{{{{.State.Pid}}}}' {} 2>/dev/null)",
            shell_quote(&c.name)
        ),
    }
}

/// The named volume of PostgreSQL's socket directory under the docker method,
/// shared by the Patroni and pgBackRest containers (roles/patroni.yml).
pub const PG_SOCKET_VOLUME: &str = "pgha-pgrun";

/// The container running PostgreSQL under the docker method.
pub const PATRONI_CONTAINER: &str = "pgha-patroni";

/// The start of a local `psql` as the database superuser over the Unix socket
/// (arguments follow): on the host, or in the Patroni container.
pub fn psql(c: &Cluster) -> String {
    let args = format!(
        "psql -X -h /var/run/postgresql -p {} -d postgres",
        c.postgresql_port
    );
    match c.install_method {
        // The version's own psql: /usr/bin/psql is postgresql-common's Perl
        // wrapper, which costs each call (every re-run's facts) 50 ms of start-up.
        InstallMethod::Native => format!(
            "runuser -u postgres -- /usr/lib/postgresql/{}/bin/{args}",
            c.postgresql_version
        ),
        InstallMethod::Docker => format!("docker exec -i -u postgres {PATRONI_CONTAINER} {args}"),
    }
}

/// The container of pgBackRest's TLS server under the docker method; pgha's own
/// pgBackRest and PostgreSQL tool runs go through it (it holds the binaries,
/// pgBackRest's configuration, the data directory and PostgreSQL's socket).
pub const PGBACKREST_CONTAINER: &str = "pgha-pgbackrest";

/// The start of a command run as `postgres` where pgBackRest lives (arguments
/// follow): on the host, or in the pgBackRest container. Paths are the same in both.
pub fn as_postgres(c: &Cluster) -> String {
    match c.install_method {
        InstallMethod::Native => "runuser -u postgres --".into(),
        InstallMethod::Docker => format!("docker exec -i -u postgres {PGBACKREST_CONTAINER}"),
    }
}

/// A shell test that succeeds when PostgreSQL can be asked locally.
pub fn postgres_reachable(c: &Cluster) -> String {
    match c.install_method {
        InstallMethod::Native => {
            "command -v psql >/dev/null 2>&1 && systemctl is-active -q patroni.service".into()
        }
        InstallMethod::Docker => format!(
            "[ \"$(docker inspect -f '{{{{.State.Running}}}}' {PATRONI_CONTAINER} 2>/dev/null)\" = true ]"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native() -> DesiredRole {
        DesiredRole {
            name: "etcd".into(),
            packages: vec![],
            upgrade_with: vec![],
            files: vec![],
            services: vec!["etcd".into()],
            container: None,
            dirs: vec![],
            timers: vec![],
            started_with: vec![],
        }
    }

    fn docker() -> DesiredRole {
        DesiredRole {
            container: Some(ContainerSpec {
                name: "pgha-etcd".into(),
                image: "pgha-stack:abc".into(),
                image_id: String::new(),
                run_args: vec![
                    "run".into(),
                    "-d".into(),
                    "--name".into(),
                    "pgha-etcd".into(),
                ],
                spec: "s1".into(),
                stop_timeout: 30,
                reload_signal: None,
                prepare: None,
            }),
            ..native()
        }
    }

    #[test]
    fn native_uses_systemd_units() {
        assert_eq!(
            start(&native(), true),
            "systemctl start --no-block etcd.service"
        );
        assert_eq!(reload(&native()), "systemctl reload etcd.service");
        assert_eq!(enable(&native()), "systemctl enable --quiet etcd.service");
    }

    #[test]
    fn docker_starts_recreates_on_a_new_spec_and_signals() {
        let s = start(&docker(), true);
        assert!(s.contains("docker start pgha-etcd"), "{s}");
        assert!(
            s.contains("docker rm -f pgha-etcd") && s.contains("docker run -d --name pgha-etcd"),
            "{s}"
        );
        assert!(s.contains("[ \"$have\" = s1 ]"), "{s}");
        assert_eq!(enable(&docker()), "true");
        assert!(reload(&docker()).starts_with("docker restart -t 30 pgha-etcd"));
        let mut sig = docker();
        sig.container.as_mut().unwrap().reload_signal = Some("HUP".into());
        assert_eq!(reload(&sig), "docker exec pgha-etcd sh -c 'kill -HUP 1'");
    }
}
