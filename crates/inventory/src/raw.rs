//! The inventory exactly as written: every value keeps its byte span so that
//! validation can point at the file, line and column it came from.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInventory {
    pub cluster: Spanned<RawCluster>,
    #[serde(default)]
    pub pki: Option<Spanned<RawPki>>,
    #[serde(default)]
    pub loadbalancer: Option<Spanned<RawLoadBalancer>>,
    #[serde(default)]
    pub ssh: Option<RawSsh>,
    #[serde(default)]
    pub etcd: Option<Spanned<RawEtcd>>,
    #[serde(default)]
    pub nodes: Vec<Spanned<RawNode>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEtcd {
    #[serde(default)]
    pub backup_schedule: Option<Spanned<String>>,
    #[serde(default)]
    pub backup_keep: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub name: Spanned<String>,
    pub kubernetes_version: Spanned<String>,
    #[serde(default)]
    pub service_cidr: Option<Spanned<String>>,
    #[serde(default)]
    pub pod_cidr: Option<Spanned<String>>,
    #[serde(default)]
    pub node_cidr: Option<Spanned<String>>,
    #[serde(default)]
    pub pod_subnet_prefix: Option<Spanned<i64>>,
    #[serde(default)]
    pub cluster_domain: Option<Spanned<String>>,
    #[serde(default)]
    pub dns_service_ip: Option<Spanned<String>>,
    #[serde(default)]
    pub apiserver_port: Option<Spanned<i64>>,
    #[serde(default)]
    pub container_runtime: Option<Spanned<String>>,
    #[serde(default)]
    pub cni: Option<Spanned<String>>,
    #[serde(default)]
    pub kube_proxy_mode: Option<Spanned<String>>,
    #[serde(default)]
    pub bin_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub sandbox_image: Option<Spanned<String>>,
    #[serde(default)]
    pub node_profile: Option<Spanned<String>>,
    #[serde(default)]
    pub image_registry: Option<Spanned<String>>,
    #[serde(default)]
    pub registry_mirrors: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    pub coredns: Option<bool>,
    #[serde(default)]
    pub kubelet_join: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPki {
    #[serde(default)]
    pub ca_validity_days: Option<Spanned<i64>>,
    #[serde(default)]
    pub leaf_validity_days: Option<Spanned<i64>>,
    #[serde(default)]
    pub renew_before_days: Option<Spanned<i64>>,
    #[serde(default)]
    pub extra_apiserver_sans: Vec<Spanned<String>>,
    #[serde(default)]
    pub bootstrap_token_ttl_hours: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLoadBalancer {
    pub vip: Spanned<String>,
    #[serde(default)]
    pub port: Option<Spanned<i64>>,
    #[serde(default)]
    pub interface: Option<Spanned<String>>,
    #[serde(default)]
    pub virtual_router_id: Option<Spanned<i64>>,
    #[serde(default)]
    pub nginx_user: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSsh {
    #[serde(default)]
    pub user: Option<Spanned<String>>,
    #[serde(default)]
    pub port: Option<Spanned<i64>>,
    #[serde(default)]
    pub key: Option<Spanned<String>>,
    #[serde(default)]
    pub sudo: Option<bool>,
    #[serde(default)]
    pub accept_new_host_keys: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    pub roles: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub labels: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    pub taints: Vec<Spanned<String>>,
    #[serde(default)]
    pub ssh: Option<RawSsh>,
}
