//! pgha's own container image for the `docker` install method, built on this
//! machine without a registry: the lab's Debian 13 base (a debootstrap root
//! filesystem imported into Docker) with Debian's packages of the stack installed
//! (the same versions the native method installs), flattened into one layer and
//! tagged by the hash of its recipe. Rebuilt only when the recipe changes.
//!
//! The image contract (what pgha expects of an image, yours or this one):
//! - the binaries `etcd`, `patroni`, `haproxy`, `pgbouncer`,
//!   `prometheus-postgres-exporter`, `pgbackrest`, and for the monitoring
//!   `prometheus`, `promtool`, `prometheus-alertmanager`, `amtool`,
//!   `prometheus-node-exporter`, `prometheus-pgbackrest-exporter`,
//!   `prometheus-pgbouncer-exporter` on PATH, PostgreSQL under `/usr/lib/postgresql/<version>/bin`, `psql`;
//! - users (uid = gid): postgres 470, etcd 471, haproxy 472, prometheus 473;
//!   the hosts get the same users, so bind-mounted files keep their owners (system
//!   ids, below 1000: Debian's maintainer scripts accept an existing system user);
//! - no entrypoint: pgha gives each container its command.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::process::Command;

use crate::docker;
use crate::error::Failure;
use crate::inventory::Cluster;

pub const REPO: &str = "pgha-stack";
const BUILD_PREFIX: &str = "pgha-stack-build-";
const STEP_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The fixed users of the image contract: (name, uid = gid, home).
pub const USERS: &[(&str, u32, &str)] = &[
    ("postgres", 470, "/var/lib/postgresql"),
    ("etcd", 471, "/var/lib/etcd"),
    ("haproxy", 472, "/var/lib/haproxy"),
    ("prometheus", 473, "/var/lib/prometheus"),
];

/// Packages of the stack, as the native method installs them.
pub const PACKAGES: &[&str] = &[
    "postgresql-17",
    // The packaged extension users ask for most (`vector`); others need an image
    // of the user's own (docker_image_postgres).
    "postgresql-17-pgvector",
    "patroni",
    "python3-etcd",
    "python3-psycopg2",
    "etcd-server",
    "etcd-client",
    "haproxy",
    "pgbouncer",
    "prometheus-postgres-exporter",
    "pgbackrest",
    // The monitoring (roles node_exporter, pgbackrest_exporter, alertmanager,
    // prometheus), in the same image unless docker_image_monitoring names another.
    "prometheus",
    "prometheus-alertmanager",
    "prometheus-node-exporter",
    "prometheus-pgbackrest-exporter",
    "prometheus-pgbouncer-exporter",
];

/// Create a user of the contract unless it exists with that uid (a shell line).
pub fn user_script() -> String {
    USERS
        .iter()
        .map(|(name, id, home)| {
            format!(
                "if ! getent group {name} >/dev/null; then groupadd --system -g {id} {name}; fi\n\
                 if ! getent passwd {name} >/dev/null; then useradd --system -u {id} -g {id} -d {home} -s /usr/sbin/nologin {name}; fi\n\
                 [ \"$(id -u {name})\" = {id} ] || {{ echo \"user {name} has uid $(id -u {name}), the image runs it as {id}\" >&2; exit 3; }}\n"
            )
        })
        .collect()
}

fn setup_script() -> String {
    format!(
        r#"set -eu
export DEBIAN_FRONTEND=noninteractive
{users}printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
mkdir -p /etc/postgresql-common
echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf
apt-get -q update
apt-get install -y -q --no-install-recommends {pkgs}
rm -f /usr/sbin/policy-rc.d
rm -rf /var/lib/etcd/default
# The data directories' parents, traversed by the components' users (bind mounts
# of the host's directories go below them).
install -d -o etcd -g etcd -m 0700 /var/lib/etcd
install -d -o postgres -g postgres -m 2775 /run/postgresql
install -d -o haproxy -g haproxy -m 2775 /run/haproxy
apt-get clean
rm -rf /var/lib/apt/lists/*
echo "pgha stack image: $(dpkg-query -W -f='${{Package}} ${{Version}}, ' {pkgs})"
"#,
        users = user_script(),
        pkgs = PACKAGES.join(" ")
    )
}

/// What the image is made from; its hash tags it.
pub fn recipe() -> String {
    format!(
        "base {}\nsetup:\n{}\nflatten: docker export | docker import\n",
        super::base::image_tag(),
        setup_script()
    )
}

/// `pgha-stack:<hash12>`: the default image of every component.
pub fn default_image() -> String {
    format!(
        "{REPO}:{}",
        &hex::encode(Sha256::digest(recipe().as_bytes()))[..12]
    )
}

/// Build the image unless Docker has it; returns its tag.
pub async fn ensure() -> Result<String, Failure> {
    let tag = default_image();
    if docker::inspect("image", &tag).await?.is_some() {
        return Ok(tag);
    }
    let base = super::base::ensure().await?;
    let t = Instant::now();
    eprintln!("building {tag} from {base} (Debian's packages of the stack; once, then cached)");
    let name = format!("{BUILD_PREFIX}{}", std::process::id());
    let r = build(&base, &name, &tag).await;
    let _ = docker::output(&["rm", "-f", &name], docker::TIMEOUT).await;
    r?;
    eprintln!("built {tag} in {}s", t.elapsed().as_secs());
    Ok(tag)
}

async fn build(base: &str, name: &str, tag: &str) -> Result<(), Failure> {
    let script = setup_script();
    let out = docker::output(
        &[
            "run",
            "--name",
            name,
            "--entrypoint",
            "/bin/sh",
            base,
            "-c",
            &script,
        ],
        STEP_TIMEOUT,
    )
    .await?;
    if !out.success() {
        return Err(Failure::error(format!(
            "building {tag} failed (exit {:?}):\n{}",
            out.code,
            docker::tail(&format!("{}\n{}", out.stdout, out.stderr), 20)
        )));
    }
    if let Some(l) = out
        .stdout
        .lines()
        .find(|l| l.starts_with("pgha stack image:"))
    {
        eprintln!("  {l}");
    }
    // One layer: no systemd of the base's boot, no apt cache; small to ship.
    let mut export = Command::new("docker");
    export.args(["export", name]);
    let label = format!("LABEL pgha.recipe={tag}");
    let args = [
        "--change",
        "CMD [\"/bin/sh\"]",
        "--change",
        "ENV LANG=C.UTF-8",
        "--change",
        &label,
        "-",
        tag,
    ];
    let (exp, imp) = docker::import_from(export, "docker export", &args, STEP_TIMEOUT).await?;
    if !exp.status.success() || !imp.status.success() {
        return Err(Failure::error(format!(
            "flattening {tag} failed: {}{}",
            String::from_utf8_lossy(&exp.stderr),
            String::from_utf8_lossy(&imp.stderr)
        )));
    }
    Ok(())
}

/// The components with an image of their own (`docker_image_<component>`).
pub const COMPONENTS: [&str; 6] = [
    "etcd",
    "postgres",
    "haproxy",
    "pgbouncer",
    "exporter",
    "monitoring",
];

/// The image of a component (etcd, postgres, haproxy, pgbouncer, exporter, monitoring) under the docker
/// method: its own `docker_image_<component>`, else `docker_image`, else pgha's
/// stack image built here.
pub fn image(c: &Cluster, component: &str) -> String {
    let own = match component {
        "etcd" => &c.docker_image_etcd,
        "postgres" => &c.docker_image_postgres,
        "haproxy" => &c.docker_image_haproxy,
        "pgbouncer" => &c.docker_image_pgbouncer,
        "exporter" => &c.docker_image_exporter,
        "monitoring" => &c.docker_image_monitoring,
        _ => &c.docker_image,
    };
    if !own.is_empty() {
        own.clone()
    } else if !c.docker_image.is_empty() {
        c.docker_image.clone()
    } else {
        default_image()
    }
}

/// Every distinct image the cluster's containers use.
pub fn images(c: &Cluster) -> Vec<String> {
    let mut v: Vec<String> = COMPONENTS
        .iter()
        .filter(|k| **k != "monitoring" || c.monitoring_enabled)
        .filter(|k| **k != "pgbouncer" || c.pgbouncer_enabled)
        .map(|k| image(c, k))
        .collect();
    v.sort();
    v.dedup();
    v
}
