//! Inventory: TOML in, a validated [`Cluster`] out.
//!
//! Parsing keeps every value's span; validation collects every problem it
//! finds (not just the first) and names the file, line and column of each,
//! with a hint on how to fix it. Nothing here touches the network or a node.

mod diagnostic;
mod model;
mod raw;
mod selector;
mod validate;
mod values;

pub use diagnostic::{Diagnostic, InventoryError, Severity};
pub use model::*;
pub use selector::Selector;

use std::path::Path;

/// A validated inventory and the warnings it raised.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub cluster: Cluster,
    pub warnings: Vec<Diagnostic>,
}

/// Reads and validates an inventory file.
pub fn load(path: &Path) -> Result<Loaded, InventoryError> {
    let text = std::fs::read_to_string(path).map_err(|e| InventoryError {
        diagnostics: vec![Diagnostic {
            severity: Severity::Error,
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            message: format!("cannot read the inventory: {e}"),
            help: "check the path given with -i/--inventory".into(),
        }],
    })?;
    parse(path, &text)
}

/// Validates inventory text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Loaded, InventoryError> {
    validate::validate(path, text)
}
