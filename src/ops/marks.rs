//! What pgha itself set on the cluster while it works: maintenance tags on members
//! and the cluster-wide pause. Recorded in etcd (`/pgha/<cluster>/work`) before
//! pgha sets them and removed after it clears them, so a later run clears only
//! pgha's leftovers (from an interrupted run), never an operator's own pause or
//! tags. Written only under the cluster lock.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::run::Ctx;
use crate::error::Failure;

/// The record of what pgha set and has not cleared yet.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marks {
    /// The run that last changed the record (`controller:pid:token`).
    #[serde(default)]
    pub run: String,
    /// Members pgha tagged (nofailover, noloadbalance, nosync).
    #[serde(default)]
    pub tagged: BTreeSet<String>,
    /// pgha paused the cluster.
    #[serde(default)]
    pub paused: bool,
}

impl Marks {
    pub fn is_empty(&self) -> bool {
        self.tagged.is_empty() && !self.paused
    }
}

pub fn key(cluster: &str) -> String {
    format!("/pgha/{cluster}/work")
}

/// The record as etcd holds it (empty when there is none).
pub async fn read(ctx: &Ctx<'_>) -> Result<Marks, Failure> {
    let key = key(&ctx.inv.cluster.cluster_name);
    let mut c = crate::probe::etcd::client(&ctx.ep.net, &ctx.ep.etcd).await?;
    let r = c
        .get(key.as_str(), None)
        .await
        .map_err(|e| Failure::error(format!("etcd: read {key}: {e}")))?;
    match r.kvs().first() {
        None => Ok(Marks::default()),
        Some(kv) => serde_json::from_slice(kv.value()).map_err(|e| {
            Failure::error(format!(
                "etcd key {key} is not pgha's record of what it set ({e}); remove it with \
                 `etcdctl del {key}` once the cluster's tags and pause are as they should be"
            ))
        }),
    }
}

/// Change the record (under the cluster lock: nobody else writes it meanwhile).
pub async fn update(ctx: &Ctx<'_>, change: impl FnOnce(&mut Marks)) -> Result<(), Failure> {
    ctx.ensure_locked("record what pgha sets").await?;
    let key = key(&ctx.inv.cluster.cluster_name);
    let mut marks = read(ctx).await?;
    let before = marks.clone();
    change(&mut marks);
    if marks == before {
        return Ok(());
    }
    marks.run = ctx.run_id();
    let mut c = crate::probe::etcd::client(&ctx.ep.net, &ctx.ep.etcd).await?;
    let r = if marks.is_empty() {
        c.delete(key.as_str(), None).await.map(|_| ())
    } else {
        let value = serde_json::to_string(&marks).expect("marks serialize");
        c.put(key.as_str(), value, None).await.map(|_| ())
    };
    r.map_err(|e| Failure::error(format!("etcd: write {key}: {e}")))
}

/// What the cluster shows now against pgha's record: pgha's own leftovers to
/// clear, and what someone else set (not pgha's to clear).
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Found {
    /// Tagged members pgha recorded tagging.
    pub ours_tagged: Vec<String>,
    /// The cluster is paused and pgha recorded pausing it.
    pub ours_paused: bool,
    /// Tagged members pgha did not record tagging.
    pub foreign_tagged: Vec<String>,
    /// The cluster is paused and pgha did not record pausing it.
    pub foreign_paused: bool,
    /// Recorded but no longer set (cleared by someone or by a deploy): drop them.
    pub stale: bool,
}

impl Found {
    pub fn leftovers(&self) -> bool {
        !self.ours_tagged.is_empty() || self.ours_paused
    }
    pub fn foreign(&self) -> bool {
        !self.foreign_tagged.is_empty() || self.foreign_paused
    }
}

/// Sort what is set (`tagged` members, `paused`) by the record. Pure.
pub fn classify(marks: &Marks, tagged: &[String], paused: bool) -> Found {
    let (ours, foreign): (Vec<String>, Vec<String>) = tagged
        .iter()
        .cloned()
        .partition(|h| marks.tagged.contains(h));
    Found {
        ours_paused: paused && marks.paused,
        foreign_paused: paused && !marks.paused,
        stale: marks.tagged.iter().any(|h| !tagged.contains(h)) || (marks.paused && !paused),
        ours_tagged: ours,
        foreign_tagged: foreign,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(tagged: &[&str], paused: bool) -> Marks {
        Marks {
            run: "ctl:1:x".into(),
            tagged: tagged.iter().map(|s| s.to_string()).collect(),
            paused,
        }
    }

    #[test]
    fn only_what_pgha_recorded_is_its_own() {
        let f = classify(&marks(&["db2"], false), &["db2".into(), "db3".into()], true);
        assert_eq!(f.ours_tagged, ["db2"]);
        assert_eq!(f.foreign_tagged, ["db3"]);
        assert!(!f.ours_paused && f.foreign_paused, "{f:?}");
        assert!(f.leftovers() && f.foreign());
    }

    #[test]
    fn an_operators_pause_is_never_a_leftover() {
        let f = classify(&Marks::default(), &[], true);
        assert!(!f.leftovers() && f.foreign_paused);
        let f = classify(&marks(&[], true), &[], true);
        assert!(f.ours_paused && !f.foreign());
    }

    #[test]
    fn records_of_things_no_longer_set_are_stale() {
        let f = classify(&marks(&["db1"], true), &[], false);
        assert!(f.stale && !f.leftovers() && !f.foreign());
        assert!(!classify(&marks(&["db1"], false), &["db1".into()], false).stale);
    }
}
