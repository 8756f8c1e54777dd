//! The bundle's container image archives: placed, with their import step,
//! on every node that runs a kubelet and nowhere else.
#![allow(clippy::unwrap_used)]

use kubeforge_inventory::Cluster;
use kubeforge_render::{ImageArchive, Rendered, Renderer, Stage, CONTAINERD_SOCKET};
use std::path::PathBuf;

const STEP: &str = "import the bundle's container images into containerd";

fn setup(rel: &str) -> (Cluster, Renderer, Rendered) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../inventories")
        .join(rel);
    let loaded = kubeforge_inventory::load(&path).unwrap();
    let state = tempfile::tempdir().unwrap();
    let p = kubeforge_render::prepare(state.path(), &loaded.cluster, &Default::default()).unwrap();
    (loaded.cluster, p.renderer, p.rendered)
}

fn archives() -> Vec<ImageArchive> {
    vec![
        ImageArchive {
            file: "busybox.tar".into(),
            path: PathBuf::from("/bundle/images/busybox.tar"),
            sha256: "b".repeat(64),
            names: vec!["lab.local/busybox:1".into()],
        },
        ImageArchive {
            file: "pause.tar".into(),
            path: PathBuf::from("/bundle/images/pause.tar"),
            sha256: "a".repeat(64),
            names: vec![
                "registry.local/pause:3.10".into(),
                "registry.local/pause:latest".into(),
            ],
        },
    ]
}

#[test]
fn archives_and_their_import_step_go_to_every_kubelet_node_only() {
    let (cluster, renderer, mut rendered) = setup("ha.toml");
    let before = rendered.clone();
    renderer
        .add_images(&cluster, &mut rendered, &archives())
        .unwrap();
    for (tree, old) in rendered.nodes.iter().zip(&before.nodes) {
        let node = cluster.node(&tree.name).unwrap();
        let added: Vec<&String> = tree
            .files
            .keys()
            .filter(|p| !old.files.contains_key(*p))
            .collect();
        let steps: Vec<&str> = tree.steps.iter().map(|s| s.name.as_str()).collect();
        if !node.runs_kubelet() {
            assert!(added.is_empty(), "{}: {added:?}", tree.name);
            assert!(!steps.contains(&STEP), "{}", tree.name);
            continue;
        }
        assert_eq!(
            added,
            [
                "/var/lib/kubeforge/images/busybox.tar",
                "/var/lib/kubeforge/images/pause.tar"
            ],
            "{}",
            tree.name
        );
        let f = &tree.files["/var/lib/kubeforge/images/pause.tar"];
        assert_eq!(f.mode, 0o644);
        assert_eq!(f.owner, "root:root");
        assert_eq!(f.sha256, "a".repeat(64));
        assert_eq!(
            f.from_file.as_deref(),
            Some(std::path::Path::new("/bundle/images/pause.tar"))
        );
        assert!(f.content.is_empty() && !f.secret);
        assert!(f.restarts.is_empty() && f.reloads.is_empty());
        assert_eq!(f.source, "bundle:images/pause.tar");
        assert_eq!(f.phase, "node");
        // One import step, the last of the node, after the units.
        let step = tree.steps.last().unwrap();
        assert_eq!(step.name, STEP);
        assert_eq!(step.phase, "node");
        assert_eq!(step.stage, Stage::AfterUnits);
        assert_eq!(steps.iter().filter(|s| **s == STEP).count(), 1);
        // The other steps keep running before the files (but those a
        // file's writing runs).
        assert!(tree.steps[..tree.steps.len() - 1]
            .iter()
            .all(|s| s.stage == Stage::BeforeFiles || s.written.is_some()));
    }
    let worker = rendered.nodes.iter().find(|n| n.name == "worker1").unwrap();
    let step = worker.steps.last().unwrap();
    insta::assert_snapshot!(
        "import_step",
        format!(
            "check:\n{}\nkey:\n{}\nrun:\n{}",
            step.check.trim(),
            step.check_key.as_deref().unwrap_or_default().trim(),
            step.run.trim()
        )
    );
}

#[test]
fn nothing_without_archives_and_everything_in_the_node_phase() {
    let (cluster, renderer, mut rendered) = setup("single.toml");
    let files = |r: &Rendered| r.nodes.iter().map(|n| n.files.len()).sum::<usize>();
    let steps = |r: &Rendered| r.nodes.iter().map(|n| n.steps.len()).sum::<usize>();
    let (f0, s0) = (files(&rendered), steps(&rendered));
    renderer.add_images(&cluster, &mut rendered, &[]).unwrap();
    assert_eq!((files(&rendered), steps(&rendered)), (f0, s0));

    // The archives and the import step go with the node phase (a plan
    // limited to other phases leaves them out).
    renderer
        .add_images(&cluster, &mut rendered, &archives())
        .unwrap();
    assert!(files(&rendered) > f0 && steps(&rendered) > s0);
    for n in &rendered.nodes {
        for s in n.steps.iter().filter(|s| s.name == STEP) {
            assert_eq!(s.phase, "node");
        }
        for (p, f) in &n.files {
            if p.starts_with("/var/lib/kubeforge/images/") {
                assert_eq!(f.phase, "node", "{p}");
            }
        }
    }
}

#[test]
fn the_import_step_uses_containerds_configured_socket() {
    let (_, _, rendered) = setup("single.toml");
    let config = &rendered.nodes[0].files["/etc/containerd/config.toml"];
    let text = String::from_utf8_lossy(&config.content);
    assert!(
        text.contains(&format!("address = \"{CONTAINERD_SOCKET}\"")),
        "{text}"
    );
}
