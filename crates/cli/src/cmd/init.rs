//! `kubeforge init`: a commented skeleton inventory.

use crate::common::Term;
use anyhow::{bail, Context, Result};
use std::path::Path;

const SINGLE_SKELETON: &str = include_str!("../../../../inventories/single.toml");
const HA_SKELETON: &str = include_str!("../../../../inventories/ha.toml");

pub(crate) fn run(ha: bool, force: bool, dir: &Path, term: &mut Term) -> Result<()> {
    let path = dir.join("inventory.toml");
    if path.exists() && !force {
        bail!(
            "{} already exists\n  help: pass --force to overwrite it",
            path.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = if ha { HA_SKELETON } else { SINGLE_SKELETON };
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    term.line(format!(
        "wrote {}\nnext: edit the node names and addresses, then run\n  kubeforge plan -i {} --offline",
        path.display(),
        path.display()
    ))?;
    Ok(())
}
