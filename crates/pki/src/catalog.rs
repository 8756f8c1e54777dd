//! The certificate catalog: every CA and leaf certificate of a cluster as a
//! table entry. Code reads this table; it never special-cases a certificate.

use kubeforge_inventory::{Cluster, Node, Role, Selector};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// The three certificate authorities. Each signs only its own leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaId {
    Kubernetes,
    Etcd,
    FrontProxy,
}

impl CaId {
    pub const ALL: [CaId; 3] = [CaId::Kubernetes, CaId::Etcd, CaId::FrontProxy];

    pub fn name(self) -> &'static str {
        match self {
            CaId::Kubernetes => "kubernetes",
            CaId::Etcd => "etcd",
            CaId::FrontProxy => "front-proxy",
        }
    }

    pub fn parse(s: &str) -> Option<CaId> {
        CaId::ALL.into_iter().find(|c| c.name() == s)
    }

    pub fn common_name(self) -> &'static str {
        match self {
            CaId::Kubernetes => "kubernetes-ca",
            CaId::Etcd => "etcd-ca",
            CaId::FrontProxy => "kubernetes-front-proxy-ca",
        }
    }

    /// File stem inside the state directory's `pki/`.
    pub fn file_stem(self) -> &'static str {
        match self {
            CaId::Kubernetes => "ca",
            CaId::Etcd => "etcd/ca",
            CaId::FrontProxy => "front-proxy-ca",
        }
    }
}

impl fmt::Display for CaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} CA", self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Server,
    Client,
    /// etcd members use one certificate for both ends of a connection.
    ServerClient,
}

impl Kind {
    pub fn server(self) -> bool {
        matches!(self, Kind::Server | Kind::ServerClient)
    }
    pub fn client(self) -> bool {
        matches!(self, Kind::Client | Kind::ServerClient)
    }
}

/// How many copies of a certificate a cluster has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// One for the whole cluster.
    Cluster,
    /// One per node with this role.
    PerNode(Selector),
}

/// Which subject alternative names a certificate must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SanRule {
    None,
    /// Every control-plane name and IP, the VIP, the first service IP,
    /// 127.0.0.1, localhost and every `kubernetes.default.*` name.
    Apiserver,
    /// The node's name and IP plus localhost and 127.0.0.1.
    NodeAndLoopback,
    /// The node's name and IP.
    Node,
}

/// One row of the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CertSpec {
    /// Stable identifier, also the file stem in the state directory.
    pub id: &'static str,
    pub ca: CaId,
    /// Common name; `{node}` is replaced by the node name.
    pub cn: &'static str,
    pub org: Option<&'static str>,
    pub kind: Kind,
    pub scope: Scope,
    pub sans: SanRule,
    pub purpose: &'static str,
}

/// Every leaf certificate kubeforge issues.
pub const CATALOG: &[CertSpec] = &[
    CertSpec {
        id: "apiserver",
        ca: CaId::Kubernetes,
        cn: "kube-apiserver",
        org: None,
        kind: Kind::Server,
        scope: Scope::Cluster,
        sans: SanRule::Apiserver,
        purpose: "kube-apiserver serving certificate",
    },
    CertSpec {
        id: "apiserver-kubelet-client",
        ca: CaId::Kubernetes,
        cn: "kube-apiserver-kubelet-client",
        org: None,
        kind: Kind::Client,
        scope: Scope::Cluster,
        sans: SanRule::None,
        purpose: "kube-apiserver to kubelet (bound to system:kubelet-api-admin by RBAC)",
    },
    CertSpec {
        id: "apiserver-etcd-client",
        ca: CaId::Etcd,
        cn: "kube-apiserver-etcd-client",
        org: None,
        kind: Kind::Client,
        scope: Scope::Cluster,
        sans: SanRule::None,
        purpose: "kube-apiserver to etcd",
    },
    CertSpec {
        id: "front-proxy-client",
        ca: CaId::FrontProxy,
        cn: "front-proxy-client",
        org: None,
        kind: Kind::Client,
        scope: Scope::Cluster,
        sans: SanRule::None,
        purpose: "kube-apiserver to aggregated API servers",
    },
    CertSpec {
        id: "etcd-server",
        ca: CaId::Etcd,
        cn: "{node}",
        org: None,
        kind: Kind::ServerClient,
        scope: Scope::PerNode(Selector::Etcd),
        sans: SanRule::NodeAndLoopback,
        purpose: "etcd member serving clients",
    },
    CertSpec {
        id: "etcd-peer",
        ca: CaId::Etcd,
        cn: "{node}",
        org: None,
        kind: Kind::ServerClient,
        scope: Scope::PerNode(Selector::Etcd),
        sans: SanRule::NodeAndLoopback,
        purpose: "etcd member to member",
    },
    CertSpec {
        id: "etcd-healthcheck-client",
        ca: CaId::Etcd,
        cn: "kube-etcd-healthcheck-client",
        org: None,
        kind: Kind::Client,
        scope: Scope::Cluster,
        sans: SanRule::None,
        purpose: "health checks and etcdctl",
    },
    CertSpec {
        id: "kube-controller-manager",
        ca: CaId::Kubernetes,
        cn: "system:kube-controller-manager",
        org: None,
        kind: Kind::Client,
        scope: Scope::Cluster,
        sans: SanRule::None,
        purpose: "kube-controller-manager to kube-apiserver",
    },
    CertSpec {
        id: "kube-controller-manager-server",
        ca: CaId::Kubernetes,
        cn: "kube-controller-manager",
        org: None,
        kind: Kind::Server,
        scope: Scope::PerNode(Selector::ControlPlane),
        sans: SanRule::NodeAndLoopback,
        purpose: "kube-controller-manager serving /healthz on 10257",
    },
    CertSpec {
        id: "kube-scheduler",
        ca: CaId::Kubernetes,
        cn: "system:kube-scheduler",
        org: None,
        kind: Kind::Client,
        scope: Scope::Cluster,
        sans: SanRule::None,
        purpose: "kube-scheduler to kube-apiserver",
    },
    CertSpec {
        id: "kube-scheduler-server",
        ca: CaId::Kubernetes,
        cn: "kube-scheduler",
        org: None,
        kind: Kind::Server,
        scope: Scope::PerNode(Selector::ControlPlane),
        sans: SanRule::NodeAndLoopback,
        purpose: "kube-scheduler serving /healthz on 10259",
    },
    CertSpec {
        id: "kubelet-client",
        ca: CaId::Kubernetes,
        cn: "system:node:{node}",
        org: Some("system:nodes"),
        kind: Kind::Client,
        scope: Scope::PerNode(Selector::Kubelet),
        sans: SanRule::None,
        purpose: "kubelet to kube-apiserver (Node authorizer)",
    },
    CertSpec {
        id: "kubelet-server",
        ca: CaId::Kubernetes,
        cn: "{node}",
        org: None,
        kind: Kind::Server,
        scope: Scope::PerNode(Selector::Kubelet),
        sans: SanRule::Node,
        purpose: "kubelet serving on 10250",
    },
    CertSpec {
        id: "kube-proxy",
        ca: CaId::Kubernetes,
        cn: "system:kube-proxy",
        org: None,
        kind: Kind::Client,
        scope: Scope::Cluster,
        sans: SanRule::None,
        purpose: "kube-proxy to kube-apiserver",
    },
    CertSpec {
        id: "admin",
        ca: CaId::Kubernetes,
        cn: "kubernetes-admin",
        org: Some("kubeforge:cluster-admins"),
        kind: Kind::Client,
        scope: Scope::Cluster,
        sans: SanRule::None,
        purpose: "the admin kubeconfig (group bound to cluster-admin by RBAC)",
    },
    CertSpec {
        id: "super-admin",
        ca: CaId::Kubernetes,
        cn: "kubernetes-super-admin",
        org: Some("system:masters"),
        kind: Kind::Client,
        scope: Scope::Cluster,
        sans: SanRule::None,
        purpose: "break-glass kubeconfig that bypasses RBAC; stays on the control machine",
    },
];

pub fn spec(id: &str) -> Option<&'static CertSpec> {
    CATALOG.iter().find(|s| s.id == id)
}

/// One subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(untagged)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(d) => write!(f, "DNS:{d}"),
            San::Ip(ip) => write!(f, "IP:{ip}"),
        }
    }
}

/// A certificate the inventory needs, with everything that goes into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafRequest {
    pub spec: &'static CertSpec,
    pub node: Option<String>,
    pub cn: String,
    pub org: Option<String>,
    pub sans: Vec<San>,
}

impl LeafRequest {
    /// The file stem of this certificate in the state directory's `pki/`.
    pub fn stem(&self) -> String {
        match &self.node {
            Some(node) => format!("nodes/{node}/{}", self.spec.id),
            None => self.spec.id.to_string(),
        }
    }

    pub fn describe(&self) -> String {
        match &self.node {
            Some(node) => format!("{} for {node}", self.spec.id),
            None => self.spec.id.to_string(),
        }
    }
}

fn sans_for(rule: SanRule, cluster: &Cluster, node: Option<&Node>) -> Vec<San> {
    let mut out: Vec<San> = Vec::new();
    let loopback = || {
        [
            San::Dns("localhost".into()),
            San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ]
    };
    match rule {
        SanRule::None => {}
        SanRule::Apiserver => {
            for dns in [
                "kubernetes".to_string(),
                "kubernetes.default".to_string(),
                "kubernetes.default.svc".to_string(),
                "kubernetes.default.svc.cluster".to_string(),
                format!("kubernetes.default.svc.{}", cluster.cluster_domain),
            ] {
                out.push(San::Dns(dns));
            }
            for n in cluster.nodes_with(Role::ControlPlane) {
                out.push(San::Dns(n.name.clone()));
                out.push(San::Ip(IpAddr::V4(n.address)));
            }
            if let Some(lb) = &cluster.loadbalancer {
                out.push(San::Ip(IpAddr::V4(lb.vip.addr())));
            }
            out.push(San::Ip(IpAddr::V4(cluster.apiserver_service_ip())));
            out.extend(loopback());
            for extra in &cluster.pki.extra_apiserver_sans {
                out.push(match extra.parse::<IpAddr>() {
                    Ok(ip) => San::Ip(ip),
                    Err(_) => San::Dns(extra.clone()),
                });
            }
        }
        SanRule::NodeAndLoopback | SanRule::Node => {
            if let Some(n) = node {
                out.push(San::Dns(n.name.clone()));
                out.push(San::Ip(IpAddr::V4(n.address)));
            }
            if rule == SanRule::NodeAndLoopback {
                out.extend(loopback());
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|s| seen.insert(s.clone()));
    out
}

/// Certificates the cluster issues itself when kubelets join with a
/// bootstrap token (`kubelet_join = "bootstrap-token"`).
pub const BOOTSTRAPPED: [&str; 2] = ["kubelet-client", "kubelet-server"];

/// Every leaf certificate the cluster needs, in catalog then node order.
pub fn requests(cluster: &Cluster) -> Vec<LeafRequest> {
    let mut out = Vec::new();
    let bootstrap = cluster.kubelet_join == kubeforge_inventory::KubeletJoin::BootstrapToken;
    for spec in CATALOG {
        if bootstrap && BOOTSTRAPPED.contains(&spec.id) {
            continue;
        }
        match spec.scope {
            Scope::Cluster => out.push(LeafRequest {
                spec,
                node: None,
                cn: spec.cn.to_string(),
                org: spec.org.map(str::to_string),
                sans: sans_for(spec.sans, cluster, None),
            }),
            Scope::PerNode(sel) => {
                for node in cluster.nodes.iter().filter(|n| sel.matches(n)) {
                    out.push(LeafRequest {
                        spec,
                        node: Some(node.name.clone()),
                        cn: spec.cn.replace("{node}", &node.name),
                        org: spec.org.map(|o| o.replace("{node}", &node.name)),
                        sans: sans_for(spec.sans, cluster, Some(node)),
                    });
                }
            }
        }
    }
    out
}
