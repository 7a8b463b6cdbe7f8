//! Partial partitions of lab hosts as data: the nftables ruleset that cuts a host
//! off from some addresses both ways, and reading back what a host is cut from.

use std::time::Duration;

use serde_json::Value;

use crate::docker;

/// The name `lab partition --from` gives this machine (the lab network's gateway).
pub const CONTROLLER: &str = "controller";
/// The nftables table a partial partition lives in, on the cut host.
pub(super) const CUT_TABLE: &str = "inet pgha_lab_cut";

/// The addresses a host is cut off from (its nftables table), empty when none.
pub(super) async fn read_cut(container: &str) -> Vec<String> {
    let script = format!("nft -j list table {CUT_TABLE} 2>/dev/null || true");
    let Ok(out) = docker::exec_sh(container, &script, &[], Duration::from_secs(10)).await else {
        return Vec::new();
    };
    cut_addresses(&out.stdout)
}

/// The addresses of the output chain's drop rule in `nft -j list table` output. Pure.
fn cut_addresses(json: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<Value>(json) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let rule = &item["rule"];
        if rule["chain"] != "output" {
            continue;
        }
        for e in rule["expr"].as_array().into_iter().flatten() {
            let right = &e["match"]["right"];
            let set = right["set"]
                .as_array()
                .cloned()
                .unwrap_or_else(|| vec![right.clone()]);
            out.extend(set.iter().filter_map(|a| a.as_str().map(str::to_string)));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The nftables ruleset that cuts a host off from `addresses`, both ways: what it
/// sends to them and what it receives from them is dropped, silently, as packets
/// lost in a real partition. Pure.
pub(super) fn cut_ruleset(addresses: &[String]) -> String {
    let set = addresses.join(", ");
    format!(
        "table {CUT_TABLE} {{\n\
         \tchain input {{ type filter hook input priority -10; ip saddr {{ {set} }} drop; }}\n\
         \tchain output {{ type filter hook output priority -10; ip daddr {{ {set} }} drop; }}\n\
         }}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_drops_both_ways_and_reads_back() {
        let r = cut_ruleset(&["172.28.7.12".into(), "172.28.7.13".into()]);
        assert!(
            r.contains("hook input") && r.contains("ip saddr { 172.28.7.12, 172.28.7.13 } drop"),
            "{r}"
        );
        assert!(
            r.contains("hook output") && r.contains("ip daddr { 172.28.7.12, 172.28.7.13 } drop"),
            "{r}"
        );
        // `nft -j list table` of that ruleset (trimmed), as nftables 1.1 prints it.
        let listed = r#"{"nftables": [{"metainfo": {"version": "1.1.3"}},
          {"table": {"family": "inet", "name": "pgha_lab_cut"}},
          {"rule": {"family": "inet", "table": "pgha_lab_cut", "chain": "input", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
             "right": {"set": ["172.28.7.12", "172.28.7.13"]}}}, {"drop": null}]}},
          {"rule": {"family": "inet", "table": "pgha_lab_cut", "chain": "output", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
             "right": {"set": ["172.28.7.13", "172.28.7.12"]}}}, {"drop": null}]}}]}"#;
        assert_eq!(cut_addresses(listed), ["172.28.7.12", "172.28.7.13"]);
        let one = r#"{"nftables": [{"rule": {"chain": "output", "expr": [
            {"match": {"right": "172.28.7.1"}}, {"drop": null}]}}]}"#;
        assert_eq!(cut_addresses(one), ["172.28.7.1"]);
        assert!(cut_addresses("").is_empty());
    }
}
