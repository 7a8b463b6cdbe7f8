//! What pgBackRest reports, read into plain data: `info --output=json` (backups,
//! archived WAL, a backup in progress) and the restore test's `PGHA-VERIFY` line.
//! Pure: no I/O, unit-tested.

use serde::Serialize;
use serde_json::Value as Json;

/// One backup in the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupSet {
    pub label: String,
    /// full, diff or incr.
    #[serde(rename = "type")]
    pub kind: String,
    /// Seconds since the epoch.
    pub start: i64,
    pub stop: i64,
    /// The database's size, and what the backup takes in the repository.
    pub size: u64,
    pub repo_size: u64,
    /// The WAL the backup needs to be consistent.
    pub wal_start: String,
    pub wal_stop: String,
    /// Where the backup became consistent (`X/Y`), when pgBackRest says.
    pub lsn_stop: Option<String>,
    /// The backup it depends on (diff, incr).
    pub prior: Option<String>,
    /// pgBackRest found a page checksum error while copying.
    pub error: bool,
}

/// The repository's view of one stanza.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RepoInfo {
    /// 0: ok; pgBackRest's status code otherwise (1 missing stanza path, 2 no
    /// valid backups, 3 missing stanza data, ...).
    pub status_code: i64,
    pub status_message: String,
    /// Oldest first.
    pub backups: Vec<BackupSet>,
    /// The oldest and newest WAL segment archived (any timeline).
    pub wal_min: Option<String>,
    pub wal_max: Option<String>,
    pub cipher: String,
    /// A backup is running: (bytes copied, bytes in all) when pgBackRest says.
    pub running: Option<(u64, u64)>,
}

impl RepoInfo {
    pub fn newest(&self) -> Option<&BackupSet> {
        self.backups.last()
    }
    /// The stanza exists (it may hold no backup yet).
    pub fn stanza_exists(&self) -> bool {
        matches!(self.status_code, 0 | 2)
    }
    /// The repository has no such stanza yet (1: missing stanza path, 3: missing
    /// stanza data): `stanza-create` makes it. Any other status is an error to report.
    pub fn stanza_missing(&self) -> bool {
        matches!(self.status_code, 1 | 3)
    }
}

/// The stanza's status, with each repository's own message when it says more
/// ("other" alone at the top; the cause, e.g. a CryptoError, under `repo`).
fn status_message(s: &Json) -> String {
    let top = s["status"]["message"].as_str().unwrap_or_default().trim();
    let detail: Vec<String> = s["repo"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|r| r["status"]["code"].as_i64().unwrap_or(0) != 0)
                .filter_map(|r| r["status"]["message"].as_str())
                .map(|m| m.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|m| m != top)
                .collect()
        })
        .unwrap_or_default();
    if detail.is_empty() {
        top.to_string()
    } else {
        format!("{top}: {}", detail.join("; "))
    }
}

/// Parse `pgbackrest --stanza=S --output=json info` for `stanza`.
pub fn parse_info(text: &str, stanza: &str) -> Result<RepoInfo, String> {
    // pgBackRest puts an error's message into the JSON as it is, line breaks
    // included (a wrong cipher pass): outside strings they are plain whitespace.
    let text: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let v: Json = serde_json::from_str(&text)
        .map_err(|e| format!("pgBackRest's info is not JSON ({e}): {}", first_line(&text)))?;
    let s = v
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == stanza))
        .ok_or_else(|| format!("pgBackRest's info has no stanza {stanza}"))?;
    let num = |j: &Json| j.as_u64().unwrap_or(0);
    let text_of = |j: &Json| j.as_str().unwrap_or_default().to_string();
    let mut backups: Vec<BackupSet> = s["backup"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| BackupSet {
                    label: text_of(&b["label"]),
                    kind: text_of(&b["type"]),
                    start: b["timestamp"]["start"].as_i64().unwrap_or(0),
                    stop: b["timestamp"]["stop"].as_i64().unwrap_or(0),
                    size: num(&b["info"]["size"]),
                    repo_size: num(&b["info"]["repository"]["delta"]),
                    wal_start: text_of(&b["archive"]["start"]),
                    wal_stop: text_of(&b["archive"]["stop"]),
                    lsn_stop: b["lsn"]["stop"].as_str().map(str::to_string),
                    prior: b["prior"].as_str().map(str::to_string),
                    error: b["error"].as_bool().unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default();
    backups.sort_by_key(|b| (b.stop, b.label.clone()));
    let archives = s["archive"].as_array().cloned().unwrap_or_default();
    let wal_min = archives
        .iter()
        .filter_map(|a| a["min"].as_str())
        .min()
        .map(str::to_string);
    let wal_max = archives
        .iter()
        .filter_map(|a| a["max"].as_str())
        .max()
        .map(str::to_string);
    let lock = &s["status"]["lock"]["backup"];
    let running = (lock["held"].as_bool() == Some(true))
        .then(|| (num(&lock["size-cplt"]), num(&lock["size"])));
    Ok(RepoInfo {
        status_code: s["status"]["code"].as_i64().unwrap_or(-1),
        status_message: status_message(s),
        backups,
        wal_min,
        wal_max,
        cipher: text_of(&s["cipher"]),
        running,
    })
}

/// The restore test's result (`PGHA-VERIFY {json}`, the script's last line).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Verified {
    pub status: String,
    #[serde(default)]
    pub set: String,
    #[serde(default)]
    pub step: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub databases: u64,
    #[serde(default)]
    pub tables: u64,
    #[serde(default)]
    pub rows: u64,
    #[serde(default)]
    pub restored_bytes: u64,
    #[serde(default)]
    pub seconds: u64,
}

impl Verified {
    pub fn ok(&self) -> bool {
        self.status == "ok"
    }
}

pub const VERIFY_MARK: &str = "PGHA-VERIFY ";

/// The result line of the restore test's output.
pub fn parse_verified(out: &str) -> Result<Verified, String> {
    let line = out
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(VERIFY_MARK))
        .ok_or_else(|| format!("the restore test printed no result: {}", last_lines(out)))?;
    serde_json::from_str(line)
        .map_err(|e| format!("the restore test's result does not parse ({e}): {line}"))
}

/// A backup that failed only because the WAL it needs was not archived in time
/// (pgBackRest's error 082, after archive-timeout).
pub fn archive_lagged(message: &str) -> bool {
    message.contains("ERROR: [082]")
}

/// pgBackRest's error lines (`ERROR: [code]: ...`) of an output, else its last
/// lines; with what to do when pgha recognises the cause.
pub fn errors(out: &str) -> String {
    let errs: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("ERROR: [") || l.starts_with("ERROR"))
        .collect();
    // Warnings say why an error happened (error 056 "unable to find primary
    // cluster" is preceded by what each database host answered): after the error.
    let warns = out.lines().map(str::trim).filter(|l| l.contains("WARN: "));
    let text = if errs.is_empty() {
        last_lines(out)
    } else {
        errs.into_iter().chain(warns).collect::<Vec<_>>().join("; ")
    };
    // Decrypted noise quoted in a message stays out of it.
    let text: String = text
        .split('\u{FFFD}')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(600)
        .collect();
    match hint(out) {
        Some(h) => format!("{text} ({h})"),
        None => text,
    }
}

/// What to do about the causes pgha recognises in pgBackRest's output.
fn hint(out: &str) -> Option<&'static str> {
    // A wrong pass decrypts an info file into noise: pgBackRest then reports a
    // CryptoError, or a FormatError on what it takes for the file's text.
    let noise = out.contains("FormatError") && out.contains("unable to load info file");
    if out.contains("CryptoError") || out.contains("bad decrypt") || noise {
        Some(
            "the repository does not open with this cipher pass: `backup_cipher_pass` must be the one \
             the repository was created with (in the secrets file, or `backup_cipher_pass_file`)",
        )
    } else if out.contains("HTTP request failed with 403") {
        Some("the S3 server refused the keys: check `backup_s3_key` and `backup_s3_key_secret`")
    } else if out.contains("HostConnectError") {
        Some(
            "a host or the S3 endpoint did not answer: check the addresses and ports \
             (`backup_port`, `backup_s3_endpoint`, `backup_s3_port`) and that the server runs",
        )
    } else {
        None
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect()
}

fn last_lines(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(3)..];
    let t = tail.join(" | ");
    if t.is_empty() {
        "(no output)".into()
    } else {
        t
    }
}

/// Bytes for people: 1.5 GiB, 320 MiB, 12 KiB.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v >= 100.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A duration for people: 45s, 12m, 3h, 2d 4h.
pub fn human_age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// UTC time of a unix timestamp, RFC 3339 (`2026-12-02T09:30:00Z`).
pub fn utc(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_causes_say_what_to_do() {
        let wrong_pass = "P00  ERROR: [095]: unable to load info file '/pgha/repo/archive/demo/archive.info' \
            or '/pgha/repo/archive/demo/archive.info.copy':\n    CryptoError: unable to flush EVP_CipherFinal_ex: [101077092] bad decrypt";
        let e = errors(wrong_pass);
        assert!(e.starts_with("P00  ERROR: [095]"), "{e}");
        assert!(e.contains("`backup_cipher_pass` must be the one"), "{e}");
        let noise = "other: [FormatError] unable to load info file '/r/backup/demo/backup.info' or \
            '/r/backup/demo/backup.info.copy': FormatError: key/value found outside of section at line 1: -\u{FFFD}Q\u{FFFD}";
        let e = errors(noise);
        assert!(e.contains("`backup_cipher_pass` must be the one"), "{e}");
        assert!(!e.contains('\u{FFFD}'), "{e}");
        let refused = "P00  ERROR: [049]: HostConnectError: unable to connect to '10.0.0.21:9000 (10.0.0.21)': [111] Connection refused";
        assert!(errors(refused).contains("`backup_s3_endpoint`"));
        assert!(!errors("P00  ERROR: [055]: unable to load info file").contains("("));
    }

    const INFO: &str = r#"[{"archive":[{"database":{"id":1,"repo-key":1},"id":"17-1",
      "max":"000000010000000000000007","min":"000000010000000000000003"}],
      "backup":[
        {"archive":{"start":"000000010000000000000006","stop":"000000010000000000000006"},
         "error":false,"info":{"delta":100,"repository":{"delta":40,"size":40},"size":100},
         "label":"20261202-101500F_20261202-111500D","prior":"20261202-101500F",
         "timestamp":{"start":1764674100,"stop":1764674110},"type":"diff"},
        {"archive":{"start":"000000010000000000000003","stop":"000000010000000000000003"},
         "error":false,"info":{"delta":2000,"repository":{"delta":500,"size":500},"size":2000},
         "label":"20261202-101500F","prior":null,
         "timestamp":{"start":1764670500,"stop":1764670520},"type":"full"}],
      "cipher":"aes-256-cbc","name":"demo",
      "status":{"code":0,"lock":{"backup":{"held":true,"size":3000,"size-cplt":1000}},"message":"ok"}}]"#;

    #[test]
    fn info_is_read_oldest_first() {
        let i = parse_info(INFO, "demo").unwrap();
        assert_eq!(i.backups.len(), 2);
        assert_eq!(i.backups[0].kind, "full");
        assert_eq!(i.newest().unwrap().kind, "diff");
        assert_eq!(
            i.newest().unwrap().prior.as_deref(),
            Some("20261202-101500F")
        );
        assert_eq!(i.backups[0].repo_size, 500);
        assert_eq!(i.wal_max.as_deref(), Some("000000010000000000000007"));
        assert_eq!(i.running, Some((1000, 3000)));
        assert!(i.stanza_exists());
        assert!(
            parse_info(INFO, "other")
                .unwrap_err()
                .contains("no stanza other")
        );
        assert!(
            parse_info("ERROR: [055]: x", "demo")
                .unwrap_err()
                .contains("not JSON")
        );
        let missing = r#"[{"archive":[],"backup":[],"cipher":"none","name":"demo",
          "status":{"code":1,"lock":{"backup":{"held":false}},"message":"missing stanza path"}}]"#;
        let m = parse_info(missing, "demo").unwrap();
        assert!(!m.stanza_exists() && m.newest().is_none() && m.running.is_none());
        assert!(m.stanza_missing());
        let wrong_pass = "[{\"archive\":[],\"backup\":[],\"cipher\":\"aes-256-cbc\",\"name\":\"demo\",\"repo\":[{\"cipher\":\"aes-256-cbc\",\"key\":1,\"status\":{\"code\":99,\"message\":\"[CryptoError] unable to flush EVP_CipherFinal_ex:\n            [101077092] bad decrypt\"}}],\"status\":{\"code\":99,\"lock\":{\"backup\":{\"held\":false}},\"message\":\"other\"}}]";
        let w = parse_info(wrong_pass, "demo").unwrap();
        assert!(!w.stanza_exists() && !w.stanza_missing());
        assert_eq!(
            w.status_message,
            "other: [CryptoError] unable to flush EVP_CipherFinal_ex: [101077092] bad decrypt"
        );
        assert!(errors(&w.status_message).contains("`backup_cipher_pass` must be the one"));
    }

    #[test]
    fn verify_result_and_errors() {
        let ok = "restoring\nPGHA-VERIFY {\"status\":\"ok\",\"set\":\"X\",\"databases\":2,\"tables\":3,\"rows\":10,\"restored_bytes\":5,\"seconds\":4}\n";
        let v = parse_verified(ok).unwrap();
        assert!(v.ok() && v.rows == 10 && v.tables == 3);
        let bad = "PGHA-VERIFY {\"status\":\"error\",\"step\":\"restore\",\"set\":\"X\",\"message\":\"checksum\",\"seconds\":1}";
        let v = parse_verified(bad).unwrap();
        assert!(!v.ok());
        assert_eq!(v.step.as_deref(), Some("restore"));
        assert!(parse_verified("boom\n").unwrap_err().contains("boom"));
        assert_eq!(
            errors("INFO: x\nERROR: [082]: WAL segment was not archived\n"),
            "ERROR: [082]: WAL segment was not archived"
        );
        assert!(archive_lagged(
            "full backup on router1 failed: 2026-12-04 11:45:57.772 P00  ERROR: [082]: WAL segment 000000010000000000000005 was not archived before the 60000ms timeout"
        ));
        assert!(!archive_lagged(
            "full backup on router1 failed: P00  ERROR: [056]: unable to find primary cluster"
        ));
        assert_eq!(
            errors(
                "P00   WARN: unable to check pg1: [DbConnectError] connection refused\n\
                 P00  ERROR: [056]: unable to find primary cluster - cannot proceed\n"
            ),
            "P00  ERROR: [056]: unable to find primary cluster - cannot proceed; \
             P00   WARN: unable to check pg1: [DbConnectError] connection refused"
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(300 * 1024 * 1024), "300 MiB");
        assert_eq!(human_age(30), "30s");
        assert_eq!(human_age(3 * 3600), "3h");
        assert_eq!(human_age(2 * 86_400 + 3600), "2d 1h");
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
    }
}
