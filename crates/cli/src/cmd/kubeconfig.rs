//! `kubeforge kubeconfig`: the admin kubeconfig, printed or written.

use crate::args::InventoryArgs;
use crate::common::{load, prepare, Term};
use anyhow::{bail, Result};
use kubeforge_pki::Action;
use kubeforge_render::Prepared;
use std::path::PathBuf;

pub(crate) fn run(inv: &InventoryArgs, out: Option<PathBuf>, term: &mut Term) -> Result<()> {
    let (loaded, state) = load(inv, term)?;
    let cluster = &loaded.cluster;
    let Prepared {
        reconciled,
        rendered,
        ..
    } = prepare(&state, cluster, Vec::new())?;
    if reconciled
        .events
        .iter()
        .any(|e| matches!(e.action, Action::Created))
    {
        bail!(
            "{} holds no complete PKI for cluster \"{}\" yet\n  help: run `kubeforge apply` (or `kubeforge render`) first",
            state.display(),
            cluster.name
        );
    }
    match out {
        Some(path) => {
            kubeforge_pki::write_atomic(&path, &rendered.admin_kubeconfig, 0o600)?;
            term.line(format!(
                "wrote {} (server {})",
                path.display(),
                cluster.api_url()
            ))?;
        }
        None => term.raw(String::from_utf8_lossy(&rendered.admin_kubeconfig))?,
    }
    Ok(())
}
