//! The import step of the bundle's container images in a plan: shown as
//! `run:` on kubelet nodes whose containerd lacks an image, absent once
//! its check passes.
#![allow(clippy::unwrap_used)]

use kubeforge_plan::{to_text, Facts, Plan};
use kubeforge_render::{ImageArchive, Rendered};
use std::path::PathBuf;

/// A plan of every phase.
fn plan(cluster: &str, r: &Rendered, facts: &Facts) -> Plan {
    kubeforge_plan::plan(cluster, r, facts, &[]).unwrap()
}

const STEP: &str = "import the bundle's container images into containerd";

fn rendered_with_images() -> Rendered {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../inventories/ha.toml");
    let loaded = kubeforge_inventory::load(&path).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut p =
        kubeforge_render::prepare(state.path(), &loaded.cluster, &Default::default()).unwrap();
    let images = [ImageArchive {
        file: "pause.tar".into(),
        path: PathBuf::from("/bundle/images/pause.tar"),
        sha256: "a".repeat(64),
        names: vec!["registry.local/pause:3.10".into()],
    }];
    p.renderer
        .add_images(&loaded.cluster, &mut p.rendered, &images)
        .unwrap();
    p.rendered
}

/// Every file in place and every unit running; `imported` says whether
/// the import step's check passes.
fn converged(r: &Rendered, imported: bool) -> Facts {
    let mut map = kubeforge_plan::converged_facts("ha", r);
    for facts in map.values_mut() {
        facts.steps_done.retain(|s| imported || s != STEP);
        facts.api = None;
    }
    Facts::Gathered(map)
}

#[test]
fn the_import_step_runs_only_where_an_image_is_missing() {
    let r = rendered_with_images();
    let bare = plan("ha", &r, &Facts::Offline);
    for n in &bare.nodes {
        let kubelet = n.node.starts_with("cp") || n.node.starts_with("worker");
        assert_eq!(n.steps.contains(&STEP.to_string()), kubelet, "{}", n.node);
        let archive = n
            .changes
            .iter()
            .any(|c| c.path == "/var/lib/kubeforge/images/pause.tar" && c.mode == "0644");
        assert_eq!(archive, kubelet, "{}", n.node);
    }
    assert!(to_text(&bare).contains(&format!("  run: {STEP}\n")));

    let missing = plan("ha", &r, &converged(&r, false));
    let changed: Vec<(&str, &[String])> = missing
        .nodes
        .iter()
        .filter(|n| !n.steps.is_empty())
        .map(|n| (n.node.as_str(), n.steps.as_slice()))
        .collect();
    assert_eq!(
        changed.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        ["cp1", "cp2", "cp3", "worker1", "worker2"]
    );
    assert!(changed.iter().all(|(_, s)| *s == [STEP.to_string()]));
    assert!(missing.nodes.iter().all(|n| n.changes.is_empty()));

    let done = plan("ha", &r, &converged(&r, true));
    assert!(
        done.nodes
            .iter()
            .all(|n| n.steps.is_empty() && n.changes.is_empty() && n.start.is_empty()),
        "{done:?}"
    );
}

/// The nodes that hold a bundle file in place, unchanged, are where other
/// nodes may get it: workers first, then the control plane; a node whose
/// copy differs is not one, and an offline plan knows of none.
#[test]
fn nodes_holding_an_archive_in_place_are_its_sources() {
    let r = rendered_with_images();
    let path = "/var/lib/kubeforge/images/pause.tar";
    let sha = "a".repeat(64);
    let p = plan("ha", &r, &converged(&r, true));
    let nodes: Vec<(&str, &str)> = p.sources[&sha]
        .iter()
        .map(|(n, f)| (n.as_str(), f.as_str()))
        .collect();
    assert_eq!(
        nodes,
        [
            ("worker1", path),
            ("worker2", path),
            ("cp1", path),
            ("cp2", path),
            ("cp3", path)
        ]
    );
    assert_eq!(
        p.sources.len(),
        1,
        "only bundle files: {:?}",
        p.sources.keys()
    );

    let Facts::Gathered(mut map) = converged(&r, true) else {
        unreachable!()
    };
    map.get_mut("worker1")
        .and_then(|f| f.files.get_mut(path))
        .unwrap()
        .sha256 = "b".repeat(64);
    let p = plan("ha", &r, &Facts::Gathered(map));
    let nodes: Vec<&str> = p.sources[&sha].iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(nodes, ["worker2", "cp1", "cp2", "cp3"]);

    assert!(plan("ha", &r, &Facts::Offline).sources.is_empty());
}
