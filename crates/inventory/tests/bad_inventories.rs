//! Table test: bad inventories and the exact text each one is rejected with.
//!
//! Every case starts from one of the two small valid bases below and breaks
//! one thing. The expected text is the whole `Display` of `InventoryError`:
//! every diagnostic with file, line, column, message and help, then the
//! "inventory rejected" summary line. One run reports every mismatch.

use kubeforge_inventory::{parse, Severity};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A single control-plane cluster without a load balancer.
const BASE_SINGLE: &str = r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#;

/// One control-plane node behind two LB nodes holding a virtual IP.
const BASE_LB: &str = r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
node_cidr = "10.77.0.0/24"

[loadbalancer]
vip = "10.77.0.100/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "lb1"
address = "10.77.0.31"
roles = ["lb"]

[[nodes]]
name = "lb2"
address = "10.77.0.32"
roles = ["lb"]
"#;

/// (case name, inventory text, exact expected error text)
static CASES: &[(&str, &str, &str)] = &[
    // --- etcd ------------------------------------------------------------------
    (
        "etcd_backup_schedule_injects_a_line",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"

[etcd]
backup_schedule = "daily\nExecStart=/bin/sh"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]
"#,
        r#"bad.toml:6:19: error: backup_schedule "daily\nExecStart=/bin/sh" is not a calendar event
  help: write a systemd calendar event (OnCalendar=), for example "daily" or "*-*-* 03:00:00"
inventory rejected: 1 error"#,
    ),
    (
        "etcd_backup_keep_zero",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"

[etcd]
backup_schedule = "daily"
backup_keep = 0

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]
"#,
        r#"bad.toml:7:15: error: backup_keep 0 is out of range
  help: keep from 1 to 1000 snapshots on each etcd node
inventory rejected: 1 error"#,
    ),
    // --- TOML and shape ------------------------------------------------------
    (
        "toml_syntax_error",
        r#"[cluster]
name = "demo
kubernetes_version = "1.31.4"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]
"#,
        r#"bad.toml:2:13: error: invalid basic string, expected `"`
  help: fix the TOML syntax or the value's type
inventory rejected: 1 error"#,
    ),
    (
        "wrong_value_type",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
apiserver_port = "6443"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]
"#,
        r#"bad.toml:4:18: error: invalid type: string "6443", expected i64
  help: fix the TOML syntax or the value's type
inventory rejected: 1 error"#,
    ),
    (
        "unknown_top_level_key",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"

[network]
mtu = 1450

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]
"#,
        r#"bad.toml:5:2: error: unknown field `network`, expected one of `cluster`, `pki`, `loadbalancer`, `ssh`, `etcd`, `nodes`
  help: remove the key or fix its spelling; the inventory reference in README.md lists every key
inventory rejected: 1 error"#,
    ),
    (
        "unknown_node_profile",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
node_profile = "vm"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]
"#,
        r#"bad.toml:4:16: error: unknown node_profile "vm"
  help: use one of "host", "container"
inventory rejected: 1 error"#,
    ),
    (
        "unknown_kubelet_join",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
kubelet_join = "token"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]
"#,
        r#"bad.toml:4:16: error: unknown kubelet_join "token"
  help: use one of "certificate", "bootstrap-token"
inventory rejected: 1 error"#,
    ),
    (
        "image_registry_with_scheme",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
image_registry = "https://registry.local:5000"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]
"#,
        r#"bad.toml:4:18: error: image_registry "https://registry.local:5000" is not a registry host
  help: write HOST[:PORT][/PATH] without a scheme, for example "registry.local:5000"
inventory rejected: 1 error"#,
    ),
    (
        "registry_mirror_not_a_url",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
registry_mirrors = { "docker.io" = "registry.local:5000" }

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]
"#,
        r#"bad.toml:4:36: error: mirror "registry.local:5000" of docker.io is not an http(s) URL
  help: write the mirror's URL, for example "https://registry.local:5000"
inventory rejected: 1 error"#,
    ),
    (
        "unknown_cluster_key",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidrs = "10.96.0.0/12"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]
"#,
        r#"bad.toml:4:1: error: unknown field `service_cidrs`, expected one of `name`, `kubernetes_version`, `service_cidr`, `pod_cidr`, `node_cidr`, `pod_subnet_prefix`, `cluster_domain`, `dns_service_ip`, `apiserver_port`, `container_runtime`, `cni`, `kube_proxy_mode`, `bin_dir`, `sandbox_image`, `node_profile`, `image_registry`, `registry_mirrors`, `coredns`, `kubelet_join`
  help: remove the key or fix its spelling; the inventory reference in README.md lists every key
inventory rejected: 1 error"#,
    ),
    (
        "unknown_node_key",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
hostname = "worker1.example.com"
roles = ["worker"]
"#,
        r#"bad.toml:13:1: error: unknown field `hostname`, expected one of `name`, `address`, `roles`, `labels`, `taints`, `ssh`
  help: remove the key or fix its spelling; the inventory reference in README.md lists every key
inventory rejected: 1 error"#,
    ),
    (
        "missing_cluster_name",
        r#"[cluster]
kubernetes_version = "1.31.4"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]
"#,
        r#"bad.toml:1:1: error: missing field `name`
  help: add the missing key; `kubeforge init` writes a complete example
inventory rejected: 1 error"#,
    ),
    (
        "missing_node_address",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
roles = ["worker"]
"#,
        r#"bad.toml:10:1: error: missing field `address`
  help: add the missing key; `kubeforge init` writes a complete example
inventory rejected: 1 error"#,
    ),
    (
        "missing_cluster_table",
        r#"[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]
"#,
        r#"bad.toml:1:1: error: missing field `cluster`
  help: add the missing key; `kubeforge init` writes a complete example
inventory rejected: 1 error"#,
    ),
    // --- cluster -------------------------------------------------------------
    (
        "bad_cluster_name",
        r#"[cluster]
name = "Demo_Cluster"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:2:8: error: cluster name "Demo_Cluster" is not a DNS label
  help: use lowercase letters, digits and '-', at most 63 characters
inventory rejected: 1 error"#,
    ),
    (
        "version_too_old",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.27.3"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:3:22: error: Kubernetes v1.27.3 is not supported
  help: use a version from 1.28 to 1.35
inventory rejected: 1 error"#,
    ),
    (
        "version_too_new",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.40.0"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:3:22: error: Kubernetes v1.40.0 is not supported
  help: use a version from 1.28 to 1.35
inventory rejected: 1 error"#,
    ),
    (
        "version_malformed",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:3:22: error: kubernetes_version "1.31" is not a version
  help: write MAJOR.MINOR.PATCH, for example "1.31.4"
inventory rejected: 1 error"#,
    ),
    (
        "service_cidr_not_a_cidr",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:4:16: error: service_cidr "10.96.0.0" is not a CIDR range
  help: write it as ADDRESS/PREFIX, for example "10.96.0.0/12"
inventory rejected: 1 error"#,
    ),
    (
        "service_cidr_host_bits",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.1/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:4:16: error: service_cidr "10.96.0.1/12" has host bits set
  help: write the network address: "10.96.0.0/12"
inventory rejected: 1 error"#,
    ),
    (
        "service_cidr_ipv6",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "fd00:96::/108"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:4:16: error: service_cidr "fd00:96::/108" is IPv6, which kubeforge does not support yet
  help: use an IPv4 range
inventory rejected: 1 error"#,
    ),
    (
        "service_cidr_too_large",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.0.0.0/11"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:4:16: error: service_cidr 10.0.0.0/11 is larger than the apiserver allows
  help: use a prefix of /12 or longer
inventory rejected: 1 error"#,
    ),
    (
        "service_pod_overlap",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.100.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:5:12: error: pod_cidr 10.100.0.0/16 overlaps service_cidr 10.96.0.0/12
  help: give pods and services separate ranges
inventory rejected: 1 error"#,
    ),
    (
        "service_cidr_overlaps_default_pod_cidr",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.240.0.0/12"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:4:16: error: pod_cidr 10.244.0.0/16 (the default) overlaps service_cidr 10.240.0.0/12
  help: give pods and services separate ranges
inventory rejected: 1 error"#,
    ),
    (
        "node_cidr_overlaps_pod_cidr",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.77.128.0/17"
node_cidr = "10.77.0.0/16"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:6:13: error: node_cidr 10.77.0.0/16 overlaps pod_cidr 10.77.128.0/17
  help: node addresses, pods and services need separate ranges
inventory rejected: 1 error"#,
    ),
    (
        "pod_subnet_prefix_shorter_than_pod_cidr",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"
pod_subnet_prefix = 12

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:7:21: error: pod_subnet_prefix 12 does not fit pod_cidr
  help: use a prefix from 16 to 28 (each node gets one such subnet of pod_cidr)
inventory rejected: 1 error"#,
    ),
    (
        "bad_cluster_domain",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"
cluster_domain = "Cluster.Local"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:7:18: error: cluster_domain "Cluster.Local" is not a DNS name
  help: use lowercase DNS labels separated by dots, for example "cluster.local"
inventory rejected: 1 error"#,
    ),
    (
        "dns_ip_outside_service_cidr",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"
dns_service_ip = "10.112.0.10"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:7:18: error: dns_service_ip 10.112.0.10 is outside service_cidr 10.96.0.0/12
  help: pick an address inside service_cidr, or remove the key to use the tenth one
inventory rejected: 1 error"#,
    ),
    (
        "dns_ip_is_first_service_ip",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"
dns_service_ip = "10.96.0.1"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:7:18: error: dns_service_ip 10.96.0.1 is reserved in service_cidr 10.96.0.0/12
  help: the network, broadcast and first addresses are taken; remove the key to use the tenth one
inventory rejected: 1 error"#,
    ),
    (
        "apiserver_port_zero",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"
apiserver_port = 0

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:7:18: error: apiserver_port 0 is not a TCP port
  help: use a number from 1 to 65535
inventory rejected: 1 error"#,
    ),
    (
        "unknown_cni",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"
cni = "cilium"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:7:7: error: unknown cni "cilium"
  help: use one of "bridge", "flannel", "calico"
inventory rejected: 1 error"#,
    ),
    (
        "calico_block_too_large",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"
cni = "calico"
pod_subnet_prefix = 18

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:8:21: error: pod_subnet_prefix 18 is too large a block for cni "calico"
  help: use a prefix from 20 to 28: Calico allocates pod addresses in blocks of that size
inventory rejected: 1 error"#,
    ),
    (
        "unknown_container_runtime",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"
container_runtime = "docker"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:7:21: error: unknown container_runtime "docker"
  help: use one of "containerd"
inventory rejected: 1 error"#,
    ),
    (
        "nftables_needs_1_31",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.30.8"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"
kube_proxy_mode = "nftables"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:7:19: error: kube_proxy_mode "nftables" needs Kubernetes 1.31 or newer, not v1.30.8
  help: use "iptables" or raise kubernetes_version
inventory rejected: 1 error"#,
    ),
    (
        "bin_dir_relative",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"
bin_dir = "usr/local/bin"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:7:11: error: bin_dir "usr/local/bin" is not an absolute path
  help: write the directory on the nodes, for example "/usr/local/bin"
inventory rejected: 1 error"#,
    ),
    // --- pki -----------------------------------------------------------------
    (
        "leaf_validity_exceeds_ca",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[pki]
ca_validity_days = 3650
leaf_validity_days = 7300

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:10:22: error: leaf_validity_days 7300 exceeds ca_validity_days 3650
  help: a certificate cannot outlive the CA that signs it
inventory rejected: 1 error"#,
    ),
    (
        "ca_validity_below_default_leaf",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[pki]
ca_validity_days = 100

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:9:20: error: leaf_validity_days 365 (the default) exceeds ca_validity_days 100
  help: a certificate cannot outlive the CA that signs it
inventory rejected: 1 error"#,
    ),
    (
        "renew_before_not_shorter_than_leaf",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[pki]
leaf_validity_days = 30
renew_before_days = 30

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:10:21: error: renew_before_days 30 is not shorter than leaf_validity_days 30
  help: every run would reissue every certificate; use a smaller number
inventory rejected: 1 error"#,
    ),
    (
        "leaf_validity_below_default_renew_before",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[pki]
leaf_validity_days = 20

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:9:22: error: renew_before_days 30 (the default) is not shorter than leaf_validity_days 20
  help: every run would reissue every certificate; use a smaller number
inventory rejected: 1 error"#,
    ),
    (
        "validity_days_out_of_range",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[pki]
ca_validity_days = 0

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:9:20: error: ca_validity_days 0 is out of range
  help: use a number of days from 1 to 36500
inventory rejected: 1 error"#,
    ),
    (
        "bad_extra_apiserver_san",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[pki]
extra_apiserver_sans = ["k8s.example.internal", "K8S_API"]

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:9:49: error: extra_apiserver_sans entry "K8S_API" is neither an IP address nor a DNS name
  help: write an IP address or a lowercase DNS name
inventory rejected: 1 error"#,
    ),
    // --- ssh -----------------------------------------------------------------
    (
        "ssh_port_out_of_range",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[ssh]
user = "root"
port = 70000

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:10:8: error: ssh port 70000 is not a TCP port
  help: use a number from 1 to 65535
inventory rejected: 1 error"#,
    ),
    (
        "node_ssh_user_with_space",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
ssh = { user = "ops user" }
"#,
        r#"bad.toml:17:16: error: ssh user "ops user" is not a user name
  help: write the login name, for example "root" or "vagrant"
inventory rejected: 1 error"#,
    ),
    // --- nodes ---------------------------------------------------------------
    (
        "no_nodes",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"
"#,
        r#"bad.toml:1:1: error: the inventory has no nodes
  help: add at least one [[nodes]] table with name, address and roles
inventory rejected: 1 error"#,
    ),
    (
        "bad_node_name_uppercase",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "Worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:14:8: error: node name "Worker1" is not a DNS label
  help: use lowercase letters, digits and '-'; the name becomes the Kubernetes node name
inventory rejected: 1 error"#,
    ),
    (
        "duplicate_node_name",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "cp1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:14:8: error: duplicate node name "cp1" (first used on line 9)
  help: give every node its own name
inventory rejected: 1 error"#,
    ),
    (
        "duplicate_address",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.11"
roles = ["worker"]
"#,
        r#"bad.toml:15:11: error: node "worker1" has address 10.77.0.11, already used by node "cp1" on line 10
  help: give every node its own address
inventory rejected: 1 error"#,
    ),
    (
        "address_not_an_ip",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.256"
roles = ["worker"]
"#,
        r#"bad.toml:15:11: error: node "worker1": address "10.77.0.256" is not an IP address
  help: write a dotted IPv4 address, for example "10.77.0.11"
inventory rejected: 1 error"#,
    ),
    (
        "address_is_a_hostname_on_only_control_plane",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "cp1.example.com"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:10:11: error: node "cp1": address "cp1.example.com" is not an IP address
  help: write a dotted IPv4 address, for example "10.77.0.11"
inventory rejected: 1 error"#,
    ),
    (
        "ipv6_address",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "fd00:77::21"
roles = ["worker"]
"#,
        r#"bad.toml:15:11: error: node "worker1": address "fd00:77::21" is IPv6, which kubeforge does not support yet
  help: use an IPv4 address
inventory rejected: 1 error"#,
    ),
    (
        "loopback_address",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"

[[nodes]]
name = "cp1"
address = "127.0.0.1"
roles = ["etcd", "control-plane"]
"#,
        r#"bad.toml:9:11: error: address 127.0.0.1 of node "cp1" cannot be reached by other nodes
  help: use the address the node has on the cluster network
inventory rejected: 1 error"#,
    ),
    (
        "address_outside_node_cidr",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.78.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:15:11: error: address 10.78.0.21 of node "worker1" lies outside node_cidr 10.77.0.0/24
  help: fix the address or widen node_cidr
inventory rejected: 1 error"#,
    ),
    (
        "address_inside_service_cidr",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.96.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:14:11: error: address 10.96.0.21 of node "worker1" lies inside service_cidr 10.96.0.0/12
  help: node addresses, pods and services need separate ranges
inventory rejected: 1 error"#,
    ),
    (
        "no_control_plane",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:1:1: error: no node has the role "control-plane"
  help: add "control-plane" to the roles of one node (three for high availability)
inventory rejected: 1 error"#,
    ),
    (
        "no_etcd",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:1:1: error: no node has the role "etcd"
  help: add "etcd" to the roles of one node, or of three for high availability
inventory rejected: 1 error"#,
    ),
    (
        "unknown_role",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["master"]
"#,
        r#"bad.toml:16:10: error: unknown role "master" on node "worker1"
  help: use "etcd", "control-plane", "worker" or "lb"
inventory rejected: 1 error"#,
    ),
    (
        "empty_roles",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = []
"#,
        r#"bad.toml:16:9: error: node "worker1" has no roles
  help: give it one or more of "etcd", "control-plane", "worker", "lb"
inventory rejected: 1 error"#,
    ),
    (
        "duplicate_role",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane", "etcd"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:11:35: error: node "cp1" lists role "etcd" twice
  help: list each role once
inventory rejected: 1 error"#,
    ),
    (
        "bad_taint",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
taints = ["example.com/gpu=true:NoScheduled"]
"#,
        r#"bad.toml:17:11: error: taint "example.com/gpu=true:NoScheduled" on node "worker1" is not valid
  help: write KEY[=VALUE]:EFFECT with EFFECT NoSchedule, PreferNoSchedule or NoExecute
inventory rejected: 1 error"#,
    ),
    (
        "bad_label_value",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
labels = { "example.com/disk" = "fast ssd" }
"#,
        r#"bad.toml:17:33: error: label value "fast ssd" on node "worker1" is not valid
  help: use at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric
inventory rejected: 1 error"#,
    ),
    (
        "bad_label_key",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
labels = { "Example.com/disk" = "ssd" }
"#,
        r#"bad.toml:17:12: error: label key "Example.com/disk" on node "worker1" is not valid
  help: use [prefix/]name with letters, digits, '-', '_' or '.'
inventory rejected: 1 error"#,
    ),
    (
        "reserved_kubernetes_io_label",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
labels = { "topology.kubernetes.io/zone" = "a" }
"#,
        r#"bad.toml:17:12: error: label "topology.kubernetes.io/zone" on node "worker1" is in a namespace reserved for Kubernetes
  help: use a prefix of your own, for example "example.com/zone"
inventory rejected: 1 error"#,
    ),
    // --- load balancer -------------------------------------------------------
    (
        "multi_master_without_loadbalancer",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "cp2"
address = "10.77.0.12"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "cp3"
address = "10.77.0.13"
roles = ["etcd", "control-plane"]
"#,
        r#"bad.toml:1:1: error: 3 control-plane nodes need a [loadbalancer] with a virtual IP
  help: add [loadbalancer] with vip = "ADDRESS/PREFIX" and give two nodes the role "lb"
inventory rejected: 1 error"#,
    ),
    (
        "loadbalancer_without_lb_nodes",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
node_cidr = "10.77.0.0/24"

[loadbalancer]
vip = "10.77.0.100/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "lb1"
address = "10.77.0.31"
roles = ["worker"]

[[nodes]]
name = "lb2"
address = "10.77.0.32"
roles = ["worker"]
"#,
        r#"bad.toml:6:1: error: [loadbalancer] is set but no node has the role "lb"
  help: give two nodes the role "lb": they run nginx and keepalived for the VIP
inventory rejected: 1 error"#,
    ),
    (
        "lb_node_without_loadbalancer",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "lb1"
address = "10.77.0.31"
roles = ["lb"]

[[nodes]]
name = "lb2"
address = "10.77.0.32"
roles = ["lb"]
"#,
        r#"bad.toml:11:1: error: node "lb1" has the role "lb" but there is no [loadbalancer] section
  help: add [loadbalancer] with vip = "ADDRESS/PREFIX", or remove the role
inventory rejected: 1 error"#,
    ),
    (
        "loadbalancer_missing_vip",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
node_cidr = "10.77.0.0/24"

[loadbalancer]
port = 8443

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "lb1"
address = "10.77.0.31"
roles = ["lb"]

[[nodes]]
name = "lb2"
address = "10.77.0.32"
roles = ["lb"]
"#,
        r#"bad.toml:6:1: error: missing field `vip`
  help: add the missing key; `kubeforge init` writes a complete example
inventory rejected: 1 error"#,
    ),
    (
        "lb_node_address_not_an_ip",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
node_cidr = "10.77.0.0/24"

[loadbalancer]
vip = "10.77.0.100/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "lb1"
address = "10.77.0.31"
roles = ["lb"]

[[nodes]]
name = "lb2"
address = "lb2.example.com"
roles = ["lb"]
"#,
        r#"bad.toml:21:11: error: node "lb2": address "lb2.example.com" is not an IP address
  help: write a dotted IPv4 address, for example "10.77.0.11"
inventory rejected: 1 error"#,
    ),
    (
        "vip_is_a_node_address",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
node_cidr = "10.77.0.0/24"

[loadbalancer]
vip = "10.77.0.11/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "lb1"
address = "10.77.0.31"
roles = ["lb"]

[[nodes]]
name = "lb2"
address = "10.77.0.32"
roles = ["lb"]
"#,
        r#"bad.toml:7:7: error: vip 10.77.0.11 is the address of node "cp1"
  help: pick an address no host uses; keepalived moves it between the LB nodes
inventory rejected: 1 error"#,
    ),
    (
        "vip_outside_lb_subnet",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
node_cidr = "10.77.0.0/24"

[loadbalancer]
vip = "10.78.0.100/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "lb1"
address = "10.77.0.31"
roles = ["lb"]

[[nodes]]
name = "lb2"
address = "10.77.0.32"
roles = ["lb"]
"#,
        r#"bad.toml:7:7: error: vip 10.78.0.100/24 is outside the subnet of LB node "lb1" (10.77.0.31)
  help: the VIP must be in the subnet the LB nodes share; fix the address or the prefix
bad.toml:7:7: error: vip 10.78.0.100/24 is outside the subnet of LB node "lb2" (10.77.0.32)
  help: the VIP must be in the subnet the LB nodes share; fix the address or the prefix
inventory rejected: 2 errors"#,
    ),
    (
        "vip_without_prefix",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
node_cidr = "10.77.0.0/24"

[loadbalancer]
vip = "10.77.0.100"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "lb1"
address = "10.77.0.31"
roles = ["lb"]

[[nodes]]
name = "lb2"
address = "10.77.0.32"
roles = ["lb"]
"#,
        r#"bad.toml:7:7: error: vip "10.77.0.100" is not an IPv4 address with the prefix of its subnet
  help: write ADDRESS/PREFIX as on the LB nodes' interface, for example "10.77.0.100/24"
inventory rejected: 1 error"#,
    ),
    (
        "vip_is_broadcast_address",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
node_cidr = "10.77.0.0/24"

[loadbalancer]
vip = "10.77.0.255/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "lb1"
address = "10.77.0.31"
roles = ["lb"]

[[nodes]]
name = "lb2"
address = "10.77.0.32"
roles = ["lb"]
"#,
        r#"bad.toml:7:7: error: vip 10.77.0.255 is the network or broadcast address of 10.77.0.0/24
  help: pick a free host address in the LB nodes' subnet
inventory rejected: 1 error"#,
    ),
    (
        "loadbalancer_port_70000",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
node_cidr = "10.77.0.0/24"

[loadbalancer]
vip = "10.77.0.100/24"
port = 70000

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "lb1"
address = "10.77.0.31"
roles = ["lb"]

[[nodes]]
name = "lb2"
address = "10.77.0.32"
roles = ["lb"]
"#,
        r#"bad.toml:8:8: error: loadbalancer port 70000 is not a TCP port
  help: use a number from 1 to 65535
inventory rejected: 1 error"#,
    ),
    (
        "loadbalancer_port_is_apiserver_port_on_shared_node",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
node_cidr = "10.77.0.0/24"

[loadbalancer]
vip = "10.77.0.100/24"
port = 6443

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane", "lb"]

[[nodes]]
name = "lb1"
address = "10.77.0.31"
roles = ["lb"]

[[nodes]]
name = "lb2"
address = "10.77.0.32"
roles = ["lb"]
"#,
        r#"bad.toml:8:8: error: loadbalancer port 6443 is also the apiserver port on a node that runs both
  help: use another port for the load balancer, for example 8443
inventory rejected: 1 error"#,
    ),
    (
        "bad_interface_name",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
node_cidr = "10.77.0.0/24"

[loadbalancer]
vip = "10.77.0.100/24"
interface = "eth0 eth1"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "lb1"
address = "10.77.0.31"
roles = ["lb"]

[[nodes]]
name = "lb2"
address = "10.77.0.32"
roles = ["lb"]
"#,
        r#"bad.toml:8:13: error: interface "eth0 eth1" is not a network interface name
  help: name the LB nodes' interface that carries the VIP, for example "eth0"
inventory rejected: 1 error"#,
    ),
    (
        "virtual_router_id_300",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
node_cidr = "10.77.0.0/24"

[loadbalancer]
vip = "10.77.0.100/24"
virtual_router_id = 300

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "lb1"
address = "10.77.0.31"
roles = ["lb"]

[[nodes]]
name = "lb2"
address = "10.77.0.32"
roles = ["lb"]
"#,
        r#"bad.toml:8:21: error: virtual_router_id 300 is out of range
  help: use a number from 1 to 255, unique on the LB nodes' network
inventory rejected: 1 error"#,
    ),
    // --- versions and pod subnets ------------------------------------------
    (
        "version_with_plus_signs",
        r#"[cluster]
name = "demo"
kubernetes_version = "+1.+31.+4"
service_cidr = "10.96.0.0/12"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:3:22: error: kubernetes_version "+1.+31.+4" is not a version
  help: write MAJOR.MINOR.PATCH, for example "1.31.4"
inventory rejected: 1 error"#,
    ),
    (
        "version_with_leading_zero",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.04"
service_cidr = "10.96.0.0/12"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:3:22: error: kubernetes_version "1.31.04" is not a version
  help: write MAJOR.MINOR.PATCH, for example "1.31.4"
inventory rejected: 1 error"#,
    ),
    (
        "version_with_pre_release",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4-rc.1"
service_cidr = "10.96.0.0/12"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:3:22: error: kubernetes_version "1.31.4-rc.1" is not a version
  help: write MAJOR.MINOR.PATCH, for example "1.31.4"
inventory rejected: 1 error"#,
    ),
    (
        "version_with_build_metadata",
        r#"[cluster]
name = "demo"
kubernetes_version = "v1.31.4+k3s1"
service_cidr = "10.96.0.0/12"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:3:22: error: kubernetes_version "v1.31.4+k3s1" is not a version
  help: write MAJOR.MINOR.PATCH, for example "1.31.4"
inventory rejected: 1 error"#,
    ),
    (
        "version_with_space",
        r#"[cluster]
name = "demo"
kubernetes_version = " 1.31.4"
service_cidr = "10.96.0.0/12"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        r#"bad.toml:3:22: error: kubernetes_version " 1.31.4" is not a version
  help: write MAJOR.MINOR.PATCH, for example "1.31.4"
inventory rejected: 1 error"#,
    ),
    (
        "pod_cidr_too_small_for_kubelet_nodes",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/23"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]

[[nodes]]
name = "worker2"
address = "10.77.0.22"
roles = ["worker"]
"#,
        r#"bad.toml:5:12: error: pod_cidr 10.244.0.0/23 has room for 2 nodes with a /24 pod subnet each, but 3 nodes run a kubelet
  help: widen pod_cidr to a /22 or shorter prefix, or raise pod_subnet_prefix to 25: every control-plane and worker node gets one /24 of pod_cidr
inventory rejected: 1 error"#,
    ),
    (
        "pod_cidr_too_small_at_pod_subnet_prefix",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/27"
pod_subnet_prefix = 28
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]

[[nodes]]
name = "worker2"
address = "10.77.0.22"
roles = ["worker"]
"#,
        r#"bad.toml:5:12: error: pod_cidr 10.244.0.0/27 has room for 2 nodes with a /28 pod subnet each, but 3 nodes run a kubelet
  help: widen pod_cidr to a /26 or shorter prefix: every control-plane and worker node gets one /28 of pod_cidr
inventory rejected: 1 error"#,
    ),
    // --- several problems at once -------------------------------------------
    (
        "all_errors_reported_in_file_order",
        r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"
cni = "weave"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.11"
roles = ["worker", "gpu"]
"#,
        r#"bad.toml:7:7: error: unknown cni "weave"
  help: use one of "bridge", "flannel", "calico"
bad.toml:16:11: error: node "worker1" has address 10.77.0.11, already used by node "cp1" on line 11
  help: give every node its own address
bad.toml:17:20: error: unknown role "gpu" on node "worker1"
  help: use "etcd", "control-plane", "worker" or "lb"
inventory rejected: 3 errors"#,
    ),
];

/// Values that reach files on the nodes (systemd units, containerd's
/// config.toml and hosts.toml, keepalived.conf, manifests) or the ssh
/// command line, each broken with the syntax of where it goes: every one is
/// refused at its own file:line:col.
///
/// (case name, text of BASE_LB to replace, its replacement, exact expected
/// error text)
static VALUE_CASES: &[(&str, &str, &str, &str)] = &[
    // --- bin_dir: ExecStart= of every unit ------------------------------------
    (
        "bin_dir_newline_adds_a_systemd_directive",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nbin_dir = \"/usr/local/bin\\nExecStartPre=/bin/sh -c id\"\n",
        r#"bad.toml:5:11: error: bin_dir "/usr/local/bin\nExecStartPre=/bin/sh -c id" holds '\n'
  help: use letters, digits, '/', '.', '_', '-' and '+' only: the directory is written into every systemd unit
inventory rejected: 1 error"#,
    ),
    (
        "bin_dir_multiline_string_adds_a_section",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nbin_dir = '''/usr/local/bin\n[Service]\nUser=root'''\n",
        r#"bad.toml:5:11: error: bin_dir "/usr/local/bin\n[Service]\nUser=root" holds '\n'
  help: use letters, digits, '/', '.', '_', '-' and '+' only: the directory is written into every systemd unit
inventory rejected: 1 error"#,
    ),
    (
        "bin_dir_space_splits_exec_start",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nbin_dir = \"/usr/local/bin /tmp/payload\"\n",
        r#"bad.toml:5:11: error: bin_dir "/usr/local/bin /tmp/payload" holds ' '
  help: use letters, digits, '/', '.', '_', '-' and '+' only: the directory is written into every systemd unit
inventory rejected: 1 error"#,
    ),
    (
        "bin_dir_dollar_expands_in_units",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nbin_dir = \"/opt/${HOME}/bin\"\n",
        r#"bad.toml:5:11: error: bin_dir "/opt/${HOME}/bin" holds '$'
  help: use letters, digits, '/', '.', '_', '-' and '+' only: the directory is written into every systemd unit
inventory rejected: 1 error"#,
    ),
    (
        "bin_dir_backslash_continues_the_line",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nbin_dir = \"/usr/local/bin\\\\\"\n",
        r#"bad.toml:5:11: error: bin_dir "/usr/local/bin\\" holds '\\'
  help: use letters, digits, '/', '.', '_', '-' and '+' only: the directory is written into every systemd unit
inventory rejected: 1 error"#,
    ),
    (
        "bin_dir_dot_dot_component",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nbin_dir = \"/usr/local/../../tmp\"\n",
        r#"bad.toml:5:11: error: bin_dir "/usr/local/../../tmp" is not a normalised path
  help: write it without "." or ".." components, doubled slashes or a trailing slash, for example "/usr/local/bin"
inventory rejected: 1 error"#,
    ),
    (
        "bin_dir_double_slash",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nbin_dir = \"/usr//bin\"\n",
        r#"bad.toml:5:11: error: bin_dir "/usr//bin" is not a normalised path
  help: write it without "." or ".." components, doubled slashes or a trailing slash, for example "/usr/local/bin"
inventory rejected: 1 error"#,
    ),
    (
        "bin_dir_trailing_slash",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nbin_dir = \"/usr/local/bin/\"\n",
        r#"bad.toml:5:11: error: bin_dir "/usr/local/bin/" is not a normalised path
  help: write it without "." or ".." components, doubled slashes or a trailing slash, for example "/usr/local/bin"
inventory rejected: 1 error"#,
    ),
    // --- image_registry: the CoreDNS Deployment -------------------------------
    (
        "image_registry_yaml_privileged_container",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nimage_registry = \"registry.local/x\\n          securityContext: {privileged: true}\\n#\"\n",
        r#"bad.toml:5:18: error: image_registry "registry.local/x\n          securityContext: {privileged: true}\n#" is not a registry host: it holds '\n'
  help: write HOST[:PORT] and an optional /PATH prefix, without a tag, for example "registry.local:5000" or "registry.local/k8s"
inventory rejected: 1 error"#,
    ),
    (
        "image_registry_flow_mapping",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nimage_registry = \"registry.local/{privileged: true}\"\n",
        r#"bad.toml:5:18: error: image_registry "registry.local/{privileged: true}" is not a registry host: it holds '{'
  help: write HOST[:PORT] and an optional /PATH prefix, without a tag, for example "registry.local:5000" or "registry.local/k8s"
inventory rejected: 1 error"#,
    ),
    (
        "image_registry_single_label_host",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nimage_registry = \"registry\"\n",
        r#"bad.toml:5:18: error: image_registry "registry" is not a registry host: "registry" has no dot and no port, so image names would read it as a path on docker.io
  help: write HOST[:PORT] and an optional /PATH prefix, without a tag, for example "registry.local:5000" or "registry.local/k8s"
inventory rejected: 1 error"#,
    ),
    (
        "image_registry_with_tag",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nimage_registry = \"registry.local/k8s:v1\"\n",
        r#"bad.toml:5:18: error: image_registry "registry.local/k8s:v1" is not a registry host: it has a tag
  help: write HOST[:PORT] and an optional /PATH prefix, without a tag, for example "registry.local:5000" or "registry.local/k8s"
inventory rejected: 1 error"#,
    ),
    (
        "image_registry_uppercase_path",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nimage_registry = \"registry.local/K8s\"\n",
        r#"bad.toml:5:18: error: image_registry "registry.local/K8s" is not a registry host: its path is not lowercase letters and digits separated by '/', '.', '_', '__' or '-'
  help: write HOST[:PORT] and an optional /PATH prefix, without a tag, for example "registry.local:5000" or "registry.local/k8s"
inventory rejected: 1 error"#,
    ),
    (
        "image_registry_bad_port",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nimage_registry = \"registry.local:+5000\"\n",
        r#"bad.toml:5:18: error: image_registry "registry.local:+5000" is not a registry host: it holds '+'
  help: write HOST[:PORT] and an optional /PATH prefix, without a tag, for example "registry.local:5000" or "registry.local/k8s"
inventory rejected: 1 error"#,
    ),
    (
        "image_registry_port_out_of_range",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nimage_registry = \"registry.local:70000\"\n",
        r#"bad.toml:5:18: error: image_registry "registry.local:70000" is not a registry host: its port "70000" is not a number from 1 to 65535
  help: write HOST[:PORT] and an optional /PATH prefix, without a tag, for example "registry.local:5000" or "registry.local/k8s"
inventory rejected: 1 error"#,
    ),
    // --- sandbox_image: containerd's config.toml ------------------------------
    (
        "sandbox_image_toml_table",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nsandbox_image = \"registry.k8s.io/pause:3.10\\\"\\n[plugins.\\\"io.containerd.grpc.v1.cri\\\".containerd.runtimes.evil]\\n#\"\n",
        r#"bad.toml:5:17: error: sandbox_image "registry.k8s.io/pause:3.10\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.evil]\n#" is not an image reference: it holds '"'
  help: write [HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST] with a lowercase path, for example "registry.k8s.io/pause:3.10"
inventory rejected: 1 error"#,
    ),
    (
        "sandbox_image_closing_bracket",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nsandbox_image = \"registry.k8s.io/pause:3.10]\"\n",
        r#"bad.toml:5:17: error: sandbox_image "registry.k8s.io/pause:3.10]" is not an image reference: it holds ']'
  help: write [HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST] with a lowercase path, for example "registry.k8s.io/pause:3.10"
inventory rejected: 1 error"#,
    ),
    (
        "sandbox_image_uppercase_path",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nsandbox_image = \"registry.k8s.io/Pause:3.10\"\n",
        r#"bad.toml:5:17: error: sandbox_image "registry.k8s.io/Pause:3.10" is not an image reference: its path has upper-case letters
  help: write [HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST] with a lowercase path, for example "registry.k8s.io/pause:3.10"
inventory rejected: 1 error"#,
    ),
    (
        "sandbox_image_bad_digest",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nsandbox_image = \"registry.k8s.io/pause@sha256:1234\"\n",
        r#"bad.toml:5:17: error: sandbox_image "registry.k8s.io/pause@sha256:1234" is not an image reference: it does not follow the image reference grammar
  help: write [HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST] with a lowercase path, for example "registry.k8s.io/pause:3.10"
inventory rejected: 1 error"#,
    ),
    // --- registry_mirrors: hosts.toml and its directory -----------------------
    (
        "registry_mirror_key_leaves_certs_d",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nregistry_mirrors = { \"../../systemd/system\" = \"https://registry.local\" }\n",
        r#"bad.toml:5:22: error: registry_mirrors key "../../systemd/system" is not a registry host
  help: write the registry as images name it, for example "docker.io" or "registry.k8s.io"
inventory rejected: 1 error"#,
    ),
    (
        "registry_mirror_key_toml_quote",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nregistry_mirrors = { \"docker.io\\\"\\n[x]\" = \"https://registry.local\" }\n",
        r#"bad.toml:5:22: error: registry_mirrors key "docker.io\"\n[x]" is not a registry host
  help: write the registry as images name it, for example "docker.io" or "registry.k8s.io"
inventory rejected: 1 error"#,
    ),
    (
        "registry_mirror_url_toml_table",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nregistry_mirrors = { \"docker.io\" = \"https://registry.local\\\"]\\ncapabilities = [\\\"push\\\"]\\n[x.\\\"\" }\n",
        r#"bad.toml:5:36: error: mirror "https://registry.local\"]\ncapabilities = [\"push\"]\n[x.\"" of docker.io holds '"'
  help: write the mirror's URL without white space, quotes, backslashes or braces, for example "https://registry.local:5000"
inventory rejected: 1 error"#,
    ),
    (
        "registry_mirror_url_space",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nregistry_mirrors = { \"docker.io\" = \"https://registry.local /x\" }\n",
        r#"bad.toml:5:36: error: mirror "https://registry.local /x" of docker.io holds ' '
  help: write the mirror's URL without white space, quotes, backslashes or braces, for example "https://registry.local:5000"
inventory rejected: 1 error"#,
    ),
    (
        "registry_mirror_url_credentials",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nregistry_mirrors = { \"docker.io\" = \"https://ops:secret@registry.local\" }\n",
        r#"bad.toml:5:36: error: mirror "https://ops:secret@registry.local" of docker.io holds a user name or password
  help: remove USER:PASSWORD@ from the URL: it is written in plain text to every node
inventory rejected: 1 error"#,
    ),
    (
        "registry_mirror_url_query",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nregistry_mirrors = { \"docker.io\" = \"https://registry.local/?ns=docker.io\" }\n",
        r#"bad.toml:5:36: error: mirror "https://registry.local/?ns=docker.io" of docker.io has a query or a fragment
  help: write the scheme, host, port and path only, for example "https://registry.local:5000/docker"
inventory rejected: 1 error"#,
    ),
    (
        "registry_mirror_url_not_http",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\nregistry_mirrors = { \"docker.io\" = \"ftp://registry.local\" }\n",
        r#"bad.toml:5:36: error: mirror "ftp://registry.local" of docker.io is not an http(s) URL
  help: write the mirror's URL, for example "https://registry.local:5000"
inventory rejected: 1 error"#,
    ),
    // --- interface: keepalived.conf -------------------------------------------
    (
        "interface_newline_closes_the_block",
        "vip = \"10.77.0.100/24\"\n",
        "vip = \"10.77.0.100/24\"\ninterface = \"eth0\\n}\\nvrrp_script evil {\"\n",
        r#"bad.toml:8:13: error: interface "eth0\n}\nvrrp_script evil {" is not a network interface name
  help: name the LB nodes' interface that carries the VIP, for example "eth0"
inventory rejected: 1 error"#,
    ),
    (
        "interface_brace",
        "vip = \"10.77.0.100/24\"\n",
        "vip = \"10.77.0.100/24\"\ninterface = \"eth0{\"\n",
        r#"bad.toml:8:13: error: interface "eth0{" holds '{'
  help: use letters, digits, '.', '_' and '-' only: the name is written into keepalived.conf
inventory rejected: 1 error"#,
    ),
    (
        "interface_dollar_variable",
        "vip = \"10.77.0.100/24\"\n",
        "vip = \"10.77.0.100/24\"\ninterface = \"$IFACE\"\n",
        r#"bad.toml:8:13: error: interface "$IFACE" holds '$'
  help: use letters, digits, '.', '_' and '-' only: the name is written into keepalived.conf
inventory rejected: 1 error"#,
    ),
    (
        "interface_too_long",
        "vip = \"10.77.0.100/24\"\n",
        "vip = \"10.77.0.100/24\"\ninterface = \"enp0s31f6-uplink\"\n",
        r#"bad.toml:8:13: error: interface "enp0s31f6-uplink" is longer than the 15 bytes of an interface name
  help: name the LB nodes' interface that carries the VIP, for example "eth0"
inventory rejected: 1 error"#,
    ),
    (
        "interface_alias_colon",
        "vip = \"10.77.0.100/24\"\n",
        "vip = \"10.77.0.100/24\"\ninterface = \"eth0:1\"\n",
        r#"bad.toml:8:13: error: interface "eth0:1" holds ':', which interface names cannot hold
  help: name the LB nodes' interface that carries the VIP, for example "eth0"
inventory rejected: 1 error"#,
    ),
    (
        "interface_dot_dot",
        "vip = \"10.77.0.100/24\"\n",
        "vip = \"10.77.0.100/24\"\ninterface = \"..\"\n",
        r#"bad.toml:8:13: error: interface ".." is not a network interface name
  help: name the LB nodes' interface that carries the VIP, for example "eth0"
inventory rejected: 1 error"#,
    ),
    // --- nginx_user: nginx.conf ------------------------------------------------
    (
        "nginx_user_semicolon_adds_a_directive",
        "vip = \"10.77.0.100/24\"\n",
        "vip = \"10.77.0.100/24\"\nnginx_user = \"www-data; load_module /tmp/x.so\"\n",
        r#"bad.toml:8:14: error: nginx_user "www-data; load_module /tmp/x.so" is not a system user name
  help: name the user nginx's workers run as ("www-data" on Debian and Ubuntu, "nginx" on RHEL and Fedora), or leave nginx_user out for the nginx package's own default
inventory rejected: 1 error"#,
    ),
    (
        "nginx_user_upper_case",
        "vip = \"10.77.0.100/24\"\n",
        "vip = \"10.77.0.100/24\"\nnginx_user = \"WWW\"\n",
        r#"bad.toml:8:14: error: nginx_user "WWW" is not a system user name
  help: name the user nginx's workers run as ("www-data" on Debian and Ubuntu, "nginx" on RHEL and Fedora), or leave nginx_user out for the nginx package's own default
inventory rejected: 1 error"#,
    ),
    // --- other values of units, manifests and configs -------------------------
    (
        "cluster_name_newline",
        "name = \"demo\"\n",
        "name = \"demo\\nExecStartPre=/bin/sh\"\n",
        r#"bad.toml:2:8: error: cluster name "demo\nExecStartPre=/bin/sh" is not a DNS label
  help: use lowercase letters, digits and '-', at most 63 characters
inventory rejected: 1 error"#,
    ),
    (
        "kubernetes_version_newline",
        "kubernetes_version = \"1.31.4\"\n",
        "kubernetes_version = \"1.31.4\\n[x]\"\n",
        r#"bad.toml:3:22: error: kubernetes_version "1.31.4\n[x]" is not a version
  help: write MAJOR.MINOR.PATCH, for example "1.31.4"
inventory rejected: 1 error"#,
    ),
    (
        "cluster_domain_extra_flag",
        "node_cidr = \"10.77.0.0/24\"\n",
        "node_cidr = \"10.77.0.0/24\"\ncluster_domain = \"cluster.local --authorization-mode=AlwaysAllow\"\n",
        r#"bad.toml:5:18: error: cluster_domain "cluster.local --authorization-mode=AlwaysAllow" is not a DNS name
  help: use lowercase DNS labels separated by dots, for example "cluster.local"
inventory rejected: 1 error"#,
    ),
    (
        "node_name_shell_quote",
        "name = \"lb2\"\n",
        "name = \"lb2'; id; '\"\n",
        r#"bad.toml:20:8: error: node name "lb2'; id; '" is not a DNS label
  help: use lowercase letters, digits and '-'; the name becomes the Kubernetes node name
inventory rejected: 1 error"#,
    ),
    (
        "label_value_yaml",
        "name = \"lb2\"\naddress = \"10.77.0.32\"\nroles = [\"lb\"]\n",
        "name = \"lb2\"\naddress = \"10.77.0.32\"\nroles = [\"lb\"]\nlabels = { zone = \"a\\n- --anonymous-auth=true\" }\n",
        r#"bad.toml:23:19: error: label value "a\n- --anonymous-auth=true" on node "lb2" is not valid
  help: use at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric
inventory rejected: 1 error"#,
    ),
    (
        "label_key_adds_a_label",
        "name = \"lb2\"\naddress = \"10.77.0.32\"\nroles = [\"lb\"]\n",
        "name = \"lb2\"\naddress = \"10.77.0.32\"\nroles = [\"lb\"]\nlabels = { \"zone=a,node-role.kubernetes.io/control-plane\" = \"b\" }\n",
        r#"bad.toml:23:12: error: label key "zone=a,node-role.kubernetes.io/control-plane" on node "lb2" is not valid
  help: use [prefix/]name with letters, digits, '-', '_' or '.'
inventory rejected: 1 error"#,
    ),
    (
        "taint_extra_flag",
        "name = \"lb2\"\naddress = \"10.77.0.32\"\nroles = [\"lb\"]\n",
        "name = \"lb2\"\naddress = \"10.77.0.32\"\nroles = [\"lb\"]\ntaints = [\"a=b:NoSchedule --anonymous-auth=true\"]\n",
        r#"bad.toml:23:11: error: taint "a=b:NoSchedule --anonymous-auth=true" on node "lb2" is not valid
  help: write KEY[=VALUE]:EFFECT with EFFECT NoSchedule, PreferNoSchedule or NoExecute
inventory rejected: 1 error"#,
    ),
    (
        "extra_apiserver_san_list",
        "\n[loadbalancer]\n",
        "\n[pki]\nextra_apiserver_sans = [\"api.example.com,*.evil.example\"]\n\n[loadbalancer]\n",
        r#"bad.toml:7:25: error: extra_apiserver_sans entry "api.example.com,*.evil.example" is neither an IP address nor a DNS name
  help: write an IP address or a lowercase DNS name
inventory rejected: 1 error"#,
    ),
    (
        "extra_apiserver_san_double_wildcard",
        "\n[loadbalancer]\n",
        "\n[pki]\nextra_apiserver_sans = [\"*.*.example.com\"]\n\n[loadbalancer]\n",
        r#"bad.toml:7:25: error: extra_apiserver_sans entry "*.*.example.com" is neither an IP address nor a DNS name
  help: write an IP address or a lowercase DNS name
inventory rejected: 1 error"#,
    ),
    (
        "ssh_user_is_an_option",
        "\n[loadbalancer]\n",
        "\n[ssh]\nuser = \"-oProxyCommand=sh -c id\"\n\n[loadbalancer]\n",
        r#"bad.toml:7:8: error: ssh user "-oProxyCommand=sh -c id" is not a user name
  help: write the login name, for example "root" or "vagrant"
inventory rejected: 1 error"#,
    ),
    (
        "ssh_user_with_at",
        "name = \"lb2\"\naddress = \"10.77.0.32\"\nroles = [\"lb\"]\n",
        "name = \"lb2\"\naddress = \"10.77.0.32\"\nroles = [\"lb\"]\nssh = { user = \"root@10.0.0.1\" }\n",
        r#"bad.toml:23:16: error: ssh user "root@10.0.0.1" is not a user name
  help: write the login name, for example "root" or "vagrant"
inventory rejected: 1 error"#,
    ),
    (
        "ssh_key_newline",
        "\n[loadbalancer]\n",
        "\n[ssh]\nkey = \"~/.ssh/id\\nProxyCommand sh\"\n\n[loadbalancer]\n",
        r#"bad.toml:7:7: error: ssh key "~/.ssh/id\nProxyCommand sh" is not a file path
  help: write the path of the private key on this machine, for example "~/.ssh/id_ed25519"
inventory rejected: 1 error"#,
    ),
];

fn load_error_text(toml: &str) -> String {
    match parse(Path::new("bad.toml"), toml) {
        Ok(loaded) => {
            let mut s = String::from("<accepted>");
            for w in &loaded.warnings {
                s.push('\n');
                s.push_str(&w.to_string());
            }
            s
        }
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_inventories_are_rejected_with_exact_messages() {
    assert!(CASES.len() >= 32, "only {} cases", CASES.len());
    let mut names = BTreeSet::new();
    for (name, _, _) in CASES {
        assert!(names.insert(*name), "case name {name:?} is used twice");
    }

    let mut failures = Vec::new();
    for (name, toml, expected) in CASES {
        let actual = load_error_text(toml);
        if actual != *expected {
            failures.push(format!(
                "=== case {name}\n--- expected\n{expected}\n--- actual\n{actual}\n"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases did not match:\n\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn values_that_reach_files_are_refused_with_exact_messages() {
    assert!(VALUE_CASES.len() >= 20, "only {} cases", VALUE_CASES.len());
    let mut names: BTreeSet<&str> = CASES.iter().map(|(name, _, _)| *name).collect();
    for (name, _, _, _) in VALUE_CASES {
        assert!(names.insert(*name), "case name {name:?} is used twice");
    }

    let mut failures = Vec::new();
    for (name, from, to, expected) in VALUE_CASES {
        assert_eq!(
            BASE_LB.matches(*from).count(),
            1,
            "case {name}: {from:?} is not found once in BASE_LB"
        );
        let toml = BASE_LB.replacen(*from, to, 1);
        let actual = load_error_text(&toml);
        if actual != *expected {
            failures.push(format!(
                "=== case {name}\n--- expected\n{expected}\n--- actual\n{actual}\n"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases did not match:\n\n{}",
        failures.len(),
        VALUE_CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn bases_load_without_findings() {
    for (name, base) in [("BASE_SINGLE", BASE_SINGLE), ("BASE_LB", BASE_LB)] {
        match parse(Path::new("bad.toml"), base) {
            Ok(loaded) => assert!(
                loaded.warnings.is_empty(),
                "{name} warns: {:?}",
                loaded.warnings
            ),
            Err(e) => panic!("{name} is rejected:\n{e}"),
        }
    }
}

#[test]
fn values_of_the_allowed_forms_load() {
    let digest = "a".repeat(64);
    let cluster = format!(
        r#"bin_dir = "/opt/k8s-1.31+lab/bin"
image_registry = "registry.local:5000/mirror/k8s/"
sandbox_image = "registry.local:5000/mirror/k8s/pause:3.10@sha256:{digest}"
registry_mirrors = {{ "docker.io" = "https://registry.local:5000/docker/", "localhost:5001" = "http://10.77.0.5:5001", "quay.io" = "https://[fd00::5]:5000" }}
cluster_domain = "k8s.example"

[pki]
extra_apiserver_sans = ["api.example.com", "*.api.example.com", "10.77.0.200"]

[ssh]
user = "ops.admin_1"
key = "~/.ssh/id_ed25519"
"#
    );
    let text = BASE_LB
        .replacen(
            "kubernetes_version = \"1.31.4\"",
            "kubernetes_version = \"v1.31.0\"",
            1,
        )
        .replacen(
            "node_cidr = \"10.77.0.0/24\"\n",
            &format!("node_cidr = \"10.77.0.0/24\"\n{cluster}"),
            1,
        )
        .replacen(
            "vip = \"10.77.0.100/24\"\n",
            "vip = \"10.77.0.100/24\"\ninterface = \"enp0s31f6.100\"\nnginx_user = \"www-data\"\n",
            1,
        );
    let loaded = match parse(Path::new("good.toml"), &text) {
        Ok(loaded) => loaded,
        Err(e) => panic!("rejected:\n{e}\n{text}"),
    };
    let c = &loaded.cluster;
    assert_eq!(c.version.to_string(), "v1.31.0");
    assert_eq!(c.bin_dir, "/opt/k8s-1.31+lab/bin");
    assert_eq!(c.image_registry, "registry.local:5000/mirror/k8s");
    assert_eq!(
        c.registry_mirrors.get("docker.io").map(String::as_str),
        Some("https://registry.local:5000/docker")
    );
    assert_eq!(
        c.loadbalancer.as_ref().map(|lb| lb.interface.as_str()),
        Some("enp0s31f6.100")
    );
    assert_eq!(
        c.loadbalancer
            .as_ref()
            .and_then(|lb| lb.nginx_user.as_deref()),
        Some("www-data")
    );
}

#[test]
fn warnings_are_reported_and_the_inventory_still_loads() {
    let two_etcd = r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
service_cidr = "10.96.0.0/12"
pod_cidr = "10.244.0.0/16"
node_cidr = "10.77.0.0/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["etcd", "worker"]
"#;
    let one_lb = r#"[cluster]
name = "demo"
kubernetes_version = "1.31.4"
node_cidr = "10.77.0.0/24"

[loadbalancer]
vip = "10.77.0.100/24"

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "lb1"
address = "10.77.0.31"
roles = ["lb"]
"#;
    let cases = [
        (
            "two_etcd_members",
            two_etcd,
            r#"bad.toml:1:1: warning: 2 etcd members tolerate no more failures than 1
  help: use an odd number of etcd members"#,
        ),
        (
            "one_lb_node",
            one_lb,
            r#"bad.toml:6:1: warning: only one node has the role "lb": the VIP has no standby
  help: give a second node the role "lb""#,
        ),
    ];
    let mut failures = Vec::new();
    for (name, toml, expected) in cases {
        let loaded = match parse(Path::new("bad.toml"), toml) {
            Ok(loaded) => loaded,
            Err(e) => {
                failures.push(format!("=== case {name}: rejected\n{e}\n"));
                continue;
            }
        };
        assert!(loaded
            .warnings
            .iter()
            .all(|w| w.severity == Severity::Warning));
        let actual = loaded
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        if actual != expected {
            failures.push(format!(
                "=== case {name}\n--- expected\n{expected}\n--- actual\n{actual}\n"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn example_inventories_load_without_errors() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    for rel in [
        "inventories/single.toml",
        "inventories/ha.toml",
        "inventories/vagrant/inventory.toml",
    ] {
        let path = root.join(rel);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        if let Err(e) = parse(Path::new(rel), &text) {
            panic!("{rel} is rejected:\n{e}");
        }
    }
}
