//! Upgrades as plans: the running versions (a fact of every node) and the
//! bundle's binaries in, the version changes or the version skew rule a
//! plan would break out. A refused plan names the rule, the node and the
//! unit, and what to do.
#![allow(clippy::unwrap_used)]

use kubeforge_plan::{Facts, NodeFacts, Options, Plan, PlanError};
use kubeforge_render::{KubeVersion, Rendered};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The HA example (cp1-3: etcd and control plane; lb1-2; worker1-2) with
/// every binary from a bundle, installing `v1.31.4`.
fn rendered() -> Rendered {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../inventories/ha.toml");
    let loaded = kubeforge_inventory::load(&path).unwrap();
    let state = tempfile::tempdir().unwrap();
    let prepared =
        kubeforge_render::prepare(state.path(), &loaded.cluster, &Default::default()).unwrap();
    let mut r = prepared.rendered;
    let bundle = prepared
        .renderer
        .table()
        .binary
        .iter()
        .map(|b| {
            let file = PathBuf::from(format!("/bundle/{}", b.name));
            (b.name.clone(), (file, "b".repeat(64)))
        })
        .collect();
    prepared
        .renderer
        .add_binaries(&loaded.cluster, &mut r, &bundle);
    assert_eq!(r.version.to_string(), "v1.31.4");
    r
}

/// Every node holds the rendered files and runs its units, each component
/// at `v1.31.4`.
fn converged(r: &Rendered) -> BTreeMap<String, NodeFacts> {
    let mut facts = kubeforge_plan::converged_facts("ha", r);
    for n in &r.nodes {
        let f = facts.get_mut(&n.name).expect("a node's facts");
        for u in n.units.iter().filter(|u| u.skew.is_some()) {
            f.versions
                .insert(u.name.clone(), "Kubernetes v1.31.4".to_string());
        }
    }
    facts
}

const CONTROL_PLANE: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];
const NODE: &[&str] = &["kubelet", "kube-proxy"];

/// `units` on `nodes` run `version`, and their installed binary is not the
/// bundle's (the bundle moved on).
fn running(
    f: &mut BTreeMap<String, NodeFacts>,
    nodes: &[&str],
    units: &[&str],
    version: &str,
    replaced: bool,
) {
    for n in nodes {
        let facts = f.get_mut(*n).unwrap();
        for u in units {
            if !facts.units.contains_key(*u) {
                continue;
            }
            facts.versions.insert(
                u.to_string(),
                format!("Kubernetes {version}-kubeforge-standin"),
            );
            if replaced {
                let bin = facts.files.get_mut(&format!("/usr/local/bin/{u}")).unwrap();
                bin.sha256 = "a".repeat(64);
            }
        }
    }
}

const ALL: &[&str] = &["cp1", "cp2", "cp3", "lb1", "lb2", "worker1", "worker2"];
const CPS: &[&str] = &["cp1", "cp2", "cp3"];

fn plan_of(
    r: &Rendered,
    f: &BTreeMap<String, NodeFacts>,
    opts: &Options,
) -> Result<Plan, PlanError> {
    kubeforge_plan::plan_with("ha", r, &Facts::Gathered(f.clone()), opts)
}

/// One transition: how the facts differ from a converged v1.31.4 cluster
/// (with the inventory's version `to`), the options, and the rule broken
/// (with words of the message) or the number of components that change.
struct Case {
    name: &'static str,
    to: (u32, u32, u32),
    setup: fn(&mut BTreeMap<String, NodeFacts>),
    only: &'static [&'static str],
    allow_downgrade: bool,
    outcome: Outcome,
}

enum Outcome {
    /// Allowed: this many components change, and the plan's text says each.
    Allowed(usize, &'static [&'static str]),
    /// Refused: the rule, and words the rest of the message holds.
    Refused(&'static str, &'static [&'static str]),
}

const CASES: &[Case] = &[
    Case {
        name: "one minor up, every binary replaced",
        to: (1, 31, 4),
        setup: |f| {
            running(f, ALL, CONTROL_PLANE, "v1.30.2", true);
            running(f, ALL, NODE, "v1.30.2", true);
        },
        only: &[],
        allow_downgrade: false,
        outcome: Outcome::Allowed(
            3 * 3 + 5 * 2,
            &[
                "kube-apiserver v1.30.2 -> v1.31.4: cp1, cp2, cp3",
                "kubelet v1.30.2 -> v1.31.4: cp1, cp2, cp3, worker1, worker2",
            ],
        ),
    },
    Case {
        name: "a patch release up",
        to: (1, 31, 4),
        setup: |f| {
            running(f, ALL, CONTROL_PLANE, "v1.31.1", true);
            running(f, ALL, NODE, "v1.31.1", true);
        },
        only: &[],
        allow_downgrade: false,
        outcome: Outcome::Allowed(19, &["kube-proxy v1.31.1 -> v1.31.4"]),
    },
    Case {
        name: "rebuilt binaries of the same version roll the same way",
        to: (1, 31, 4),
        setup: |f| {
            running(f, ALL, CONTROL_PLANE, "v1.31.4", true);
            running(f, ALL, NODE, "v1.31.4", true);
        },
        only: &[],
        allow_downgrade: false,
        outcome: Outcome::Allowed(
            19,
            &["kube-scheduler v1.31.4 (binary replaced, same version): cp1, cp2, cp3"],
        ),
    },
    Case {
        name: "an apiserver upgrade half done goes on",
        to: (1, 31, 4),
        setup: |f| {
            running(f, &["cp2", "cp3"], CONTROL_PLANE, "v1.30.2", true);
            running(f, ALL, NODE, "v1.30.2", true);
        },
        only: &[],
        allow_downgrade: false,
        outcome: Outcome::Allowed(2 * 3 + 5 * 2, &["kube-apiserver v1.30.2 -> v1.31.4: cp2, cp3"]),
    },
    Case {
        name: "kubelets three minors behind stay while the control plane moves",
        to: (1, 31, 4),
        setup: |f| {
            running(f, ALL, CONTROL_PLANE, "v1.30.2", true);
            running(f, ALL, NODE, "v1.28.9", false);
        },
        only: &[],
        allow_downgrade: false,
        outcome: Outcome::Allowed(9, &["kube-controller-manager v1.30.2 -> v1.31.4"]),
    },
    Case {
        name: "the node phase alone after the control plane",
        to: (1, 31, 4),
        setup: |f| running(f, ALL, NODE, "v1.30.2", true),
        only: &["node"],
        allow_downgrade: false,
        outcome: Outcome::Allowed(10, &["kubelet v1.30.2 -> v1.31.4"]),
    },
    Case {
        name: "two minors at once",
        to: (1, 31, 4),
        setup: |f| {
            running(f, ALL, CONTROL_PLANE, "v1.29.6", true);
            running(f, ALL, NODE, "v1.29.6", true);
        },
        only: &[],
        allow_downgrade: false,
        outcome: Outcome::Refused(
            "kube-apiserver moves one minor version at a time",
            &[
                "kube-apiserver on cp1 runs v1.29.6, the plan would install v1.31.4",
                "upgrade to 1.30 first",
            ],
        ),
    },
    Case {
        name: "kubelets before the apiservers",
        to: (1, 31, 4),
        setup: |f| {
            running(f, ALL, CONTROL_PLANE, "v1.30.2", true);
            running(f, ALL, NODE, "v1.30.2", true);
        },
        only: &["node"],
        allow_downgrade: false,
        outcome: Outcome::Refused(
            "kubelet and kube-proxy are never newer than kube-apiserver",
            &[
                "after phase node, kubelet on cp1 would run v1.31.4 while kube-apiserver on cp1 runs v1.30.2",
                "upgrade the control plane first",
            ],
        ),
    },
    Case {
        name: "a bundle whose kubelet is newer than the running apiservers",
        to: (1, 31, 4),
        setup: |f| {
            running(f, ALL, CONTROL_PLANE, "v1.30.2", false);
            running(f, ALL, NODE, "v1.30.2", true);
        },
        only: &[],
        allow_downgrade: false,
        outcome: Outcome::Refused(
            "kubelet and kube-proxy are never newer than kube-apiserver",
            &["kubelet on cp1 would run v1.31.4 while kube-apiserver on cp1 runs v1.30.2"],
        ),
    },
    Case {
        name: "controllers before the apiservers",
        to: (1, 31, 4),
        setup: |f| running(f, ALL, CONTROL_PLANE, "v1.30.2", true),
        only: &["controllers"],
        allow_downgrade: false,
        outcome: Outcome::Refused(
            "kube-controller-manager and kube-scheduler are never newer than kube-apiserver",
            &["after phase controllers, kube-controller-manager on cp1 would run v1.31.4"],
        ),
    },
    Case {
        name: "kubelets left four minors behind",
        to: (1, 31, 4),
        setup: |f| {
            running(f, ALL, CONTROL_PLANE, "v1.30.2", true);
            running(f, ALL, NODE, "v1.27.3", false);
        },
        only: &[],
        allow_downgrade: false,
        outcome: Outcome::Refused(
            "kubelet and kube-proxy are at most three minor versions older than kube-apiserver",
            &["after phase apiserver, kubelet on cp1 would run v1.27.3 while kube-apiserver on cp1 runs v1.31.4"],
        ),
    },
    Case {
        name: "a minor version back",
        to: (1, 31, 4),
        setup: |f| {
            running(f, ALL, CONTROL_PLANE, "v1.32.0", true);
            running(f, ALL, NODE, "v1.32.0", true);
        },
        only: &[],
        allow_downgrade: true,
        outcome: Outcome::Refused(
            "no minor version goes back",
            &["kube-apiserver on cp1 runs v1.32.0, the plan would install v1.31.4", "etcd restore"],
        ),
    },
    Case {
        name: "a patch release back, not asked",
        to: (1, 31, 4),
        setup: |f| {
            running(f, ALL, CONTROL_PLANE, "v1.31.5", true);
            running(f, ALL, NODE, "v1.31.5", true);
        },
        only: &[],
        allow_downgrade: false,
        outcome: Outcome::Refused(
            "no downgrade unless asked",
            &["kube-apiserver on cp1 runs v1.31.5, the plan would install v1.31.4", "--allow-downgrade"],
        ),
    },
    Case {
        name: "a patch release back, asked",
        to: (1, 31, 4),
        setup: |f| {
            running(f, ALL, CONTROL_PLANE, "v1.31.5", true);
            running(f, ALL, NODE, "v1.31.5", true);
        },
        only: &[],
        allow_downgrade: true,
        outcome: Outcome::Allowed(19, &["kubelet v1.31.5 -> v1.31.4"]),
    },
    Case {
        name: "the next minor for a cluster one minor behind, by the inventory",
        to: (1, 32, 0),
        setup: |f| {
            running(f, ALL, CONTROL_PLANE, "v1.31.4", true);
            running(f, ALL, NODE, "v1.31.4", true);
        },
        only: &[],
        allow_downgrade: false,
        outcome: Outcome::Allowed(19, &["kube-apiserver v1.31.4 -> v1.32.0"]),
    },
];

#[test]
fn version_skew_table() {
    let base = rendered();
    for case in CASES {
        let mut r = base.clone();
        r.version = KubeVersion {
            major: case.to.0,
            minor: case.to.1,
            patch: case.to.2,
        };
        let mut f = converged(&r);
        (case.setup)(&mut f);
        let opts = Options {
            only: case.only.iter().map(|s| s.to_string()).collect(),
            allow_downgrade: case.allow_downgrade,
            ..Options::default()
        };
        let got = plan_of(&r, &f, &opts);
        match (&case.outcome, got) {
            (Outcome::Allowed(n, words), Ok(p)) => {
                assert_eq!(p.versions.len(), *n, "{}: {:#?}", case.name, p.versions);
                let text = kubeforge_plan::to_text(&p);
                for w in *words {
                    assert!(text.contains(w), "{}: {w:?} not in\n{text}", case.name);
                }
            }
            (Outcome::Refused(rule, words), Err(e)) => {
                let msg = e.to_string();
                assert!(
                    msg.starts_with("refused, nothing was changed: "),
                    "{}: {msg}",
                    case.name
                );
                assert!(
                    msg.contains(&format!("(rule: {rule})")),
                    "{}: {msg}",
                    case.name
                );
                for w in *words {
                    assert!(msg.contains(w), "{}: {w:?} not in {msg}", case.name);
                }
                assert!(msg.contains("help: "), "{}: {msg}", case.name);
            }
            (Outcome::Allowed(..), Err(e)) => panic!("{}: refused: {e}", case.name),
            (Outcome::Refused(rule, _), Ok(p)) => panic!(
                "{}: not refused ({rule}):\n{}",
                case.name,
                kubeforge_plan::to_text(&p)
            ),
        }
    }
}

/// The plan of an upgrade (one minor up, every binary replaced) as
/// `kubeforge plan` prints it: versions, then the order.
#[test]
fn upgrade_plan_text() {
    let r = rendered();
    let mut f = converged(&r);
    running(&mut f, ALL, CONTROL_PLANE, "v1.30.2", true);
    running(&mut f, ALL, NODE, "v1.30.2", true);
    running(&mut f, CPS, &["etcd"], "v3.5.15", true);
    let opts = Options {
        max_unavailable: 2,
        ..Options::default()
    };
    let p = plan_of(&r, &f, &opts).unwrap();
    let text = kubeforge_plan::to_text(&p);
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!("upgrade_ha", text));
    // The health it starts from is checked first.
    assert!(p.healthy_before.is_some());
    let node = p.phases.iter().find(|x| x.phase == "node").unwrap();
    assert_eq!(
        node.batches,
        [
            vec!["cp1"],
            vec!["cp2"],
            vec!["cp3"],
            vec!["worker1", "worker2"]
        ]
    );
    assert!(node.nodes.iter().all(|w| w.cordon.is_some()));
}

/// Batches of a drain-nodes phase: nodes where nothing restarts at once,
/// control-plane nodes one at a time, the workers --max-unavailable at a
/// time; 0 is refused.
#[test]
fn node_batches_follow_max_unavailable() {
    let r = rendered();
    let mut f = converged(&r);
    running(
        &mut f,
        &["cp2", "worker1", "worker2"],
        NODE,
        "v1.31.4",
        true,
    );
    // A new kubelet node: its units only start.
    f.get_mut("cp3").unwrap().units.clear();
    f.get_mut("cp3").unwrap().versions.clear();
    let batches = |n: usize| {
        let opts = Options {
            only: vec!["node".into()],
            max_unavailable: n,
            ..Options::default()
        };
        let p = plan_of(&r, &f, &opts).unwrap();
        let node = p.phases.iter().find(|x| x.phase == "node").unwrap();
        node.batches.clone()
    };
    assert_eq!(
        batches(1),
        [vec!["cp3"], vec!["cp2"], vec!["worker1"], vec!["worker2"]]
    );
    assert_eq!(
        batches(2),
        [vec!["cp3"], vec!["cp2"], vec!["worker1", "worker2"]]
    );
    assert_eq!(
        batches(5),
        [vec!["cp3"], vec!["cp2"], vec!["worker1", "worker2"]]
    );
    let zero = Options {
        max_unavailable: 0,
        ..Options::default()
    };
    assert!(matches!(
        plan_of(&r, &f, &zero),
        Err(PlanError::MaxUnavailable)
    ));
}

/// Nothing changes on a converged cluster: no versions in the plan.
#[test]
fn a_converged_cluster_has_no_version_changes() {
    let r = rendered();
    let p = plan_of(&r, &converged(&r), &Options::default()).unwrap();
    assert!(p.is_empty(), "{}", kubeforge_plan::to_text(&p));
    assert!(p.versions.is_empty());
    assert!(p.healthy_before.is_none());
}
