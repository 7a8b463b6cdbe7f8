//! `pgha lab`: local bare Debian 13 hosts as systemd containers, with fault injection.
//!
//! Each lab is a user-defined Docker network `NAME` (a fixed /24 in 172.28.0.0/16)
//! and containers `NAME-db1..N`, `NAME-router1..M` booting systemd and sshd from a
//! locally built image (`docker::base`). Everything the lab creates is labelled
//! `pgha.lab=NAME`, and only objects with that label are ever changed or removed.
//!
//! The lab is a client of the product, like the benchmark: it may use any module of
//! it (its `up` composes `commands::deploy`), and no module of the product uses it.
//! `hosts`: the lab's hosts and network (up, down, status); `boot`: a host's boot;
//! `faults`: kill, start, partitions, heal, replace; `cut`: partial partitions as
//! data; `cli`: the `pgha lab` verbs; `layout` and `files`: naming, addresses and the
//! lab directory's files (pure); `clients`: workload clients for tests and the
//! benchmark; `rehearsal`: older package builds for upgrade tests.

pub mod args;
mod boot;
mod cli;
pub mod clients;
mod cut;
mod faults;
mod files;
mod hosts;
pub mod layout;
pub mod rehearsal;

pub use crate::docker::base::{ensure as ensure_image, image_tag, recipe_hash};
pub use cli::command;
pub use cut::CONTROLLER;
pub use faults::{
    heal, kill, partition, partition_from, replace, replace_at_new_address, replace_in, start,
};
pub use hosts::{LabHost, LabInfo, LabSpec, down, status, up};
