//! `pgha images build`: pgha's stack image for `install_method: docker`, built on
//! this machine from Debian 13 packages (cached by its recipe's hash).

use crate::docker::{self, stack};
use crate::error::{Exit, Failure};

/// `pgha images build`.
pub async fn command() -> Result<Exit, Failure> {
    docker::check_engine().await?;
    let tag = stack::ensure().await?;
    let id = docker::run(&["image", "inspect", "-f", "{{.Id}} {{.Size}}", &tag]).await?;
    let mut f = id.split_whitespace();
    println!(
        "{tag} ({}, {} MB): the default image of every component (install_method: docker)",
        f.next().unwrap_or(""),
        f.next()
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(0, |b| b / 1_000_000)
    );
    Ok(Exit::Ok)
}
