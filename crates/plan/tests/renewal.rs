//! The plans of `kubeforge certs renew`: a converged HA cluster (the nodes
//! hold what the state directory had), planned again with the renewed
//! PKI: what changes where, which units restart, and nothing beyond
//! certificate material. And a CA rotation's three steps.
#![allow(clippy::unwrap_used)]

use kubeforge_inventory::Cluster;
use kubeforge_pki::rotation::{self, Rotation, Step};
use kubeforge_pki::CaId;
use kubeforge_plan::{Facts, Plan};
use kubeforge_render::{Rendered, Strategy};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn cluster(rel: &str) -> Cluster {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../inventories")
        .join(rel);
    kubeforge_inventory::load(&path).unwrap().cluster
}

fn prepare(state: &Path, c: &Cluster, opts: &kubeforge_pki::Options) -> Rendered {
    let p = kubeforge_render::prepare(state, c, opts).unwrap();
    p.persist(state).unwrap();
    p.rendered
}

/// Every node holds exactly `r`'s files (the old text of those without
/// secrets) and runs its units; every API object as rendered.
fn converged(r: &Rendered) -> Facts {
    Facts::Gathered(kubeforge_plan::converged_facts("ha", r))
}

fn plan(r: &Rendered, facts: &Facts) -> Plan {
    let p = kubeforge_plan::plan("ha", r, facts, &[]).unwrap();
    assert_eq!(
        kubeforge_plan::renewal::beyond_certificates(&p, r),
        Vec::<String>::new()
    );
    p
}

/// node -> (changed paths, restarted units, steps).
type Shape = BTreeMap<String, (Vec<String>, Vec<String>, Vec<String>)>;

fn shape(p: &Plan) -> Shape {
    p.nodes
        .iter()
        .filter(|n| !n.is_empty())
        .map(|n| {
            (
                n.node.clone(),
                (
                    n.changes.iter().map(|c| c.path.clone()).collect(),
                    n.restart.clone(),
                    n.steps.clone(),
                ),
            )
        })
        .collect()
}

fn phases(p: &Plan) -> Vec<(String, Strategy, Vec<String>)> {
    p.phases
        .iter()
        .map(|x| {
            (
                x.phase.clone(),
                x.strategy,
                x.nodes.iter().map(|w| w.node.clone()).collect(),
            )
        })
        .collect()
}

const KUBELET_STEP: &str = "remove the kubelet's copy of its previous client certificate";

#[test]
fn renewing_the_apiserver_and_one_etcd_member_restarts_only_them() {
    let c = cluster("ha.toml");
    let dir = tempfile::tempdir().unwrap();
    let before = prepare(dir.path(), &c, &Default::default());
    let facts = converged(&before);
    let after = prepare(
        dir.path(),
        &c,
        &kubeforge_pki::Options {
            renew: vec!["apiserver".into(), "nodes/cp2/etcd-peer".into()],
            ..Default::default()
        },
    );
    let p = plan(&after, &facts);
    let s = shape(&p);
    assert_eq!(s.len(), 3, "{s:#?}");
    for cp in ["cp1", "cp3"] {
        assert_eq!(
            s[cp],
            (
                vec![
                    "/etc/kubernetes/pki/apiserver.crt".into(),
                    "/etc/kubernetes/pki/apiserver.key".into()
                ],
                vec!["kube-apiserver".into()],
                vec![]
            )
        );
    }
    assert_eq!(
        s["cp2"].0,
        [
            "/etc/kubernetes/pki/apiserver.crt",
            "/etc/kubernetes/pki/apiserver.key",
            "/etc/kubernetes/pki/etcd/peer.crt",
            "/etc/kubernetes/pki/etcd/peer.key"
        ]
    );
    assert_eq!(s["cp2"].1, ["etcd", "kube-apiserver"]);
    assert_eq!(
        phases(&p),
        [
            ("etcd".into(), Strategy::OneAtATime, vec!["cp2".into()]),
            (
                "apiserver".into(),
                Strategy::DrainFromLb,
                vec!["cp1".into(), "cp2".into(), "cp3".into()]
            ),
        ]
    );
    assert!(p.cluster_gates.is_none(), "no kubelet restarts");
    // Applied: the next plan is empty.
    let again = kubeforge_plan::plan("ha", &after, &converged(&after), &[]).unwrap();
    assert!(again.is_empty());
}

#[test]
fn renewing_every_leaf_rolls_every_unit_that_uses_one() {
    let c = cluster("ha.toml");
    let dir = tempfile::tempdir().unwrap();
    let before = prepare(dir.path(), &c, &Default::default());
    let all = kubeforge_pki::catalog::requests(&c)
        .iter()
        .map(kubeforge_pki::catalog::LeafRequest::stem)
        .collect();
    let after = prepare(
        dir.path(),
        &c,
        &kubeforge_pki::Options {
            renew: all,
            ..Default::default()
        },
    );
    let p = plan(&after, &converged(&before));
    let s = shape(&p);
    assert!(
        !s.contains_key("lb1") && !s.contains_key("lb2"),
        "LB nodes hold no certificate"
    );
    assert_eq!(
        s["cp1"].1,
        [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubelet",
            "kube-proxy"
        ]
    );
    assert_eq!(s["worker1"].1, ["kubelet", "kube-proxy"]);
    assert_eq!(s["worker1"].2, [KUBELET_STEP]);
    // No CA file changes.
    assert!(s
        .values()
        .flat_map(|(files, _, _)| files)
        .all(|f| !f.contains("/ca.") && !f.contains("ca-signer")));
    assert_eq!(
        phases(&p)
            .iter()
            .map(|x| (x.0.as_str(), x.1))
            .collect::<Vec<_>>(),
        [
            ("etcd", Strategy::OneAtATime),
            ("apiserver", Strategy::DrainFromLb),
            ("controllers", Strategy::Parallel),
            ("node", Strategy::Parallel),
        ]
    );
    assert!(
        p.cluster_gates.is_some(),
        "kubelets restart: every node Ready"
    );
}

/// The text of a renewal's plan, as `kubeforge certs renew` shows it:
/// the apiserver certificate and cp2's etcd peer certificate, a day
/// after the cluster's PKI was made.
#[test]
fn renewal_plan_text() {
    let c = cluster("ha.toml");
    let dir = tempfile::tempdir().unwrap();
    let t0 = time::OffsetDateTime::now_utc();
    let before = prepare(
        dir.path(),
        &c,
        &kubeforge_pki::Options {
            now: t0,
            ..Default::default()
        },
    );
    let after = prepare(
        dir.path(),
        &c,
        &kubeforge_pki::Options {
            renew: vec!["apiserver".into(), "nodes/cp2/etcd-peer".into()],
            now: t0 + time::Duration::days(1),
            ..Default::default()
        },
    );
    let text = kubeforge_plan::to_text(&plan(&after, &converged(&before)));
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.add_filter(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "[time]");
    settings.bind(|| insta::assert_snapshot!("renewal_apiserver_and_etcd_peer_cp2", text));
}

fn step(ca: CaId, step: Step) -> kubeforge_pki::Options {
    kubeforge_pki::Options {
        rotation: Some(Rotation {
            ca,
            step,
            done: false,
        }),
        ..Default::default()
    }
}

/// The changed paths of every node, as one sorted list of `node: path`.
fn changed(p: &Plan) -> Vec<String> {
    let mut v: Vec<String> = p
        .nodes
        .iter()
        .flat_map(|n| {
            n.changes
                .iter()
                .map(move |c| format!("{}: {}", n.node, c.path))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_kubernetes_ca_rotation_in_three_plans() {
    let c = cluster("ha.toml");
    let dir = tempfile::tempdir().unwrap();
    let mut current = prepare(dir.path(), &c, &Default::default());

    // 1. Trust both: every bundle of the kubernetes CA (its ca.crt files,
    //    every kubeconfig), nothing signed anew; the CA that signs and its
    //    key stay.
    let next = prepare(dir.path(), &c, &step(CaId::Kubernetes, Step::Trust));
    let p1 = plan(&next, &converged(&current));
    let files = changed(&p1);
    assert!(files.contains(&"worker1: /etc/kubernetes/pki/ca.crt".to_string()));
    assert!(files.contains(&"cp1: /etc/kubernetes/controller-manager.conf".to_string()));
    assert!(files.contains(&"worker2: /etc/kubernetes/kube-proxy.conf".to_string()));
    assert!(!files.iter().any(|f| f.contains("ca-signer")
        || f.contains("ca.key")
        || f.contains("apiserver.crt")
        || f.contains("etcd/")));
    assert_eq!(
        phases(&p1)
            .iter()
            .map(|x| (x.0.as_str(), x.1))
            .collect::<Vec<_>>(),
        [
            ("apiserver", Strategy::DrainFromLb),
            ("controllers", Strategy::Parallel),
            ("node", Strategy::Parallel),
        ]
    );
    let cp1 = p1.nodes.iter().find(|n| n.node == "cp1").unwrap();
    let ca = cp1
        .changes
        .iter()
        .find(|x| x.path == "/etc/kubernetes/pki/ca.crt")
        .unwrap();
    assert_eq!(ca.summary[0], "certificates: 1 -> 2", "{:#?}", ca.summary);
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.add_filter(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "[time]");
    let worker = p1.nodes.iter().find(|n| n.node == "worker1").unwrap();
    let text = kubeforge_plan::to_text(&Plan {
        nodes: vec![worker.clone()],
        phases: Vec::new(),
        ..p1.clone()
    });
    settings.bind(|| insta::assert_snapshot!("rotation_step1_worker1", text));
    rotation::finish_step(
        dir.path(),
        Rotation {
            ca: CaId::Kubernetes,
            step: Step::Trust,
            done: false,
        },
    )
    .unwrap();
    current = next;

    // 2. The new CA signs: its leaves, the signer and its key, the
    //    kubeconfigs; the bundles stay as they are.
    let next = prepare(dir.path(), &c, &step(CaId::Kubernetes, Step::Reissue));
    let p2 = plan(&next, &converged(&current));
    let files = changed(&p2);
    for f in [
        "cp1: /etc/kubernetes/pki/ca-signer.crt",
        "cp1: /etc/kubernetes/pki/ca.key",
        "cp2: /etc/kubernetes/pki/apiserver.crt",
        "worker1: /etc/kubernetes/pki/kubelet-server.crt",
        "worker1: /etc/kubernetes/kubelet.conf",
    ] {
        assert!(files.contains(&f.to_string()), "{f} not in {files:#?}");
    }
    assert!(!files
        .iter()
        .any(|f| f.ends_with("/ca.crt") || f.contains("etcd/")));
    let w = p2.nodes.iter().find(|n| n.node == "worker1").unwrap();
    assert_eq!(w.steps, [KUBELET_STEP]);
    rotation::finish_step(
        dir.path(),
        Rotation {
            ca: CaId::Kubernetes,
            step: Step::Reissue,
            done: false,
        },
    )
    .unwrap();
    current = next;

    // 3. The old CA leaves the bundles: the ca.crt files and kubeconfigs
    //    again, nothing signed anew.
    let next = prepare(dir.path(), &c, &step(CaId::Kubernetes, Step::Drop));
    let p3 = plan(&next, &converged(&current));
    let files = changed(&p3);
    assert!(files.contains(&"cp3: /etc/kubernetes/pki/ca.crt".to_string()));
    assert!(!files
        .iter()
        .any(|f| f.contains("ca-signer") || f.contains(".key")));
    let cp1 = p3.nodes.iter().find(|n| n.node == "cp1").unwrap();
    let ca = cp1
        .changes
        .iter()
        .find(|x| x.path == "/etc/kubernetes/pki/ca.crt")
        .unwrap();
    assert_eq!(ca.summary[0], "certificates: 2 -> 1", "{:#?}", ca.summary);
    let again = kubeforge_plan::plan("ha", &next, &converged(&next), &[]).unwrap();
    assert!(again.is_empty());
}

#[test]
fn an_etcd_ca_rotation_touches_etcd_and_the_apiservers_only() {
    let c = cluster("ha.toml");
    let dir = tempfile::tempdir().unwrap();
    let current = prepare(dir.path(), &c, &Default::default());
    let next = prepare(dir.path(), &c, &step(CaId::Etcd, Step::Trust));
    let p = plan(&next, &converged(&current));
    assert_eq!(
        phases(&p),
        [
            (
                "etcd".into(),
                Strategy::OneAtATime,
                vec!["cp1".into(), "cp2".into(), "cp3".into()]
            ),
            (
                "apiserver".into(),
                Strategy::DrainFromLb,
                vec!["cp1".into(), "cp2".into(), "cp3".into()]
            ),
        ]
    );
    for n in ["cp1", "cp2", "cp3"] {
        assert_eq!(shape(&p)[n].0, ["/etc/kubernetes/pki/etcd/ca.crt"]);
    }
}
