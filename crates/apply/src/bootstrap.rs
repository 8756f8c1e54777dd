//! Bootstrap-token joins: whether a node's kubelet holds a valid client
//! certificate of its own, so its bootstrap kubeconfig can go, and whether
//! a CA other than the current one signed its certificates, so it must
//! join again.

use kubeforge_render::{KubeletCerts, NodeTree};
use std::collections::BTreeMap;

/// The files whose certificate blocks the facts read for the node's
/// kubelet (none without bootstrap files).
pub(crate) fn certificate_files(tree: &NodeTree) -> Vec<String> {
    tree.bootstrap
        .iter()
        .flat_map(|b| [b.cert.clone(), b.serving_cert.clone()])
        .collect()
}

/// The node's kubelet certificates, as the facts found them (see
/// [`certificate_files`]), judged on this machine against the cluster CA
/// (nothing without bootstrap files).
pub(crate) fn kubelet_certs(tree: &NodeTree, found: &BTreeMap<String, String>) -> KubeletCerts {
    let Some(b) = &tree.bootstrap else {
        return KubeletCerts::default();
    };
    let client = found.get(&b.cert).map(String::as_str);
    let serving = found.get(&b.serving_cert).map(String::as_str);
    b.judge(client, serving, std::time::SystemTime::now())
}
