//! The CNI choices (`cni = "bridge" | "flannel" | "calico"`): every addon
//! manifest is a multi-document YAML of complete API objects carrying the
//! cluster's pod range and the configured image registry, and the node side
//! (CNI configuration, pod routes, CNI plugin binaries, controller-manager
//! flags) matches the CNI.
#![allow(clippy::unwrap_used)]

use kubeforge_inventory::Cluster;
use kubeforge_render::Rendered;
use serde::Deserialize as _;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const CNIS: [&str; 3] = ["bridge", "flannel", "calico"];
const ADDON_DIR: &str = "/etc/kubernetes/addons/";
const MIRROR: &str = "registry.local:5000";

/// Kinds the manifests use that are not namespaced.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
];

/// The CustomResourceDefinitions calico-node and calico-kube-controllers use.
const CALICO_CRDS: &[&str] = &[
    "bgpconfigurations",
    "bgpfilters",
    "bgppeers",
    "blockaffinities",
    "caliconodestatuses",
    "clusterinformations",
    "felixconfigurations",
    "globalnetworkpolicies",
    "globalnetworksets",
    "hostendpoints",
    "ipamblocks",
    "ipamconfigs",
    "ipamhandles",
    "ippools",
    "ipreservations",
    "kubecontrollersconfigurations",
    "networkpolicies",
    "networksets",
    "tiers",
];

fn inventory() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../inventories/single.toml")
}

/// The single example with `cni`, a pod range of 10.200.0.0/16 in /26
/// subnets, and `image_registry` when given.
struct Case {
    cluster: Cluster,
    prepared: kubeforge_render::Prepared,
    _state: tempfile::TempDir,
}

fn case(cni: &str, registry: Option<&str>) -> Case {
    let base = std::fs::read_to_string(inventory()).unwrap();
    let mut extra = "pod_subnet_prefix = 26\n".to_string();
    if let Some(r) = registry {
        extra.push_str(&format!("image_registry = \"{r}\"\n"));
    }
    let text = base
        .replace("cni = \"bridge\"", &format!("cni = \"{cni}\""))
        .replace(
            "pod_cidr = \"10.244.0.0/16\"",
            "pod_cidr = \"10.200.0.0/16\"",
        )
        .replace("[ssh]", &format!("{extra}\n[ssh]"));
    let loaded = kubeforge_inventory::parse(&inventory(), &text).unwrap();
    assert_eq!(
        serde_json::to_value(loaded.cluster.cni).unwrap(),
        Value::from(cni)
    );
    assert_eq!(loaded.cluster.pod_cidr.to_string(), "10.200.0.0/16");
    assert_eq!(loaded.cluster.pod_subnet_prefix, 26);
    let state = tempfile::tempdir().unwrap();
    let prepared =
        kubeforge_render::prepare(state.path(), &loaded.cluster, &Default::default()).unwrap();
    Case {
        cluster: loaded.cluster,
        prepared,
        _state: state,
    }
}

/// Every document of a manifest, parsed; empty documents are an error.
fn documents(path: &str, text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .enumerate()
        .map(|(i, doc)| {
            let v = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{path}: document {}: {e}", i + 1));
            assert!(v.is_object(), "{path}: document {} is not an object", i + 1);
            v
        })
        .collect()
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn describe(v: &Value) -> String {
    format!(
        "{} {}/{}",
        str_at(v, "/kind").unwrap_or("?"),
        str_at(v, "/metadata/namespace").unwrap_or("-"),
        str_at(v, "/metadata/name").unwrap_or("?")
    )
}

/// Every `image` anywhere in an object.
fn images(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                match (k.as_str(), child) {
                    ("image", Value::String(s)) => out.push(s.clone()),
                    _ => images(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| images(i, out)),
        _ => {}
    }
}

/// The addon manifests of a node, by path.
fn addon_manifests(rendered: &Rendered, node: &str) -> BTreeMap<String, String> {
    let tree = rendered.nodes.iter().find(|n| n.name == node).unwrap();
    tree.files
        .values()
        .filter(|f| f.path.starts_with(ADDON_DIR))
        .map(|f| {
            (
                f.path.clone(),
                String::from_utf8(f.content.clone()).unwrap(),
            )
        })
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| str_at(d, "/kind") == Some(kind) && str_at(d, "/metadata/name") == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| str_at(c, "/name") == Some(name)))
        .unwrap_or_else(|| panic!("no container {name} in {}", describe(workload)))
}

fn env(container: &Value) -> BTreeMap<String, String> {
    container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                str_at(e, "/name")?.to_string(),
                str_at(e, "/value")?.to_string(),
            ))
        })
        .collect()
}

/// Every document of every addon manifest, for every CNI, with and without
/// `image_registry`: complete objects, namespaces where they belong,
/// namespaces and CRDs before what uses them, images from the configured
/// registry, and the pod range where the CNI reads it.
#[test]
fn addon_manifests_are_complete_objects() {
    for cni in CNIS {
        for registry in [None, Some(MIRROR)] {
            let c = case(cni, registry);
            let rendered = &c.prepared.rendered;
            let what = format!("cni {cni}, image_registry {registry:?}");

            // Only the control-plane node holds addon manifests.
            for worker in ["worker1", "worker2"] {
                assert!(addon_manifests(rendered, worker).is_empty(), "{what}");
            }
            let manifests = addon_manifests(rendered, "cp1");
            let cni_manifest = format!("{ADDON_DIR}{cni}.yaml");
            assert_eq!(
                manifests.contains_key(&cni_manifest),
                cni != "bridge",
                "{what}: {:?}",
                manifests.keys()
            );
            for other in ["flannel", "calico"].iter().filter(|o| **o != cni) {
                assert!(!manifests.contains_key(&format!("{ADDON_DIR}{other}.yaml")));
            }

            let mut seen = BTreeSet::new();
            let mut all_images = Vec::new();
            for (path, text) in &manifests {
                let docs = documents(path, text);
                assert!(!docs.is_empty(), "{what}: {path} is empty");
                let mut namespaces = BTreeSet::new();
                let mut non_crd_seen = false;
                for d in &docs {
                    let id = describe(d);
                    for field in ["/apiVersion", "/kind", "/metadata/name"] {
                        assert!(
                            str_at(d, field).is_some_and(|s| !s.is_empty()),
                            "{what}: {path}: {id} has no {field}"
                        );
                    }
                    let kind = str_at(d, "/kind").unwrap_or_default();
                    let ns = str_at(d, "/metadata/namespace");
                    if CLUSTER_SCOPED.contains(&kind) {
                        assert!(ns.is_none(), "{what}: {path}: {id} is cluster-scoped");
                    } else {
                        let ns =
                            ns.unwrap_or_else(|| panic!("{what}: {path}: {id} has no namespace"));
                        // A namespace the manifest creates comes before
                        // the objects in it.
                        let created_here = docs.iter().any(|o| {
                            str_at(o, "/kind") == Some("Namespace")
                                && str_at(o, "/metadata/name") == Some(ns)
                        });
                        assert!(
                            !created_here || namespaces.contains(ns),
                            "{what}: {path}: {id} comes before its Namespace"
                        );
                    }
                    if kind == "Namespace" {
                        namespaces.insert(str_at(d, "/metadata/name").unwrap_or_default());
                    }
                    // CRDs come first: nothing after them is applied before
                    // they exist.
                    if kind == "CustomResourceDefinition" {
                        assert!(!non_crd_seen, "{what}: {path}: {id} after other objects");
                    } else {
                        non_crd_seen = true;
                    }
                    assert!(seen.insert(id.clone()), "{what}: {id} twice");
                    images(d, &mut all_images);
                }
            }

            // Images: the configured registry when set; otherwise CoreDNS
            // from registry.k8s.io and the CNI's from docker.io.
            let cni_images = kubeforge_render::cni_images(&c.cluster);
            assert_eq!(cni_images.is_empty(), cni == "bridge", "{what}");
            for image in &all_images {
                match registry {
                    Some(r) => assert!(
                        image.starts_with(&format!("{r}/")),
                        "{what}: {image} is not from {r}"
                    ),
                    None => assert!(
                        image.starts_with("registry.k8s.io/coredns/")
                            || image.starts_with("docker.io/flannel/")
                            || image.starts_with("docker.io/calico/"),
                        "{what}: {image}"
                    ),
                }
                assert!(
                    image.contains("coredns") || cni_images.contains(image),
                    "{what}: {image} is not one of {cni_images:?}"
                );
            }
            for image in &cni_images {
                assert!(all_images.contains(image), "{what}: {image} unused");
            }

            match cni {
                "flannel" => check_flannel(&what, &documents("", &manifests[&cni_manifest])),
                "calico" => check_calico(&what, &documents("", &manifests[&cni_manifest])),
                _ => {}
            }
        }
    }
}

fn check_flannel(what: &str, docs: &[Value]) {
    let ns = find(docs, "Namespace", "kube-flannel");
    assert_eq!(
        str_at(ns, "/metadata/labels/pod-security.kubernetes.io~1enforce"),
        Some("privileged"),
        "{what}"
    );
    let cfg = find(docs, "ConfigMap", "kube-flannel-cfg");
    let net: Value = serde_json::from_str(str_at(cfg, "/data/net-conf.json").unwrap()).unwrap();
    assert_eq!(net["Network"], "10.200.0.0/16", "{what}");
    assert_eq!(net["SubnetLen"], 26, "{what}");
    assert_eq!(net["Backend"]["Type"], "vxlan", "{what}");
    let conf: Value = serde_json::from_str(str_at(cfg, "/data/cni-conf.json").unwrap()).unwrap();
    let types: Vec<&str> = conf["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert_eq!(types, ["flannel", "portmap"], "{what}");

    let ds = find(docs, "DaemonSet", "kube-flannel-ds");
    let inits: Vec<&str> = ds
        .pointer("/spec/template/spec/initContainers")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .filter_map(|c| str_at(c, "/name"))
        .collect();
    assert_eq!(inits, ["install-cni-plugin", "install-cni"], "{what}");
    let flannel = container(ds, "kube-flannel");
    let args: Vec<&str> = flannel["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--kube-subnet-mgr"), "{what}: {args:?}");
    // --iface names the node's address, from the downward API.
    assert!(args.contains(&"--iface=$(NODE_IP)"), "{what}: {args:?}");
    let node_ip = flannel["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "NODE_IP")
        .unwrap();
    assert_eq!(
        str_at(node_ip, "/valueFrom/fieldRef/fieldPath"),
        Some("status.hostIP")
    );
}

fn check_calico(what: &str, docs: &[Value]) {
    let crds: BTreeSet<&str> = docs
        .iter()
        .filter(|d| str_at(d, "/kind") == Some("CustomResourceDefinition"))
        .filter_map(|d| str_at(d, "/metadata/name"))
        .collect();
    for plural in CALICO_CRDS {
        let name = format!("{plural}.crd.projectcalico.org");
        assert!(crds.contains(name.as_str()), "{what}: no CRD {name}");
        let crd = find(docs, "CustomResourceDefinition", &name);
        assert_eq!(str_at(crd, "/spec/names/plural"), Some(*plural));
        let version = crd.pointer("/spec/versions/0").unwrap();
        assert_eq!(version["served"], true);
        assert_eq!(version["storage"], true);
        let schema = version.pointer("/schema/openAPIV3Schema").unwrap();
        assert_eq!(schema["type"], "object", "{name}");
        assert_eq!(
            schema["properties"]["spec"]["x-kubernetes-preserve-unknown-fields"], true,
            "{name}"
        );
    }
    assert!(crds.contains("adminnetworkpolicies.policy.networking.k8s.io"));

    let cfg = find(docs, "ConfigMap", "calico-config");
    assert_eq!(str_at(cfg, "/data/calico_backend"), Some("vxlan"), "{what}");

    let ds = find(docs, "DaemonSet", "calico-node");
    assert_eq!(str_at(ds, "/metadata/namespace"), Some("kube-system"));
    let inits: Vec<&str> = ds
        .pointer("/spec/template/spec/initContainers")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .filter_map(|c| str_at(c, "/name"))
        .collect();
    assert_eq!(
        inits,
        ["upgrade-ipam", "install-cni", "mount-bpffs"],
        "{what}"
    );
    let env = env(container(ds, "calico-node"));
    assert_eq!(env["DATASTORE_TYPE"], "kubernetes");
    assert_eq!(env["CALICO_IPV4POOL_CIDR"], "10.200.0.0/16", "{what}");
    assert_eq!(env["CALICO_IPV4POOL_BLOCK_SIZE"], "26", "{what}");
    assert_eq!(env["CALICO_IPV4POOL_VXLAN"], "CrossSubnet");
    assert_eq!(env["CALICO_IPV4POOL_IPIP"], "Never");
    assert_eq!(env["IP_AUTODETECTION_METHOD"], "kubernetes-internal-ip");

    let kc = find(docs, "Deployment", "calico-kube-controllers");
    assert_eq!(
        env_of(container(kc, "calico-kube-controllers"), "DATASTORE_TYPE"),
        "kubernetes"
    );
}

fn env_of(c: &Value, name: &str) -> String {
    env(c).remove(name).unwrap_or_default()
}

/// The node side per CNI: the bridge configuration and pod routes only with
/// the bridge CNI, the bundle's CNI plugins with bridge and flannel (calico
/// installs its own), and node subnets allocated by the controller manager
/// for flannel and calico.
#[test]
fn node_side_matches_the_cni() {
    for cni in CNIS {
        let c = case(cni, None);
        let bridge = cni == "bridge";
        let mut rendered = c.prepared.rendered.clone();
        let renderer = &c.prepared.renderer;
        let bundle: BTreeMap<String, (PathBuf, String)> = renderer
            .table()
            .binary
            .iter()
            .map(|b| {
                (
                    b.name.clone(),
                    (PathBuf::from(format!("/bundle/{}", b.name)), "0".repeat(64)),
                )
            })
            .collect();
        renderer.add_binaries(&c.cluster, &mut rendered, &bundle);
        for tree in &rendered.nodes {
            if !["cp1", "worker1", "worker2"].contains(&tree.name.as_str()) {
                continue;
            }
            let what = format!("cni {cni}, node {}", tree.name);
            let has = |p: &str| tree.files.contains_key(p);
            assert_eq!(
                has("/etc/cni/net.d/10-kubeforge.conflist"),
                bridge,
                "{what}"
            );
            assert_eq!(has("/etc/kubeforge/pod-routes.sh"), bridge, "{what}");
            assert_eq!(
                has("/etc/systemd/system/kubeforge-pod-routes.service"),
                bridge,
                "{what}"
            );
            assert_eq!(
                tree.units.iter().any(|u| u.name == "kubeforge-pod-routes"),
                bridge,
                "{what}"
            );
            assert_eq!(
                tree.steps.iter().any(|s| s.run.contains("route replace")),
                bridge,
                "{what}"
            );
            for plugin in ["bridge", "host-local", "portmap", "loopback"] {
                assert_eq!(
                    has(&format!("/opt/cni/bin/{plugin}")),
                    cni != "calico",
                    "{what}: {plugin}"
                );
            }
        }
        let cp = rendered.nodes.iter().find(|n| n.name == "cp1").unwrap();
        let kcm = String::from_utf8_lossy(
            &cp.files["/etc/systemd/system/kube-controller-manager.service"].content,
        )
        .into_owned();
        assert!(kcm.contains("--cluster-cidr=10.200.0.0/16"), "{kcm}");
        if bridge {
            assert!(kcm.contains("--allocate-node-cidrs=false"), "{kcm}");
            assert!(!kcm.contains("--node-cidr-mask-size"), "{kcm}");
        } else {
            assert!(kcm.contains("--allocate-node-cidrs=true"), "{kcm}");
            assert!(kcm.contains("--node-cidr-mask-size=26"), "{kcm}");
        }
    }
}

/// Felix follows kube-proxy into nftables mode; otherwise it stays on
/// iptables.
#[test]
fn calico_felix_follows_kube_proxy_nftables_mode() {
    for mode in ["iptables", "nftables"] {
        let base = std::fs::read_to_string(inventory()).unwrap();
        let text = base
            .replace("cni = \"bridge\"", "cni = \"calico\"")
            .replace(
                "kube_proxy_mode = \"iptables\"",
                &format!("kube_proxy_mode = \"{mode}\""),
            );
        let loaded = kubeforge_inventory::parse(&inventory(), &text).unwrap();
        let state = tempfile::tempdir().unwrap();
        let r = kubeforge_render::prepare(state.path(), &loaded.cluster, &Default::default())
            .unwrap()
            .rendered;
        let manifests = addon_manifests(&r, "cp1");
        let path = format!("{ADDON_DIR}calico.yaml");
        let docs = documents(&path, &manifests[&path]);
        let env = env(container(
            find(&docs, "DaemonSet", "calico-node"),
            "calico-node",
        ));
        assert_eq!(
            env.get("FELIX_NFTABLESMODE").map(String::as_str),
            (mode == "nftables").then_some("Enabled"),
            "{mode}"
        );
    }
}
