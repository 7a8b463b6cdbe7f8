//! The lab's base image: Debian 13 from debootstrap, imported into Docker, set up
//! and prefetched in a build container, committed as `pgha-lab:<recipe hash>`.
//! Built once per recipe (cached in Docker), under a lock so concurrent `lab up`s
//! build it once.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::process::Command;

use super::net;
use crate::docker;
use crate::error::Failure;
use crate::wait;

const SUITE: &str = "trixie";
const MIRROR: &str = "http://deb.debian.org/debian";
const INCLUDE: &str =
    "systemd,systemd-sysv,dbus,openssh-server,iproute2,ca-certificates,sudo,procps,curl,nftables";
/// Packages downloaded into the image's apt cache (installed for real by `pgha deploy`).
const PREFETCH: &[&str] = &[
    "postgresql-17",
    "patroni",
    "python3-etcd",
    "python3-psycopg2",
    "etcd-server",
    "etcd-client",
    "haproxy",
    "prometheus-postgres-exporter",
    "pgbackrest",
    "prometheus",
    "prometheus-alertmanager",
    "prometheus-node-exporter",
    "prometheus-pgbackrest-exporter",
    "pgbouncer",
];
/// Runs in the build container (see the script's header).
const SETUP: &str = include_str!("base-setup.sh");
/// Image settings applied by `docker commit` (Docker 20.10 accepts no STOPSIGNAL
/// here; `docker run --stop-signal` sets systemd's instead).
const CHANGES: &[&str] = &[r#"CMD ["/sbin/init"]"#, "ENV container=docker"];
/// Bump to force a rebuild when something outside the recipe text changes.
const RECIPE_VERSION: u32 = 1;

const REPO: &str = "pgha-lab";
const BASE_REPO: &str = "pgha-lab-base";
const BUILD_PREFIX: &str = "pgha-lab-build-";
const STEP_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Everything the image is made from; its hash tags the image.
pub fn recipe() -> String {
    format!(
        "version {RECIPE_VERSION}\n\
         debootstrap --variant=minbase --include={INCLUDE} {SUITE} DIR {MIRROR}\n\
         import: tar --numeric-owner -C DIR -c . | docker import -\n\
         prefetch: {}\n\
         commit: {}\n\
         setup:\n{SETUP}",
        PREFETCH.join(" "),
        CHANGES.join(" | ")
    )
}

/// First 12 hex digits of the recipe's SHA-256.
pub fn recipe_hash() -> String {
    hex::encode(Sha256::digest(recipe().as_bytes()))[..12].to_string()
}

/// `pgha-lab:<hash12>`.
pub fn image_tag() -> String {
    format!("{REPO}:{}", recipe_hash())
}

/// `$XDG_CACHE_HOME/pgha` or `~/.cache/pgha`.
pub fn cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("pgha");
    }
    std::env::home_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache")
        .join("pgha")
}

async fn image_exists(tag: &str) -> Result<bool, Failure> {
    Ok(docker::inspect("image", tag).await?.is_some())
}

/// The base image's tag, building it first when it is not in Docker yet.
pub async fn ensure() -> Result<String, Failure> {
    let tag = image_tag();
    if image_exists(&tag).await? {
        return Ok(tag);
    }
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).map_err(|e| {
        Failure::error(format!(
            "cannot create the cache directory {}: {e}",
            cache.display()
        ))
    })?;
    let _lock = lock(&cache.join("lab-image.lock"), &tag).await?;
    // Someone else may have built it while we waited.
    if image_exists(&tag).await? {
        return Ok(tag);
    }
    let started = Instant::now();
    say(&format!(
        "building the lab's base image {tag} (debootstrap Debian 13, then prefetching packages; \
         about 1-2 minutes, once: it is cached in Docker)"
    ));
    build(&tag, &cache).await?;
    say(&format!("built {tag} in {}s", started.elapsed().as_secs()));
    Ok(tag)
}

/// An exclusive flock on `path`, held while the returned file is open.
async fn lock(path: &Path, tag: &str) -> Result<File, Failure> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| {
            Failure::error(format!(
                "cannot open the build lock {}: {e}",
                path.display()
            ))
        })?;
    let attempt = |file: &File| match file.try_lock() {
        Ok(()) => Ok(Ok(())),
        Err(TryLockError::WouldBlock) => Err("held by another pgha building the image".to_string()),
        Err(TryLockError::Error(e)) => Ok(Err(Failure::error(format!(
            "cannot lock {}: {e}",
            path.display()
        )))),
    };
    match attempt(&file) {
        Ok(r) => r?,
        Err(_) => {
            say(&format!(
                "waiting for another pgha to finish building {tag} (lock {})",
                path.display()
            ));
            let what = format!("the lab image build lock {}", path.display());
            wait::until(&what, Duration::from_secs(30 * 60), || {
                let r = attempt(&file);
                async move { r }
            })
            .await
            .map_err(|e| Failure::error(e.to_string()))??;
        }
    }
    Ok(file)
}

/// Effective uid from /proc/self/status text.
pub fn effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_uid(&s))
        == Some(0)
}

fn find_debootstrap() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join("debootstrap"))
        .find(|p| p.is_file())
}

async fn command_output(
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<std::process::Output, Failure> {
    let shown = format!("{program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    match docker::bounded(cmd, timeout).await {
        Err(None) => Err(Failure::error(format!(
            "`{shown}` did not finish within {}s",
            timeout.as_secs()
        ))),
        Err(Some(e)) => Err(Failure::error(format!("cannot run `{shown}`: {e}"))),
        Ok(o) => Ok(o),
    }
}

fn output_tail(o: &std::process::Output, n: usize) -> String {
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    docker::tail(&all, n)
}

/// debootstrap, installed with apt when missing and we are root.
async fn debootstrap_path() -> Result<PathBuf, Failure> {
    let found = find_debootstrap();
    if !is_root() {
        let install = if found.is_none() {
            "debootstrap is missing: install it with `sudo apt-get install -y debootstrap`, then "
        } else {
            ""
        };
        return Err(Failure::error(format!(
            "building the lab's base image needs root once (debootstrap makes a Debian root \
             filesystem; later runs reuse the cached image): {install}run `sudo pgha lab up`"
        )));
    }
    if let Some(p) = found {
        return Ok(p);
    }
    say("debootstrap is missing: installing it (apt-get install -y debootstrap)");
    let mut o = command_output("apt-get", &["install", "-y", "debootstrap"], STEP_TIMEOUT).await?;
    if !o.status.success() {
        // Package lists may be missing or stale on a fresh machine.
        let u = command_output("apt-get", &["update"], STEP_TIMEOUT).await?;
        if u.status.success() {
            o = command_output("apt-get", &["install", "-y", "debootstrap"], STEP_TIMEOUT).await?;
        }
    }
    if !o.status.success() {
        return Err(Failure::error(format!(
            "debootstrap is missing and `apt-get install -y debootstrap` failed:\n{}\n\
             install it (apt-get install -y debootstrap), then run lab up again",
            output_tail(&o, 10)
        )));
    }
    find_debootstrap().ok_or_else(|| {
        Failure::error("apt-get installed debootstrap but it is not on PATH, /usr/sbin or /sbin")
    })
}

async fn build(tag: &str, cache: &Path) -> Result<(), Failure> {
    let debootstrap = debootstrap_path().await?;
    clean_leftovers(cache).await;
    let hash = recipe_hash();
    let id = format!("{hash}-{}", std::process::id());
    let base = format!("{BASE_REPO}:{id}");
    let rootfs = cache.join(format!("rootfs-{id}"));

    let made = async {
        let t = Instant::now();
        let dir = rootfs.to_string_lossy().into_owned();
        let include = format!("--include={INCLUDE}");
        let args = [
            "--variant=minbase",
            include.as_str(),
            SUITE,
            dir.as_str(),
            MIRROR,
        ];
        let o = command_output(&debootstrap.to_string_lossy(), &args, STEP_TIMEOUT).await?;
        if !o.status.success() {
            let log = std::fs::read_to_string(rootfs.join("debootstrap/debootstrap.log"))
                .map(|l| format!("\ndebootstrap.log ends with:\n{}", docker::tail(&l, 15)))
                .unwrap_or_default();
            return Err(Failure::error(format!(
                "debootstrap {} failed:\n{}{log}",
                args.join(" "),
                output_tail(&o, 15)
            )));
        }
        say(&format!("  debootstrap done in {}s", t.elapsed().as_secs()));
        import(&rootfs, &base).await
    }
    .await;
    if let Err(e) = remove_rootfs(&rootfs).await {
        say(&format!("warning: {e}"));
    }
    made?;

    let name = format!("{BUILD_PREFIX}{id}");
    let res = setup_and_commit(&base, &name, tag, &hash).await;
    let _ = docker::output(&["rm", "-f", &name], docker::TIMEOUT).await;
    let _ = docker::output(&["network", "rm", &name], docker::TIMEOUT).await;
    let _ = docker::output(&["rmi", &base], docker::TIMEOUT).await;
    res
}

/// `tar -C DIR -c . | docker import - BASE`.
async fn import(rootfs: &Path, base: &str) -> Result<(), Failure> {
    let t = Instant::now();
    let mut tar = Command::new("tar");
    tar.arg("--numeric-owner")
        .arg("-C")
        .arg(rootfs)
        .args(["-c", "."])
        .stdin(Stdio::null());
    let (tar_out, imp) = docker::import_from(tar, "tar", &["-", base], STEP_TIMEOUT).await?;
    if !tar_out.status.success() {
        return Err(Failure::error(format!(
            "tar -C {} -c . failed: {}",
            rootfs.display(),
            output_tail(&tar_out, 10)
        )));
    }
    if !imp.status.success() {
        return Err(Failure::error(format!(
            "docker import - {base} failed: {}",
            output_tail(&imp, 10)
        )));
    }
    say(&format!(
        "  imported into Docker in {}s",
        t.elapsed().as_secs()
    ));
    Ok(())
}

/// Set the image up in a build container on a temporary network (so apt reaches the
/// mirror), then commit it.
async fn setup_and_commit(base: &str, name: &str, tag: &str, hash: &str) -> Result<(), Failure> {
    let t = Instant::now();
    let taken = net::taken_subnets().await?;
    let (subnet, _) = net::choose_subnet(name, &taken).map_err(Failure::error)?;
    let subnet = subnet.to_string();
    docker::run(&[
        "network", "create", "--driver", "bridge", "--subnet", &subnet, name,
    ])
    .await?;
    let mut args = vec![
        "run",
        "--name",
        name,
        "--hostname",
        "pgha-lab-build",
        "--network",
        name,
        base,
        "/bin/sh",
        "-c",
        SETUP,
        "sh",
    ];
    args.extend_from_slice(PREFETCH);
    let out = docker::output(&args, STEP_TIMEOUT).await?;
    if !out.success() {
        return Err(Failure::error(format!(
            "setting up the lab image failed (exit {:?}):\n{}",
            out.code,
            docker::tail(&format!("{}\n{}", out.stdout, out.stderr), 20)
        )));
    }
    if let Some(line) = out
        .stdout
        .lines()
        .find(|l| l.starts_with("pgha lab image:"))
    {
        say(&format!(
            "  {}",
            line.trim_start_matches("pgha lab image: ")
        ));
    }
    let label = format!("LABEL pgha.lab.recipe={hash}");
    let mut commit = vec!["commit"];
    for c in CHANGES.iter().copied().chain([label.as_str()]) {
        commit.extend(["--change", c]);
    }
    commit.extend([name, tag]);
    docker::run_with(&commit, STEP_TIMEOUT).await?;
    say(&format!(
        "  set up and prefetched in {}s",
        t.elapsed().as_secs()
    ));
    Ok(())
}

/// Remove what a killed earlier build left behind (only called under the build lock,
/// so nothing of this prefix is in use).
async fn clean_leftovers(cache: &Path) {
    let filter = format!("name={BUILD_PREFIX}");
    if let Ok(out) = docker::run(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]).await
    {
        for n in docker::lines(&out)
            .into_iter()
            .filter(|n| n.starts_with(BUILD_PREFIX))
        {
            let _ = docker::output(&["rm", "-f", &n], docker::TIMEOUT).await;
        }
    }
    if let Ok(out) = docker::run(&[
        "network",
        "ls",
        "--filter",
        &filter,
        "--format",
        "{{.Name}}",
    ])
    .await
    {
        for n in docker::lines(&out)
            .into_iter()
            .filter(|n| n.starts_with(BUILD_PREFIX))
        {
            let _ = docker::output(&["network", "rm", &n], docker::TIMEOUT).await;
        }
    }
    if let Ok(out) =
        docker::run(&["images", BASE_REPO, "--format", "{{.Repository}}:{{.Tag}}"]).await
    {
        for n in docker::lines(&out) {
            let _ = docker::output(&["rmi", &n], docker::TIMEOUT).await;
        }
    }
    if let Ok(entries) = std::fs::read_dir(cache) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("rootfs-")
                && let Err(err) = remove_rootfs(&e.path()).await
            {
                say(&format!("warning: {err}"));
            }
        }
    }
}

/// Mount points at or below `dir`, deepest first, from /proc/self/mountinfo text.
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_octal(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Remove a debootstrap directory, first unmounting anything debootstrap left mounted
/// inside it (never deleting through a mount into the host's /proc, /sys or /dev).
async fn remove_rootfs(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        return Ok(());
    }
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    for _ in 0..3 {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mounts = mounts_under(&info, &dir);
        if mounts.is_empty() {
            let d = dir.clone();
            return tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&d))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot remove {}: {e}", dir.display()));
        }
        for m in mounts {
            let _ = command_output("umount", &["-l", &m.to_string_lossy()], docker::TIMEOUT).await;
        }
    }
    Err(format!(
        "left {} in place: something is still mounted inside it",
        dir.display()
    ))
}

/// Progress for people, on stderr.
fn say(msg: &str) {
    eprintln!("{msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_follows_the_recipe() {
        let tag = image_tag();
        assert!(tag.starts_with("pgha-lab:"), "{tag}");
        assert_eq!(tag.len(), "pgha-lab:".len() + 12);
        assert_eq!(tag, image_tag());
        let r = recipe();
        for needle in [
            "--variant=minbase",
            "openssh-server",
            "trixie",
            "postgresql-17",
            "python3-etcd",
            "ssh-keygen -A",
            "NOPASSWD",
            "/sbin/init",
        ] {
            assert!(r.contains(needle), "recipe lacks {needle}");
        }
    }

    #[test]
    fn setup_script_keeps_host_keys_out_of_the_image() {
        assert!(SETUP.contains("rm -f /etc/ssh/ssh_host_*"));
        assert!(SETUP.contains("Before=ssh.service"));
        assert!(SETUP.contains("PermitRootLogin prohibit-password"));
        assert!(SETUP.contains("chmod 0440 /etc/sudoers.d/deploy"));
        assert!(SETUP.contains("apt-get install --download-only -y \"$@\""));
    }

    #[test]
    fn uid_from_proc_status() {
        let s = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(effective_uid(s), Some(0));
        assert_eq!(effective_uid("Name: x\n"), None);
    }

    #[test]
    fn mounts_below_a_directory() {
        let info = "\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
30 22 0:5 / /root/.cache/pgha/rootfs-a/proc rw - proc proc rw
31 22 0:6 / /root/.cache/pgha/rootfs-a/sys rw - sysfs sys rw
32 31 0:7 / /root/.cache/pgha/rootfs-a/sys/fs/cgroup rw - cgroup2 c rw
33 22 0:8 / /root/.cache/pgha/rootfs-ab/proc rw - proc proc rw
34 22 0:9 / /tmp/with\\040space/proc rw - proc proc rw
";
        let dir = Path::new("/root/.cache/pgha/rootfs-a");
        assert_eq!(
            mounts_under(info, dir),
            vec![
                PathBuf::from("/root/.cache/pgha/rootfs-a/sys/fs/cgroup"),
                PathBuf::from("/root/.cache/pgha/rootfs-a/proc"),
                PathBuf::from("/root/.cache/pgha/rootfs-a/sys"),
            ]
        );
        assert_eq!(
            mounts_under(info, Path::new("/tmp/with space")),
            vec![PathBuf::from("/tmp/with space/proc")]
        );
    }
}
