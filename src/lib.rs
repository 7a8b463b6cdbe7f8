//! pgha library: everything the `pgha` binary does, importable by integration tests.

pub mod cli;
pub mod commands;
pub mod docker;
pub mod engine;
pub mod error;
pub mod install;
pub mod inventory;
pub mod lab;
pub mod ops;
pub mod pki;
pub mod probe;
pub mod ssh;
pub mod testpoint;
pub mod ui;
pub mod wait;
