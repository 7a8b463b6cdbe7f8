//! Older builds of the stack's packages on lab hosts, for rehearsing `pgha upgrade`
//! (the end-to-end test and the benchmark). Debian's mirror keeps only the newest
//! version of a package in each suite, so which two versions exist changes with
//! every point release (17.11 left trixie when 17.12 entered it). Instead each host
//! repackages its current candidates as `<version>~e2e` (which sorts just before
//! `<version>`) into a local apt repository, listed in `apt_sources`: deploying
//! with pins on those and upgrading with the pins lifted is a real package upgrade
//! of the same programs, whatever the mirror holds today.

use std::time::Duration;

use super::layout;
use crate::docker;

/// The local repository on each host.
pub const REPO: &str = "/opt/pgha-e2e-repo";
/// PostgreSQL's packages that move together.
pub const PG_PACKAGES: [&str; 3] = ["libpq5", "postgresql-17", "postgresql-client-17"];

/// The older build of a version.
pub fn older(version: &str) -> String {
    format!("{version}~e2e")
}

/// On `host` of lab `lab`: a local apt repository with `<candidate>~e2e` builds of
/// `pkgs`. Returns each package's mirror candidate, sorted by package.
pub async fn older_builds(
    lab: &str,
    host: &str,
    pkgs: &[&str],
) -> Result<Vec<(String, String)>, String> {
    let out = docker::exec_sh(
        &layout::container_name(lab, host),
        &script(pkgs),
        &[],
        Duration::from_secs(600),
    )
    .await
    .map_err(|e| format!("{host}: {e}"))?;
    if !out.success() {
        return Err(format!(
            "{host}: local repository of older builds: {}{}",
            out.stdout, out.stderr
        ));
    }
    let v = candidates(&out.stdout);
    if v.len() != pkgs.len() {
        return Err(format!(
            "{host}: expected {} packages: {}",
            pkgs.len(),
            out.stdout
        ));
    }
    Ok(v)
}

fn script(pkgs: &[&str]) -> String {
    format!(
        r#"set -eu
export DEBIAN_FRONTEND=noninteractive
rm -rf {REPO}; mkdir -p {REPO}/build; cd {REPO}/build
apt-get -qq update
apt-get -qq download {pkgs} >/dev/null
for deb in *.deb; do
  rm -rf x; dpkg-deb -R "$deb" x
  p=$(sed -n 's/^Package: //p' x/DEBIAN/control)
  v=$(sed -n 's/^Version: //p' x/DEBIAN/control)
  sed -i "s/^Version: .*/Version: $v~e2e/" x/DEBIAN/control
  dpkg-deb -Zgzip -z1 -b x "../${{p}}_$v~e2e.deb" >/dev/null
  printf 'candidate\t%s\t%s\n' "$p" "$v"
done
cd {REPO}; rm -rf build
for deb in *.deb; do
  dpkg-deb -f "$deb"
  printf 'Filename: ./%s\nSize: %s\nSHA256: %s\n\n' "$deb" "$(stat -c %s "$deb")" "$(sha256sum "$deb" | cut -d' ' -f1)"
done > Packages
"#,
        pkgs = pkgs.join(" ")
    )
}

fn candidates(out: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 3 && f[0] == "candidate").then(|| (f[1].to_string(), f[2].to_string()))
        })
        .collect();
    v.sort();
    v
}

/// Inventory variables (indented for `all.vars`): the local repository, and when
/// `pinned`, pins on the older builds of PostgreSQL's packages and HAProxy.
pub fn vars(pg_new: &str, haproxy_new: &str, pinned: bool) -> String {
    let mut s = format!("    apt_sources:\n      - \"deb [trusted=yes] file:{REPO} ./\"\n");
    if pinned {
        s.push_str("    apt_pins:\n");
        for p in PG_PACKAGES {
            s.push_str(&format!(
                "      - {{package: {p}, version: \"{}\"}}\n",
                older(pg_new)
            ));
        }
        s.push_str(&format!(
            "      - {{package: haproxy, version: \"{}\"}}\n",
            older(haproxy_new)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_read_from_the_scripts_output() {
        let out = "noise\ncandidate\tpostgresql-17\t17.12-0+deb13u1\ncandidate\tlibpq5\t17.12-0+deb13u1\n";
        assert_eq!(
            candidates(out),
            vec![
                ("libpq5".to_string(), "17.12-0+deb13u1".to_string()),
                ("postgresql-17".to_string(), "17.12-0+deb13u1".to_string()),
            ]
        );
    }

    #[test]
    fn pinned_vars_name_the_older_builds() {
        let v = vars("17.12-0+deb13u1", "3.0.11-1+deb13u5", true);
        let doc: yaml_serde::Value = yaml_serde::from_str(&format!("vars:\n{v}")).unwrap();
        let pins = doc["vars"]["apt_pins"].as_sequence().unwrap();
        assert_eq!(pins.len(), 4);
        assert_eq!(pins[3]["version"].as_str(), Some("3.0.11-1+deb13u5~e2e"));
        assert!(!vars("a", "b", false).contains("apt_pins"));
    }
}
