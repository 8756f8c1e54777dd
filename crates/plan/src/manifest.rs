//! What kubeforge places on a node, recorded on the node
//! ([`MANIFEST_PATH`]) and in the state directory: every file and binary
//! it writes there and every unit it enables and starts. Each apply that
//! changes it writes it first (phase [`MANIFEST_PHASE`]), so that even an
//! interrupted apply leaves a record of what it may have placed. Removing
//! a node (`apply --prune`) and `kubeforge reset` work from it, never from
//! a guess: a file or unit is in it once kubeforge placed it and stays in
//! it, also when the inventory no longer asks for it, until the node is
//! reset.

use crate::work::{Content, NodeWork, PhasePlan, Put};
use kubeforge_render::{NodeTree, Strategy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The record on the node.
pub const MANIFEST_PATH: &str = "/var/lib/kubeforge/manifest.json";

/// The phase that writes the records, before any other.
pub const MANIFEST_PHASE: &str = "manifest";

/// A unit kubeforge enables and starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestUnit {
    pub name: String,
    /// Enabled by kubeforge (`systemctl enable`): disabled again on reset.
    pub enabled: bool,
    /// Its unit file comes from the node's package (nginx, keepalived),
    /// not from kubeforge.
    pub packaged: bool,
}

/// What kubeforge places on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Manifest {
    pub cluster: String,
    pub node: String,
    pub address: String,
    pub roles: Vec<String>,
    /// Rendered files (configuration, certificates, keys, units, image
    /// archives), sorted.
    pub files: Vec<String>,
    /// Binaries from the bundle, sorted.
    pub binaries: Vec<String>,
    /// In the order they start.
    pub units: Vec<ManifestUnit>,
}

impl Manifest {
    /// The node's record as of this plan: what the inventory renders for
    /// it now, and what an earlier record lists that it no longer renders
    /// (still on the node until it is reset).
    pub fn of(cluster: &str, tree: &NodeTree, old: Option<&Manifest>) -> Manifest {
        let mut files: BTreeSet<String> = tree
            .files
            .values()
            .filter(|f| !f.is_binary())
            .map(|f| f.path.clone())
            .collect();
        let mut binaries: BTreeSet<String> = tree
            .files
            .values()
            .filter(|f| f.is_binary())
            .map(|f| f.path.clone())
            .collect();
        let mut units: Vec<ManifestUnit> = tree
            .units
            .iter()
            .map(|u| ManifestUnit {
                name: u.name.clone(),
                enabled: true,
                packaged: u.packaged,
            })
            .collect();
        if let Some(old) = old {
            files.extend(old.files.iter().cloned());
            binaries.extend(old.binaries.iter().cloned());
            for u in &old.units {
                if !units.iter().any(|x| x.name == u.name) {
                    units.push(u.clone());
                }
            }
        }
        Manifest {
            cluster: cluster.to_string(),
            node: tree.name.clone(),
            address: tree.address.clone(),
            roles: tree.roles.iter().map(|r| r.as_str().to_string()).collect(),
            files: files.into_iter().collect(),
            binaries: binaries.into_iter().collect(),
            units,
        }
    }

    /// As written on the node: pretty JSON, one trailing newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = serde_json::to_vec_pretty(self).unwrap_or_default();
        b.push(b'\n');
        b
    }

    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("{MANIFEST_PATH} does not parse: {e}"))
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn runs(&self, unit: &str) -> bool {
        self.units.iter().any(|u| u.name == unit)
    }
}

/// How to reach a node over SSH, kept with its record in the state
/// directory: a node taken out of the inventory is still reached to be
/// removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Reach {
    pub user: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub sudo: bool,
    #[serde(default)]
    pub accept_new_host_keys: bool,
}

/// A node's record in the state directory (`nodes/<node>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Known {
    pub manifest: Manifest,
    pub ssh: Reach,
}

/// The manifest phase: each node whose record differs from `new`, the
/// record written there. `old` is the record as read from the node.
pub(crate) fn manifest_phase(records: &[(&str, Option<&[u8]>, &Manifest)]) -> Option<PhasePlan> {
    let nodes: Vec<NodeWork> = records
        .iter()
        .filter_map(|(node, old, new)| {
            let bytes = new.to_bytes();
            if old.is_some_and(|o| o == bytes.as_slice()) {
                return None;
            }
            let mut w = NodeWork::new(node);
            w.puts.push(put(bytes));
            Some(w)
        })
        .collect();
    (!nodes.is_empty()).then(|| PhasePlan {
        phase: MANIFEST_PHASE.to_string(),
        strategy: Strategy::Parallel,
        nodes,
        api: None,
        vip: None,
        with: None,
        lb_reload: Vec::new(),
        ops: Vec::new(),
        batches: Vec::new(),
    })
}

/// The record written atomically, readable by root only.
pub(crate) fn put(bytes: Vec<u8>) -> Put {
    let (_, sha256) = sha(&bytes);
    Put {
        path: MANIFEST_PATH.to_string(),
        mode: 0o600,
        owner: "root:root".into(),
        sha256,
        secret: false,
        content: Content::Bytes(bytes),
    }
}

fn sha(bytes: &[u8]) -> (usize, String) {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(bytes);
    (bytes.len(), d.iter().map(|b| format!("{b:02x}")).collect())
}
