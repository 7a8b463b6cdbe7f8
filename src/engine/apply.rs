//! Apply: the remote operations a plan asks for. Each function is one SSH round trip
//! (files are one each), so an empty plan costs nothing here.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;

use super::desired::{DesiredDir, DesiredFile, DesiredTimer};
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
    let refresh = "apt-get -q -o DPkg::Lock::Timeout=300 update";
    let install = format!(
        "apt-get install -y -q --no-install-recommends {options}-o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold {pkgs}"
    );
    // Lists kept because they were fresh may still name a version the mirror has
    // dropped since (a security update): then once more after an update.
    let steps = if update {
        format!("{refresh}\n{install}\n")
    } else {
        format!(
            "{install} || {{ echo 'pgha: apt-get install failed with the package lists as they were: updating them and trying again' >&2; {refresh} && {install}; }}\n"
        )
    };
    let apt = format!("export DEBIAN_FRONTEND=noninteractive UCF_FORCE_CONFFOLD=1\n{steps}");
    no_service_starts(POLICY_DIR, &apt)
}

/// Where Debian's invoke-rc.d and deb-systemd-invoke look for `policy-rc.d`.
const POLICY_DIR: &str = "/usr/sbin";

/// `body` run with a `policy-rc.d` in `dir` that refuses every service start
/// (exit 101), the host's own policy set aside and put back afterwards.
///
/// The guard must not outlive its run: a run killed by SIGKILL (or a host that
/// lost power) runs no trap, and a guard left behind would stop every later
/// package's services on that host for good. Placing it where it dies with the
/// process (a private mount namespace) needs CAP_SYS_ADMIN and an existing file to
/// bind over, which not every host or container gives. So the guard names its
/// owner (boot id, pid and the pid's start time, unique per process), and every
/// run first removes a guard whose owner is gone, and puts back the policy that
/// owner set aside; it waits for a guard whose owner still runs.
pub fn no_service_starts(dir: &str, body: &str) -> String {
    GUARD.replace("@DIR@", &shell_quote(dir)) + body
}

const GUARD: &str = r#"set -e
dir=@DIR@
guard="$dir/policy-rc.d"
saved="$dir/policy-rc.d.pgha-saved"
# A process's identity: boot id, pid, start time (field 22 of /proc/PID/stat).
identity() { echo "$(cat /proc/sys/kernel/random/boot_id) $1 $(sed 's/.*) //' /proc/$1/stat 2>/dev/null | cut -d' ' -f20)"; }
owner() { sed -n 's/^# pgha-guard owner: //p' "$1" 2>/dev/null; }
alive() { [ -n "$1" ] && [ "$(identity "$(echo "$1" | cut -d' ' -f2)")" = "$1" ]; }
pgha_made() { grep -qs '^# pgha: no service starts' "$1"; }
present() { [ -e "$1" ] || [ -L "$1" ]; }
me=$(identity $$)
n=0
while o=$(owner "$guard") && alive "$o"; do
  n=$((n + 1))
  if [ "$n" -gt 300 ]; then
    echo "pgha: another pgha package installation ($o) has held $guard for 300 s: wait for it to finish, or remove $guard if no pgha runs on this host" >&2
    exit 1
  fi
  sleep 1
done
# Left by a run that died: pgha's guards go; the host's own policy comes back.
if pgha_made "$guard"; then rm -f "$guard"; fi
if pgha_made "$saved"; then rm -f "$saved"; fi
if present "$saved"; then
  if present "$guard"; then mv -f "$saved" "$saved.old"; else mv "$saved" "$guard"; fi
fi
restore() {
  if [ "$(owner "$guard")" = "$me" ]; then rm -f "$guard"; fi
  if present "$saved" && ! present "$guard"; then mv "$saved" "$guard"; fi
}
trap restore EXIT
# dash runs the EXIT trap on a signal only when the signal is trapped.
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
if present "$guard"; then mv "$guard" "$saved"; fi
printf '#!/bin/sh\n# pgha: no service starts during package installation\n# pgha-guard owner: %s\nexit 101\n' "$me" > "$guard.pgha-new"
chmod 755 "$guard.pgha-new"
mv -f "$guard.pgha-new" "$guard"
"#;

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

/// Create the directories, or set their owner, group and mode: one `install -d`
/// per distinct owner, group and mode.
pub fn dirs_script(dirs: &[&DesiredDir]) -> String {
    let mut by: BTreeMap<(&str, &str, u32), Vec<String>> = BTreeMap::new();
    for d in dirs {
        by.entry((&d.owner, &d.group, d.mode))
            .or_default()
            .push(shell_quote(&d.path));
    }
    by.iter()
        .map(|((o, g, m), paths)| {
            format!(
                "install -d -o {} -g {} -m {m:04o} {}",
                shell_quote(o),
                shell_quote(g),
                paths.join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join(" && ")
}

/// Reload systemd when a scheduled timer's units ask for it, enable and start the
/// timers of `start` not enabled or running, stop and remove those of `remove`;
/// prints one line per timer changed. `scheduled`: every timer the role schedules
/// on the host (the reload is asked of all their units, checked on the host: the
/// files may have been written a moment ago).
pub fn timers_script(scheduled: &[&DesiredTimer], start: &[&str], remove: &[&str]) -> String {
    let mut s = String::from("set -e\n");
    let units: Vec<String> = scheduled
        .iter()
        .flat_map(|t| [shell_quote(&t.timer), shell_quote(&t.service)])
        .collect();
    if !start.is_empty() && !units.is_empty() {
        // systemd reads new or changed unit files on a reload only; a reload costs a
        // fifth of a second, so it happens when a unit asks for one.
        s.push_str(&format!(
            "if systemctl show -p LoadState -p NeedDaemonReload --value {} | grep -qxE 'yes|not-found'; \
             then systemctl daemon-reload; fi\n",
            units.join(" ")
        ));
    }
    for t in start {
        let q = shell_quote(t);
        s.push_str(&format!(
            "if ! systemctl is-enabled --quiet {q} || ! systemctl is-active --quiet {q}; then \
             systemctl enable --now --quiet {q}; echo \"enabled {t}\"; fi\n"
        ));
    }
    for t in remove {
        let q = shell_quote(t);
        let file = shell_quote(&format!("/etc/systemd/system/{t}"));
        s.push_str(&format!(
            "if [ -f {file} ]; then systemctl disable --now --quiet {q} || true; \
             rm -f {file}; systemctl daemon-reload; echo \"removed {t}\"; fi\n"
        ));
    }
    s
}

/// Directories, one SSH round trip for all.
pub async fn dirs(s: &Session, dirs: &[&DesiredDir]) -> Result<()> {
    if !dirs.is_empty() {
        run(s, dirs_script(dirs)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_grouped_by_owner_and_mode() {
        let d = |path: &str, owner: &str, mode| DesiredDir {
            path: path.into(),
            owner: owner.into(),
            group: owner.into(),
            mode,
        };
        let (a, b, c) = (
            d("/var/log/pgbackrest", "postgres", 0o750),
            d("/srv/my repo", "postgres", 0o750),
            d("/etc/x", "root", 0o755),
        );
        assert_eq!(
            dirs_script(&[&a, &b, &c]),
            "install -d -o postgres -g postgres -m 0750 /var/log/pgbackrest '/srv/my repo' \
             && install -d -o root -g root -m 0755 /etc/x"
        );
    }

    #[test]
    fn timers_started_and_removed_as_asked() {
        let full = DesiredTimer {
            timer: "pgha-backup-full.timer".into(),
            service: "pgha-backup@full.service".into(),
            scheduled: true,
        };
        let s = timers_script(
            &[&full],
            &["pgha-backup-full.timer"],
            &["pgha-backup-diff.timer"],
        );
        assert!(
            s.contains("--value pgha-backup-full.timer pgha-backup@full.service | grep"),
            "{s}"
        );
        assert!(s.contains("systemctl enable --now --quiet pgha-backup-full.timer"));
        assert!(s.contains("rm -f /etc/systemd/system/pgha-backup-diff.timer"));
        assert!(!s.contains("enable --now --quiet pgha-backup-diff"));
        // Only a removal: no reload check of the scheduled units.
        let s = timers_script(&[&full], &[], &["pgha-backup-diff.timer"]);
        assert!(!s.contains("NeedDaemonReload"), "{s}");
    }

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
        assert!(s.contains("dir=/usr/sbin\n"), "{s}");
        // The guard names its owner; a stale one is removed before anything else.
        assert!(s.contains("# pgha-guard owner: %s"));
        let heal = s.find("if pgha_made \"$guard\"; then rm -f").unwrap();
        assert!(heal < s.find("apt-get").unwrap());
        assert!(s.contains("trap restore EXIT"));
        assert!(s.contains("trap 'exit 143' TERM"));
        assert!(s.contains("--force-confold"));
        assert!(s.contains("update\n"));
        assert!(s.trim_end().ends_with("etcd-server patroni"));
        let kept = install_script(&["x".into()], false);
        let first = kept.find("apt-get install").unwrap();
        let retry = kept.find("|| {").unwrap();
        assert!(
            first < retry && kept[..retry].matches(" update").count() == 0,
            "installs first, updates only when that fails: {kept}"
        );
        assert!(
            kept[retry..].contains("update && apt-get install"),
            "{kept}"
        );
    }

    /// The guard script run by a real `sh` in a temp dir standing in for /usr/sbin.
    mod shell {
        use super::super::no_service_starts;
        use std::os::unix::process::CommandExt;
        use std::path::Path;
        use std::process::{Child, Command};
        use std::time::{Duration, Instant};

        const ADMIN: &str = "#!/bin/sh\n# the host's own policy\nexit 0\n";

        fn spawn(dir: &Path, body: &str) -> Child {
            Command::new("sh")
                .arg("-c")
                .arg(no_service_starts(dir.to_str().unwrap(), body))
                // Its own process group, so a kill reaches the body's children too.
                .process_group(0)
                .spawn()
                .unwrap()
        }

        fn run(dir: &Path, body: &str) -> bool {
            spawn(dir, body).wait().unwrap().success()
        }

        fn wait_for(path: &Path) {
            let t = Instant::now();
            while !path.exists() {
                assert!(t.elapsed() < Duration::from_secs(10), "{}", path.display());
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        fn read(path: &Path) -> String {
            std::fs::read_to_string(path).unwrap_or_default()
        }

        fn names(dir: &Path) -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }

        /// Start a run, SIGKILL it mid-way (no trap runs): the guard is left behind.
        fn killed_run(dir: &Path) {
            let started = dir.join("started");
            let mut child = spawn(dir, &format!("touch {}\nsleep 60\n", started.display()));
            wait_for(&started);
            std::fs::remove_file(&started).unwrap();
            let group = format!("-{}", child.id());
            let killed = Command::new("kill").args(["-KILL", "--", &group]).status();
            assert!(killed.unwrap().success());
            child.wait().unwrap();
            assert!(read(&dir.join("policy-rc.d")).contains("exit 101"));
        }

        #[test]
        fn a_run_refuses_starts_while_it_runs_and_restores_the_hosts_policy() {
            let tmp = tempfile::tempdir().unwrap();
            let (dir, policy) = (tmp.path(), tmp.path().join("policy-rc.d"));
            std::fs::write(&policy, ADMIN).unwrap();
            let during = dir.join("during");
            assert!(run(
                dir,
                &format!("\"$guard\" || echo $? > {}\n", during.display())
            ));
            assert_eq!(read(&during).trim(), "101", "the guard refuses starts");
            assert_eq!(read(&policy), ADMIN);
            assert_eq!(names(dir), ["during", "policy-rc.d"]);
            // A failing body fails the script and still restores.
            assert!(!run(dir, "false\n"));
            assert_eq!(read(&policy), ADMIN);
        }

        #[test]
        fn the_run_after_a_sigkilled_one_heals_the_host() {
            let tmp = tempfile::tempdir().unwrap();
            let (dir, policy) = (tmp.path(), tmp.path().join("policy-rc.d"));
            // Without a policy of the host's own: none is left afterwards.
            killed_run(dir);
            let during = dir.join("during");
            assert!(run(dir, &format!("cat $guard > {}\n", during.display())));
            assert!(read(&during).contains("exit 101"), "guarded while it ran");
            assert_eq!(names(dir), ["during"], "the stale guard is gone");
            std::fs::remove_file(&during).unwrap();
            // With one: killed twice in a row, the host's own policy survives both.
            std::fs::write(&policy, ADMIN).unwrap();
            killed_run(dir);
            killed_run(dir);
            assert!(run(dir, "true\n"));
            assert_eq!(read(&policy), ADMIN);
            assert_eq!(names(dir), ["policy-rc.d"]);
        }

        #[test]
        fn a_guard_of_an_earlier_pgha_without_an_owner_is_removed() {
            let tmp = tempfile::tempdir().unwrap();
            let (dir, policy) = (tmp.path(), tmp.path().join("policy-rc.d"));
            let old =
                "#!/bin/sh\n# pgha: no service starts during package installation\nexit 101\n";
            std::fs::write(&policy, old).unwrap();
            assert!(run(dir, "true\n"));
            assert_eq!(names(dir), Vec::<String>::new());
        }

        #[test]
        fn a_live_runs_guard_is_waited_for_not_taken() {
            let tmp = tempfile::tempdir().unwrap();
            let (dir, policy) = (tmp.path(), tmp.path().join("policy-rc.d"));
            std::fs::write(&policy, ADMIN).unwrap();
            let started = dir.join("started");
            let first = spawn(dir, &format!("touch {}\nsleep 1\n", started.display()));
            wait_for(&started);
            let t = Instant::now();
            let owners = dir.join("owners");
            let second = format!(
                "sed -n 's/^# pgha-guard owner: //p' $guard >> {}\n",
                owners.display()
            );
            assert!(run(dir, &second));
            assert!(t.elapsed() >= Duration::from_millis(500), "it waited");
            assert!(first.wait_with_output().unwrap().status.success());
            assert_eq!(read(&policy), ADMIN);
            assert_eq!(read(&owners).lines().count(), 1);
        }
    }
}
