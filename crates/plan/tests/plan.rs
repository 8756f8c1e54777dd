//! Plans as data: rendered files and node facts in, changes out. Every
//! case also checks that planning again after "applying" is empty.
#![allow(clippy::unwrap_used)]

use kubeforge_plan::{
    ApiAction, ApiFacts, Facts, FileAction, LiveObject, NodeFacts, PendingCsr, Plan, RemoteFile,
    UnitFacts,
};
use kubeforge_render::Rendered;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A plan of every phase.
fn plan(cluster: &str, r: &Rendered, facts: &Facts) -> Plan {
    kubeforge_plan::plan(cluster, r, facts, &[]).unwrap()
}

fn rendered(rel: &str) -> Rendered {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../inventories")
        .join(rel);
    let loaded = kubeforge_inventory::load(&path).unwrap();
    let state = tempfile::tempdir().unwrap();
    kubeforge_render::prepare(state.path(), &loaded.cluster, &Default::default())
        .unwrap()
        .rendered
}

/// Facts of a node that holds exactly the rendered files and runs its units.
fn converged(r: &Rendered) -> BTreeMap<String, NodeFacts> {
    r.nodes
        .iter()
        .map(|n| {
            let files = n
                .files
                .values()
                .map(|f| {
                    (
                        f.path.clone(),
                        RemoteFile {
                            sha256: f.sha256.clone(),
                            mode: f.mode,
                            owner: f.owner.clone(),
                            content: (!f.secret).then(|| f.content.clone()),
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
            let steps_done = n.steps.iter().map(|s| s.name.clone()).collect();
            let api = (r.addon_node.as_ref() == Some(&n.name)).then(|| {
                let objects = r
                    .addons
                    .iter()
                    .flat_map(|a| &a.objects)
                    .map(|o| {
                        let applied = with_server_fields(&o.body);
                        let live = LiveObject {
                            live: Some(applied.clone()),
                            dry_run: Some(applied),
                        };
                        (o.path.clone(), live)
                    })
                    .collect();
                ApiFacts::Objects(objects)
            });
            (
                n.name.clone(),
                NodeFacts {
                    files,
                    units,
                    steps_done,
                    api,
                    csrs: Vec::new(),
                    bootstrapped: false,
                    kubelet_rejoin: false,
                    versions: BTreeMap::new(),
                    manifest: Some(kubeforge_plan::Manifest::of("ha", n, None).to_bytes()),
                },
            )
        })
        .collect()
}

/// An object as the API returns it: with the fields the server owns.
fn with_server_fields(body: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["metadata"]["resourceVersion"] = "42".into();
    v["metadata"]["managedFields"] = serde_json::json!([{"manager": "kubeforge"}]);
    v["status"] = serde_json::json!({"observedGeneration": 1});
    v.to_string()
}

fn node<'a>(p: &'a Plan, name: &str) -> &'a kubeforge_plan::NodePlan {
    p.nodes.iter().find(|n| n.node == name).unwrap()
}

#[test]
fn offline_plan_text() {
    let r = rendered("ha.toml");
    let p = plan("ha", &r, &Facts::Offline);
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!("offline_ha", kubeforge_plan::to_text(&p)));
    assert_eq!(p.summary.update, 0);
    assert_eq!(p.summary.nodes_changed, 7);
    // Every unit of every node is started; nothing restarts on a bare node.
    assert_eq!(p.summary.restart, 0);
    assert!(p
        .nodes
        .iter()
        .all(|n| n.daemon_reload || n.node.starts_with("lb")));
}

#[test]
fn offline_plan_json() {
    let r = rendered("single.toml");
    let p = plan("single", &r, &Facts::Offline);
    let mut json = serde_json::to_value(&p).unwrap();
    // The sha256 of generated keys and certificates differs per run.
    for phase in json["phases"].as_array_mut().unwrap() {
        for node in phase["nodes"].as_array_mut().unwrap() {
            for put in node["puts"].as_array_mut().into_iter().flatten() {
                put["sha256"] = "<sha256>".into();
            }
        }
    }
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_json_snapshot!("offline_single_json", json));
}

#[test]
fn converged_cluster_plans_nothing() {
    let r = rendered("ha.toml");
    let p = plan("ha", &r, &Facts::Gathered(converged(&r)));
    assert!(p.is_empty(), "{}", kubeforge_plan::to_text(&p));
    assert!(kubeforge_plan::to_text(&p).contains("No changes"));
}

/// One case: a change to the facts of one node, and what the plan must say.
struct Case {
    name: &'static str,
    node: &'static str,
    mutate: fn(&mut NodeFacts),
    changes: &'static [(&'static str, FileAction)],
    daemon_reload: bool,
    start: &'static [&'static str],
    restart: &'static [&'static str],
    reload: &'static [&'static str],
    diff_contains: Option<&'static str>,
}

const CASES: &[Case] = &[
    Case {
        name: "apiserver flag changed: only kube-apiserver restarts, with a diff",
        node: "cp2",
        mutate: |f| {
            let file = f
                .files
                .get_mut("/etc/systemd/system/kube-apiserver.service")
                .unwrap();
            let old = String::from_utf8(file.content.clone().unwrap()).unwrap();
            file.content = Some(
                old.replace("--profiling=false", "--profiling=true")
                    .into_bytes(),
            );
            file.sha256 = "0".repeat(64);
        },
        changes: &[(
            "/etc/systemd/system/kube-apiserver.service",
            FileAction::Update,
        )],
        daemon_reload: true,
        start: &[],
        restart: &["kube-apiserver"],
        reload: &[],
        diff_contains: Some("-  --profiling=true\n+  --profiling=false"),
    },
    Case {
        name: "secret changed: updated without a diff",
        node: "cp1",
        mutate: |f| {
            f.files
                .get_mut("/etc/kubernetes/pki/etcd/server.key")
                .unwrap()
                .sha256 = "1".repeat(64);
        },
        changes: &[("/etc/kubernetes/pki/etcd/server.key", FileAction::Update)],
        daemon_reload: false,
        start: &[],
        restart: &["etcd"],
        reload: &[],
        diff_contains: None,
    },
    Case {
        name: "shared CA file restarts every unit that reads it on that node",
        node: "cp1",
        mutate: |f| {
            f.files
                .get_mut("/etc/kubernetes/pki/ca.crt")
                .unwrap()
                .sha256 = "2".repeat(64);
        },
        changes: &[("/etc/kubernetes/pki/ca.crt", FileAction::Update)],
        daemon_reload: false,
        start: &[],
        restart: &[
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubelet",
        ],
        reload: &[],
        diff_contains: None,
    },
    Case {
        name: "wrong mode only: chmod, nothing restarts",
        node: "worker1",
        mutate: |f| {
            f.files
                .get_mut("/etc/kubernetes/pki/kubelet-server.key")
                .unwrap()
                .mode = 0o644;
        },
        changes: &[("/etc/kubernetes/pki/kubelet-server.key", FileAction::Chmod)],
        daemon_reload: false,
        start: &[],
        restart: &[],
        reload: &[],
        diff_contains: None,
    },
    Case {
        name: "nginx config changed: reload, not restart",
        node: "lb1",
        mutate: |f| {
            f.files.get_mut("/etc/nginx/nginx.conf").unwrap().sha256 = "3".repeat(64);
        },
        changes: &[("/etc/nginx/nginx.conf", FileAction::Update)],
        daemon_reload: false,
        start: &[],
        restart: &[],
        reload: &["nginx"],
        diff_contains: None,
    },
    Case {
        name: "stopped unit is started, nothing else",
        node: "cp3",
        mutate: |f| {
            f.units.get_mut("etcd").unwrap().active = false;
        },
        changes: &[],
        daemon_reload: false,
        start: &["etcd"],
        restart: &[],
        reload: &[],
        diff_contains: None,
    },
    Case {
        name: "missing file is created; its stopped unit is started, not restarted",
        node: "worker2",
        mutate: |f| {
            f.files.remove("/etc/systemd/system/kube-proxy.service");
            f.units.get_mut("kube-proxy").unwrap().active = false;
        },
        changes: &[("/etc/systemd/system/kube-proxy.service", FileAction::Create)],
        daemon_reload: true,
        start: &["kube-proxy"],
        restart: &[],
        reload: &[],
        diff_contains: None,
    },
    Case {
        name: "initial-cluster env changed: no etcd restart",
        node: "cp1",
        mutate: |f| {
            f.files
                .get_mut("/etc/etcd/initial-cluster.env")
                .unwrap()
                .sha256 = "4".repeat(64);
        },
        changes: &[("/etc/etcd/initial-cluster.env", FileAction::Update)],
        daemon_reload: false,
        start: &[],
        restart: &[],
        reload: &[],
        diff_contains: None,
    },
];

#[test]
fn table_of_changes() {
    let r = rendered("ha.toml");
    let mut failures = Vec::new();
    for case in CASES {
        let mut facts = converged(&r);
        (case.mutate)(facts.get_mut(case.node).unwrap());
        let p = plan("ha", &r, &Facts::Gathered(facts));
        // Only the mutated node changes.
        for n in &p.nodes {
            if n.node != case.node && !n.is_empty() {
                failures.push(format!("{}: node {} changes too", case.name, n.node));
            }
        }
        let n = node(&p, case.node);
        let changes: Vec<(&str, FileAction)> = n
            .changes
            .iter()
            .map(|c| (c.path.as_str(), c.action))
            .collect();
        let check = |what: &str, ok: bool, got: String, failures: &mut Vec<String>| {
            if !ok {
                failures.push(format!("{}: {what} was {got}", case.name));
            }
        };
        check(
            "changes",
            changes == case.changes,
            format!("{changes:?}"),
            &mut failures,
        );
        check(
            "daemon_reload",
            n.daemon_reload == case.daemon_reload,
            format!("{}", n.daemon_reload),
            &mut failures,
        );
        check(
            "start",
            n.start == case.start,
            format!("{:?}", n.start),
            &mut failures,
        );
        check(
            "restart",
            n.restart == case.restart,
            format!("{:?}", n.restart),
            &mut failures,
        );
        check(
            "reload",
            n.reload == case.reload,
            format!("{:?}", n.reload),
            &mut failures,
        );
        for c in &n.changes {
            if c.secret && c.diff.is_some() {
                failures.push(format!("{}: diff shown for secret {}", case.name, c.path));
            }
        }
        if let Some(want) = case.diff_contains {
            let diff = n
                .changes
                .iter()
                .filter_map(|c| c.diff.clone())
                .collect::<String>();
            check("diff", diff.contains(want), diff, &mut failures);
        }
        // After applying exactly this plan the node is converged again.
        let again = plan("ha", &r, &Facts::Gathered(converged(&r)));
        if !again.is_empty() {
            failures.push(format!("{}: second plan not empty", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn api_objects_create_update_and_unknown() {
    let r = rendered("ha.toml");
    let addon_node = r.addon_node.clone().unwrap();
    let objects: Vec<_> = r.addons.iter().flat_map(|a| &a.objects).collect();
    assert!(objects.len() >= 3, "{objects:?}");

    // The API not up yet: every object is applied, state unknown.
    let mut facts = converged(&r);
    facts.get_mut(&addon_node).unwrap().api = Some(ApiFacts::Unreachable("no answer".into()));
    let p = plan("ha", &r, &Facts::Gathered(facts));
    let n = node(&p, &addon_node);
    assert_eq!(n.api.len(), objects.len());
    assert!(n.api.iter().all(|c| c.action == ApiAction::Apply));
    assert!(p
        .nodes
        .iter()
        .filter(|x| x.node != addon_node)
        .all(|x| x.api.is_empty()));

    // One object missing, one changed in the API, the rest as rendered.
    let mut facts = converged(&r);
    let Some(ApiFacts::Objects(map)) = &mut facts.get_mut(&addon_node).unwrap().api else {
        panic!("no api facts")
    };
    map.remove(&objects[0].path);
    let changed = map.get_mut(&objects[1].path).unwrap();
    let mut live: serde_json::Value = serde_json::from_str(changed.live.as_ref().unwrap()).unwrap();
    live["metadata"]["labels"]["edited-by"] = "someone".into();
    changed.live = Some(live.to_string());
    let p = plan("ha", &r, &Facts::Gathered(facts));
    let n = node(&p, &addon_node);
    assert_eq!(n.api.len(), 2, "{:?}", n.api);
    assert_eq!(n.api[0].action, ApiAction::Create);
    assert_eq!(n.api[1].action, ApiAction::Update);
    let diff = n.api[1].diff.as_deref().unwrap();
    assert!(diff.contains("-      \"edited-by\": \"someone\""), "{diff}");
    assert_eq!(p.summary.api_apply, 2);
    assert_eq!(p.summary.api_unchanged, objects.len() - 2);
    let text = kubeforge_plan::to_text(&p);
    assert!(
        text.contains(&format!("  api create: {}", objects[0].display())),
        "{text}"
    );
}

#[test]
fn pending_serving_certificate_requests_are_approved_or_reported() {
    let r = rendered("ha.toml");
    let addon_node = r.addon_node.clone().unwrap();
    let mut facts = converged(&r);
    facts.get_mut(&addon_node).unwrap().csrs = vec![
        PendingCsr {
            name: "csr-renew".into(),
            node: Some("worker1".into()),
            refused: String::new(),
        },
        PendingCsr {
            name: "csr-evil".into(),
            node: None,
            refused: "asks for the name DNSName(\"evil.example\"), not node worker1's".into(),
        },
    ];
    let p = plan("ha", &r, &Facts::Gathered(facts));
    let n = node(&p, &addon_node);
    assert_eq!(n.approve.len(), 1);
    assert_eq!(n.refused.len(), 1);
    assert!(!p.is_empty());
    assert_eq!(p.summary.csr_approve, 1);
    let text = kubeforge_plan::to_text(&p);
    assert!(
        text.contains(
            "  api approve: certificate signing request csr-renew (serving certificate of worker1)"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "note: certificate signing request csr-evil is not approved: asks for the name"
        ),
        "{text}"
    );
    assert!(
        text.contains("1 serving certificate requests to approve."),
        "{text}"
    );

    // A refused request alone changes nothing.
    let mut facts = converged(&r);
    facts.get_mut(&addon_node).unwrap().csrs = vec![PendingCsr {
        name: "csr-evil".into(),
        node: None,
        refused: "x".into(),
    }];
    let p = plan("ha", &r, &Facts::Gathered(facts));
    assert!(p.is_empty());
    assert!(kubeforge_plan::to_text(&p).contains("not approved: x"));
}

/// The apiserver certificate reissued with one more SAN: the plan says
/// what changed in it (names, validity, key), never its PEM; its key is
/// "(secret) changed"; a kubeconfig shows its server and user only.
#[test]
fn certificate_and_kubeconfig_changes_in_meaning() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../inventories/ha.toml");
    let loaded = kubeforge_inventory::load(&path).unwrap();
    let state = tempfile::tempdir().unwrap();
    // Applied before the example named k8s.example.internal.
    let mut earlier = loaded.cluster.clone();
    earlier.pki.extra_apiserver_sans.clear();
    let before = kubeforge_render::prepare(state.path(), &earlier, &Default::default()).unwrap();
    before.persist(state.path()).unwrap();
    // Certificates start at the second they are issued: one second later
    // the reissued one's validity differs, as it would on a real run.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let after = kubeforge_render::prepare(state.path(), &loaded.cluster, &Default::default())
        .unwrap()
        .rendered;
    // The nodes hold what was rendered before, the old certificate's
    // content included (certificates are not secret: facts read them).
    let mut facts = converged(&before.rendered);
    // cp1's scheduler kubeconfig points elsewhere; facts hold only the
    // lines that say where and who (never its embedded credentials).
    let kc = facts
        .get_mut("cp1")
        .unwrap()
        .files
        .get_mut("/etc/kubernetes/scheduler.conf")
        .unwrap();
    kc.sha256 = "5".repeat(64);
    kc.content = Some(
        b"apiVersion: v1\nkind: Config\nclusters:\n  - name: ha\n    cluster:\n      server: https://10.0.0.99:6443\nusers:\n  - name: system:kube-scheduler\n    user:\ncurrent-context: system:kube-scheduler@ha\n"
            .to_vec(),
    );
    let p = plan("ha", &after, &Facts::Gathered(facts));
    let text = kubeforge_plan::to_text(&p);
    assert_eq!(
        text.matches("~ /etc/kubernetes/pki/apiserver.crt").count(),
        3,
        "{text}"
    );
    assert_eq!(
        text.matches("SAN added: DNS:k8s.example.internal").count(),
        3,
        "{text}"
    );
    assert!(
        !text.contains("BEGIN CERTIFICATE") && !text.contains("PRIVATE"),
        "{text}"
    );
    assert!(!text.contains("-data:"), "{text}");
    assert!(
        text.contains("server: https://10.0.0.99:6443 -> https://"),
        "{text}"
    );
    let cert = node(&p, "cp2")
        .changes
        .iter()
        .find(|c| c.path == "/etc/kubernetes/pki/apiserver.crt")
        .unwrap();
    assert!(cert.diff.is_none());
    assert!(
        cert.summary.iter().any(|l| l.starts_with("validity: ")),
        "{:?}",
        cert.summary
    );
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.add_filter(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "[time]");
    settings.bind(|| insta::assert_snapshot!("apiserver_san_added", text));
}

/// The HA inventory rendered twice with the same PKI: as it is, and
/// without the nodes `drop` (their `[[nodes]]` blocks cut out).
fn rendered_without(drop: &[&str]) -> (Rendered, Rendered) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../inventories/ha.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let blocks: Vec<&str> = text.split("[[nodes]]").collect();
    let mut cut = blocks[0].to_string();
    for b in &blocks[1..] {
        if !drop.iter().any(|d| b.contains(&format!("name = \"{d}\""))) {
            cut.push_str("[[nodes]]");
            cut.push_str(b);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("ha.toml");
    std::fs::write(&small, cut).unwrap();
    let state = tempfile::tempdir().unwrap();
    let render = |p: &std::path::Path| {
        let loaded = kubeforge_inventory::load(p).unwrap();
        let prepared =
            kubeforge_render::prepare(state.path(), &loaded.cluster, &Default::default()).unwrap();
        prepared.persist(state.path()).unwrap();
        prepared.rendered
    };
    (render(&path), render(&small))
}

#[test]
fn removing_nodes_plans_the_drain_the_others_changes_and_the_teardown() {
    use kubeforge_plan::remove::{prune, PruneOptions};
    for (drop, name, force) in [
        ("worker2", "remove_worker", false),
        ("cp3", "remove_control_plane", true),
    ] {
        let (full, r) = rendered_without(&[drop]);
        let mut facts = converged(&full);
        // A step whose check changed with the nodes (the /etc/hosts lines,
        // the pod routes) fails it on the node.
        for n in &r.nodes {
            let before = full.nodes.iter().find(|f| f.name == n.name).unwrap();
            let node = facts.get_mut(&n.name).unwrap();
            node.steps_done.retain(|name| {
                let check = |t: &kubeforge_render::NodeTree| {
                    t.steps
                        .iter()
                        .find(|s| &s.name == name)
                        .map(|s| s.check.clone())
                };
                check(before) == check(n)
            });
        }
        let mut p = plan("ha", &r, &Facts::Gathered(facts));
        let tree = full.nodes.iter().find(|n| n.name == drop).unwrap();
        let record = kubeforge_plan::Manifest::of("ha", tree, None);
        let opts = PruneOptions {
            drain_timeout_secs: 300,
            force,
            ..Default::default()
        };
        prune(&mut p, &r, &[&record], &opts).unwrap();
        let text = kubeforge_plan::to_text(&p);
        let mut settings = insta::Settings::clone_current();
        settings.set_prepend_module_to_snapshot(false);
        settings.add_filter(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "[time]");
        settings.add_filter(r"serial [0-9a-f:]+ -> [0-9a-f:]+", "serial [old] -> [new]");
        settings.bind(|| insta::assert_snapshot!(name, text));
        assert_eq!(p.summary.remove, 1);
        assert_eq!(p.phases.first().unwrap().phase, "drain");
        assert_eq!(p.phases.last().unwrap().phase, "forget");
        // The members that stay are not gated on a member count that
        // still includes the one going (no etcd restart at all).
        for w in p
            .phases
            .iter()
            .filter(|x| x.phase == "etcd")
            .flat_map(|x| &x.nodes)
        {
            assert!(w.gates.is_empty() && w.restart.is_empty(), "{w:?}");
        }
    }
}

/// One removal with `--unreachable`: what the plan holds, or why it is
/// refused.
struct Unreachable {
    name: &'static str,
    /// Taken out of the inventory (their records are the nodes to remove).
    drop: &'static [&'static str],
    unreachable: &'static [&'static str],
    force: bool,
    /// `phase: op` of every cluster operation, in order (when planned).
    ops: &'static [&'static str],
    /// In the plan's text, or in the refusal.
    says: &'static [&'static str],
    refused: bool,
}

#[test]
fn an_unreachable_node_is_cordoned_and_forgotten_and_never_contacted() {
    use kubeforge_plan::remove::{prune, PruneOptions};
    let cases = [
        Unreachable {
            name: "a dead worker",
            drop: &["worker2"],
            unreachable: &["worker2"],
            force: false,
            ops: &["drain: cordon worker2", "forget: delete Node worker2"],
            says: &[
                "worker2 (10.77.0.22): remove from the cluster (worker)",
                "unreachable: not drained, not torn down; its Node object is removed",
                "left on it as they are: 4 units",
                "cordon worker2, no evictions: it is unreachable",
                "1 node to remove",
            ],
            refused: false,
        },
        Unreachable {
            name: "a dead etcd and control-plane node, with --force",
            drop: &["cp3"],
            unreachable: &["cp3"],
            force: true,
            ops: &[
                "drain: cordon cp3",
                "remove: etcd member remove cp3",
                "forget: delete Node cp3",
            ],
            says: &["unreachable: not drained, not torn down; its Node object and etcd member are removed"],
            refused: false,
        },
        Unreachable {
            name: "one dead worker, one removed as usual",
            drop: &["worker1", "worker2"],
            unreachable: &["worker2"],
            force: false,
            ops: &[
                "drain: drain worker1",
                "drain: cordon worker2",
                "forget: delete Node worker1",
                "forget: delete Node worker2",
            ],
            says: &["worker1 (10.77.0.21): remove from the cluster (worker)", "stop and disable: kubeforge-pod-routes"],
            refused: false,
        },
        Unreachable {
            name: "a dead load balancer: nothing but the others' changes",
            drop: &["lb2"],
            unreachable: &["lb2"],
            force: false,
            ops: &[],
            says: &[
                "unreachable: not torn down; only the other nodes change",
                "1 node to remove",
            ],
            refused: false,
        },
        Unreachable {
            name: "a dead etcd member without --force: the member is lost already",
            drop: &["cp3"],
            unreachable: &["cp3"],
            force: false,
            ops: &[],
            says: &[
                "removing cp3 leaves 2 etcd members",
                "cp3 is unreachable, so its member is lost already",
                "pass --force",
                "nothing was changed",
            ],
            refused: true,
        },
        Unreachable {
            name: "a node the inventory names",
            drop: &["worker2"],
            unreachable: &["worker2", "cp1"],
            force: false,
            ops: &[],
            says: &["--unreachable cp1: the inventory names cp1", "leave out --unreachable cp1"],
            refused: true,
        },
        Unreachable {
            name: "a node without a record",
            drop: &["worker2"],
            unreachable: &["worker9"],
            force: false,
            ops: &[],
            says: &["--unreachable worker9: the state directory has no record of worker9"],
            refused: true,
        },
        Unreachable {
            name: "nothing to remove at all",
            drop: &[],
            unreachable: &["worker9"],
            force: false,
            ops: &[],
            says: &["no record of worker9"],
            refused: true,
        },
    ];
    for c in cases {
        let (full, r) = rendered_without(c.drop);
        let mut p = plan("ha", &r, &Facts::Gathered(converged(&full)));
        let records: Vec<kubeforge_plan::Manifest> = c
            .drop
            .iter()
            .map(|d| {
                let tree = full.nodes.iter().find(|n| n.name == *d).unwrap();
                kubeforge_plan::Manifest::of("ha", tree, None)
            })
            .collect();
        let gone: Vec<&kubeforge_plan::Manifest> = records.iter().collect();
        let opts = PruneOptions {
            force: c.force,
            unreachable: c.unreachable.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        };
        let before = p.clone();
        match prune(&mut p, &r, &gone, &opts) {
            Err(refused) => {
                assert!(c.refused, "{}: refused: {refused:?}", c.name);
                assert_eq!(p, before, "{}: a refusal leaves the plan alone", c.name);
                let text: Vec<String> = refused.iter().map(|x| x.to_string()).collect();
                let text = text.join("\n");
                for want in c.says {
                    assert!(text.contains(want), "{}: {want:?} not in\n{text}", c.name);
                }
            }
            Ok(()) => {
                assert!(!c.refused, "{}: planned", c.name);
                let ops: Vec<String> = p
                    .phases
                    .iter()
                    .flat_map(|x| {
                        x.ops
                            .iter()
                            .map(|o| format!("{}: {}", x.phase, o.describe()))
                    })
                    .collect();
                assert_eq!(ops.len(), c.ops.len(), "{}: {ops:#?}", c.name);
                for (op, want) in ops.iter().zip(c.ops) {
                    assert!(op.starts_with(want), "{}: {op} is not {want}", c.name);
                }
                // Nothing runs on an unreachable node: no work of its own
                // in any phase.
                for n in c.unreachable {
                    assert!(
                        p.phases.iter().flat_map(|x| &x.nodes).all(|w| w.node != *n),
                        "{}: work on {n}",
                        c.name
                    );
                    let removal = p.removals.iter().find(|x| x.node == *n).unwrap();
                    assert!(removal.unreachable, "{}", c.name);
                }
                let text = kubeforge_plan::to_text(&p);
                for want in c.says {
                    assert!(text.contains(want), "{}: {want:?} not in\n{text}", c.name);
                }
                if c.name == "a dead worker" {
                    let mut settings = insta::Settings::clone_current();
                    settings.set_prepend_module_to_snapshot(false);
                    settings.bind(|| insta::assert_snapshot!("remove_unreachable_worker", text));
                }
            }
        }
    }
}

/// A control-plane node added to a running cluster: its apiserver starts
/// before the others restart, the running load balancers take it only
/// after (never beside etcd, while it cannot answer yet), and reload once
/// it started, forgetting what it refused before.
#[test]
fn a_new_apiserver_joins_running_load_balancers_once_started() {
    let (full, small) = rendered_without(&["cp3"]);
    let p = plan("ha", &full, &Facts::Gathered(converged(&small)));
    let order: Vec<&str> = p.phases.iter().map(|x| x.phase.as_str()).collect();
    let at = |name: &str| order.iter().position(|x| *x == name).unwrap();
    assert!(at("apiserver") < at("lb"), "{order:?}");
    let lb = &p.phases[at("lb")];
    assert_eq!(
        lb.with, None,
        "a running load balancer is not started early"
    );
    for w in &lb.nodes {
        assert_eq!(w.reload, ["nginx"], "{w:?}");
    }
    // cp3 starts first: putting cp1 and cp2 back after their restarts (a
    // new etcd member) writes the configuration with cp3 in it.
    let api = &p.phases[at("apiserver")];
    let nodes: Vec<(&str, bool)> = api
        .nodes
        .iter()
        .map(|w| (w.node.as_str(), w.drain.is_empty()))
        .collect();
    assert_eq!(nodes, [("cp3", true), ("cp1", false), ("cp2", false)]);
    let reloads: Vec<(&str, &[String])> = api
        .lb_reload
        .iter()
        .map(|r| (r.node.as_str(), r.units.as_slice()))
        .collect();
    assert_eq!(
        reloads,
        [
            ("lb1", &["nginx".to_string()][..]),
            ("lb2", &["nginx".to_string()][..])
        ]
    );
    // Nothing new: no phase beside another, and no reload after starting.
    let none = plan("ha", &small, &Facts::Gathered(converged(&small)));
    assert!(none.phases.iter().all(|x| x.lb_reload.is_empty()));
}
