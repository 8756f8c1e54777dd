//! Which nodes something belongs on: the one node-selector type that the
//! placement table, the certificate catalog and the apply phases share.

use crate::model::{Node, Role};
use serde::{Deserialize, Serialize};

/// A set of nodes, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selector {
    /// etcd members.
    Etcd,
    /// Control-plane nodes.
    ControlPlane,
    /// Nodes that run a kubelet: control-plane and worker nodes.
    Kubelet,
    /// Load-balancer nodes (nginx + keepalived).
    Lb,
    /// Every node.
    All,
}

impl Selector {
    pub fn matches(self, node: &Node) -> bool {
        self.matches_roles(&node.roles)
    }

    /// Whether a node with these roles is selected.
    pub fn matches_roles(self, roles: &[Role]) -> bool {
        let has = |r: Role| roles.contains(&r);
        match self {
            Selector::Etcd => has(Role::Etcd),
            Selector::ControlPlane => has(Role::ControlPlane),
            Selector::Kubelet => has(Role::ControlPlane) || has(Role::Worker),
            Selector::Lb => has(Role::Lb),
            Selector::All => true,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Selector::Etcd => "etcd",
            Selector::ControlPlane => "control-plane",
            Selector::Kubelet => "kubelet",
            Selector::Lb => "lb",
            Selector::All => "all",
        }
    }
}
