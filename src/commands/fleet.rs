//! Several clusters from one controller: `pgha deploy a.yml b.yml ...` and
//! `pgha status a.yml b.yml ...`. Each cluster runs as it would alone (its own
//! lock, secrets, certificates and recap; its lines carry its name), at most
//! `--forks` hosts are worked on at once, a failure in one cluster stops no
//! other, and the run ends with one line per cluster and the worst exit code.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::commands::args::InventoryArg;
use crate::error::{Exit, Failure};
use crate::inventory::{Inventory, LoadOptions};
use crate::ui::{OutputFormat, Ui};

/// Hosts worked on at once by default: SSH sessions mostly wait on the hosts, so
/// several per CPU of this machine.
pub fn default_forks() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 8
}

/// The inventories named on the command line, in order: the first (positional,
/// `-i`, or the default) and the rest.
pub fn paths(first: &InventoryArg, more: &[PathBuf]) -> Result<Vec<PathBuf>, Failure> {
    let mut all = vec![super::inventory_path(first)?];
    all.extend(more.iter().cloned());
    Ok(all)
}

/// Every inventory, or none: an invalid one, two naming the same cluster, or two
/// sharing a host (each cluster needs hosts of its own: its etcd, its ports) stop
/// the run before any host is touched (exit 4), every problem named.
pub fn load_all(paths: &[PathBuf], write_secrets: bool) -> Result<Vec<Inventory>, Failure> {
    let mut invs = Vec::new();
    let mut problems = Vec::new();
    for p in paths {
        match crate::inventory::load(p, &LoadOptions { write_secrets }) {
            Ok(inv) => invs.push(inv),
            Err(e) => problems.push(Failure::from(e).message),
        }
    }
    let shapes: Vec<Shape> = invs.iter().map(Shape::of).collect();
    problems.extend(conflicts(&shapes));
    if problems.is_empty() {
        Ok(invs)
    } else {
        Err(Failure::new(
            Exit::Inventory,
            format!("{}\nnothing was done on any cluster", problems.join("\n")),
        ))
    }
}

/// What two clusters must not share: their names and their hosts' addresses.
#[derive(Debug, Clone)]
pub struct Shape {
    pub file: String,
    pub cluster: String,
    /// (host name, address)
    pub hosts: Vec<(String, String)>,
}

impl Shape {
    fn of(inv: &Inventory) -> Shape {
        Shape {
            file: inv.path.display().to_string(),
            cluster: inv.cluster.cluster_name.clone(),
            hosts: inv
                .hosts
                .iter()
                .map(|h| (h.name.clone(), h.ip.to_string()))
                .collect(),
        }
    }
}

/// Clusters that would step on each other (one line per pair of files). Pure,
/// unit-tested.
pub fn conflicts(shapes: &[Shape]) -> Vec<String> {
    let mut out = Vec::new();
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    let mut addrs: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    let mut shared: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
    for s in shapes {
        if let Some(other) = names.insert(&s.cluster, &s.file) {
            out.push(format!(
                "{} and {}: both name cluster {:?}; give each cluster its own cluster_name",
                other, s.file, s.cluster
            ));
        }
        for (name, ip) in &s.hosts {
            match addrs.get(ip.as_str()).copied() {
                Some((ofile, oname)) if ofile != s.file => {
                    let same = if oname == name {
                        format!("{name} ({ip})")
                    } else {
                        format!("{name} ({ip}, {oname} there)")
                    };
                    shared.entry((&s.file, ofile)).or_default().push(same);
                }
                Some(_) => {}
                None => {
                    addrs.insert(ip, (&s.file, name));
                }
            }
        }
    }
    for ((file, ofile), hosts) in shared {
        out.push(format!(
            "{file} lists host(s) of {ofile}: {}; clusters cannot share a host (each runs its \
             own etcd, PostgreSQL and HAProxy on the same ports)",
            hosts.join(", ")
        ));
    }
    out
}

/// One cluster's end.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub cluster: String,
    pub inventory: String,
    pub exit: Exit,
    pub error: Option<String>,
    /// What it reports in its line (changes, or the status verdict).
    pub summary: String,
    pub secs: f64,
    /// Its JSON document (with `--output json`).
    pub document: Value,
}

/// Run `work` for every inventory at once, each cluster taking as many of the
/// `forks` slots as it has hosts (at most all of them) for as long as it runs.
pub async fn run_each<'a, F, Fut>(
    invs: &'a [Inventory],
    forks: usize,
    output: OutputFormat,
    work: F,
) -> Vec<Outcome>
where
    F: Fn(&'a Inventory, Ui) -> Fut,
    Fut: std::future::Future<Output = (Result<Exit, Failure>, String)> + 'a,
{
    let forks = forks.max(1);
    let slots = Arc::new(Semaphore::new(forks));
    join_all(invs.iter().map(|inv| {
        let slots = slots.clone();
        let ui = Ui::for_cluster(output, &inv.cluster.cluster_name);
        let fut = work(inv, ui.clone());
        async move {
            let want = inv.hosts.len().clamp(1, forks) as u32;
            let _held = slots.acquire_many(want).await.expect("never closed");
            let t = Instant::now();
            let (result, summary) = fut.await;
            let secs = t.elapsed().as_secs_f64();
            let (exit, error) = match result {
                Ok(e) => (e, None),
                Err(f) => {
                    ui.line(format!("error: {}", f.message));
                    (f.exit, Some(f.message))
                }
            };
            Outcome {
                cluster: inv.cluster.cluster_name.clone(),
                inventory: inv.path.display().to_string(),
                exit,
                error,
                summary,
                secs,
                document: ui.documents().pop().unwrap_or(Value::Null),
            }
        }
    }))
    .await
}

/// The worst exit code of all (0 only when every cluster ended well).
pub fn worst(outcomes: &[Outcome]) -> Exit {
    outcomes
        .iter()
        .map(|o| o.exit)
        .max_by_key(|e| *e as i32)
        .unwrap_or(Exit::Ok)
}

/// One line per cluster (text), or one document holding each cluster's (json).
pub fn print_summary(verb: &str, outcomes: &[Outcome], output: OutputFormat) {
    let exit = worst(outcomes);
    if output == OutputFormat::Json {
        let clusters: Vec<Value> = outcomes
            .iter()
            .map(|o| {
                json!({
                    "cluster": o.cluster,
                    "inventory": o.inventory,
                    "ok": o.exit == Exit::Ok,
                    "exit": o.exit as i32,
                    "error": o.error,
                    "seconds": o.secs,
                    "result": o.document,
                })
            })
            .collect();
        println!(
            "{}",
            json!({"ok": exit == Exit::Ok, "exit": exit as i32, "clusters": clusters})
        );
        return;
    }
    print!("{}", summary_text(verb, outcomes));
}

/// The text summary. Pure, unit-tested.
pub fn summary_text(verb: &str, outcomes: &[Outcome]) -> String {
    let failed = outcomes.iter().filter(|o| o.exit != Exit::Ok).count();
    let width = outcomes
        .iter()
        .map(|o| o.cluster.len())
        .max()
        .unwrap_or(0)
        .max(7);
    let mut out = format!(
        "\n{verb} of {} cluster(s): {} ok, {failed} failed\n",
        outcomes.len(),
        outcomes.len() - failed
    );
    for o in outcomes {
        let what = match &o.error {
            None if o.exit == Exit::Ok => format!("ok      {}", one_line(&o.summary)),
            None => format!("exit {}  {}", o.exit as i32, one_line(&o.summary)),
            Some(e) => format!("FAILED  exit {}: {}", o.exit as i32, one_line(e)),
        };
        out.push_str(&format!(
            "  {:<width$} {what} ({:.1}s, {})\n",
            o.cluster, o.secs, o.inventory
        ));
    }
    out
}

/// A message on one line of bounded length (an error's own lines joined: the
/// host it names is often on its second).
fn one_line(s: &str) -> String {
    const MAX: usize = 200;
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match joined.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &joined[..i]),
        None => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(file: &str, cluster: &str, hosts: &[(&str, &str)]) -> Shape {
        Shape {
            file: file.into(),
            cluster: cluster.into(),
            hosts: hosts
                .iter()
                .map(|(n, a)| (n.to_string(), a.to_string()))
                .collect(),
        }
    }

    #[test]
    fn clusters_sharing_a_name_or_a_host_are_refused() {
        let a = shape(
            "a.yml",
            "alpha",
            &[("db1", "10.0.0.1"), ("db2", "10.0.0.2")],
        );
        let b = shape("b.yml", "beta", &[("db1", "10.0.1.1")]);
        assert!(conflicts(&[a.clone(), b.clone()]).is_empty());
        let same_name = shape("c.yml", "alpha", &[("x", "10.0.2.1")]);
        let c = conflicts(&[a.clone(), same_name]);
        assert_eq!(c.len(), 1);
        assert!(
            c[0].contains("a.yml and c.yml") && c[0].contains("cluster_name"),
            "{c:?}"
        );
        let shared = shape("d.yml", "delta", &[("pg1", "10.0.0.2")]);
        let c = conflicts(&[a, b, shared]);
        assert_eq!(c.len(), 1);
        assert!(
            c[0].starts_with("d.yml lists host(s) of a.yml: pg1 (10.0.0.2, db2 there); clusters"),
            "{c:?}"
        );
        // One line for all the hosts two files share.
        let copy = shape(
            "e.yml",
            "epsilon",
            &[("db1", "10.0.0.1"), ("db2", "10.0.0.2")],
        );
        let c = conflicts(&[
            shape(
                "a.yml",
                "alpha",
                &[("db1", "10.0.0.1"), ("db2", "10.0.0.2")],
            ),
            copy,
        ]);
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(c[0].contains(": db1 (10.0.0.1), db2 (10.0.0.2);"), "{c:?}");
    }

    fn outcome(cluster: &str, exit: Exit, error: Option<&str>) -> Outcome {
        Outcome {
            cluster: cluster.into(),
            inventory: format!("{cluster}/inventory.yml"),
            exit,
            error: error.map(str::to_string),
            summary: "changed=0".into(),
            secs: 1.5,
            document: Value::Null,
        }
    }

    #[test]
    fn the_summary_names_each_cluster_and_the_worst_exit_wins() {
        let all = [
            outcome("alpha", Exit::Ok, None),
            outcome(
                "beta",
                Exit::Unreachable,
                Some("cannot reach every host:\n  db9: timed out"),
            ),
            outcome("gamma", Exit::HostFailed, Some("db1: apt failed")),
        ];
        assert_eq!(worst(&all), Exit::Unreachable);
        assert_eq!(worst(&all[..1]), Exit::Ok);
        let t = summary_text("deploy", &all);
        assert!(t.contains("deploy of 3 cluster(s): 1 ok, 2 failed"), "{t}");
        assert!(
            t.contains("  alpha   ok      changed=0 (1.5s, alpha/inventory.yml)"),
            "{t}"
        );
        assert!(
            t.contains("  beta    FAILED  exit 3: cannot reach every host: db9: timed out (1.5s"),
            "{t}"
        );
        let long = one_line(&"word ".repeat(100));
        assert_eq!(long.len(), 203, "{long}");
    }
}
