//! Public-key authentication: a given key file, else ssh-agent, then the default keys.
//! Decrypted keys are cached for the whole process, so a passphrase is asked once per
//! key file even when many hosts connect in parallel.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use russh::client::Handle;
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use tokio::sync::Mutex;

use super::client::Client;

/// Why a key file could not be used directly.
#[derive(Debug, Clone)]
enum LoadError {
    /// Encrypted and no passphrase available; the public half when readable.
    Encrypted {
        public: Option<PublicKey>,
        why: String,
    },
    Other(String),
}

/// Decrypted keys, and keys whose passphrase prompt failed (not asked again).
type Cache = HashMap<PathBuf, Result<Arc<PrivateKey>, LoadError>>;

static KEYS: LazyLock<Mutex<Cache>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Authenticate `user` on an SSH connection. Err carries the list of what was tried.
pub(crate) async fn authenticate(
    handle: &mut Handle<Client>,
    user: &str,
    key_file: Option<&Path>,
    interactive: bool,
    step_timeout: Duration,
) -> Result<(), Vec<String>> {
    let mut tried: Vec<String> = Vec::new();
    if let Some(path) = key_file {
        match load_key(path, interactive).await {
            Ok(key) => match try_key(handle, user, key, step_timeout).await {
                Ok(true) => return Ok(()),
                Ok(false) => tried.push(format!("key {} (rejected by the server)", path.display())),
                Err(e) => {
                    tried.push(format!("key {} ({e})", path.display()));
                    return Err(tried);
                }
            },
            Err(LoadError::Encrypted { public, why }) => {
                // The agent may hold this key already (like OpenSSH does with -i).
                if let Some(public) = public {
                    match agent_auth(handle, user, Some(&public), step_timeout).await {
                        AgentOutcome::Success => return Ok(()),
                        AgentOutcome::Tried(_) | AgentOutcome::Unavailable(_) => {}
                    }
                }
                tried.push(format!("key {} ({why})", path.display()));
            }
            Err(LoadError::Other(why)) => tried.push(format!("key {} ({why})", path.display())),
        }
        return Err(tried);
    }

    match agent_auth(handle, user, None, step_timeout).await {
        AgentOutcome::Success => return Ok(()),
        AgentOutcome::Tried(n) => tried.push(format!("ssh-agent ({n} key(s), none accepted)")),
        AgentOutcome::Unavailable(why) => tried.push(format!("ssh-agent ({why})")),
    }
    let Some(home) = std::env::home_dir() else {
        tried.push("default keys (no home directory)".into());
        return Err(tried);
    };
    let mut missing = Vec::new();
    for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
        let path = home.join(".ssh").join(name);
        if !path.exists() {
            missing.push(name);
            continue;
        }
        match load_key(&path, interactive).await {
            Ok(key) => match try_key(handle, user, key, step_timeout).await {
                Ok(true) => return Ok(()),
                Ok(false) => tried.push(format!("key {} (rejected by the server)", path.display())),
                Err(e) => {
                    tried.push(format!("key {} ({e})", path.display()));
                    return Err(tried);
                }
            },
            Err(LoadError::Encrypted { why, .. }) | Err(LoadError::Other(why)) => {
                tried.push(format!("key {} ({why})", path.display()))
            }
        }
    }
    if !missing.is_empty() {
        tried.push(format!(
            "{}/.ssh/{{{}}} (not present)",
            home.display(),
            missing.join(",")
        ));
    }
    Err(tried)
}

async fn rsa_hash(handle: &Handle<Client>, is_rsa: bool) -> Option<HashAlg> {
    if !is_rsa {
        return None;
    }
    handle
        .best_supported_rsa_hash()
        .await
        .ok()
        .flatten()
        .flatten()
}

/// Ok(true) accepted, Ok(false) rejected, Err: the connection broke.
async fn try_key(
    handle: &mut Handle<Client>,
    user: &str,
    key: Arc<PrivateKey>,
    step_timeout: Duration,
) -> Result<bool, String> {
    let hash = rsa_hash(handle, key.algorithm().is_rsa()).await;
    let fut = handle.authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, hash));
    match tokio::time::timeout(step_timeout, fut).await {
        Ok(Ok(r)) => Ok(r.success()),
        Ok(Err(e)) => Err(format!("connection error: {e}")),
        Err(_) => Err(format!("no answer from the server within {step_timeout:?}")),
    }
}

enum AgentOutcome {
    Success,
    Tried(usize),
    Unavailable(String),
}

/// Try the agent's keys (only `only` when given).
async fn agent_auth(
    handle: &mut Handle<Client>,
    user: &str,
    only: Option<&PublicKey>,
    step_timeout: Duration,
) -> AgentOutcome {
    if std::env::var_os("SSH_AUTH_SOCK").is_none() {
        return AgentOutcome::Unavailable("SSH_AUTH_SOCK is not set".into());
    }
    let mut agent = match AgentClient::connect_env().await {
        Ok(a) => a,
        Err(e) => return AgentOutcome::Unavailable(format!("cannot connect: {e}")),
    };
    if let Some(binding) = handle.agent_session_binding() {
        // Needed for destination-constrained keys; older agents refuse it, which is fine.
        let _ = agent.bind_session(binding, false).await;
    }
    let ids = match agent.request_identities().await {
        Ok(ids) => ids,
        Err(e) => return AgentOutcome::Unavailable(format!("cannot list keys: {e}")),
    };
    let mut n = 0;
    for id in ids {
        let AgentIdentity::PublicKey { key, .. } = id else {
            continue;
        };
        if only.is_some_and(|o| o.key_data() != key.key_data()) {
            continue;
        }
        n += 1;
        let hash = rsa_hash(handle, key.algorithm().is_rsa()).await;
        let fut = handle.authenticate_publickey_with(user, key, hash, &mut agent);
        match tokio::time::timeout(step_timeout, fut).await {
            Ok(Ok(r)) if r.success() => return AgentOutcome::Success,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!("ssh-agent signing failed: {e}"),
            Err(_) => break,
        }
    }
    if n == 0 && only.is_none() {
        return AgentOutcome::Unavailable("it holds no keys".into());
    }
    AgentOutcome::Tried(n)
}

/// Load (and cache) a private key, asking for its passphrase on the terminal when
/// allowed.
async fn load_key(path: &Path, interactive: bool) -> Result<Arc<PrivateKey>, LoadError> {
    // Held across the prompt: parallel connections wait for one prompt per key.
    let mut cache = KEYS.lock().await;
    if let Some(r) = cache.get(path) {
        return r.clone();
    }
    let (r, keep) = load_key_uncached(path, interactive).await;
    if keep {
        cache.insert(path.to_path_buf(), r.clone());
    }
    r
}

/// The key, and whether to remember the outcome (a decrypted key, or a failed prompt;
/// not a missing file, which may appear later).
async fn load_key_uncached(
    path: &Path,
    interactive: bool,
) -> (Result<Arc<PrivateKey>, LoadError>, bool) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return (Err(LoadError::Other(format!("cannot read it: {e}"))), false),
    };
    match russh::keys::decode_secret_key(&text, None) {
        Ok(k) => return (Ok(Arc::new(k)), true),
        Err(russh::keys::Error::KeyIsEncrypted) => {}
        Err(e) => {
            return (
                Err(LoadError::Other(format!("cannot parse it: {e}"))),
                false,
            );
        }
    }
    let public = PrivateKey::from_openssh(&text)
        .ok()
        .map(|k| k.public_key().clone())
        .or_else(|| {
            let mut p = path.as_os_str().to_owned();
            p.push(".pub");
            russh::keys::load_public_key(PathBuf::from(p)).ok()
        });
    let can_prompt = interactive && std::io::stdin().is_terminal();
    if !can_prompt {
        let why = if interactive {
            "encrypted, and there is no terminal to ask for its passphrase; add it to ssh-agent"
        } else {
            "encrypted, and passphrases are not asked in non-interactive mode; add it to ssh-agent"
        };
        let e = LoadError::Encrypted {
            public,
            why: why.into(),
        };
        return (Err(e), false);
    }
    for _ in 0..3 {
        let prompt = format!("Enter passphrase for key '{}': ", path.display());
        let pass =
            match tokio::task::spawn_blocking(move || rpassword::prompt_password(prompt)).await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    let e = LoadError::Other(format!("passphrase prompt failed: {e}"));
                    return (Err(e), true);
                }
                Err(e) => {
                    let e = LoadError::Other(format!("passphrase prompt failed: {e}"));
                    return (Err(e), true);
                }
            };
        if pass.is_empty() {
            break;
        }
        match russh::keys::decode_secret_key(&text, Some(&pass)) {
            Ok(k) => return (Ok(Arc::new(k)), true),
            Err(e) => eprintln!("Bad passphrase for {} ({e})", path.display()),
        }
    }
    let e = LoadError::Encrypted {
        public,
        why: "encrypted, and no correct passphrase was given".into(),
    };
    (Err(e), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throwaway ed25519 key encrypted with the passphrase "secret" (tests only).
    const ENCRYPTED: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABDfwsBwtt
8Y/rNdkPrz6CPmAAAAEAAAAAEAAAAzAAAAC3NzaC1lZDI1NTE5AAAAIOTkV0cOlHWxZVYk
PtGHwGTI5FijtPxV6+j6ujrwpSZ4AAAAkItrkzMgPNpu54MfM8ZP+LhkeVvLbKnWGTaP7W
ufbRnwTEDcZ5BsGFLip5W/o8UlrXfjyIAsGc/+UfNbdl0fpLvE3StUI95+P5F+dtGFGo4L
pLy66Q6ufKtAUPBQ7R/Bt8iprqxvFrMMjf1C38BHLyZgKTNCdFGuo5Y5lKdDTLFAbGtB7n
Eg6hL8+0AtO9ZZTA==
-----END OPENSSH PRIVATE KEY-----
";
    const ENCRYPTED_PUB: &str =
        "AAAAC3NzaC1lZDI1NTE5AAAAIOTkV0cOlHWxZVYkPtGHwGTI5FijtPxV6+j6ujrwpSZ4";

    #[tokio::test]
    async fn encrypted_key_without_terminal_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id_test");
        std::fs::write(&path, ENCRYPTED).unwrap();
        match load_key(&path, false).await {
            Err(LoadError::Encrypted { public, why }) => {
                assert!(why.contains("not asked in non-interactive mode"), "{why}");
                let expect = russh::keys::parse_public_key_base64(ENCRYPTED_PUB).unwrap();
                assert_eq!(public.unwrap().key_data(), expect.key_data());
            }
            other => panic!("unexpected {other:?}"),
        }
        // The right passphrase decrypts it (what the prompt would feed in).
        let key = russh::keys::decode_secret_key(ENCRYPTED, Some("secret")).unwrap();
        let plain = dir.path().join("id_plain");
        std::fs::write(
            &plain,
            key.to_openssh(russh::keys::ssh_key::LineEnding::LF)
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        assert!(load_key(&plain, false).await.is_ok());
        match load_key(&dir.path().join("missing"), false).await {
            Err(LoadError::Other(why)) => assert!(why.contains("cannot read"), "{why}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
