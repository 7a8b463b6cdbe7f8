//! `pgha deploy`: orchestration over the plan engine.

use std::path::Path;

use crate::cli::OutputFormat;
use crate::error::{Exit, Failure};

/// Deploy the cluster described by the inventory at `inventory` (used by `pgha lab up`).
/// Host keys are verified against the inventory's `pgha_known_hosts` file.
pub async fn run_for_lab(inventory: &Path, output: OutputFormat) -> Result<Exit, Failure> {
    let _ = (inventory, output);
    Err(Failure::error("deploy: being written"))
}
