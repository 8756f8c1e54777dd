//! Per-node pod subnets for the `bridge` CNI, kept in the state directory
//! (`pod-subnets.toml`) so that a node keeps its subnet for life and a new
//! node gets the first free one, whatever its place in the inventory.

use crate::RenderError;
use ipnet::Ipv4Net;
use kubeforge_inventory::Cluster;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const FILE: &str = "pod-subnets.toml";

#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct PodSubnets {
    pub subnets: BTreeMap<String, Ipv4Net>,
}

impl PodSubnets {
    pub fn get(&self, node: &str) -> Option<Ipv4Net> {
        self.subnets.get(node).copied()
    }
}

/// The allocation for a cluster and whether it differs from the stored one.
#[derive(Debug, Clone)]
pub struct Allocation {
    pub subnets: PodSubnets,
    pub changed: bool,
}

impl Allocation {
    pub fn persist(&self, state_dir: &Path) -> Result<Option<PathBuf>, RenderError> {
        if !self.changed {
            return Ok(None);
        }
        let path = state_dir.join(FILE);
        let body = toml::to_string(&self.subnets).map_err(|e| RenderError::State {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let text =
            format!("# Pod subnet of each node, assigned once by kubeforge. Do not edit.\n{body}");
        kubeforge_pki::write_atomic(&path, text.as_bytes(), 0o644).map_err(|e| {
            RenderError::State {
                path: path.clone(),
                detail: e.to_string(),
            }
        })?;
        Ok(Some(path))
    }
}

/// Reads the stored allocation (if any) and assigns subnets to nodes that
/// run a kubelet and have none. Reads only.
pub fn allocate(state_dir: &Path, cluster: &Cluster) -> Result<Allocation, RenderError> {
    let path = state_dir.join(FILE);
    let stored: PodSubnets = match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| RenderError::State {
            path: path.clone(),
            detail: format!("{e}; remove the file to reassign every node's pod subnet"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => PodSubnets::default(),
        Err(e) => {
            return Err(RenderError::State {
                path,
                detail: e.to_string(),
            })
        }
    };
    allocate_from(&stored, cluster).map_err(|detail| RenderError::State { path, detail })
}

pub(crate) fn allocate_from(stored: &PodSubnets, cluster: &Cluster) -> Result<Allocation, String> {
    let wanted: Vec<&str> = cluster
        .nodes
        .iter()
        .filter(|n| n.runs_kubelet())
        .map(|n| n.name.as_str())
        .collect();
    let mut out = PodSubnets::default();
    for (node, net) in &stored.subnets {
        let fits = net.prefix_len() == cluster.pod_subnet_prefix && cluster.pod_cidr.contains(net);
        if wanted.contains(&node.as_str()) && fits {
            out.subnets.insert(node.clone(), *net);
        }
    }
    let taken: Vec<Ipv4Net> = out.subnets.values().copied().collect();
    let mut free = cluster
        .pod_cidr
        .subnets(cluster.pod_subnet_prefix)
        .map_err(|e| e.to_string())?
        .filter(|s| !taken.contains(s));
    for node in &wanted {
        if out.subnets.contains_key(*node) {
            continue;
        }
        let net = free.next().ok_or_else(|| {
            format!(
                "pod_cidr {} has no free /{} subnet left for node \"{node}\"; widen pod_cidr or raise pod_subnet_prefix",
                cluster.pod_cidr, cluster.pod_subnet_prefix
            )
        })?;
        out.subnets.insert((*node).to_string(), net);
    }
    let changed = out != *stored;
    Ok(Allocation {
        subnets: out,
        changed,
    })
}
