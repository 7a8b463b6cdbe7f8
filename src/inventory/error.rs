//! Inventory errors: every problem found, each with its file, line and column.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Exit, Failure};

/// One problem, located as precisely as known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; None when the problem is not on one line (a missing group, an unreadable file).
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl Diagnostic {
    pub fn new(
        file: &Path,
        line: Option<usize>,
        column: Option<usize>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// The inventory could not be used. Holds every problem found, not just the first.
/// Maps to exit code 4.
#[derive(Debug, Clone, Serialize)]
pub struct InventoryError {
    /// The inventory file.
    pub path: PathBuf,
    pub errors: Vec<Diagnostic>,
}

impl InventoryError {
    pub fn exit(&self) -> Exit {
        Exit::Inventory
    }
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errors.as_slice() {
            [one] => write!(f, "{one}"),
            many => {
                write!(
                    f,
                    "{} problems in inventory {}:",
                    many.len(),
                    self.path.display()
                )?;
                for d in many {
                    write!(f, "\n  {d}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for InventoryError {}

impl From<InventoryError> for Failure {
    fn from(e: InventoryError) -> Self {
        Failure::new(Exit::Inventory, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_exit_code() {
        let p = Path::new("inv/x.yml");
        let one = InventoryError {
            path: p.into(),
            errors: vec![Diagnostic::new(p, Some(3), Some(5), "bad port")],
        };
        assert_eq!(one.to_string(), "inv/x.yml:3:5: bad port");
        let two = InventoryError {
            path: p.into(),
            errors: vec![
                Diagnostic::new(p, Some(3), None, "a"),
                Diagnostic::new(p, None, None, "b"),
            ],
        };
        assert_eq!(
            two.to_string(),
            "2 problems in inventory inv/x.yml:\n  inv/x.yml:3: a\n  inv/x.yml: b"
        );
        let f: Failure = two.into();
        assert_eq!(f.exit, Exit::Inventory);
        assert_eq!(f.exit as i32, 4);
    }
}
