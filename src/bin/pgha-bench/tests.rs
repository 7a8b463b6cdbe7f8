//! Unit tests of the benchmark's figure logic.

use super::*;
use crate::deploys::{basebackup_baseline, rebuild_figure, reported_gap};

#[test]
fn a_failed_basebackup_fails_the_rebuild_figure_instead_of_a_ratio() {
    let baseline = basebackup_baseline(1, "pg_basebackup: error: connection refused\n", 0.4);
    let f = rebuild_figure(56.0, baseline, json!({}));
    assert_eq!((f.baseline, f.ratio), (None, None), "{f:?}");
    let why = f.failed.clone().unwrap();
    assert!(
        why.contains("exit 1") && why.contains("connection refused"),
        "{why}"
    );
    assert_eq!(f.pgha, Some(56.0));
    let row = table(&[f]);
    assert!(
        row.contains("FAILED: the pg_basebackup baseline failed"),
        "{row}"
    );
    let j = serde_json::to_value(rebuild_figure(56.0, Err("x".into()), json!({}))).unwrap();
    assert_eq!(j["failed"], "x");
    assert!(j["ratio"].is_null() && j["baseline"].is_null(), "{j}");
}

#[test]
fn a_good_basebackup_is_the_rebuild_baseline() {
    let f = rebuild_figure(50.0, basebackup_baseline(0, "", 2.0), json!({}));
    assert_eq!(
        (f.baseline, f.ratio, &f.failed),
        (Some(2.0), Some(25.0), &None)
    );
    // A figure that did not fail writes no `failed` key.
    let j = serde_json::to_value(&f).unwrap();
    assert!(j.get("failed").is_none(), "{j}");
}

#[test]
fn an_unmeasured_gap_is_no_figure_not_zero() {
    let measured =
        json!({"measured": true, "longest_secs": 1.7, "probes": 40, "failed": 12, "error": null});
    assert_eq!(reported_gap(&measured), Ok(1.7));
    let crashed = json!({"measured": false, "longest_secs": null, "probes": null, "failed": null, "error": "the write-port probe of 10.0.0.21:5000 stopped: task 9 panicked"});
    let e = reported_gap(&crashed).unwrap_err();
    assert!(
        e.contains("could not measure") && e.contains("panicked"),
        "{e}"
    );
    assert!(reported_gap(&Value::Null).is_err());
}

fn keys(v: &Value) -> std::collections::BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

/// The committed results file holds what `save` writes and nothing else (no
/// hand-added keys whose numbers no run of the benchmark produced).
#[test]
fn the_results_file_holds_only_what_the_benchmark_writes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/results/latest.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let figure = rebuild_figure(1.0, Ok(1.0), json!({}));
    let written = results_doc("d", 1, 1.0, std::slice::from_ref(&figure));
    assert_eq!(keys(&doc), keys(&written), "{path}: top-level keys");
    let figure_keys = keys(&serde_json::to_value(&figure).unwrap());
    for f in doc["figures"].as_array().unwrap() {
        let mut k = keys(f);
        k.remove("failed");
        assert_eq!(k, figure_keys, "{path}: figure {}", f["name"]);
    }
    assert_eq!(keys(&doc["machine"]), keys(&machine()), "{path}: machine");
}
