//! The SSH transport against a real sshd: one lab host (`pgha lab`: a Debian 13
//! container booting systemd and OpenSSH) with `root`, `deploy` (passwordless sudo),
//! and, added here, `nopw` (sudo asks for a password; sshd allows it only 2 sessions
//! per connection).
//!
//! The lab `pgha-t-ssh` is brought up once per test process (a stale one from a killed
//! run is removed first) and taken down when the process exits. Set `PGHA_TEST_KEEP=1`
//! to keep it for debugging.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgha::inventory::SshTarget;
use pgha::lab::{self, LabSpec};
use pgha::ssh::{self, Cmd, Session, SshError, SshOptions, Upload};
use sha2::{Digest, Sha256};

const NAME: &str = "pgha-t-ssh";

struct Fixture {
    /// Address of the lab host (sshd on 22).
    ip: String,
    /// An address of the lab's network that nothing uses.
    unused_ip: String,
    /// The lab's key: authorised for root, deploy and nopw.
    key: PathBuf,
    /// known_hosts written by the lab (the host's real key).
    lab_known_hosts: PathBuf,
    /// A valid key that is authorised nowhere.
    stranger_key: PathBuf,
    /// An encrypted key (passphrase "secret"), authorised for deploy.
    encrypted_key: PathBuf,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(setup)
}

fn lab_dir() -> PathBuf {
    std::env::temp_dir().join(format!("{NAME}-lab"))
}

/// Run a lab call on its own runtime (callers may be inside a test's runtime).
fn lab_call<T: Send + 'static>(
    f: impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = T> + Send>> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
    .join()
    .expect("lab thread")
}

fn teardown_now() {
    let _ = lab_call(|| Box::pin(lab::down(NAME)));
    let _ = std::fs::remove_dir_all(lab_dir());
}

extern "C" fn teardown_at_exit() {
    if std::env::var_os("PGHA_TEST_KEEP").is_none() {
        teardown_now();
    }
}

unsafe extern "C" {
    fn atexit(cb: extern "C" fn()) -> i32;
}

fn sh(script: &str) {
    let st = Command::new("sh")
        .args(["-ec", script])
        .status()
        .expect("run sh");
    assert!(st.success(), "failed: {script}");
}

fn setup() -> Fixture {
    teardown_now();
    // SAFETY: registering a plain extern "C" fn with libc's atexit.
    unsafe {
        atexit(teardown_at_exit);
    }
    let dir = lab_dir();
    let spec = LabSpec {
        name: NAME.into(),
        db: 1,
        routers: 0,
        dir: dir.clone(),
        user: "deploy".into(),
        tls: false,
        docker: false,
        backup: true,
        monitoring: true,
    };
    let info = lab_call(move || Box::pin(async move { lab::up(&spec).await }))
        .unwrap_or_else(|e| panic!("lab up {NAME}: {e}"));
    let host = &info.hosts[0];
    let ip = host.address.to_string();
    let unused_ip = (info.subnet.hosts().nth(249).expect("a /24")).to_string();

    // Extra client keys.
    let d = dir.display();
    sh(&format!(
        "rm -f {d}/stranger* {d}/encrypted*
         ssh-keygen -q -t ed25519 -N '' -C stranger -f {d}/stranger
         ssh-keygen -q -t ed25519 -N secret -C encrypted -f {d}/encrypted"
    ));
    let lab_pub = std::fs::read_to_string(dir.join("id_ed25519.pub")).unwrap();
    let enc_pub = std::fs::read_to_string(dir.join("encrypted.pub")).unwrap();
    let keys = format!("{}\n{}\n", lab_pub.trim(), enc_pub.trim());

    // nopw: sudo with a password; few sessions. deploy: also the encrypted key.
    let script = r#"set -e
keys=$(cat)
id nopw >/dev/null 2>&1 || useradd -m -s /bin/bash nopw
echo 'nopw ALL=(ALL) ALL' > /etc/sudoers.d/nopw
chmod 440 /etc/sudoers.d/nopw
for u in deploy nopw; do
  h=$(getent passwd $u | cut -d: -f6)
  mkdir -p $h/.ssh
  printf '%s\n' "$keys" >> $h/.ssh/authorized_keys
  chown -R $u: $h/.ssh
  chmod 700 $h/.ssh
  chmod 600 $h/.ssh/authorized_keys
done
printf 'Match User nopw\n    MaxSessions 2\n' > /etc/ssh/sshd_config.d/pgha-test.conf
systemctl restart ssh
"#;
    let mut child = Command::new("docker")
        .args(["exec", "-i", &host.container, "sh", "-c", script])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(keys.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "configuring {} failed",
        host.container
    );
    wait_for_sshd(&host.container, &ip);

    Fixture {
        ip,
        unused_ip,
        key: info.key_path.clone(),
        lab_known_hosts: info.known_hosts_path.clone(),
        stranger_key: dir.join("stranger"),
        encrypted_key: dir.join("encrypted"),
    }
}

fn wait_for_sshd(container: &str, ip: &str) {
    use std::io::Read;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    while Instant::now() < deadline {
        match TcpStream::connect_timeout(
            &format!("{ip}:22").parse().unwrap(),
            Duration::from_secs(2),
        ) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut buf = [0u8; 8];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"SSH-") {
                    // systemctl restart may still be in flight: make sure it settled.
                    let state = Command::new("docker")
                        .args(["exec", container, "systemctl", "is-active", "ssh"])
                        .output()
                        .unwrap();
                    if String::from_utf8_lossy(&state.stdout).trim() == "active" {
                        return;
                    }
                }
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("sshd on {ip} did not come up within 90 s (last: {last})");
}

fn target(user: &str, key: &Path) -> SshTarget {
    let f = fixture();
    SshTarget {
        host: "t1".into(),
        address: f.ip.clone(),
        port: 22,
        user: user.into(),
        key_file: Some(key.to_path_buf()),
        become_: true,
    }
}

/// Options with a fresh known_hosts in `dir`, accepting new host keys.
fn opts(dir: &Path) -> SshOptions {
    let mut o = SshOptions::new(dir.join("known_hosts"));
    o.accept_new_host_keys = true;
    o
}

async fn connect(user: &str) -> (Session, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = Session::connect(&target(user, &fixture().key), &opts(dir.path()))
        .await
        .expect("connect");
    (s, dir)
}

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_separates_stdout_stderr_and_status() {
    let (s, _d) = connect("root").await;
    let out = s
        .exec(&Cmd::root("echo out; echo err >&2; exit 3"))
        .await
        .unwrap();
    assert_eq!(out.status, 3);
    assert_eq!(out.stdout_str(), "out\n");
    assert_eq!(out.stderr_str(), "err\n");
    assert!(!out.success());
    match out.ok() {
        Err(e @ SshError::Failed { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("t1") && msg.contains("exit status 3") && msg.contains("err"),
                "{msg}"
            );
            assert_eq!(e.exit_code(), 2);
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    // Empty stderr: the tail comes from stdout.
    let e = s
        .exec(&Cmd::root("echo only-out; false"))
        .await
        .unwrap()
        .ok()
        .unwrap_err();
    assert!(e.to_string().contains("only-out"), "{e}");
    // Success, and the user's shell is not involved (POSIX sh).
    let out = s
        .exec(&Cmd::user("printf '%s' \"$0\""))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(out.stdout_str(), "sh");
    // Killed by a signal.
    let out = s.exec(&Cmd::root("kill -KILL $$")).await.unwrap();
    assert_eq!(out.status, 128 + 9, "{out:?}");
    assert_eq!(out.signal.as_deref(), Some("KILL"));
    assert!(
        out.stderr_str().contains("signal KILL"),
        "{}",
        out.stderr_str()
    );
    // A background process keeping stdout open does not hold the command up.
    let started = Instant::now();
    let out = s
        .exec(&Cmd::root("sleep 20 & echo started"))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(out.stdout_str(), "started\n");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    // After close, every clone fails fast with ConnectionLost (exit code 3).
    let clone = s.clone();
    s.close().await;
    let e = tokio::time::timeout(Duration::from_secs(5), clone.exec(&Cmd::root("true")))
        .await
        .expect("no hang after close")
        .unwrap_err();
    assert!(matches!(e, SshError::ConnectionLost { .. }), "{e:?}");
    assert_eq!(e.exit_code(), 3);
    assert!(clone.is_closed());
}

#[tokio::test(flavor = "multi_thread")]
async fn stdin_is_sent_then_closed() {
    let (s, _d) = connect("root").await;
    let out = s
        .exec(&Cmd::root("cat").stdin(b"hello\nworld\n".to_vec()))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(out.stdout_str(), "hello\nworld\n");
    // Without stdin the command sees EOF at once (does not hang).
    let out = s
        .exec(&Cmd::root("wc -c").timeout(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(out.stdout_str().trim(), "0");
    // A few MB, larger than the channel window, while the command also writes.
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let out = s
        .exec(&Cmd::root("tee /dev/stderr | sha256sum").stdin(data.clone()))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert!(out.stdout_str().starts_with(&hex_sha256(&data)));
    assert_eq!(out.stderr.len(), data.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_is_an_error_and_the_session_survives() {
    let (s, _d) = connect("deploy").await;
    let started = Instant::now();
    let e = s
        .exec(&Cmd::root("sleep 47\necho never").timeout(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    match &e {
        SshError::Timeout {
            host,
            command,
            after,
        } => {
            assert_eq!(host, "t1");
            assert_eq!(command, "sleep 47 ...");
            assert_eq!(*after, Duration::from_secs(1));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("timed out after 1s"), "{e}");
    // The connection still works, and the command was stopped on the host (at once:
    // pgha sends TERM on its timeout; the remote `timeout` guard would act at 1 + 2 s).
    let deadline = started + Duration::from_secs(6);
    loop {
        let out = s
            .exec(&Cmd::root("pgrep -fx 'sleep 47' || true"))
            .await
            .unwrap();
        if out.stdout_str().trim().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sleep still running: {}",
            out.stdout_str()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn output_is_bounded() {
    let (s, _d) = connect("root").await;
    let out = s
        .exec(&Cmd::root("head -c 9000000 /dev/zero; echo small >&2"))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(out.stdout.len(), ssh::DEFAULT_MAX_OUTPUT);
    assert!(out.stdout_truncated);
    assert!(!out.stderr_truncated);
    assert_eq!(out.stderr_str(), "small\n");
    // The bound is an option.
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.max_output = 1000;
    let s = Session::connect(&target("root", &fixture().key), &o)
        .await
        .unwrap();
    let out = s
        .exec(&Cmd::root(
            "head -c 5000 /dev/zero; head -c 3000 /dev/zero >&2; exit 4",
        ))
        .await
        .unwrap();
    assert_eq!(out.status, 4);
    assert_eq!((out.stdout.len(), out.stderr.len()), (1000, 1000));
    assert!(out.stdout_truncated && out.stderr_truncated);
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_sets_owner_group_mode_and_content_atomically() {
    let (s, _d) = connect("deploy").await;
    s.exec(&Cmd::root("rm -rf /etc/pgha-t-upload"))
        .await
        .unwrap()
        .ok()
        .unwrap();
    let content = b"secret=1\nline two\n".to_vec();
    let path = "/etc/pgha-t-upload/sub dir/app.conf";
    s.upload(&Upload {
        path: path.into(),
        content: content.clone(),
        owner: "nopw".into(),
        group: "deploy".into(),
        mode: 0o640,
        validate: None,
    })
    .await
    .unwrap();
    let out = s
        .exec(&Cmd::root(
            "cd '/etc/pgha-t-upload/sub dir' && stat -c '%U %G %a' app.conf && stat -c '%U %G %a' . && ls -A",
        ))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(
        out.stdout_str(),
        "nopw deploy 640\nroot root 755\napp.conf\n"
    );
    assert_eq!(s.sha256(path).await.unwrap(), Some(hex_sha256(&content)));

    // Replace it: new inode, new mode, no temp file left behind.
    let content2 = b"v2\n".to_vec();
    s.upload(&Upload {
        path: path.into(),
        content: content2.clone(),
        owner: "root".into(),
        group: "root".into(),
        mode: 0o600,
        validate: Some("grep -q v2 %s".into()),
    })
    .await
    .unwrap();
    let out = s
        .exec(&Cmd::root(
            "cd '/etc/pgha-t-upload/sub dir' && stat -c '%U %G %a' app.conf && ls -A",
        ))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(out.stdout_str(), "root root 600\napp.conf\n");
    assert_eq!(s.sha256(path).await.unwrap(), Some(hex_sha256(&content2)));

    // Empty content is a valid file.
    s.upload(&Upload {
        path: "/etc/pgha-t-upload/empty".into(),
        content: vec![],
        owner: "root".into(),
        group: "root".into(),
        mode: 0o644,
        validate: None,
    })
    .await
    .unwrap();
    assert_eq!(
        s.sha256("/etc/pgha-t-upload/empty").await.unwrap(),
        Some(hex_sha256(b""))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_validation_keeps_the_old_file() {
    let (s, _d) = connect("root").await;
    let path = "/etc/pgha-t-validate.conf";
    let good = b"good config\n".to_vec();
    s.upload(&Upload {
        path: path.into(),
        content: good.clone(),
        owner: "root".into(),
        group: "root".into(),
        mode: 0o644,
        validate: Some("grep -q good %s".into()),
    })
    .await
    .unwrap();
    let e = s
        .upload(&Upload {
            path: path.into(),
            content: b"broken\n".to_vec(),
            owner: "root".into(),
            group: "root".into(),
            mode: 0o600,
            validate: Some("grep -q good %s".into()),
        })
        .await
        .unwrap_err();
    match &e {
        SshError::Failed {
            host, stderr_tail, ..
        } => {
            assert_eq!(host, "t1");
            assert!(
                stderr_tail.contains("validation of /etc/pgha-t-validate.conf failed"),
                "{e}"
            );
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    // The content never shows up in the error.
    assert!(!e.to_string().contains("broken"), "{e}");
    assert_eq!(s.sha256(path).await.unwrap(), Some(hex_sha256(&good)));
    let out = s
        .exec(&Cmd::root(
            "stat -c %a /etc/pgha-t-validate.conf; ls -A /etc | grep -c pgha-t-validate",
        ))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(out.stdout_str(), "644\n1\n", "mode kept, no temp file left");
}

#[tokio::test(flavor = "multi_thread")]
async fn sha256_present_and_absent() {
    let (s, _d) = connect("deploy").await;
    assert_eq!(s.sha256("/nonexistent/pgha").await.unwrap(), None);
    // /etc/shadow is readable by root only: sha256 runs as root.
    let out = s
        .exec(&Cmd::root("cat /etc/shadow"))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(
        s.sha256("/etc/shadow").await.unwrap(),
        Some(hex_sha256(&out.stdout))
    );
    assert!(
        s.sha256("/etc").await.is_err(),
        "a directory has no checksum"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sudo_as_deploy_and_refused_without_password() {
    let (s, _d) = connect("deploy").await;
    s.check_sudo().await.unwrap();
    let root = s.exec(&Cmd::root("id -u")).await.unwrap().ok().unwrap();
    assert_eq!(root.stdout_str(), "0\n");
    let user = s.exec(&Cmd::user("id -un")).await.unwrap().ok().unwrap();
    assert_eq!(user.stdout_str(), "deploy\n");
    // Quoting survives the sudo wrapping.
    let out = s
        .exec(&Cmd::root("printf '%s|' \"it's\" 'a  b' \"$(id -un)\""))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(out.stdout_str(), "it's|a  b|root|");

    // nopw connects fine (connect does not check sudo), but sudo wants a password.
    let (s, _d) = connect("nopw").await;
    let e = s.check_sudo().await.unwrap_err();
    match &e {
        SshError::SudoPassword { host, user } => {
            assert_eq!((host.as_str(), user.as_str()), ("t1", "nopw"));
        }
        other => panic!("expected SudoPassword, got {other:?}"),
    }
    assert!(e.to_string().contains("NOPASSWD"), "{e}");
    assert_eq!(e.exit_code(), 2);
    assert!(matches!(
        s.exec(&Cmd::root("id -u")).await,
        Err(SshError::SudoPassword { .. })
    ));
    // As the user itself, all is well.
    assert_eq!(
        s.exec(&Cmd::user("id -un"))
            .await
            .unwrap()
            .ok()
            .unwrap()
            .stdout_str(),
        "nopw\n"
    );
    // become off: as_root commands run as the user.
    let mut t = target("nopw", &fixture().key);
    t.become_ = false;
    let dir = tempfile::tempdir().unwrap();
    let s = Session::connect(&t, &opts(dir.path())).await.unwrap();
    assert_eq!(
        s.exec(&Cmd::root("id -un")).await.unwrap().stdout_str(),
        "nopw\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn known_hosts_tofu_then_verified() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("new/known_hosts");
    let mut o = SshOptions::new(kh.clone());
    let t = target("root", &f.key);

    // Unknown host, strict: refused, naming host, address, fingerprint and the flag.
    let e = Session::connect(&t, &o).await.unwrap_err();
    match &e {
        SshError::HostKeyUnknown {
            host,
            address,
            fingerprint,
            ..
        } => {
            assert_eq!(host, "t1");
            assert_eq!(address, &f.ip);
            assert!(fingerprint.contains("SHA256:"), "{fingerprint}");
        }
        other => panic!("expected HostKeyUnknown, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("--accept-new-host-keys") && msg.contains(&f.ip),
        "{msg}"
    );
    assert_eq!(e.exit_code(), 2);
    assert!(!kh.exists(), "nothing recorded without the flag");

    // Accept: recorded (file and directory created, 0600).
    o.accept_new_host_keys = true;
    let s = Session::connect(&t, &o).await.unwrap();
    s.exec(&Cmd::root("true")).await.unwrap().ok().unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kh).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&kh).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with(&format!("{} ", f.ip)), "{text}");

    // Second connect, strict again: verified against the recorded key.
    o.accept_new_host_keys = false;
    Session::connect(&t, &o).await.unwrap();
    assert_eq!(std::fs::read_to_string(&kh).unwrap(), text, "nothing added");

    // The same key as a hashed entry (ssh-keygen -H style) is understood too.
    let mut parts = text.split_whitespace();
    let (_, kt, kb) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
    let hashed = format!(
        "# hashed\n{} {kt} {kb}\n",
        ssh::known_hosts::hash_name(&f.ip, b"0123456789abcdefghij")
    );
    std::fs::write(&kh, &hashed).unwrap();
    Session::connect(&t, &o).await.unwrap();

    // A different port is a different entry.
    std::fs::write(&kh, format!("[{}]:2222 {kt} {kb}\n", f.ip)).unwrap();
    assert!(matches!(
        Session::connect(&t, &o).await,
        Err(SshError::HostKeyUnknown { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn verifies_against_the_labs_known_hosts() {
    let f = fixture();
    let o = SshOptions::new(f.lab_known_hosts.clone());
    let s = Session::connect(&target("root", &f.key), &o).await.unwrap();
    s.exec(&Cmd::root("true")).await.unwrap().ok().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn changed_host_key_is_a_hard_error() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("known_hosts");
    let other = std::fs::read_to_string(f.stranger_key.with_extension("pub")).unwrap();
    let mut other = other.split_whitespace();
    let wrong = format!(
        "# a comment\nunrelated.example {} {}\n{} {} {}\n",
        other.clone().next().unwrap(),
        other.clone().nth(1).unwrap(),
        f.ip,
        other.next().unwrap(),
        other.next().unwrap()
    );
    std::fs::write(&kh, &wrong).unwrap();
    let mut o = SshOptions::new(kh.clone());
    o.accept_new_host_keys = true; // never overrides a changed key
    let e = Session::connect(&target("root", &f.key), &o)
        .await
        .unwrap_err();
    match &e {
        SshError::HostKeyChanged {
            host,
            address,
            line,
            known_hosts,
            ..
        } => {
            assert_eq!(host, "t1");
            assert_eq!(address, &f.ip);
            assert_eq!(*line, 3);
            assert_eq!(known_hosts, &kh);
        }
        other => panic!("expected HostKeyChanged, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.contains(&format!("{}:3", kh.display())), "{msg}");
    assert!(msg.contains("CHANGED"), "{msg}");
    assert_eq!(
        std::fs::read_to_string(&kh).unwrap(),
        wrong,
        "file untouched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_hosts_fail_fast_with_a_reason() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.connect_timeout = Duration::from_secs(3);
    o.connect_attempts = 1;
    let mut t = target("root", &f.key);
    t.address = f.unused_ip.clone();
    let started = Instant::now();
    let e = Session::connect(&t, &o).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    match &e {
        SshError::Unreachable {
            host,
            address,
            reason,
        } => {
            assert_eq!(host, "t1");
            assert_eq!(address, &format!("{}:22", f.unused_ip));
            assert!(
                reason.contains("no route to host") || reason.contains("timed out"),
                "{reason}"
            );
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert_eq!(e.exit_code(), 3);
    assert_eq!(
        pgha::error::Failure::from(e).exit,
        pgha::error::Exit::Unreachable
    );

    // Connection refused, retried with backoff (0.5 s + 1 s between 3 attempts).
    let mut t = target("root", &f.key);
    t.port = 2;
    o.connect_attempts = 3;
    let started = Instant::now();
    let e = Session::connect(&t, &o).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(e.to_string().contains("connection refused"), "{e}");
    assert!(e.to_string().contains("3 attempts"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn authentication_failures_say_what_was_tried() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let o = opts(dir.path());
    let started = Instant::now();
    let e = Session::connect(&target("deploy", &f.stranger_key), &o)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "not retried");
    let msg = e.to_string();
    assert!(matches!(e, SshError::Auth { .. }), "{e:?}");
    assert!(msg.contains("t1") && msg.contains("deploy"), "{msg}");
    assert!(msg.contains(&f.stranger_key.display().to_string()), "{msg}");
    assert!(msg.contains("rejected"), "{msg}");
    assert_eq!(e.exit_code(), 2);

    // Encrypted key, non-interactive: a clear error (no prompt, no hang).
    let e = Session::connect(&target("deploy", &f.encrypted_key), &o)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("encrypted"), "{e}");

    // Missing key file.
    let e = Session::connect(&target("deploy", Path::new("/nonexistent/key")), &o)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/key"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn many_parallel_execs_on_one_session() {
    let (s, _d) = connect("deploy").await;
    let started = Instant::now();
    let futs = (0..40).map(|i| {
        let s = s.clone();
        async move {
            let out = s
                .exec(&Cmd::root(format!("sleep 0.3; echo {i}")))
                .await?
                .ok()?;
            Ok::<_, SshError>((i, out.stdout_str()))
        }
    });
    let results = futures_util::future::join_all(futs).await;
    for r in results {
        let (i, out) = r.unwrap();
        assert_eq!(out, format!("{i}\n"));
    }
    // 40 x 0.3 s on 8 channels: concurrent (about 1.5 s), yet bounded (at least 5 rounds).
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "{took:?}"
    );
    // The session is still healthy (every channel was closed).
    for _ in 0..3 {
        s.exec(&Cmd::user("true")).await.unwrap().ok().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn server_allowing_fewer_sessions_than_max_channels() {
    // sshd allows `nopw` only 2 sessions per connection; pgha asks for up to 8.
    let (s, _d) = connect("nopw").await;
    let futs = (0..12).map(|i| {
        let s = s.clone();
        async move {
            let out = s
                .exec(&Cmd::user(format!("sleep 0.2; echo {i}")))
                .await?
                .ok()?;
            Ok::<_, SshError>((i, out.stdout_str()))
        }
    });
    for r in futures_util::future::join_all(futs).await {
        let (i, out) = r.unwrap();
        assert_eq!(out, format!("{i}\n"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_all_is_parallel() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.connect_timeout = Duration::from_secs(2);
    o.connect_attempts = 2;
    let good = target("root", &f.key);
    let mut bad = target("root", &f.key);
    bad.host = "t-dead".into();
    bad.address = f.unused_ip.clone();
    let mut good2 = good.clone();
    good2.host = "t2".into();
    let started = Instant::now();
    let results = ssh::connect_all(&[good, bad, good2], &o).await;
    let took = started.elapsed();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].0, "t1");
    assert!(results[0].1.is_ok());
    assert_eq!(results[1].0, "t-dead");
    assert!(matches!(results[1].1, Err(SshError::Unreachable { .. })));
    assert!(results[2].1.is_ok());
    // One dead host costs its own timeouts, once: not once per host.
    assert!(took < Duration::from_secs(8), "{took:?}");
    // Each good session works.
    for (_, r) in &results {
        if let Ok(s) = r {
            s.exec(&Cmd::root("true")).await.unwrap().ok().unwrap();
        }
    }
}

/// Runs `child_connect` in a child process with its own HOME and SSH_AUTH_SOCK (the
/// environment is process-wide, so it is not changed in this multi-threaded process).
fn run_child(home: &Path, agent_sock: Option<&Path>, expect: &str) -> String {
    let f = fixture();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_connect", "--ignored", "--nocapture"])
        .env("HOME", home)
        .env("PGHA_T_SSH_CHILD_IP", &f.ip)
        .env("PGHA_T_SSH_CHILD_EXPECT", expect)
        .env_remove("SSH_AUTH_SOCK");
    if let Some(s) = agent_sock {
        cmd.env("SSH_AUTH_SOCK", s);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child ({expect}) failed:\n{text}");
    assert!(text.contains("1 passed"), "child did not run:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "run by default_keys_and_agent in a child process"]
async fn child_connect() {
    let ip = std::env::var("PGHA_T_SSH_CHILD_IP").unwrap();
    let expect = std::env::var("PGHA_T_SSH_CHILD_EXPECT").unwrap();
    let t = SshTarget {
        host: "child".into(),
        address: ip,
        port: 22,
        user: "deploy".into(),
        key_file: None,
        become_: true,
    };
    let dir = tempfile::tempdir().unwrap();
    let r = Session::connect(&t, &opts(dir.path())).await;
    match (expect.as_str(), r) {
        ("ok", Ok(s)) => {
            let out = s.exec(&Cmd::root("id -u")).await.unwrap().ok().unwrap();
            assert_eq!(out.stdout_str(), "0\n");
        }
        ("auth", Err(e @ SshError::Auth { .. })) => println!("AUTH-ERROR: {e}"),
        (x, r) => panic!("expected {x}, got {r:?}"),
    }
}

#[test]
fn default_keys_and_agent() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();

    // No key file: ~/.ssh/id_ed25519 is used.
    let home = tmp.path().join("home-with-key");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::copy(&f.key, home.join(".ssh/id_ed25519")).unwrap();
    run_child(&home, None, "ok");

    // Nothing to try: the error lists what was looked for.
    let empty = tmp.path().join("empty-home");
    std::fs::create_dir_all(&empty).unwrap();
    let text = run_child(&empty, None, "auth");
    assert!(text.contains("SSH_AUTH_SOCK is not set"), "{text}");
    assert!(
        text.contains("id_ed25519,id_ecdsa,id_rsa} (not present)"),
        "{text}"
    );

    // ssh-agent holding the key.
    let sock = tmp.path().join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .args(["-D", "-a"])
        .arg(&sock)
        .stdout(Stdio::null())
        .spawn()
        .expect("ssh-agent (openssh-client) is needed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let added = Command::new("ssh-add")
        .arg(&f.key)
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    let result = std::panic::catch_unwind(|| {
        assert!(added.status.success(), "ssh-add: {added:?}");
        run_child(&empty, Some(&sock), "ok");
    });
    let _ = agent.kill();
    let _ = agent.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
