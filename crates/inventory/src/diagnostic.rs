//! Errors and warnings that name the file, line and column they are about.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about an inventory: what is wrong, where, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub help: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {sev}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )?;
        if !self.help.is_empty() {
            write!(f, "\n  help: {}", self.help)?;
        }
        Ok(())
    }
}

/// Maps byte offsets of a source text to 1-based line and column numbers.
///
/// The start of every line is found once, when the source is made; a
/// position is then a binary search plus, on a line with non-ASCII text, a
/// count of the characters before it on its line. So the findings of a
/// large inventory cost time in proportion to their number, not to the
/// number times the size of the file.
pub(crate) struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
    /// Byte offset of the start of every line, the first being 0.
    line_starts: Vec<usize>,
    /// Whether each line is ASCII only, where a column is a byte count.
    line_ascii: Vec<bool>,
}

impl<'a> Source<'a> {
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        let mut line_starts = vec![0];
        let mut line_ascii = Vec::new();
        let mut ascii = true;
        for (i, b) in text.bytes().enumerate() {
            if b == b'\n' {
                line_starts.push(i + 1);
                line_ascii.push(ascii);
                ascii = true;
            } else if !b.is_ascii() {
                ascii = false;
            }
        }
        line_ascii.push(ascii);
        Source {
            path,
            text,
            line_starts,
            line_ascii,
        }
    }

    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        // The number of lines that start at or before `offset`; at least 1,
        // since the first starts at 0.
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let index = line - 1;
        let line_start = self.line_starts[index];
        let column = if self.line_ascii[index] {
            offset - line_start + 1
        } else {
            self.text[line_start..offset].chars().count() + 1
        };
        (line, column)
    }

    pub fn diag(
        &self,
        severity: Severity,
        span: Range<usize>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> Diagnostic {
        let (line, column) = self.position(span.start);
        Diagnostic {
            severity,
            file: self.path.to_path_buf(),
            line,
            column,
            message: message.into(),
            help: help.into(),
        }
    }

    pub fn line_of(&self, span: &Range<usize>) -> usize {
        self.position(span.start).0
    }
}

/// Every finding of a rejected inventory; errors first, in file order.
#[derive(Debug, Clone, thiserror::Error)]
pub struct InventoryError {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors = self
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        for d in &self.diagnostics {
            writeln!(f, "{d}")?;
        }
        write!(
            f,
            "inventory rejected: {errors} error{}",
            if errors == 1 { "" } else { "s" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Line and column by counting from the start of the text.
    fn counted(text: &str, offset: usize) -> (usize, usize) {
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    #[test]
    fn positions_match_counting_from_the_start() {
        for text in [
            "",
            "\n",
            "a",
            "[cluster]\nname = \"d\u{e9}mo\"\n\n\u{1f600} = 1\r\nx\n",
            "no newline at the end: \u{e4}\u{f6}\u{fc}",
            "\n\n\u{e9}\n",
        ] {
            let src = Source::new(Path::new("t.toml"), text);
            for (offset, _) in text.char_indices().chain([(text.len(), ' ')]) {
                assert_eq!(
                    src.position(offset),
                    counted(text, offset),
                    "offset {offset} of {text:?}"
                );
            }
            // Past the end: the end.
            assert_eq!(src.position(text.len() + 5), counted(text, text.len()));
        }
    }
}
