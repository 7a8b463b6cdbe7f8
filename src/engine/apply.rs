//! Apply: the remote operations a plan asks for. Each function is one SSH round trip
//! (files are one each), so an empty plan costs nothing here.

use std::time::Duration;

use anyhow::Result;

use super::desired::DesiredFile;
use crate::ssh::{Cmd, Session, Upload, shell_quote};

pub async fn write_files(s: &Session, files: &[&DesiredFile]) -> Result<()> {
    for f in files {
        s.upload(&Upload {
            path: f.path.clone(),
            content: f.content.clone(),
            owner: f.owner.clone(),
            group: f.group.clone(),
            mode: f.mode,
            validate: f.validate.clone(),
        })
        .await?;
    }
    Ok(())
}

/// The install script: package scripts must not start services (pgha starts them in
/// cluster order: etcd-server's postinst would otherwise form a one-member cluster of
/// its own), and files pgha wrote beforehand are kept (--force-confold).
pub fn install_script(packages: &[String], update: bool) -> String {
    install_script_with(packages, update, "")
}

/// `install_script` with extra apt-get options (`--download-only`, `--allow-downgrades`).
pub fn install_script_with(packages: &[String], update: bool, options: &str) -> String {
    let pkgs = packages
        .iter()
        .map(|p| shell_quote(p))
        .collect::<Vec<_>>()
        .join(" ");
    let update = if update {
        "apt-get -q -o DPkg::Lock::Timeout=300 update\n"
    } else {
        ""
    };
    format!(
        r#"set -e
export DEBIAN_FRONTEND=noninteractive UCF_FORCE_CONFFOLD=1
saved=""
if [ -e /usr/sbin/policy-rc.d ]; then mv /usr/sbin/policy-rc.d /usr/sbin/policy-rc.d.pgha-saved; saved=1; fi
restore() {{ rm -f /usr/sbin/policy-rc.d; if [ -n "$saved" ]; then mv /usr/sbin/policy-rc.d.pgha-saved /usr/sbin/policy-rc.d; fi; }}
trap restore EXIT
printf '#!/bin/sh\n# pgha: no service starts during package installation\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
{update}apt-get install -y -q --no-install-recommends {options}-o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold {pkgs}
"#
    )
}

/// Packages to install, with the version the inventory pins (`pkg=version`) where
/// a pin names one exactly (no wildcard, priority above apt's default): apt then
/// fails, naming the version, when no source has it, instead of quietly
/// installing another one (Debian's mirror keeps only a suite's newest version).
pub fn pinned(packages: &[String], pins: &[crate::inventory::AptPin]) -> Vec<String> {
    packages
        .iter()
        .map(|p| {
            match pins.iter().find(|pin| {
                pin.package == *p && pin.priority > 500 && !pin.version.contains(['*', '?', '/'])
            }) {
                Some(pin) => format!("{p}={}", pin.version),
                None => p.clone(),
            }
        })
        .collect()
}

/// Install exact versions (`pkg=version`), downgrades allowed: the inventory's pins
/// decide. With `download_only`, only fetch them into apt's cache.
pub async fn install_exact(s: &Session, specs: &[String], download_only: bool) -> Result<()> {
    if specs.is_empty() {
        return Ok(());
    }
    let opts = if download_only {
        "--download-only --allow-downgrades "
    } else {
        "--allow-downgrades "
    };
    s.exec(&Cmd::root(install_script_with(specs, false, opts)).timeout(Duration::from_secs(1800)))
        .await?
        .ok()?;
    Ok(())
}

/// `install`, with apt's CPU priority lowered by `nice` (0: unchanged), so that a
/// host whose packages matter first gets the machine's CPUs first.
pub async fn install_niced(
    s: &Session,
    packages: &[String],
    update: bool,
    nice: i32,
) -> Result<()> {
    if packages.is_empty() && !update {
        return Ok(());
    }
    let mut script = install_script(packages, update);
    if nice != 0 {
        script = format!("renice -n {nice} -p $$ >/dev/null\n{script}");
    }
    s.exec(&Cmd::root(script).timeout(Duration::from_secs(1800)))
        .await?
        .ok()?;
    Ok(())
}

pub async fn install(s: &Session, packages: &[String], update: bool) -> Result<()> {
    if packages.is_empty() && !update {
        return Ok(());
    }
    s.exec(&Cmd::root(install_script(packages, update)).timeout(Duration::from_secs(1800)))
        .await?
        .ok()?;
    Ok(())
}

/// Run a root command and fail with its stderr tail when it fails.
pub async fn run(s: &Session, script: impl Into<String>) -> Result<String> {
    let out = s
        .exec(&Cmd::root(script).timeout(Duration::from_secs(300)))
        .await?
        .ok()?;
    Ok(out.stdout_str())
}

pub async fn systemctl(s: &Session, verb: &str, service: &str) -> Result<()> {
    run(s, format!("systemctl {verb} {}", shell_quote(service))).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_pins_become_versioned_installs() {
        let pin = |package: &str, version: &str, priority| crate::inventory::AptPin {
            package: package.into(),
            version: version.into(),
            priority,
        };
        let pins = [
            pin("postgresql-17", "17.11-0+deb13u1", 1001),
            pin("haproxy", "3.0.*", 1001),
            pin("patroni", "4.0.7-3", 100),
        ];
        let pkgs: Vec<String> = ["postgresql-17", "haproxy", "patroni", "etcd-server"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            pinned(&pkgs, &pins),
            [
                "postgresql-17=17.11-0+deb13u1",
                "haproxy",
                "patroni",
                "etcd-server"
            ]
        );
    }

    #[test]
    fn install_script_guards_service_starts_and_keeps_our_files() {
        let s = install_script(&["etcd-server".into(), "patroni".into()], true);
        assert!(s.contains("exit 101"));
        assert!(s.contains("trap restore EXIT"));
        assert!(s.contains("--force-confold"));
        assert!(s.contains("update\n"));
        assert!(s.trim_end().ends_with("etcd-server patroni"));
        assert!(!install_script(&["x".into()], false).contains(" update"));
    }
}
