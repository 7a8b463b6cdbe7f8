//! The cluster's certificates: a CA pgha creates on the first deploy (or the
//! user's own), and per host a certificate carrying its name and addresses, kept
//! beside the inventory in `<inventory>.pki/` (private keys mode 0600, never
//! printed). Certificates are re-issued when they expire within the renewal window
//! or no longer name the host's addresses. X.509 by rcgen; expiry read with
//! x509-parser.
//!
//! Layer 1 (an edge): imports inventory and probe::tls (the material it hands out);
//! never ops or commands.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::Serialize;

use crate::inventory::{Inventory, Secret};

/// Seconds in a day.
const DAY: u64 = 86_400;

/// One certificate and its key, as PEM.
#[derive(Clone)]
pub struct CertKey {
    pub cert: String,
    pub key: Secret,
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// Seconds since the epoch.
    pub not_after: u64,
    pub names: BTreeSet<String>,
    pub issuer: String,
    pub subject: String,
    /// Whether it names its issuer's key (Authority Key Identifier): strict
    /// verifiers (Python 3.13's default context, OpenSSL's X509_STRICT) refuse a
    /// certificate without it.
    pub authority_key_id: bool,
}

/// The cluster's CA and every host's certificate.
#[derive(Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca_cert: String,
    pub hosts: BTreeMap<String, CertKey>,
    /// pgha's own client certificate (etcd requires client certificates).
    pub client: CertKey,
    /// Certificates issued (or re-issued) by this load, with the reason.
    pub issued: Vec<(String, String)>,
}

impl Pki {
    /// The common name of `host`'s certificate (pgBackRest lets clients in by it).
    pub fn common_name(&self, host: &str) -> Option<String> {
        let info = cert_info(&self.hosts.get(host)?.cert).ok()?;
        info.subject
            .split(',')
            .map(str::trim)
            .find_map(|p| p.strip_prefix("CN="))
            .map(str::to_string)
    }
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .field("hosts", &self.hosts.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// `<dir>/<stem>.pki` for `<dir>/<stem>.yml`.
pub fn pki_dir(inventory: &Path) -> PathBuf {
    let stem = inventory
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "inventory".into());
    inventory
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("{stem}.pki"))
}

/// Parse a PEM certificate's expiry, names (SANs and CN) and issuer.
pub fn cert_info(pem: &str) -> Result<CertInfo> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    let cert = p
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    let mut names = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    names.insert(d.to_string());
                }
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string(),
                        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string(),
                        _ => continue,
                    };
                    names.insert(ip);
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        not_after: cert.validity().not_after.timestamp().max(0) as u64,
        names,
        issuer: cert.issuer().to_string(),
        subject: cert.subject().to_string(),
        authority_key_id: cert.extensions().iter().any(|e| {
            matches!(
                e.parsed_extension(),
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a)
                    if a.key_identifier.is_some()
            )
        }),
    })
}

/// Whether the CA's key signed `cert_pem`. A name is not enough: a CA replaced
/// under the same name issues certificates with the same issuer that no longer
/// chain to it. Ok(None): an algorithm this build cannot check (a CA of the
/// user's own); the certificate is then judged by its issuer's name, rather than
/// re-issued on every run.
pub fn signed_by(cert_pem: &str, ca_pem: &str) -> Result<Option<bool>> {
    let (_, cert) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    let (_, ca) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("the CA certificate: {e}"))?;
    let cert = cert
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    let ca = ca
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("the CA certificate: {e}"))?;
    match cert.verify_signature(Some(ca.public_key())) {
        Ok(()) => Ok(Some(true)),
        Err(x509_parser::error::X509Error::SignatureUnsupportedAlgorithm) => Ok(None),
        Err(_) => Ok(Some(false)),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn write_private(path: &Path, content: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(content.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

fn write_public(path: &Path, content: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, content).with_context(|| format!("write {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
    fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

fn offset(secs: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Issue a CA (10 years).
fn new_ca(cluster: &str) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("pgha CA {cluster}"));
    dn.push(DnType::OrganizationName, "pgha");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let t = now();
    p.not_before = offset(t.saturating_sub(DAY));
    p.not_after = offset(t + 3650 * DAY);
    let cert = p.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Issue a certificate for `cn` with these names (DNS names and IP addresses),
/// usable as server and client, valid for `days`.
fn issue(
    ca_cert: &str,
    ca_key: &str,
    cn: &str,
    names: &BTreeSet<String>,
    days: u64,
) -> Result<(String, String)> {
    let ca_kp = KeyPair::from_pem(ca_key).context("the CA key")?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert, ca_kp).context("the CA certificate")?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "pgha");
    p.distinguished_name = dn;
    p.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(n.as_str().try_into()?)),
        })
        .collect::<Result<Vec<_>, rcgen::Error>>()?;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let t = now();
    p.not_before = offset(t.saturating_sub(3600));
    p.not_after = offset(t + days * DAY);
    p.use_authority_key_identifier_extension = true;
    let cert = p.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Why a stored certificate must be re-issued (None: keep it).
pub fn reissue_reason(
    info: &CertInfo,
    want: &BTreeSet<String>,
    ca_subject: &str,
    now: u64,
    renew_before_days: u64,
) -> Option<String> {
    if info.issuer != ca_subject {
        return Some("issued by another CA".into());
    }
    if !want.is_subset(&info.names) {
        let missing: Vec<&String> = want.difference(&info.names).collect();
        return Some(format!(
            "does not name {}",
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if info.not_after <= now + renew_before_days * DAY {
        let left = info.not_after.saturating_sub(now) / DAY;
        return Some(format!(
            "expires in {left} day(s), within the {renew_before_days}-day renewal window"
        ));
    }
    None
}

/// Why a stored certificate must be re-issued (None: keep it): unreadable, not
/// signed by the CA's key, or one of `reissue_reason`'s.
pub fn stored_reason(
    cert_pem: &str,
    ca_pem: &str,
    ca_subject: &str,
    want: &BTreeSet<String>,
    now: u64,
    renew_before_days: u64,
) -> Option<String> {
    let info = match cert_info(cert_pem) {
        Ok(info) => info,
        Err(e) => return Some(format!("unreadable: {e}")),
    };
    if let Some(why) = reissue_reason(&info, want, ca_subject, now, renew_before_days) {
        return Some(why);
    }
    if !info.authority_key_id {
        return Some(
            "names no Authority Key Identifier (strict TLS clients such as Python 3.13's refuse it)"
                .into(),
        );
    }
    match signed_by(cert_pem, ca_pem) {
        Ok(Some(true)) => None,
        Ok(Some(false)) => {
            Some("not signed by the current CA's key (a CA replaced under the same name)".into())
        }
        Ok(None) => {
            tracing::warn!("cannot check the CA's signature algorithm: judged by issuer name");
            None
        }
        Err(e) => Some(format!("unreadable: {e}")),
    }
}

/// Days before the CA's expiry from which `status` and `deploy` warn: a new CA
/// means new certificates on every host, which wants planning well ahead of the
/// hosts' own renewal window.
pub const CA_WARN_DAYS: i64 = 365;

/// Whole days from `now` to `not_after` (negative once past).
pub fn days_between(now: u64, not_after: u64) -> i64 {
    (not_after as i64 - now as i64).div_euclid(DAY as i64)
}

/// RFC 3339 of seconds since the epoch.
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// The warning for a CA that expires within `CA_WARN_DAYS` of `now` (or has).
pub fn ca_warning(not_after: u64, now: u64) -> Option<String> {
    let days = days_between(now, not_after);
    let when = rfc3339(not_after);
    if days < 0 {
        Some(format!(
            "the cluster CA expired on {when}: no certificate it issued verifies; replace it \
             (a new CA in tls_ca_cert_file, or a new <inventory>.pki/ca.crt and ca.key) and run \
             `pgha deploy`, which re-issues every host's certificate from it"
        ))
    } else if days <= CA_WARN_DAYS {
        Some(format!(
            "the cluster CA expires in {days} day(s), on {when}: replace it before then (a new \
             CA in tls_ca_cert_file, or a new <inventory>.pki/ca.crt and ca.key); `pgha deploy` \
             then re-issues every host's certificate from it"
        ))
    } else {
        None
    }
}

impl Pki {
    /// What the CA certificate says about itself.
    pub fn ca_info(&self) -> Result<CertInfo> {
        cert_info(&self.ca_cert)
    }

    /// The warning when the CA expires within `CA_WARN_DAYS`.
    pub fn ca_warning(&self) -> Option<String> {
        ca_warning(self.ca_info().ok()?.not_after, now())
    }

    /// What pgha's clients need: the CA to verify servers, its own client identity.
    pub fn tls(&self) -> crate::probe::tls::Tls {
        crate::probe::tls::Tls {
            ca_pem: self.ca_cert.clone(),
            client_cert_pem: self.client.cert.clone(),
            client_key_pem: self.client.key.expose().to_string(),
        }
    }
}

/// The names a host's certificate carries: its name, its address, localhost, and
/// for db hosts the routers' names and addresses (a client connecting to a router
/// with `sslmode=verify-full` checks the router's address against the server's
/// certificate, which HAProxy passes through).
pub fn host_names(inv: &Inventory, host: &str) -> BTreeSet<String> {
    let mut n = BTreeSet::new();
    if let Some(h) = inv.host(host) {
        n.insert(h.name.clone());
        n.insert(h.ip.to_string());
        n.insert("localhost".into());
        n.insert("127.0.0.1".into());
        if h.in_group("db") {
            for r in inv.router_hosts() {
                n.insert(r.name.clone());
                n.insert(r.ip.to_string());
            }
        }
    }
    n
}

/// Load the cluster's PKI, creating or renewing what is needed when `write` (a
/// deploy); otherwise what is stored must be there and valid.
pub fn load(inv: &Inventory, write: bool) -> Result<Pki> {
    let dir = pki_dir(&inv.path);
    if write && !dir.exists() {
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    }
    let mut issued = Vec::new();
    let (ca_cert, ca_key) = load_ca(inv, &dir, write, &mut issued)?;
    let ca_dn = {
        let (_, p) = x509_parser::pem::parse_x509_pem(ca_cert.as_bytes())
            .map_err(|e| anyhow::anyhow!("the CA certificate: {e}"))?;
        p.parse_x509()
            .map_err(|e| anyhow::anyhow!("the CA certificate: {e}"))?
            .subject()
            .to_string()
    };
    let mut store = Store {
        dir: &dir,
        ca_cert: &ca_cert,
        ca_key: ca_key.as_deref(),
        ca_dn: &ca_dn,
        write,
        now: now(),
        renew_before_days: inv.cluster.tls_renew_before_days,
        validity_days: inv.cluster.tls_cert_validity_days,
        issued: &mut issued,
    };
    let mut hosts = BTreeMap::new();
    for h in &inv.hosts {
        let user = match (&h.tls_cert_file, &h.tls_key_file) {
            (Some(c), Some(k)) => Some((c, k)),
            _ => None,
        };
        let file = format!("host-{}", h.name);
        let ck = store.cert_key(&h.name, &file, host_names(inv, &h.name), user)?;
        hosts.insert(h.name.clone(), ck);
    }
    let pgha = BTreeSet::from(["pgha".to_string()]);
    let client = store.cert_key("pgha", "client-pgha", pgha, None)?;
    Ok(Pki {
        dir,
        ca_cert,
        hosts,
        client,
        issued,
    })
}

/// The CA: the user's own (tls_ca_cert_file, tls_ca_key_file), or pgha's in `dir`
/// (created when `write`).
fn load_ca(
    inv: &Inventory,
    dir: &Path,
    write: bool,
    issued: &mut Vec<(String, String)>,
) -> Result<(String, Option<String>)> {
    let c = &inv.cluster;
    let (ca_cert_path, ca_key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
    match (&c.tls_ca_cert_file, &c.tls_ca_key_file) {
        (Some(cert), key) => {
            let cert_pem = fs::read_to_string(cert)
                .with_context(|| format!("tls_ca_cert_file {}", cert.display()))?;
            let key_pem = match key {
                Some(k) => Some(
                    fs::read_to_string(k)
                        .with_context(|| format!("tls_ca_key_file {}", k.display()))?,
                ),
                None => None,
            };
            Ok((cert_pem, key_pem))
        }
        (None, _) => match (read(&ca_cert_path), read(&ca_key_path)) {
            (Some(cert), Some(key)) => Ok((cert, Some(key))),
            _ if write => {
                let (cert, key) = new_ca(&c.cluster_name)?;
                write_private(&ca_key_path, &key)?;
                write_public(&ca_cert_path, &cert)?;
                issued.push(("CA".to_string(), "created".to_string()));
                Ok((cert, Some(key)))
            }
            _ => bail!(
                "no cluster CA in {} (the cluster's certificates are created by `pgha deploy`)",
                dir.display()
            ),
        },
    }
}

/// Where certificates are kept and how they are judged and issued during a load.
struct Store<'x> {
    dir: &'x Path,
    ca_cert: &'x str,
    ca_key: Option<&'x str>,
    ca_dn: &'x str,
    write: bool,
    now: u64,
    renew_before_days: u64,
    validity_days: u64,
    issued: &'x mut Vec<(String, String)>,
}

impl Store<'_> {
    /// The certificate and key of `label`: the user's own files, else the stored
    /// ones when they still hold (signed by the CA, naming `names`, not expiring),
    /// else newly issued (only when writing).
    fn cert_key(
        &mut self,
        label: &str,
        file: &str,
        names: BTreeSet<String>,
        user: Option<(&PathBuf, &PathBuf)>,
    ) -> Result<CertKey> {
        if let Some((cert, key)) = user {
            return Ok(CertKey {
                cert: fs::read_to_string(cert)
                    .with_context(|| format!("{label}: tls_cert_file {}", cert.display()))?,
                key: Secret::new(
                    fs::read_to_string(key)
                        .with_context(|| format!("{label}: tls_key_file {}", key.display()))?,
                ),
            });
        }
        let cert_path = self.dir.join(format!("{file}.crt"));
        let key_path = self.dir.join(format!("{file}.key"));
        if let (Some(cert), Some(key)) = (read(&cert_path), read(&key_path)) {
            let why = stored_reason(
                &cert,
                self.ca_cert,
                self.ca_dn,
                &names,
                self.now,
                self.renew_before_days,
            );
            match why {
                None => {
                    return Ok(CertKey {
                        cert,
                        key: Secret::new(key),
                    });
                }
                Some(why) if !self.write => {
                    // Not renewed here; deploy will.
                    tracing::warn!("certificate of {label} {why}: run `pgha deploy` to renew it");
                    return Ok(CertKey {
                        cert,
                        key: Secret::new(key),
                    });
                }
                Some(why) => self.issued.push((label.to_string(), why)),
            }
        } else if !self.write {
            bail!(
                "no certificate for {label} in {} (run `pgha deploy`)",
                self.dir.display()
            );
        } else {
            self.issued.push((label.to_string(), "new".to_string()));
        }
        let Some(ca_key) = self.ca_key else {
            bail!(
                "{label} needs a certificate and the CA's key is not given (tls_ca_key_file): supply tls_cert_file/tls_key_file for it"
            );
        };
        let (cert, key) = issue(self.ca_cert, ca_key, label, &names, self.validity_days)?;
        write_private(&key_path, &key)?;
        write_public(&cert_path, &cert)?;
        Ok(CertKey {
            cert,
            key: Secret::new(key),
        })
    }
}

/// Days until a certificate expires (negative when expired).
pub fn days_left(pem: &str) -> Option<i64> {
    let info = cert_info(pem).ok()?;
    Some((info.not_after as i64 - now() as i64) / DAY as i64)
}

/// The duration until a certificate expires.
pub fn until_expiry(pem: &str) -> Option<Duration> {
    let info = cert_info(pem).ok()?;
    Some(Duration::from_secs(info.not_after.saturating_sub(now())))
}

/// `<dir>/prod.yml`: three db hosts and a router (also the backup repository's
/// host), TLS on by default; for tests that need the certificates created.
#[cfg(test)]
pub(crate) fn test_inventory(dir: &Path) -> PathBuf {
    let path = dir.join("prod.yml");
    std::fs::write(
        &path,
        "all:\n  children:\n    db:\n      hosts:\n        db1: {ansible_host: 10.9.0.11}\n        db2: {ansible_host: 10.9.0.12}\n        db3: {ansible_host: 10.9.0.13}\n    router:\n      hosts:\n        router1: {ansible_host: 10.9.0.21}\n    backup:\n      hosts:\n        router1:\n",
    )
    .unwrap();
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_the_host_and_chain_to_the_ca() {
        let (ca, ca_key) = new_ca("t").unwrap();
        let names: BTreeSet<String> = ["db1", "10.0.0.11", "127.0.0.1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (cert, key) = issue(&ca, &ca_key, "db1", &names, 30).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let info = cert_info(&cert).unwrap();
        assert_eq!(info.names, names);
        // Its Authority Key Identifier is the CA's Subject Key Identifier.
        let key_ids = |pem: &str| {
            let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
            let c = p.parse_x509().unwrap();
            let mut ids = (None, None);
            for e in c.extensions() {
                match e.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                        ids.0 = Some(k.0.to_vec())
                    }
                    x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                        ids.1 = a.key_identifier.as_ref().map(|k| k.0.to_vec())
                    }
                    _ => {}
                }
            }
            ids
        };
        assert!(info.authority_key_id);
        let (ca_ski, _) = key_ids(&ca);
        let (_, aki) = key_ids(&cert);
        assert!(ca_ski.is_some(), "the CA names its key");
        assert_eq!(aki, ca_ski, "the certificate names the CA's key");
        let ca_dn = {
            let (_, p) = x509_parser::pem::parse_x509_pem(ca.as_bytes()).unwrap();
            p.parse_x509().unwrap().subject().to_string()
        };
        assert_eq!(info.issuer, ca_dn);
        let left = days_left(&cert).unwrap();
        assert!((29..=30).contains(&left), "{left}");
        assert_eq!(reissue_reason(&info, &names, &ca_dn, now(), 7), None);
        let soon = reissue_reason(&info, &names, &ca_dn, now(), 45).unwrap();
        assert!(soon.contains("renewal window"), "{soon}");
        let mut more = names.clone();
        more.insert("10.0.0.99".into());
        assert!(
            reissue_reason(&info, &more, &ca_dn, now(), 7)
                .unwrap()
                .contains("10.0.0.99")
        );
        assert!(
            reissue_reason(&info, &names, "CN=other", now(), 7)
                .unwrap()
                .contains("another CA")
        );
    }

    #[test]
    fn a_certificate_without_an_authority_key_identifier_is_reissued() {
        let (ca, ca_key) = new_ca("t").unwrap();
        let names: BTreeSet<String> = ["db1".to_string()].into();
        // Issued as pgha did before: everything else in order.
        let issuer = Issuer::from_ca_cert_pem(&ca, KeyPair::from_pem(&ca_key).unwrap()).unwrap();
        let mut p = CertificateParams::new(vec!["db1".to_string()]).unwrap();
        p.not_after = offset(now() + 365 * DAY);
        let old = p
            .signed_by(&KeyPair::generate().unwrap(), &issuer)
            .unwrap()
            .pem();
        assert!(!cert_info(&old).unwrap().authority_key_id);
        let why = stored_reason(&old, &ca, &subject(&ca), &names, now(), 30).unwrap();
        assert!(why.contains("Authority Key Identifier"), "{why}");
    }

    fn subject(pem: &str) -> String {
        cert_info(pem).unwrap().subject
    }

    #[test]
    fn a_certificate_of_a_replaced_ca_with_the_same_name_is_reissued() {
        let (ca1, ca1_key) = new_ca("t").unwrap();
        let (ca2, _) = new_ca("t").unwrap();
        assert_eq!(subject(&ca1), subject(&ca2), "same name, another key");
        assert_eq!(subject(&ca1), "CN=pgha CA t, O=pgha");
        let names: BTreeSet<String> = ["db1".to_string()].into();
        let (cert, _) = issue(&ca1, &ca1_key, "db1", &names, 365).unwrap();
        // The name alone says nothing is wrong (what was checked before).
        let info = cert_info(&cert).unwrap();
        assert_eq!(
            reissue_reason(&info, &names, &subject(&ca2), now(), 30),
            None
        );
        let why = stored_reason(&cert, &ca2, &subject(&ca2), &names, now(), 30).unwrap();
        assert!(why.contains("not signed by the current CA"), "{why}");
        assert_eq!(
            stored_reason(&cert, &ca1, &subject(&ca1), &names, now(), 30),
            None,
            "one issued by the current CA is kept"
        );
        assert_eq!(signed_by(&cert, &ca1).unwrap(), Some(true));
        assert_eq!(signed_by(&cert, &ca2).unwrap(), Some(false));
    }

    #[test]
    fn load_reissues_every_certificate_after_the_ca_is_replaced_under_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = test_inventory(dir.path());
        let write = crate::inventory::LoadOptions {
            write_secrets: true,
        };
        let inv = crate::inventory::load(&path, &write).unwrap();
        let first = load(&inv, true).unwrap();
        let (ca2, ca2_key) = new_ca(&inv.cluster.cluster_name).unwrap();
        assert_eq!(subject(&ca2), subject(&first.ca_cert));
        write_private(&first.dir.join("ca.key"), &ca2_key).unwrap();
        write_public(&first.dir.join("ca.crt"), &ca2).unwrap();
        let second = load(&crate::inventory::load(&path, &write).unwrap(), true).unwrap();
        let reissued: BTreeSet<&str> = second.issued.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            reissued,
            BTreeSet::from(["db1", "db2", "db3", "router1", "pgha"])
        );
        assert!(
            second
                .issued
                .iter()
                .all(|(_, why)| why.contains("not signed")),
            "{:?}",
            second.issued
        );
        for ck in second.hosts.values().chain([&second.client]) {
            assert_eq!(signed_by(&ck.cert, &ca2).unwrap(), Some(true));
        }
        let third = load(&crate::inventory::load(&path, &write).unwrap(), true).unwrap();
        assert!(third.issued.is_empty(), "kept: {:?}", third.issued);
    }

    #[test]
    fn the_ca_is_warned_about_a_year_ahead() {
        let t = 1_900_000_000;
        assert_eq!(ca_warning(t + 366 * DAY, t), None);
        let w = ca_warning(t + 365 * DAY, t).unwrap();
        assert!(
            w.contains("expires in 365 day(s)") && w.contains("pgha deploy"),
            "{w}"
        );
        let w = ca_warning(t - DAY, t).unwrap();
        assert!(w.contains("expired on"), "{w}");
        // A CA pgha creates is good for ten years: no warning.
        let (ca, ca_key) = new_ca("t").unwrap();
        let p = Pki {
            dir: PathBuf::new(),
            ca_cert: ca.clone(),
            hosts: BTreeMap::new(),
            client: CertKey {
                cert: ca,
                key: Secret::new(ca_key),
            },
            issued: vec![],
        };
        assert_eq!(p.ca_warning(), None);
        assert!(p.ca_info().unwrap().not_after > now() + 3600 * DAY);
    }
}
