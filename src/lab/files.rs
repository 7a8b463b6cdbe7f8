//! The lab directory's files: the SSH key pair, written only when they change.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::{PrivateKey, PublicKey};

use crate::error::Failure;

fn io_fail(what: &str, path: &Path, e: std::io::Error) -> Failure {
    Failure::error(format!("cannot {what} {}: {e}", path.display()))
}

/// Write `content` to `path` with `mode` unless it already holds exactly that
/// (then only the mode is fixed). Atomic: temp file in the same directory, then
/// rename. Returns whether the content changed.
pub fn write_if_changed(path: &Path, content: &[u8], mode: u32) -> Result<bool, Failure> {
    if let Ok(old) = std::fs::read(path)
        && old == content
    {
        let meta = std::fs::metadata(path).map_err(|e| io_fail("read", path, e))?;
        if meta.permissions().mode() & 0o7777 != mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| io_fail("set the mode of", path, e))?;
        }
        return Ok(false);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let res = (|| {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(content)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_fail("write", path, e));
    }
    Ok(true)
}

/// Create the lab directory (0700 when new).
pub fn ensure_dir(dir: &Path) -> Result<(), Failure> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_fail("create the lab directory", dir, e))
}

/// The lab's SSH key pair: `DIR/id_ed25519` (0600) and `DIR/id_ed25519.pub`.
/// An existing private key is reused; a new one is generated otherwise.
/// Returns the private key's path and the public key line (`ssh-ed25519 AAAA... comment`).
pub fn ensure_key(dir: &Path, file: &str, comment: &str) -> Result<(PathBuf, String), Failure> {
    let path = dir.join(file);
    let key = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = PrivateKey::from_openssh(text.as_bytes()).map_err(|e| {
                Failure::error(format!(
                    "{} exists but is not an OpenSSH private key ({e}); remove it and run lab up again",
                    path.display()
                ))
            })?;
            if key.is_encrypted() {
                return Err(Failure::error(format!(
                    "{} is passphrase-protected; the lab needs its own unencrypted key: remove it and run lab up again",
                    path.display()
                )));
            }
            // Keep it private even if someone loosened the mode.
            write_if_changed(&path, text.as_bytes(), 0o600)?;
            key
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate(comment)?;
            let pem = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| Failure::error(format!("cannot encode the lab's SSH key: {e}")))?;
            write_if_changed(&path, pem.as_bytes(), 0o600)?;
            key
        }
        Err(e) => return Err(io_fail("read", &path, e)),
    };
    let public = public_line(key.public_key())?;
    write_if_changed(
        &dir.join(format!("{file}.pub")),
        format!("{public}\n").as_bytes(),
        0o644,
    )?;
    Ok((path, public))
}

fn generate(comment: &str) -> Result<PrivateKey, Failure> {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let pair = Ed25519Keypair::from_seed(&seed);
    PrivateKey::new(KeypairData::Ed25519(pair), comment)
        .map_err(|e| Failure::error(format!("cannot make the lab's SSH key: {e}")))
}

fn public_line(key: &PublicKey) -> Result<String, Failure> {
    key.to_openssh()
        .map_err(|e| Failure::error(format!("cannot encode the lab's public key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_generated_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, public) = ensure_key(dir.path(), "id_ed25519", "pgha-lab-demo").unwrap();
        assert!(public.starts_with("ssh-ed25519 AAAA"), "{public}");
        assert!(public.ends_with(" pgha-lab-demo"), "{public}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let pub_file = std::fs::read_to_string(dir.path().join("id_ed25519.pub")).unwrap();
        assert_eq!(pub_file, format!("{public}\n"));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (_, again) = ensure_key(dir.path(), "id_ed25519", "other").unwrap();
        assert_eq!(again, public);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // The key authenticates with pgha's own loader.
        russh::keys::load_secret_key(&path, None).unwrap();
    }

    #[test]
    fn unchanged_files_are_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        assert!(write_if_changed(&p, b"a\n", 0o644).unwrap());
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap());
        assert!(!write_if_changed(&p, b"a\n", 0o644).unwrap());
        let ino2 = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap());
        assert_eq!(ino, ino2);
        assert!(write_if_changed(&p, b"b\n", 0o600).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"b\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn bad_existing_key_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("id_ed25519"), "junk").unwrap();
        let e = ensure_key(dir.path(), "id_ed25519", "c").unwrap_err();
        assert!(
            e.message.contains("not an OpenSSH private key"),
            "{}",
            e.message
        );
    }
}
