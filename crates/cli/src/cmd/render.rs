//! `kubeforge render`: the PKI issued or reused, every node's files
//! written below a directory.

use crate::args::{InventoryArgs, PkiArgs};
use crate::common::{load, pki_line, prepare, Term};
use anyhow::Result;
use kubeforge_render::Prepared;
use std::path::Path;

pub(crate) fn run(inv: &InventoryArgs, pki: &PkiArgs, out: &Path, term: &mut Term) -> Result<()> {
    let (loaded, state) = load(inv, term)?;
    let cluster = &loaded.cluster;
    let prepared = prepare(&state, cluster, pki.new_ca.clone())?;
    prepared.persist(&state)?;
    let Prepared {
        reconciled,
        rendered,
        ..
    } = prepared;
    let written = kubeforge_render::write_tree(&rendered, out)?;
    term.line(format!("PKI in {}:", state.display()))?;
    let mut any = false;
    for e in &reconciled.events {
        if let Some(l) = pki_line(e, true) {
            term.line(l)?;
            any = true;
        }
    }
    if !any {
        term.line("  every certificate kept")?;
    }
    term.line(format!(
        "rendered {} files for {} nodes into {} (admin kubeconfig: {})",
        written.len().saturating_sub(2),
        rendered.nodes.len(),
        out.display(),
        out.join("admin.conf").display()
    ))?;
    Ok(())
}
