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

/// `facts` of a kubelet whose certificates a previous CA signed (after
/// step 2 of a kubernetes CA rotation): not joined as far as the current
/// CA goes.
fn rejoining(r: &Rendered, file: bool) -> Facts {
    let Facts::Gathered(mut map) = facts(r, file, false) else {
        unreachable!()
    };
    for f in map.values_mut() {
        f.kubelet_rejoin = true;
    }
    Facts::Gathered(map)
}

#[test]
fn a_kubelet_with_certificates_of_a_previous_ca_joins_again() {
    let r = rendered();
    let b = r.nodes[0].bootstrap.clone().unwrap();
    let rejoin = r.nodes[0]
        .steps
        .iter()
        .find(|s| s.name == b.rejoin)
        .unwrap();
    assert_eq!(rejoin.stage, kubeforge_render::Stage::AfterFiles);
    assert!(
        rejoin.run.contains(&b.cert)
            && rejoin.run.contains(&b.serving_cert)
            && rejoin.run.contains("mv -f -- \"$f\" \"$f.previous-ca\""),
        "{}",
        rejoin.run
    );
    // The bootstrap file was removed after the first join: it is written
    // again, the certificates are moved aside after it, the kubelet
    // restarts and joins, and the file goes again.
    let p = plan(&r, &rejoining(&r, false));
    let n = &p.nodes[0];
    assert!(n.changes.iter().any(|c| c.path == FILE), "{n:?}");
    assert_eq!(n.restart, ["kubelet"]);
    assert!(n.steps.contains(&b.rejoin) && n.steps.contains(&b.step));
    // The file is still there (an interrupted run): the kubelet restarts
    // all the same.
    let p = plan(&r, &rejoining(&r, true));
    let n = &p.nodes[0];
    assert!(n.changes.is_empty());
    assert_eq!(n.restart, ["kubelet"]);
    assert!(n.steps.contains(&b.rejoin) && n.steps.contains(&b.step));
}

#[test]
fn certificates_of_another_ca_call_for_joining_again() {
    let r = rendered();
    let b = r.nodes[0].bootstrap.clone().unwrap();
    let ours = |r: &Rendered| {
        let f = &r.nodes[0].files["/etc/kubernetes/pki/apiserver.crt"];
        String::from_utf8(f.content.clone()).unwrap()
    };
    let now = std::time::SystemTime::now();
    let theirs = ours(&rendered());
    let same = ours(&r);
    let judged = |client: Option<&str>, serving: Option<&str>| b.judge(client, serving, now);
    assert_eq!(judged(None, None), Default::default());
    // Signed by the current CA (though not a kubelet client certificate):
    // nothing to move aside, and not joined.
    let k = judged(Some(&same), Some(&same));
    assert!(!k.rejoin && !k.joined);
    for (client, serving) in [(Some(&theirs), None), (None, Some(&theirs))] {
        let k = judged(client.map(String::as_str), serving.map(String::as_str));
        assert!(k.rejoin && !k.joined, "{client:?} {serving:?}");
    }
    // Not a certificate: left to the kubelet.
    assert!(!judged(Some("garbage"), None).rejoin);
}
