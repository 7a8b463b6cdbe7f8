//! Ansible-compatible inventory: parsing, validation, secrets.

mod model;

pub use model::*;

use crate::cli::{InventoryArgs, OutputFormat};
use crate::error::{Exit, Failure};

pub fn command(_args: &InventoryArgs, _output: OutputFormat) -> Result<Exit, Failure> {
    todo!()
}
