//! pgha library: everything the `pgha` binary does, importable by integration tests.

pub mod cli;
pub mod error;
pub mod inventory;
pub mod lab;
pub mod ssh;
pub mod deploy;
pub mod engine;
pub mod probe;
pub mod wait;
