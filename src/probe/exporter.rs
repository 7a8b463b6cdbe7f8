//! postgres_exporter's view of its PostgreSQL: the `pg_up` metric.

use super::{Net, PROBE_TIMEOUT};

/// `pg_up` of an exporter's `/metrics` (Err: no answer, or no such metric).
pub async fn pg_up(net: &Net, url: &str) -> Result<bool, String> {
    let text = net
        .get(url, PROBE_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    parse_pg_up(&text)
}

fn parse_pg_up(text: &str) -> Result<bool, String> {
    text.lines()
        .find_map(|l| l.strip_prefix("pg_up "))
        .map(|v| v.trim() == "1")
        .ok_or_else(|| "no pg_up metric".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_up_reads_the_metric() {
        assert_eq!(parse_pg_up("# HELP pg_up x\npg_up 1\n"), Ok(true));
        assert_eq!(parse_pg_up("pg_up 0\n"), Ok(false));
        assert!(parse_pg_up("pg_upx 1\n").is_err());
    }
}
