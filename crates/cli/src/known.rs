//! The nodes kubeforge placed something on, as the state directory keeps
//! them (`nodes/<node>.json`: the node's record and how to reach it). A
//! node kept there that the inventory no longer names is a node to remove
//! (`kubeforge apply --prune`).

use anyhow::{Context, Result};
use kubeforge_inventory::Cluster;
use kubeforge_plan::{Known, Plan, Reach};
use std::path::{Path, PathBuf};

fn dir(state: &Path) -> PathBuf {
    state.join("nodes")
}

fn file(state: &Path, node: &str) -> PathBuf {
    dir(state).join(format!("{node}.json"))
}

/// Every record in the state directory, sorted by node (`reset`, and
/// [`gone`]).
pub(crate) fn load(state: &Path) -> Result<Vec<Known>> {
    let dir = dir(state);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in entries {
        let path = e
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let k: Known = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} does not parse; move it away if that node is gone for good",
                path.display()
            )
        })?;
        out.push(k);
    }
    out.sort_by(|a, b| a.manifest.node.cmp(&b.manifest.node));
    Ok(out)
}

/// The records of nodes the inventory no longer names.
pub(crate) fn gone(state: &Path, cluster: &Cluster) -> Result<Vec<Known>> {
    Ok(load(state)?
        .into_iter()
        .filter(|k| !cluster.nodes.iter().any(|n| n.name == k.manifest.node))
        .collect())
}

/// Refuses, before any node is contacted, a removal of `gone` that
/// [`kubeforge_plan::remove::check`] refuses (an `--unreachable` node that
/// is not being removed, the quorum rules), every reason at once.
pub(crate) fn check_removals(
    rendered: &kubeforge_render::Rendered,
    gone: &[kubeforge_plan::Manifest],
    opts: &kubeforge_plan::remove::PruneOptions,
) -> Result<()> {
    let gone: Vec<&kubeforge_plan::Manifest> = gone.iter().collect();
    let refused = kubeforge_plan::remove::check(rendered, &gone, opts);
    if refused.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{}",
        refused
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// Keeps the record of every node of `plan` (as the nodes hold them after
/// it) with how to reach the node.
pub(crate) fn save(state: &Path, cluster: &Cluster, plan: &Plan) -> Result<()> {
    for (name, m) in &plan.manifests {
        let Some(node) = cluster.nodes.iter().find(|n| &n.name == name) else {
            continue;
        };
        let k = Known {
            manifest: m.clone(),
            ssh: Reach {
                user: node.ssh.user.clone(),
                port: node.ssh.port,
                key: node.ssh.key.clone(),
                sudo: node.ssh.sudo,
                accept_new_host_keys: node.ssh.accept_new_host_keys,
            },
        };
        let path = file(state, name);
        let mut bytes = serde_json::to_vec_pretty(&k)?;
        bytes.push(b'\n');
        if std::fs::read(&path).ok().as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        kubeforge_pki::write_atomic(&path, &bytes, 0o600)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Drops the record of a node taken out of the cluster.
pub(crate) fn forget(state: &Path, node: &str) -> Result<()> {
    let path = file(state, node);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}
