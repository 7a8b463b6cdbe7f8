//! Error categories and the exit codes they map to (ansible-playbook's convention).
//!
//! Layer 0: imports nothing of pgha. (The conversion from anyhow that keeps an SSH
//! error's exit code lives in `ssh::error`, beside the type it knows.)

use std::fmt;

/// Process exit codes, documented in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Error = 1,
    HostFailed = 2,
    Unreachable = 3,
    Inventory = 4,
    BadOptions = 5,
}

/// A failure that ends the command, carrying the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Failure {
            exit,
            message: message.into(),
        }
    }
    pub fn options(message: impl Into<String>) -> Self {
        Self::new(Exit::BadOptions, message)
    }
    pub fn error(message: impl Into<String>) -> Self {
        Self::new(Exit::Error, message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}
