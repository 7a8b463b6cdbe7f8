//! `pgha inventory FILE`: the resolved inventory (hosts, groups, SSH settings,
//! variables; secrets redacted), as text or JSON. Creates no files.

use crate::commands::args::InventoryArgs;
use crate::error::{Exit, Failure};
use crate::inventory::{LoadOptions, load, print};
use crate::ui::OutputFormat;

/// `pgha inventory -i FILE`: print the resolved inventory. Creates no files.
pub fn command(args: &InventoryArgs, output: OutputFormat) -> Result<Exit, Failure> {
    let path = super::inventory_path(&args.inventory)?;
    match load(
        &path,
        &LoadOptions {
            write_secrets: false,
        },
    ) {
        Ok(inv) => {
            let out = match output {
                OutputFormat::Text => print::text(&inv),
                OutputFormat::Json => print::json(&inv),
            };
            print!("{out}");
            Ok(Exit::Ok)
        }
        Err(e) => {
            if output == OutputFormat::Json {
                println!("{}", print::json_error(&e));
            }
            Err(e.into())
        }
    }
}
