//! pgha library: everything the `pgha` binary does, importable by integration tests.

pub mod cli;
pub mod cluster;
pub mod deploy;
pub mod engine;
pub mod error;
pub mod inventory;
pub mod lab;
pub mod preflight;
pub mod probe;
pub mod ssh;
pub mod ui;
pub mod wait;
