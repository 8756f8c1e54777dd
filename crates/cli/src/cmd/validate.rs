//! `kubeforge validate`: the inventory checked, every problem located.

use crate::args::InventoryArgs;
use crate::common::{load, Term};
use anyhow::Result;

pub(crate) fn run(args: &InventoryArgs, term: &mut Term) -> Result<()> {
    let (loaded, _) = load(args, term)?;
    let c = &loaded.cluster;
    term.line(format!(
        "{}: cluster \"{}\", Kubernetes {}, {} nodes: inventory is valid",
        args.inventory.display(),
        c.name,
        c.version,
        c.nodes.len()
    ))?;
    Ok(())
}
