//! etcd actions: who leads, handing leadership to another member before its
//! leader is restarted, and the waits around member restarts.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use super::run::Ctx;
use super::waits;
use crate::error::Failure;
use crate::probe::{PROBE_TIMEOUT, etcd};

/// Bound for quorum with every member healthy after a member restart.
pub const QUORUM: Duration = Duration::from_secs(90);

/// The etcd leader's member name, from a healthy endpoint.
pub async fn leader(ctx: &Ctx<'_>) -> Result<String, Failure> {
    let q = waits::wait_etcd_quorum(&ctx.ep, QUORUM).await?;
    Ok(q.leader)
}

/// Hand etcd leadership to `to` (by member name) so that restarting the current
/// leader costs no election while Patroni talks to etcd. Asked of the leader itself.
pub async fn move_leader(ctx: &Ctx<'_>, from: &str, to: &str) -> Result<(), Failure> {
    let report = etcd::probe(&ctx.ep.etcd).await;
    let find = |name: &str| {
        report.endpoints.iter().find_map(|e| {
            e.health
                .as_ref()
                .ok()
                .filter(|h| h.name().as_deref() == Some(name))
                .map(|h| (e.endpoint.clone(), h.member_id))
        })
    };
    let (from_ep, _) =
        find(from).ok_or_else(|| Failure::error(format!("etcd member {from} does not answer")))?;
    let (_, to_id) =
        find(to).ok_or_else(|| Failure::error(format!("etcd member {to} does not answer")))?;
    let opts = ConnectOptions::new()
        .with_connect_timeout(PROBE_TIMEOUT)
        .with_timeout(Duration::from_secs(10));
    let mut c = Client::connect([from_ep.as_str()], Some(opts))
        .await
        .map_err(|e| Failure::error(format!("etcd {from}: {e}")))?;
    c.move_leader(to_id)
        .await
        .map_err(|e| Failure::error(format!("etcd: move leadership {from} -> {to}: {e}")))?;
    crate::wait::until(&format!("etcd member {to} to lead"), QUORUM, || async {
        let q = etcd::probe(&ctx.ep.etcd).await.quorum(ctx.ep.etcd.len())?;
        if q.leader == to {
            Ok(())
        } else {
            Err(format!("leader {}", q.leader))
        }
    })
    .await?;
    Ok(())
}
