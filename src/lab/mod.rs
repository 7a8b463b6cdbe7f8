//! `pgha lab`: local bare Debian 13 hosts as systemd containers.

use crate::cli::{LabArgs, OutputFormat};
use crate::error::{Exit, Failure};

pub async fn command(_args: LabArgs, _output: OutputFormat) -> Result<Exit, Failure> {
    todo!()
}
