//! `pgha lock`: who holds the cluster lock; `--break` removes a stale one.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;

use crate::commands::args::LockArgs;
use crate::commands::ssh_options;
use crate::commands::{load_inventory, load_pki};
use crate::error::{Exit, Failure};
use crate::ops::Ctx;
use crate::ops::guard::{ETCD_TTL, HOST_TTL};
use crate::ops::lock;
use crate::ui::OutputFormat;
use crate::ui::Ui;

pub async fn command(args: LockArgs, output: OutputFormat) -> Result<Exit, Failure> {
    let inv = load_inventory(&args.inventory, false)?;
    let ui = Ui::new(output);
    // Without certificates the etcd lock cannot be read, but the host lock can.
    let pki = load_pki(&inv, false).unwrap_or_else(|f| {
        ui.warn(f.message);
        None
    });
    let mut ctx = Ctx::new(&inv, pki, &ui);
    // The host lock lives on the first db host; reading it needs SSH. Without SSH
    // (an unreachable host), the etcd lock is still shown.
    let first = ctx.db_hosts()[0].clone();
    if let Err(f) = ctx
        .connect(&ssh_options(&args.ssh, &inv), std::slice::from_ref(&first))
        .await
    {
        ui.warn(format!("the host lock on {first} cannot be read: {f}"));
    }
    let state = lock::inspect(&ctx).await;
    let since = |s: u64| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s));
    match (&state.etcd, &state.etcd_error) {
        (Some(h), _) => ui.line(format!(
            "etcd lock: held by {} (released {ETCD_TTL} s after its holder stops renewing it)",
            h.describe()
        )),
        (None, Some(e)) => ui.line(format!("etcd lock: unknown (etcd: {e})")),
        (None, None) => ui.line("etcd lock: free"),
    }
    match (&state.host, &state.host_name) {
        (Some((h, left)), Some(host)) if *left > 0 => ui.line(format!(
            "host lock on {host}: held by {} (expires in {left} s unless refreshed)",
            h.describe()
        )),
        (Some((h, _)), Some(host)) => ui.line(format!(
            "host lock on {host}: expired (last holder {}, since {})",
            h.describe(),
            since(h.since)
        )),
        (None, Some(host)) => ui.line(format!("host lock on {host}: free")),
        (_, None) => {}
    }
    if args.break_ {
        lock::break_locks(&ctx).await?;
        ui.line(format!(
            "lock broken: removed the etcd key and the host lock (a live holder keeps running \
             unlocked; locks expire by themselves {ETCD_TTL} s / {HOST_TTL} s after a holder dies)"
        ));
    }
    ctx.close().await;
    if ui.json() {
        println!("{}", json!({"lock": state, "broken": args.break_}));
    }
    Ok(Exit::Ok)
}
