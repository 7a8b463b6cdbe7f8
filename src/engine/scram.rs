//! SCRAM-SHA-256 password verifiers, so role passwords are set and checked without
//! the plaintext ever reaching a host or a log: pgha sends PostgreSQL the verifier
//! and compares stored verifiers against the inventory's password locally.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

const ITERATIONS: u32 = 4096;

fn keys(password: &str, salt: &[u8], iterations: u32) -> ([u8; 32], [u8; 32]) {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted);
    let hmac = |key: &[u8], msg: &[u8]| {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
        m.update(msg);
        let out: [u8; 32] = m.finalize().into_bytes().into();
        out
    };
    let client_key = hmac(&salted, b"Client Key");
    let stored: [u8; 32] = Sha256::digest(client_key).into();
    let server = hmac(&salted, b"Server Key");
    (stored, server)
}

/// A new verifier with a random salt, in PostgreSQL's `rolpassword` format.
pub fn verifier(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    let (stored, server) = keys(password, &salt, ITERATIONS);
    format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored),
        B64.encode(server)
    )
}

/// Whether a stored verifier was made from `password`.
pub fn matches(stored_verifier: &str, password: &str) -> bool {
    let parse = || -> Option<bool> {
        let rest = stored_verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys_part) = rest.split_once('$')?;
        let (iter, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys_part.split_once(':')?;
        let iterations: u32 = iter.parse().ok()?;
        let salt = B64.decode(salt).ok()?;
        let (s, v) = keys(password, &salt, iterations);
        Some(B64.decode(stored).ok()? == s && B64.decode(server).ok()? == v)
    };
    parse().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_round_trips() {
        let v = verifier("s3cret");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"));
        assert!(matches(&v, "s3cret"));
        assert!(!matches(&v, "other"));
        assert!(!matches("md5abc", "s3cret"));
    }
}
