//! Bootstrap-token joins: the bootstrap kubeconfig stays on a node only
//! until its kubelet has a valid client certificate of its own; then a
//! step removes it, and a node without one gets it again. A converged
//! cluster plans nothing either way.
#![allow(clippy::unwrap_used)]

use kubeforge_plan::{Facts, NodeFacts, Plan, RemoteFile, UnitFacts};
use kubeforge_render::Rendered;
use std::collections::BTreeMap;
use std::path::PathBuf;

const FILE: &str = "/etc/kubernetes/bootstrap-kubelet.conf";

fn rendered() -> Rendered {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../inventories/single.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[cluster]\n",
        "[cluster]\nkubelet_join = \"bootstrap-token\"\ncoredns = false\n",
    );
    let cluster = kubeforge_inventory::parse(&path, &text).unwrap().cluster;
    let state = tempfile::tempdir().unwrap();
    kubeforge_render::prepare(state.path(), &cluster, &Default::default())
        .unwrap()
        .rendered
}

/// Facts of every node holding what is rendered and running its units,
/// except that the bootstrap kubeconfig is there or not (`file`) and the
/// kubelet has its certificate or not (`bootstrapped`); the removal step's
/// check passes exactly when the file is gone.
fn facts(r: &Rendered, file: bool, bootstrapped: bool) -> Facts {
    let map = r
        .nodes
        .iter()
        .map(|n| {
            let files = n
                .files
                .values()
                .filter(|f| file || f.path != FILE)
                .map(|f| {
                    (
                        f.path.clone(),
                        RemoteFile {
                            sha256: f.sha256.clone(),
                            mode: f.mode,
                            owner: f.owner.clone(),
                            content: None,
                        },
                    )
                })
                .collect();
            let units = n
                .units
                .iter()
                .map(|u| {
                    (
                        u.name.clone(),
                        UnitFacts {
                            active: true,
                            enabled: true,
                        },
                    )
                })
                .collect();
            let removal = n.bootstrap.as_ref().map(|b| b.step.clone());
            let steps_done = n
                .steps
                .iter()
                .map(|s| s.name.clone())
                .filter(|s| !file || Some(s) != removal.as_ref())
                .collect();
            (
                n.name.clone(),
                NodeFacts {
                    files,
                    units,
                    steps_done,
                    bootstrapped,
                    manifest: Some(kubeforge_plan::Manifest::of("t", n, None).to_bytes()),
                    ..NodeFacts::default()
                },
            )
        })
        .collect::<BTreeMap<_, _>>();
    Facts::Gathered(map)
}

fn plan(r: &Rendered, f: &Facts) -> Plan {
    kubeforge_plan::plan("t", r, f, &["node".to_string()]).unwrap()
}

#[test]
fn the_bootstrap_kubeconfig_goes_once_the_kubelet_has_its_certificate() {
    let r = rendered();
    let cp1 = r.nodes.iter().find(|n| n.name == "cp1").unwrap();
    let b = cp1.bootstrap.as_ref().unwrap();
    assert_eq!(b.files, [FILE]);
    assert_eq!(b.cert, "/var/lib/kubelet/pki/kubelet-client-current.pem");
    assert_eq!(b.common_name, "system:node:cp1");
    let step = cp1.steps.iter().find(|s| s.name == b.step).unwrap();
    assert_eq!(step.stage, kubeforge_render::Stage::AfterUnits);
    assert_eq!(step.check, format!("[ ! -e '{FILE}' ]"));
    assert!(
        step.run
            .contains(&format!("until [ '{}' -nt '{FILE}' ]; do", b.cert))
            && step.run.ends_with(&format!("rm -f -- '{FILE}'\n")),
        "{}",
        step.run
    );

    // Joined, file still there: only the removal step, nothing restarts.
    let p = plan(&r, &facts(&r, true, true));
    let n = &p.nodes[0];
    assert_eq!(
        n.steps,
        std::slice::from_ref(&b.step),
        "{}",
        kubeforge_plan::to_text(&p)
    );
    assert!(n.changes.is_empty() && n.restart.is_empty() && n.start.is_empty());
    let work = &p.phases[0].nodes[0];
    assert_eq!(work.steps[0].script, step.run);
    assert!(work.puts.is_empty());

    // After it ran: nothing, however long the cluster runs (the file is
    // not written again while the kubelet has its certificate).
    assert!(plan(&r, &facts(&r, false, true)).is_empty());
}

#[test]
fn a_node_without_its_certificate_gets_the_file_until_it_joins() {
    let r = rendered();
    let b = r.nodes[0].bootstrap.clone().unwrap();
    // No certificate and no file (a new node, or one whose certificate
    // expired): the file is written, the kubelet restarts to join with
    // it, and after the units the step waits for the certificate and
    // removes the file again.
    for p in [
        plan(&r, &facts(&r, false, false)),
        kubeforge_plan::plan("t", &r, &Facts::Offline, &["node".to_string()]).unwrap(),
    ] {
        let n = &p.nodes[0];
        assert!(n.changes.iter().any(|c| c.path == FILE && c.secret));
        assert!(n.steps.contains(&b.step), "{:?}", n.steps);
        let node = p.phases.iter().find(|x| x.phase == "node").unwrap();
        let work = &node.nodes[0];
        let step = work.steps.iter().find(|s| s.name == b.step).unwrap();
        assert_eq!(step.stage, kubeforge_render::Stage::AfterUnits);
    }
    let p = plan(&r, &facts(&r, false, false));
    assert_eq!(p.nodes[0].restart, ["kubelet"]);
    // The file is there but the kubelet has not joined yet: nothing is
    // written, the step waits for it.
    let p = plan(&r, &facts(&r, true, false));
    assert!(p.nodes[0].changes.is_empty());
    assert_eq!(p.nodes[0].steps, [b.step]);
}

#[test]
fn the_token_secret_carries_its_expiration() {
    let r = rendered();
    let secret = r
        .addons
        .iter()
        .flat_map(|a| &a.objects)
        .find(|o| o.path.contains("/secrets/bootstrap-token-"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&secret.body).unwrap();
    let expiration = v["stringData"]["expiration"].as_str().unwrap();
    assert!(
        expiration.len() == 20 && expiration.ends_with('Z'),
        "{expiration}"
    );
}
