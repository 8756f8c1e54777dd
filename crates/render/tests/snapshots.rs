//! Golden files for every example inventory: each node's rendered tree,
//! file by file, with key material and certificate bodies redacted (they
//! are random) but every certificate's subject and SANs shown.
#![allow(clippy::unwrap_used)]

use kubeforge_render::Rendered;
use std::fmt::Write as _;
use std::path::PathBuf;

fn inventory(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../inventories")
        .join(rel)
}

fn render(rel: &str) -> Rendered {
    render_text(rel, &std::fs::read_to_string(inventory(rel)).unwrap())
}

/// Renders the inventory text `text` as if it were the example `rel`.
fn render_text(rel: &str, text: &str) -> Rendered {
    let loaded = kubeforge_inventory::parse(&inventory(rel), text).unwrap();
    let state = tempfile::tempdir().unwrap();
    kubeforge_render::prepare(state.path(), &loaded.cluster, &Default::default())
        .unwrap()
        .rendered
}

/// Every node's tree as `<prefix>__<node>` snapshots.
fn snapshot_nodes(prefix: &str, rendered: &Rendered, with_admin: bool) {
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.set_snapshot_path("snapshots");
    settings.bind(|| {
        for node in &rendered.nodes {
            insta::assert_snapshot!(
                format!("{prefix}__{}", node.name),
                describe(rendered, &node.name)
            );
        }
        if with_admin {
            insta::assert_snapshot!(
                format!("{prefix}__admin.conf"),
                redact(&rendered.admin_kubeconfig)
            );
        }
    });
}

/// Replaces what differs between runs (PEM bodies, embedded base64 data,
/// random secrets) with a stable description.
fn redact(content: &[u8]) -> String {
    let text = String::from_utf8_lossy(content);
    if text.starts_with("-----BEGIN CERTIFICATE-----") {
        let info = kubeforge_pki::inspect(&text).unwrap();
        let sans: Vec<String> = info.sans.iter().map(ToString::to_string).collect();
        return format!(
            "<certificate CN={} O={:?} issuer={} ca={} server={} client={} SANs=[{}]>\n",
            info.common_name,
            info.organizations,
            info.issuer_common_name,
            info.is_ca,
            info.server_auth,
            info.client_auth,
            sans.join(", ")
        );
    }
    if text.starts_with("-----BEGIN PUBLIC KEY-----") {
        return "<public key>\n".into();
    }
    if text.contains("PRIVATE KEY-----") {
        return "<private key>\n".into();
    }
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let redacted_key = [
            "certificate-authority-data:",
            "client-certificate-data:",
            "client-key-data:",
            "secret:",
            "token:",
            "token-id:",
            "token-secret:",
            "name: bootstrap-token-",
            // The bootstrap token's: the time it was rendered plus its TTL.
            "expiration:",
        ]
        .into_iter()
        .find(|k| trimmed.starts_with(k));
        match redacted_key {
            Some(k) => {
                let _ = writeln!(out, "{indent}{k} <redacted>");
            }
            None => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    out
}

fn describe(rendered: &Rendered, node: &str) -> String {
    let tree = rendered.nodes.iter().find(|n| n.name == node).unwrap();
    let mut s = String::new();
    let units: Vec<String> = tree
        .units
        .iter()
        .map(|u| {
            format!(
                "{}({}{})",
                u.name,
                u.phase,
                if u.packaged { ", packaged" } else { "" }
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "node {} {} roles={:?}",
        tree.name, tree.address, tree.roles
    );
    let _ = writeln!(s, "units: {}", units.join(" "));
    for st in &tree.steps {
        let when = match &st.written {
            Some(f) => format!("runs when {f} is written"),
            None => format!("check:\n{}", st.check.trim()),
        };
        let _ = writeln!(
            s,
            "\n--- step \"{}\" phase={}\n{when}\nrun:\n{}",
            st.name,
            st.phase,
            st.run.trim()
        );
    }
    for f in tree.files.values() {
        let _ = writeln!(
            s,
            "\n=== {} mode={:04o} owner={} secret={} restarts={:?} reloads={:?} phase={} from={}",
            f.path, f.mode, f.owner, f.secret, f.restarts, f.reloads, f.phase, f.source
        );
        s.push_str(&redact(&f.content));
    }
    s
}

fn snapshot_inventory(rel: &str, prefix: &str) {
    snapshot_nodes(prefix, &render(rel), true);
}

#[test]
fn single_control_plane() {
    snapshot_inventory("single.toml", "single");
}

#[test]
fn ha() {
    snapshot_inventory("ha.toml", "ha");
}

#[test]
fn vagrant() {
    snapshot_inventory("vagrant/inventory.toml", "vagrant");
}

/// The single example with its text edited: every node's tree as
/// `single-<name>__<node>` snapshots; returns what was rendered.
fn snapshot_single_edited(name: &str, edit: impl Fn(String) -> String) -> Rendered {
    let text = edit(std::fs::read_to_string(inventory("single.toml")).unwrap());
    let rendered = render_text("single.toml", &text);
    snapshot_nodes(&format!("single-{name}"), &rendered, false);
    rendered
}

/// The single example with another CNI: its addon manifest on the
/// control-plane node, and no bridge configuration or pod routes anywhere.
fn snapshot_single_with_cni(cni: &str) {
    snapshot_single_edited(cni, |text| {
        let text = text.replace("cni = \"bridge\"", &format!("cni = \"{cni}\""));
        assert!(text.contains(&format!("cni = \"{cni}\"")));
        text
    });
}

#[test]
fn single_flannel() {
    snapshot_single_with_cni("flannel");
}

#[test]
fn single_calico() {
    snapshot_single_with_cni("calico");
}

/// The single example with `kubelet_join = "bootstrap-token"`: no kubelet
/// certificates placed, a bootstrap kubeconfig on every kubelet node, the
/// token and its RBAC as an addon (secret), the apiserver accepting tokens.
#[test]
fn single_bootstrap_token() {
    let rendered = snapshot_single_edited("bootstrap-token", |text| {
        text.replace(
            "[cluster]\n",
            "[cluster]\nkubelet_join = \"bootstrap-token\"\n",
        )
    });
    for node in &rendered.nodes {
        let files: Vec<&str> = node.files.keys().map(String::as_str).collect();
        assert!(
            !files.contains(&"/etc/kubernetes/kubelet.conf"),
            "{files:?}"
        );
        assert!(
            !files.contains(&"/etc/kubernetes/pki/kubelet-server.key"),
            "{files:?}"
        );
        let boot = &node.files["/etc/kubernetes/bootstrap-kubelet.conf"];
        assert!(boot.secret && boot.mode == 0o600);
    }
    let cp1 = rendered.nodes.iter().find(|n| n.name == "cp1").unwrap();
    let addon = &cp1.files["/etc/kubernetes/addons/kubelet-bootstrap.yaml"];
    assert!(addon.secret && addon.mode == 0o600);
    let secret = rendered
        .addons
        .iter()
        .flat_map(|a| &a.objects)
        .find(|o| o.kind == "Secret")
        .unwrap();
    assert!(secret.secret);
    assert!(secret.name.starts_with("bootstrap-token-") && secret.name.len() == 22);
}

/// Rendering is a pure function of the model and the PKI: twice the same.
#[test]
fn rendering_is_deterministic() {
    let loaded = kubeforge_inventory::load(&inventory("ha.toml")).unwrap();
    let state = tempfile::tempdir().unwrap();
    let p = kubeforge_render::prepare(state.path(), &loaded.cluster, &Default::default()).unwrap();
    let a = p.rendered;
    let b = p
        .renderer
        .render(&loaded.cluster, &p.reconciled.pki, &p.alloc.subnets)
        .unwrap();
    for (x, y) in a.nodes.iter().zip(&b.nodes) {
        assert_eq!(x.files, y.files, "node {}", x.name);
    }
}

/// Secrets go only where they are needed: CA keys only to control-plane
/// nodes (and only the kubernetes CA key), no private key on LB nodes, the
/// super-admin credentials on no node at all.
#[test]
fn key_material_placement() {
    let rendered = render("ha.toml");
    for node in &rendered.nodes {
        for f in node.files.values() {
            let text = String::from_utf8_lossy(&f.content);
            let is_key = text.contains("PRIVATE KEY-----");
            if is_key || f.path.ends_with(".key") || f.path.ends_with(".conf") && f.secret {
                assert_eq!(f.mode, 0o600, "{} on {}", f.path, node.name);
                assert!(
                    f.secret,
                    "{} on {} must be marked secret",
                    f.path, node.name
                );
            }
            if f.path.ends_with("ca.key") {
                assert_eq!(f.path, "/etc/kubernetes/pki/ca.key", "on {}", node.name);
                assert!(node.name.starts_with("cp"), "CA key on {}", node.name);
            }
            assert!(
                !f.path.contains("super-admin"),
                "{} on {}",
                f.path,
                node.name
            );
            assert!(
                !text.contains(&*String::from_utf8_lossy(&rendered.super_admin_kubeconfig)),
                "super-admin kubeconfig on {}",
                node.name
            );
        }
        if node.name.starts_with("lb") {
            assert!(
                node.files.values().all(|f| !f.secret),
                "LB node {} holds a secret",
                node.name
            );
        }
    }
}

/// Flags that supported Kubernetes versions removed, or that belong to the
/// dockershim era: none may ever be rendered.
const REMOVED_FLAGS: &[&str] = &[
    "--logtostderr",
    "--alsologtostderr",
    "--log-dir",
    "--log-file",
    "--insecure-port",
    "--insecure-bind-address",
    "--port=",
    "--address=",
    "--network-plugin",
    "--cni-bin-dir",
    "--cni-conf-dir",
    "--container-runtime=",
    "--pod-infra-container-image",
    "--experimental-",
];

/// Every supported version and kube-proxy mode renders, with no removed
/// flag, and the units name the version.
#[test]
fn every_supported_version_renders_without_removed_flags() {
    let base = std::fs::read_to_string(inventory("ha.toml")).unwrap();
    for minor in kubeforge_inventory::MIN_MINOR..=kubeforge_inventory::MAX_MINOR {
        for mode in ["iptables", "ipvs", "nftables"] {
            if mode == "nftables" && minor < 31 {
                continue;
            }
            let text = base.replace("1.31.4", &format!("1.{minor}.2")).replace(
                "kube_proxy_mode = \"iptables\"",
                &format!("kube_proxy_mode = \"{mode}\""),
            );
            let r = render_text("ha.toml", &text);
            for node in &r.nodes {
                for f in node.files.values().filter(|f| !f.secret) {
                    let text = String::from_utf8_lossy(&f.content);
                    for flag in REMOVED_FLAGS {
                        assert!(
                            !text.contains(flag),
                            "1.{minor} {mode}: {} on {} has {flag}",
                            f.path,
                            node.name
                        );
                    }
                    if f.path.ends_with("kube-apiserver.service") {
                        assert!(text.contains(&format!("(v1.{minor}.2)")));
                    }
                    if f.path.ends_with("kube-proxy-config.yaml") {
                        assert!(text.contains(&format!("mode: {mode}")));
                    }
                }
            }
        }
    }
}

/// CoreDNS's Service IP is the kubelets' clusterDNS, on every example.
#[test]
fn coredns_service_ip_is_the_kubelet_cluster_dns() {
    for rel in ["single.toml", "ha.toml", "vagrant/inventory.toml"] {
        let rendered = render(rel);
        let cp = rendered
            .nodes
            .iter()
            .find(|n| n.files.contains_key("/etc/kubernetes/addons/coredns.yaml"))
            .unwrap();
        let coredns =
            String::from_utf8_lossy(&cp.files["/etc/kubernetes/addons/coredns.yaml"].content)
                .into_owned();
        let ip = coredns
            .lines()
            .find_map(|l| l.trim().strip_prefix("clusterIP: "))
            .unwrap()
            .to_string();
        for node in &rendered.nodes {
            if let Some(f) = node.files.get("/etc/kubernetes/kubelet-config.yaml") {
                let text = String::from_utf8_lossy(&f.content);
                assert!(
                    text.contains(&format!("clusterDNS:\n  - {ip}\n")),
                    "{rel} {}: {text}",
                    node.name
                );
            }
        }
    }
}

/// Registry mirrors become one containerd hosts.toml per registry, on the
/// nodes that run containerd, and restart nothing.
#[test]
fn registry_mirrors_render_hosts_toml() {
    let text = std::fs::read_to_string(inventory("single.toml")).unwrap().replace(
        "[ssh]",
        "image_registry = \"registry.local:5000\"\nregistry_mirrors = { \"docker.io\" = \"https://registry.local:5000\", \"quay.io\" = \"https://registry.local:5000/quay\" }\n\n[ssh]",
    );
    let r = render_text("single.toml", &text);
    let worker = r.nodes.iter().find(|n| n.name == "worker1").unwrap();
    let docker = &worker.files["/etc/containerd/certs.d/docker.io/hosts.toml"];
    assert!(docker.restarts.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&docker.content),
        "# Rendered by kubeforge: pulls from docker.io go to its mirror first.\nserver = \"https://registry-1.docker.io\"\n\n[host.\"https://registry.local:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    );
    assert!(worker
        .files
        .contains_key("/etc/containerd/certs.d/quay.io/hosts.toml"));
    let config =
        String::from_utf8_lossy(&worker.files["/etc/containerd/config.toml"].content).into_owned();
    assert!(
        config.contains("sandbox_image = \"registry.local:5000/pause:3.10\""),
        "{config}"
    );
}
