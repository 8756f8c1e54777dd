//! The nodes kubeforge placed something on, as the state directory keeps
//! them (`nodes/<node>.json`: the node's record and how to reach it), so
//! that a node is still known, and reachable, once the inventory no longer
//! names it.

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
