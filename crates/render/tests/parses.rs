//! Rendering refuses a file that no longer parses as its format: the error
//! names the node, the path, the line and what does not parse, for the
//! files of every node and for the `drain` variants alike.
#![allow(clippy::unwrap_used)]

use kubeforge_render::{RenderError, Renderer, FILES_TOML, TEMPLATES};
use std::path::PathBuf;

fn inventory(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../inventories")
        .join(rel)
}

/// Renders `rel` with one template replaced by `text`.
fn render_with(rel: &str, template: &str, text: &str) -> Result<(), RenderError> {
    let loaded = kubeforge_inventory::load(&inventory(rel)).unwrap();
    let state = tempfile::tempdir().unwrap();
    let pki = kubeforge_pki::reconcile(state.path(), &loaded.cluster, &Default::default())
        .unwrap()
        .pki;
    let subnets = kubeforge_render::allocate_pod_subnets(state.path(), &loaded.cluster)
        .unwrap()
        .subnets;
    let templates: Vec<(&str, &str)> = TEMPLATES
        .iter()
        .map(|&(name, body)| (name, if name == template { text } else { body }))
        .collect();
    assert!(templates.iter().any(|(n, _)| *n == template), "{template}");
    let renderer = Renderer::with(&templates, FILES_TOML).unwrap();
    renderer.render(&loaded.cluster, &pki, &subnets).map(|_| ())
}

fn refused(rel: &str, template: &str, text: &str) -> String {
    match render_with(rel, template, text) {
        Ok(()) => panic!("{template} rendered although it does not parse"),
        Err(e @ RenderError::Unparsable { .. }) => e.to_string(),
        Err(e) => panic!("{template}: another error: {e}"),
    }
}

#[test]
fn every_example_renders_with_every_file_parsing() {
    for rel in ["single.toml", "ha.toml", "vagrant/inventory.toml"] {
        let loaded = kubeforge_inventory::load(&inventory(rel)).unwrap();
        let state = tempfile::tempdir().unwrap();
        let prepared =
            kubeforge_render::prepare(state.path(), &loaded.cluster, &Default::default())
                .unwrap_or_else(|e| panic!("{rel}: {e}"));
        for node in &prepared.rendered.nodes {
            for f in node.files.values() {
                kubeforge_render::check_rendered(&f.path, &f.content).unwrap();
            }
        }
    }
}

#[test]
fn a_broken_toml_file_names_node_path_and_line() {
    let e = refused(
        "single.toml",
        "node/containerd-config.toml",
        "version = 2\n[plugins]\n  sandbox_image = \"{{ cluster.sandbox_image }}\" x\n",
    );
    assert!(
        e.starts_with("node cp1: /etc/containerd/config.toml:3:"),
        "{e}"
    );
    assert!(e.contains("not valid TOML"), "{e}");
    assert!(
        e.contains("(rendered from node/containerd-config.toml)"),
        "{e}"
    );
    assert!(e.contains("help: "), "{e}");
}

#[test]
fn a_broken_unit_is_refused() {
    let e = refused(
        "single.toml",
        "node/kubelet.service",
        "[Service]\nExecStart={{ cluster.bin_dir }}/kubelet\n[Evil]\n",
    );
    assert!(
        e.starts_with("node cp1: /etc/systemd/system/kubelet.service:3:1: unknown section [Evil]"),
        "{e}"
    );
}

#[test]
fn a_drained_variant_is_checked_too() {
    // Only the file with a node taken out of the load balancer breaks.
    let text = "events {\n}\nstream {\n{% if drained %}  upstream {\n{% endif %}}\n";
    let e = refused("ha.toml", "lb/nginx.conf", text);
    assert!(e.starts_with("node lb1: /etc/nginx/nginx.conf:"), "{e}");
    assert!(e.contains("is never closed"), "{e}");
}
