//! The property the inventory fuzz target checks (`fuzz/`, run by
//! `tests/fuzz/run.sh`), also replayed over the committed corpus by the
//! `fuzz_corpus` integration test:
//!
//! - parsing and validating any text never panics;
//! - a refused inventory has at least one error, and every finding names
//!   the file and a line and column inside the text (1-based; the column
//!   at most one past the end of its line);
//! - an accepted inventory (of at most [`MAX_RENDERED_NODES`] nodes, to
//!   bound the PKI's cost) renders, with a PKI issued in memory, into files
//!   that all still parse as their formats
//!   ([`kubeforge_render::check_rendered`]): every node's files, the
//!   drained load balancer configurations and the admin kubeconfigs.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kubeforge_inventory::{Diagnostic, Severity};

/// The name the text is parsed under; every finding must name it.
pub const FILE: &str = "fuzz.toml";

/// Accepted inventories with more nodes than this are validated but not
/// rendered: every node costs certificates, and a larger cluster finds
/// nothing a smaller one would not.
pub const MAX_RENDERED_NODES: usize = 12;

/// A state directory that does not exist: [`kubeforge_render::prepare`]
/// then issues the whole PKI in memory and writes nothing.
fn no_state_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        std::env::temp_dir().join(format!(
            "kubeforge-fuzz-no-state-{}/never-created",
            std::process::id()
        ))
    })
}

/// What an input did, when it did not break the property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not UTF-8: never read as an inventory.
    NotText,
    /// Refused, every finding located.
    Refused,
    /// Accepted and rendered; every checked file parses.
    Rendered { files: usize },
    /// Accepted, too many nodes to render.
    AcceptedNotRendered,
}

/// Checks the property for one input; the error says what broke.
pub fn check(data: &[u8]) -> Result<Outcome, String> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(Outcome::NotText);
    };
    let path = Path::new(FILE);
    let loaded = match kubeforge_inventory::parse(path, text) {
        Ok(loaded) => loaded,
        Err(e) => {
            if !e.diagnostics.iter().any(|d| d.severity == Severity::Error) {
                return Err(format!("refused without an error:\n{e}"));
            }
            for d in &e.diagnostics {
                located(d, text)?;
            }
            return Ok(Outcome::Refused);
        }
    };
    for w in &loaded.warnings {
        located(w, text)?;
    }
    let cluster = &loaded.cluster;
    if cluster.nodes.len() > MAX_RENDERED_NODES {
        return Ok(Outcome::AcceptedNotRendered);
    }
    let prepared = kubeforge_render::prepare(no_state_dir(), cluster, &Default::default())
        .map_err(|e| format!("an accepted inventory does not render: {e}"))?;
    let rendered = &prepared.rendered;
    let mut files = 0;
    let mut parses = |node: &str, path: &str, bytes: &[u8]| {
        files += 1;
        kubeforge_render::check_rendered(path, bytes)
            .map_err(|e| format!("node {node}: a rendered file does not parse: {e}"))
    };
    for tree in &rendered.nodes {
        for f in tree.files.values() {
            parses(&tree.name, &f.path, &f.content)?;
        }
    }
    for (node, drained) in &rendered.drains {
        for d in drained {
            parses(&d.lb, &d.file.path, &d.file.content)
                .map_err(|e| format!("{e} (with {node} drained)"))?;
        }
    }
    // The control machine's kubeconfigs, checked as the YAML they are.
    parses(
        "(control machine)",
        "/etc/kubernetes/admin.conf",
        &rendered.admin_kubeconfig,
    )?;
    parses(
        "(control machine)",
        "/etc/kubernetes/super-admin.conf",
        &rendered.super_admin_kubeconfig,
    )?;
    Ok(Outcome::Rendered { files })
}

/// A finding names [`FILE`] and a line and column inside `text`.
fn located(d: &Diagnostic, text: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{why}: {d}"));
    if d.file != Path::new(FILE) {
        return bad("a finding names another file");
    }
    if d.line == 0 || d.column == 0 {
        return bad("a finding without a line and column");
    }
    // `lines()` drops a last empty line: a finding may point there.
    let line = text.split('\n').nth(d.line - 1);
    let Some(line) = line else {
        return bad(&format!(
            "a finding past the last line ({} lines)",
            text.split('\n').count()
        ));
    };
    // Every character up to the newline counts, a carriage return too: a
    // finding at the end of the text points one past its last character.
    let width = line.chars().count();
    if d.column > width + 1 {
        return bad(&format!(
            "a finding past the end of its line ({width} characters)"
        ));
    }
    let shown = d.to_string();
    if !shown.starts_with(&format!("{FILE}:{}:{}: ", d.line, d.column)) {
        return bad("a finding shown without file:line:col");
    }
    Ok(())
}
