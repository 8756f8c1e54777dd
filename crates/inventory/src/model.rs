//! The validated cluster model. Every value here has passed validation; the
//! renderer and the PKI read it and never re-check it.

use ipnet::Ipv4Net;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Oldest and newest Kubernetes minor versions whose flags kubeforge renders.
pub const MIN_MINOR: u32 = 28;
pub const MAX_MINOR: u32 = 35;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Etcd,
    ControlPlane,
    Worker,
    Lb,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Etcd, Role::ControlPlane, Role::Worker, Role::Lb];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Etcd => "etcd",
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
            Role::Lb => "lb",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cni {
    Bridge,
    Flannel,
    Calico,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    Iptables,
    Ipvs,
    Nftables,
}

/// How kubelets get their client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KubeletJoin {
    /// kubeforge issues it (CN system:node:NAME) and places it.
    Certificate,
    /// The kubelet asks for it with a bootstrap token; its client and
    /// serving certificate requests are approved automatically.
    BootstrapToken,
}

/// What the nodes are. `Container` is for nodes that are containers
/// themselves (systemd-nspawn, LXD): kubeforge then never writes kernel
/// settings that are global to the host (module loading, non-namespaced
/// sysctls, swap) and tells kubelet and kube-proxy not to either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeProfile {
    Host,
    Container,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Containerd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ssh {
    pub user: String,
    pub port: u16,
    pub key: Option<String>,
    pub sudo: bool,
    pub accept_new_host_keys: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.key, self.effect)
        } else {
            write!(f, "{}={}:{}", self.key, self.value, self.effect)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub name: String,
    pub address: Ipv4Addr,
    pub roles: Vec<Role>,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub ssh: Ssh,
}

impl Node {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Nodes that register with the API run containerd, kubelet and kube-proxy.
    pub fn runs_kubelet(&self) -> bool {
        self.has(Role::ControlPlane) || self.has(Role::Worker)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadBalancer {
    /// The virtual IP together with the prefix of the LB nodes' subnet.
    pub vip: Ipv4Net,
    pub port: u16,
    pub interface: String,
    pub virtual_router_id: u8,
    /// The user nginx's workers run as; `None`: the nginx package's own
    /// default (no `user` directive).
    pub nginx_user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PkiSettings {
    pub ca_validity_days: u32,
    pub leaf_validity_days: u32,
    pub renew_before_days: u32,
    pub extra_apiserver_sans: Vec<String>,
    /// How long a kubelet bootstrap token is valid (`kubelet_join =
    /// "bootstrap-token"`); one with less than half of it left is replaced.
    pub bootstrap_token_ttl_hours: u32,
}

/// Snapshots the etcd nodes take themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EtcdBackups {
    /// A systemd calendar event (`OnCalendar=`), such as `daily` or
    /// `*-*-* 03:00:00`.
    pub schedule: String,
    /// How many each node keeps.
    pub keep: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cluster {
    /// The inventory file this model was read from.
    pub source: PathBuf,
    pub name: String,
    pub version: KubeVersion,
    pub service_cidr: Ipv4Net,
    pub pod_cidr: Ipv4Net,
    pub node_cidr: Option<Ipv4Net>,
    pub pod_subnet_prefix: u8,
    pub cluster_domain: String,
    pub dns_service_ip: Ipv4Addr,
    pub apiserver_port: u16,
    pub runtime: Runtime,
    pub cni: Cni,
    pub proxy_mode: ProxyMode,
    pub bin_dir: String,
    /// Where the cluster's own images (CoreDNS, pause) come from.
    pub image_registry: String,
    /// Registry host -> mirror URL, for containerd.
    pub registry_mirrors: BTreeMap<String, String>,
    pub sandbox_image: String,
    pub node_profile: NodeProfile,
    /// kubeforge applies CoreDNS (off when the cluster's DNS comes from
    /// elsewhere).
    pub coredns: bool,
    pub kubelet_join: KubeletJoin,
    pub pki: PkiSettings,
    pub loadbalancer: Option<LoadBalancer>,
    /// Scheduled snapshots on the etcd nodes (`[etcd] backup_schedule`).
    pub etcd_backups: Option<EtcdBackups>,
    pub nodes: Vec<Node>,
}

impl Cluster {
    pub fn nodes_with(&self, role: Role) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |n| n.has(role))
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The first address of the service range: the `kubernetes` service.
    pub fn apiserver_service_ip(&self) -> Ipv4Addr {
        nth_host(self.service_cidr, 1)
    }

    /// Where clients outside the control plane reach the API: the VIP when
    /// there is a load balancer, else the only control-plane node.
    pub fn api_endpoint(&self) -> (String, u16) {
        match &self.loadbalancer {
            Some(lb) => (lb.vip.addr().to_string(), lb.port),
            None => {
                let addr = self
                    .nodes_with(Role::ControlPlane)
                    .next()
                    .map(|n| n.address.to_string())
                    .unwrap_or_default();
                (addr, self.apiserver_port)
            }
        }
    }

    pub fn api_url(&self) -> String {
        let (host, port) = self.api_endpoint();
        format!("https://{host}:{port}")
    }
}

/// The n-th address of a network (n = 0 is the network address itself).
pub fn nth_host(net: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).saturating_add(n))
}
