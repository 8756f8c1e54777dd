//! The engine on a recording transport: plans made from the example
//! inventories and scripted facts, executed against nodes that run nothing
//! and record every script. Each test reads the order of what was done.
#![allow(clippy::unwrap_used)]

use kubeforge_apply::{execute, Applied, ApplyError, Credentials, Event, EventKind, Options};
use kubeforge_apply::{Progress, Transports};
use kubeforge_plan::{Facts, NodeFacts, Plan, RemoteFile, UnitFacts};
use kubeforge_render::Rendered;
use kubeforge_transport::recording::{fail, ok, Recorder};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

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

/// Every node holds exactly its rendered files and runs its units.
fn converged(r: &Rendered) -> BTreeMap<String, NodeFacts> {
    r.nodes
        .iter()
        .map(|n| {
            let mut f = NodeFacts::default();
            for file in n.files.values() {
                f.files.insert(
                    file.path.clone(),
                    RemoteFile {
                        sha256: file.sha256.clone(),
                        mode: file.mode,
                        owner: file.owner.clone(),
                        content: None,
                    },
                );
            }
            for u in &n.units {
                f.units.insert(
                    u.name.clone(),
                    UnitFacts {
                        active: true,
                        enabled: true,
                    },
                );
            }
            f.steps_done = n.steps.iter().map(|s| s.name.clone()).collect();
            if r.addon_node.as_ref() == Some(&n.name) {
                let objects = r
                    .addons
                    .iter()
                    .flat_map(|a| &a.objects)
                    .map(|o| {
                        let live = kubeforge_plan::LiveObject {
                            live: Some(o.body.clone()),
                            dry_run: Some(o.body.clone()),
                        };
                        (o.path.clone(), live)
                    })
                    .collect();
                f.api = Some(kubeforge_plan::ApiFacts::Objects(objects));
            }
            (n.name.clone(), f)
        })
        .collect()
}

fn changed(facts: &mut BTreeMap<String, NodeFacts>, node: &str, path: &str) {
    facts
        .get_mut(node)
        .unwrap()
        .files
        .get_mut(path)
        .unwrap()
        .sha256 = "0".repeat(64);
}

fn plan(r: &Rendered, facts: &BTreeMap<String, NodeFacts>) -> Plan {
    kubeforge_plan::plan("t", r, &Facts::Gathered(facts.clone()), &[]).unwrap()
}

/// Progress events as markers in the recorder's log.
struct Marks(Recorder);

impl Progress for Marks {
    fn event(&self, e: Event) {
        let what = match e.kind {
            EventKind::PhaseStarted => format!("== {} started", e.phase),
            EventKind::PhaseDone => format!("== {} done", e.phase),
            _ => return,
        };
        self.0.mark("-", &what);
    }
}

fn transports(rec: &Recorder, r: &Rendered) -> Transports {
    r.nodes
        .iter()
        .map(|n| (n.name.clone(), rec.node(&n.name)))
        .collect()
}

fn opts() -> Options {
    Options {
        gate_timeout: Duration::ZERO,
        poll_interval: Duration::from_millis(1),
        lb_settle: Duration::ZERO,
        ..Options::default()
    }
}

fn creds() -> Credentials {
    Credentials::new("Y2VydA==".into(), "a2V5".into())
}

async fn run(rec: &Recorder, r: &Rendered, p: &Plan) -> Result<Applied, ApplyError> {
    run_with(rec, r, p, &opts()).await
}

async fn run_with(
    rec: &Recorder,
    r: &Rendered,
    p: &Plan,
    o: &Options,
) -> Result<Applied, ApplyError> {
    execute(
        p,
        Some(&creds()),
        &transports(rec, r),
        o,
        &Marks(rec.clone()),
    )
    .await
}

/// A recorder whose API accepts every object, lists every kubelet node
/// Ready and every Deployment available; a test's own rules win.
fn recorder(r: &Rendered) -> Recorder {
    let rec = Recorder::new();
    rec.answer(
        None,
        "apply an addon object",
        vec![ok(&api_answer(200, "{}"))],
    );
    rec.answer(
        None,
        "list the nodes",
        vec![ok(&api_answer(200, &ready_nodes(r)))],
    );
    rec.answer(
        None,
        "read a deployment",
        vec![ok(&api_answer(
            200,
            r#"{"status":{"availableReplicas":1}}"#,
        ))],
    );
    rec.answer(
        None,
        "list its pods",
        vec![ok(&api_answer(200, r#"{"items":[]}"#))],
    );
    rec.answer(
        None,
        "read an object that must exist",
        vec![ok(&api_answer(200, "{}"))],
    );
    rec
}

/// The position of the first log line that contains all of `parts`.
fn pos(lines: &[String], parts: &[&str]) -> usize {
    lines
        .iter()
        .position(|l| parts.iter().all(|p| l.contains(p)))
        .unwrap_or_else(|| panic!("no line with {parts:?} in\n{}", lines.join("\n")))
}

fn count(lines: &[String], parts: &[&str]) -> usize {
    lines
        .iter()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .count()
}

/// Answers for the API as the addon script prints them: `CODE BASE64`.
fn api_answer(code: u16, body: &str) -> String {
    use base64::Engine as _;
    format!(
        "{code} {}\n",
        base64::engine::general_purpose::STANDARD.encode(body)
    )
}

#[tokio::test]
async fn a_converged_plan_does_nothing_at_all() {
    let r = rendered("ha.toml");
    let p = plan(&r, &converged(&r));
    assert!(p.is_empty() && p.phases.is_empty() && p.cluster_gates.is_none());
    let rec = recorder(&r);
    let done = run(&rec, &r, &p).await.unwrap();
    assert_eq!(done, Applied::default());
    assert!(rec.log().is_empty(), "{:?}", rec.lines());
}

#[tokio::test]
async fn a_new_cluster_starts_its_nodes_beside_the_control_plane() {
    let r = rendered("ha.toml");
    let p = kubeforge_plan::plan("t", &r, &Facts::Offline, &[]).unwrap();
    // A first start: every apiserver at once (nothing to drain), the node
    // phase beside the apiserver phase, the controllers beside the LB.
    let phase = |name: &str| p.phases.iter().find(|x| x.phase == name).unwrap();
    assert_eq!(
        phase("apiserver").strategy,
        kubeforge_render::Strategy::Parallel
    );
    assert_eq!(phase("node").with.as_deref(), Some("apiserver"));
    assert_eq!(phase("controllers").with.as_deref(), Some("lb"));
    let rec = recorder(&r);
    rec.answer(Some("lb1"), "check the VIP", vec![ok("yes\n")]);
    // cp1's apiserver takes a moment to answer.
    rec.answer(
        Some("cp1"),
        "127.0.0.1:6443/readyz",
        vec![fail(7, "starting"), fail(7, "starting"), ok("")],
    );
    let patient = Options {
        gate_timeout: Duration::from_secs(5),
        ..opts()
    };
    run_with(&rec, &r, &p, &patient).await.unwrap();
    let lines = rec.lines();
    let at = |what: &str| pos(&lines, &[what]);
    // Each phase starts only when those it waits for are done.
    for (phase, after) in [
        ("apiserver", "etcd"),
        ("node", "etcd"),
        ("lb", "apiserver"),
        ("controllers", "apiserver"),
        ("addons", "controllers"),
        ("addons", "lb"),
    ] {
        assert!(
            at(&format!("== {after} done")) < at(&format!("== {phase} started")),
            "{phase} started before {after} was done"
        );
    }
    // The node phase did not wait for the control plane.
    assert!(at("== node started") < at("== apiserver done"));
    // The cluster gate comes last.
    let last_done = ["addons", "node", "lb", "controllers"]
        .iter()
        .map(|x| at(&format!("== {x} done")))
        .max()
        .unwrap();
    assert!(pos(&lines, &["list the nodes"]) > last_done);
}

#[tokio::test]
async fn restarts_keep_the_phases_in_order() {
    let r = rendered("ha.toml");
    let mut f = converged(&r);
    for n in ["cp1", "cp2", "cp3"] {
        changed(&mut f, n, "/etc/kubernetes/pki/apiserver.crt");
    }
    changed(&mut f, "worker1", "/etc/kubernetes/kubelet-config.yaml");
    let p = plan(&r, &f);
    assert!(p.phases.iter().all(|x| x.with.is_none()));
    let rec = recorder(&r);
    run(&rec, &r, &p).await.unwrap();
    let lines = rec.lines();
    let mut last = None;
    for phase in ["apiserver", "node"] {
        let start = pos(&lines, &[&format!("== {phase} started")]);
        let done = pos(&lines, &[&format!("== {phase} done")]);
        assert!(
            last.is_none_or(|l| start > l),
            "{phase} overlapped the phase before it"
        );
        for l in &lines[start + 1..done] {
            assert!(!l.starts_with("-: =="), "{l} inside {phase}");
        }
        last = Some(done);
    }
}

fn ready_nodes(r: &Rendered) -> String {
    let items: Vec<String> = r
        .kubelet_nodes()
        .iter()
        .map(|(n, _)| {
            format!(
                r#"{{"metadata":{{"name":"{n}"}},"status":{{"conditions":[{{"type":"Ready","status":"True"}}]}}}}"#
            )
        })
        .collect();
    format!(r#"{{"items":[{}]}}"#, items.join(","))
}

#[tokio::test]
async fn new_etcd_members_start_together_then_every_member_is_gated() {
    let r = rendered("ha.toml");
    let p = kubeforge_plan::plan("t", &r, &Facts::Offline, &["etcd".to_string()]).unwrap();
    assert_eq!(p.phases.len(), 1);
    let rec = recorder(&r);
    run(&rec, &r, &p).await.unwrap();
    let lines = rec.lines();
    let first_gate = pos(&lines, &["etcd endpoint health"]);
    for n in ["cp1", "cp2", "cp3"] {
        let start = pos(&lines, &[n, "systemctl start --no-block etcd"]);
        assert!(start < first_gate, "{n} started after a gate");
        assert_eq!(count(&lines, &[n, "etcd endpoint health"]), 1, "{n}");
    }
    assert_eq!(count(&lines, &["systemctl start etcd"]), 0);
}

#[tokio::test]
async fn etcd_restarts_go_one_member_at_a_time_each_followed_by_the_cluster_health() {
    let r = rendered("ha.toml");
    let mut f = converged(&r);
    for n in ["cp1", "cp2", "cp3"] {
        changed(&mut f, n, "/etc/kubernetes/pki/etcd/server.crt");
    }
    let p = plan(&r, &f);
    assert_eq!(p.phases[0].strategy, kubeforge_render::Strategy::OneAtATime);
    let rec = recorder(&r);
    run(&rec, &r, &p).await.unwrap();
    let lines = rec.lines();
    let restarts: Vec<usize> = ["cp1", "cp2", "cp3"]
        .iter()
        .map(|n| pos(&lines, &[n, "systemctl restart etcd"]))
        .collect();
    assert!(restarts[0] < restarts[1] && restarts[1] < restarts[2]);
    // Between two restarts, every member's health is checked.
    for w in restarts.windows(2) {
        let between = &lines[w[0]..w[1]];
        for n in ["cp1", "cp2", "cp3"] {
            assert_eq!(count(between, &[n, "etcd endpoint health"]), 1, "{n}");
        }
    }
}

#[tokio::test]
async fn each_apiserver_is_drained_from_every_lb_restarted_gated_and_put_back() {
    let r = rendered("ha.toml");
    let mut f = converged(&r);
    for n in ["cp1", "cp2", "cp3"] {
        changed(&mut f, n, "/etc/kubernetes/pki/apiserver.crt");
    }
    let p = plan(&r, &f);
    let rec = recorder(&r);
    run(&rec, &r, &p).await.unwrap();
    let log = rec.log();
    let lines = rec.lines();
    let mut last = 0;
    for (i, cp) in ["cp1", "cp2", "cp3"].iter().enumerate() {
        let restart = pos(&lines, &[cp, "systemctl restart kube-apiserver"]);
        let readyz = restart
            + pos(
                &lines[restart..],
                &[cp, "https://127.0.0.1:6443/readyz to answer ok"],
            );
        for lb in ["lb1", "lb2"] {
            // Written drained (its stdin carries the file) and reloaded
            // before the restart; written back and reloaded after the gate.
            let writes: Vec<usize> = log
                .iter()
                .enumerate()
                .filter(|(_, c)| c.node == lb && c.what == "write /etc/nginx/nginx.conf")
                .map(|(k, _)| k)
                .collect();
            assert_eq!(writes.len(), 6, "{lb}: {writes:?}");
            let (drain, undrain) = (writes[2 * i], writes[2 * i + 1]);
            assert!(last <= drain && drain < restart, "{cp} {lb} drain");
            assert!(readyz < undrain, "{cp} {lb} undrain after the gate");
            assert_eq!(lines[drain + 1], format!("{lb}: systemctl reload nginx"));
            assert_eq!(lines[undrain + 1], format!("{lb}: systemctl reload nginx"));
        }
        last = readyz;
    }
    // The drained file marks exactly that apiserver down.
    let edits = &p.phases[0].nodes[0].drain;
    assert_eq!(edits.len(), 2);
    let drained = String::from_utf8(edits[0].drained.clone()).unwrap();
    assert!(
        drained.contains("fail_timeout=10s down; # cp1"),
        "{drained}"
    );
    assert_eq!(drained.matches(" down;").count(), 1);
    assert!(!String::from_utf8_lossy(&edits[0].restored).contains(" down;"));
}

#[tokio::test]
async fn no_drain_while_the_load_balancers_do_not_run() {
    let r = rendered("ha.toml");
    let mut f = converged(&r);
    changed(&mut f, "cp2", "/etc/kubernetes/pki/apiserver.crt");
    for lb in ["lb1", "lb2"] {
        f.get_mut(lb)
            .unwrap()
            .units
            .get_mut("nginx")
            .unwrap()
            .active = false;
    }
    let p = plan(&r, &f);
    let apiserver = p.phases.iter().find(|x| x.phase == "apiserver").unwrap();
    assert!(apiserver.nodes.iter().all(|w| w.drain.is_empty()));
    let rec = recorder(&r);
    rec.answer(Some("lb1"), "check the VIP", vec![ok("yes\n")]);
    run(&rec, &r, &p).await.unwrap();
    let lines = rec.lines();
    let restart = pos(&lines, &["cp2", "systemctl restart kube-apiserver"]);
    assert!(!lines[..restart].iter().any(|l| l.contains("nginx")));
}

#[tokio::test]
async fn the_cluster_gate_waits_for_the_default_service_account() {
    let r = rendered("ha.toml");
    let mut f = converged(&r);
    changed(&mut f, "worker1", "/etc/systemd/system/kubelet.service");
    let p = plan(&r, &f);
    let text = kubeforge_plan::to_text(&p);
    assert!(
        text.contains("ServiceAccount default/default exists"),
        "{text}"
    );
    let rec = recorder(&r);
    let missing = api_answer(
        404,
        r#"{"kind":"Status","message":"serviceaccounts \"default\" not found"}"#,
    );
    rec.answer(None, "read an object that must exist", vec![ok(&missing)]);
    let err = run(&rec, &r, &p).await.unwrap_err();
    let ApplyError::Gate(g) = &err else {
        panic!("{err}")
    };
    assert_eq!(g.gate, "ServiceAccount default/default exists");
    assert_eq!(g.unit, "kube-controller-manager");
    assert!(g.detail.contains("not found"), "{}", g.detail);
}

#[tokio::test]
async fn a_failing_gate_stops_the_apply_naming_node_gate_and_journal() {
    let r = rendered("ha.toml");
    let mut f = converged(&r);
    for n in ["cp1", "cp2", "cp3"] {
        changed(&mut f, n, "/etc/kubernetes/pki/apiserver.crt");
    }
    changed(&mut f, "worker1", "/etc/systemd/system/kubelet.service");
    let p = plan(&r, &f);
    let rec = recorder(&r);
    rec.answer(
        Some("cp2"),
        "readyz to answer ok",
        vec![fail(7, "connection refused")],
    );
    rec.answer(
        Some("cp2"),
        "journalctl",
        vec![ok("cp2 kube-apiserver[1]: boom\n")],
    );
    let err = run(&rec, &r, &p).await.unwrap_err();
    let ApplyError::Gate(g) = &err else {
        panic!("{err}")
    };
    assert_eq!(g.node, "cp2");
    assert_eq!(g.unit, "kube-apiserver");
    assert!(
        g.gate.contains("https://127.0.0.1:6443/readyz"),
        "{}",
        g.gate
    );
    assert!(g.detail.contains("connection refused"));
    assert!(
        err.to_string().contains("cp2 kube-apiserver[1]: boom"),
        "{err}"
    );
    let lines = rec.lines();
    // cp3 never restarted, the node phase never started, and cp2 stays out
    // of the load balancers (the next apply puts it back).
    assert_eq!(count(&lines, &["cp3", "systemctl restart"]), 0);
    assert_eq!(count(&lines, &["worker1"]), 0);
    assert_eq!(count(&lines, &["== node started"]), 0);
}

#[tokio::test]
async fn daemon_reload_only_when_a_unit_file_changed() {
    let r = rendered("ha.toml");
    let mut f = converged(&r);
    changed(&mut f, "worker1", "/etc/kubernetes/kubelet-config.yaml");
    let rec = recorder(&r);
    run(&rec, &r, &plan(&r, &f)).await.unwrap();
    let lines = rec.lines();
    assert_eq!(count(&lines, &["daemon-reload"]), 0);
    assert_eq!(count(&lines, &["worker1: systemctl restart kubelet"]), 1);

    changed(&mut f, "worker1", "/etc/systemd/system/kubelet.service");
    let rec = recorder(&r);
    run(&rec, &r, &plan(&r, &f)).await.unwrap();
    let lines = rec.lines();
    let reload = pos(&lines, &["worker1: systemctl daemon-reload"]);
    let write = pos(
        &lines,
        &["worker1: write /etc/systemd/system/kubelet.service"],
    );
    let restart = pos(&lines, &["worker1: systemctl restart kubelet"]);
    assert!(write < reload && reload < restart);
    assert_eq!(count(&lines, &["daemon-reload"]), 1);
}

#[tokio::test]
async fn a_mode_change_alone_restarts_nothing() {
    let r = rendered("ha.toml");
    let mut f = converged(&r);
    f.get_mut("worker2")
        .unwrap()
        .files
        .get_mut("/etc/kubernetes/pki/kubelet-server.key")
        .unwrap()
        .mode = 0o644;
    let rec = recorder(&r);
    run(&rec, &r, &plan(&r, &f)).await.unwrap();
    let calls: Vec<_> = rec.log().into_iter().filter(|c| c.node != "-").collect();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].what, "chmod");
    assert_eq!(
        calls[0].args,
        [
            "/etc/kubernetes/pki/kubelet-server.key",
            "0600",
            "root:root"
        ]
    );
}

#[tokio::test]
async fn node_units_are_gated_after_they_start() {
    let r = rendered("ha.toml");
    let mut f = converged(&r);
    for u in ["containerd", "kubelet", "kube-proxy"] {
        f.get_mut("worker2")
            .unwrap()
            .units
            .get_mut(u)
            .unwrap()
            .active = false;
    }
    let rec = recorder(&r);
    let p = plan(&r, &f);
    run(&rec, &r, &p).await.unwrap();
    let lines = rec.lines();
    for (unit, gate) in [
        ("containerd", "containerd and its CRI plugin"),
        ("kubelet", "the kubelet's /healthz"),
        ("kube-proxy", "kube-proxy's /healthz"),
    ] {
        let start = pos(&lines, &["worker2", &format!("systemctl start {unit}")]);
        let g = pos(&lines, &["worker2", gate]);
        assert!(start < g, "{unit}");
    }
    // The kubelet registers its node: the cluster gate runs, last.
    assert!(p.cluster_gates.is_some());
    assert!(pos(&lines, &["cp1: list the nodes"]) > pos(&lines, &["kube-proxy's /healthz"]));
}

#[tokio::test]
async fn a_failed_start_names_the_unit_and_shows_its_journal() {
    let r = rendered("ha.toml");
    let mut f = converged(&r);
    f.get_mut("worker1")
        .unwrap()
        .units
        .get_mut("kube-proxy")
        .unwrap()
        .active = false;
    let rec = recorder(&r);
    rec.answer(
        Some("worker1"),
        "systemctl start kube-proxy",
        vec![fail(1, "Job for kube-proxy.service failed")],
    );
    rec.answer(
        Some("worker1"),
        "journalctl",
        vec![ok("iptables is not available on this host\n")],
    );
    let err = run(&rec, &r, &plan(&r, &f)).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("worker1: systemctl start kube-proxy did not pass"),
        "{text}"
    );
    assert!(text.contains("iptables is not available"), "{text}");
}

#[tokio::test]
async fn the_vip_gate_wants_exactly_one_holder() {
    let r = rendered("ha.toml");
    let mut f = converged(&r);
    changed(&mut f, "lb1", "/etc/keepalived/keepalived.conf");
    let p = plan(&r, &f);
    // Both hold it: the gate fails, naming both and showing keepalived's
    // journal.
    let rec = recorder(&r);
    rec.answer(None, "check the VIP", vec![ok("yes\n")]);
    let err = run(&rec, &r, &p).await.unwrap_err();
    let ApplyError::Gate(g) = &err else {
        panic!("{err}")
    };
    assert_eq!(g.unit, "keepalived");
    assert!(g.detail.contains("held by [lb1, lb2]"), "{}", g.detail);
    // One holder: it passes, then the API is checked through the VIP from a
    // control-plane node.
    let rec = recorder(&r);
    rec.answer(Some("lb2"), "check the VIP", vec![ok("no\n"), ok("yes\n")]);
    let patient = Options {
        gate_timeout: Duration::from_secs(5),
        ..opts()
    };
    run_with(&rec, &r, &p, &patient).await.unwrap();
    let lines = rec.lines();
    let reload = pos(&lines, &["lb1: systemctl reload keepalived"]);
    let through = pos(
        &lines,
        &["cp1: https://10.77.0.100:8443/readyz to answer ok"],
    );
    assert!(reload < through);
}

#[tokio::test]
async fn controllers_restart_together_each_behind_its_own_gate() {
    let r = rendered("ha.toml");
    let mut f = converged(&r);
    for n in ["cp1", "cp2", "cp3"] {
        changed(&mut f, n, "/etc/kubernetes/scheduler.conf");
    }
    let p = plan(&r, &f);
    assert_eq!(p.phases.len(), 1);
    assert_eq!(p.phases[0].strategy, kubeforge_render::Strategy::Parallel);
    let rec = recorder(&r);
    run(&rec, &r, &p).await.unwrap();
    let lines = rec.lines();
    for n in ["cp1", "cp2", "cp3"] {
        let restart = pos(&lines, &[n, "systemctl restart kube-scheduler"]);
        let gate = pos(&lines, &[n, "https://127.0.0.1:10259/healthz"]);
        assert!(restart < gate);
        assert_eq!(count(&lines, &[n, "kube-controller-manager"]), 0);
    }
}

#[tokio::test]
async fn steps_run_before_the_files_and_after_the_units_as_the_table_says() {
    let r = rendered("ha.toml");
    let mut f = converged(&r);
    let w = f.get_mut("worker1").unwrap();
    w.steps_done.retain(|s| s != "IPv4 forwarding");
    changed(&mut f, "worker1", "/etc/containerd/config.toml");
    let rec = recorder(&r);
    run(&rec, &r, &plan(&r, &f)).await.unwrap();
    let lines = rec.lines();
    let step = pos(&lines, &["worker1: IPv4 forwarding"]);
    let write = pos(&lines, &["worker1: write /etc/containerd/config.toml"]);
    let restart = pos(&lines, &["worker1: systemctl restart containerd"]);
    assert!(step < write && write < restart);
}

#[tokio::test]
async fn api_objects_go_in_after_the_api_answers_and_the_cluster_gate_waits_for_ready_nodes() {
    let r = rendered("ha.toml");
    let mut f = converged(&r);
    f.get_mut("cp1").unwrap().api = Some(kubeforge_plan::ApiFacts::Unreachable("down".into()));
    let p = plan(&r, &f);
    let api = p.phases[0].api.as_ref().unwrap();
    assert_eq!(api.via, "cp1");
    let rec = recorder(&r);
    // Two nodes not Ready at first, then all of them.
    let not_ready = r#"{"items":[]}"#;
    rec.answer(
        Some("cp1"),
        "list the nodes",
        vec![
            ok(&api_answer(200, not_ready)),
            ok(&api_answer(200, &ready_nodes(&r))),
        ],
    );
    let done = run(&rec, &r, &p).await;
    // With a gate timeout of zero the first answer already fails: nodes
    // that are not registered are named.
    let err = done.unwrap_err().to_string();
    assert!(err.contains("node Ready in the API"), "{err}");
    assert!(err.contains("not registered with the API"), "{err}");
    let lines = rec.lines();
    let ready = pos(&lines, &["cp1: https://127.0.0.1:6443/readyz"]);
    let first = pos(&lines, &["cp1: apply an addon object"]);
    assert!(ready < first);
    assert_eq!(count(&lines, &["apply an addon object"]), api.objects.len());
    // Each object in its own request, in the manifests' order.
    let bodies: Vec<usize> = rec
        .log()
        .iter()
        .filter(|c| c.what == "apply an addon object")
        .map(|c| c.stdin.unwrap())
        .collect();
    assert_eq!(bodies.len(), api.objects.len());
}

#[tokio::test]
async fn a_plan_of_some_phases_touches_nothing_else() {
    let r = rendered("ha.toml");
    let p = kubeforge_plan::plan("t", &r, &Facts::Offline, &["lb".to_string()]).unwrap();
    assert_eq!(p.phases.len(), 1);
    assert!(p.cluster_gates.is_none());
    assert!(p
        .nodes
        .iter()
        .all(|n| n.node.starts_with("lb") || n.is_empty()));
    let rec = recorder(&r);
    rec.answer(Some("lb2"), "check the VIP", vec![ok("yes\n")]);
    run(&rec, &r, &p).await.unwrap();
    for c in rec.log() {
        assert!(["lb1", "lb2", "cp1", "-"].contains(&c.node.as_str()), "{c}");
        if c.node == "cp1" {
            assert!(c.what.contains("10.77.0.100"), "{c}");
        }
    }
    let err = kubeforge_plan::plan("t", &r, &Facts::Offline, &["nope".to_string()]).unwrap_err();
    assert!(err.to_string().contains("unknown phase \"nope\""), "{err}");
}

#[tokio::test]
async fn a_missing_binary_stops_only_plans_of_its_phase() {
    let r0 = rendered("ha.toml");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../inventories/ha.toml");
    let cluster = kubeforge_inventory::load(&path).unwrap().cluster;
    let renderer = kubeforge_render::Renderer::new().unwrap();
    let mut r = r0.clone();
    let mut bundle = BTreeMap::new();
    for b in [
        "kubelet",
        "kube-proxy",
        "containerd",
        "containerd-shim-runc-v2",
        "runc",
        "bridge",
        "host-local",
        "portmap",
        "loopback",
    ] {
        bundle.insert(
            b.to_string(),
            (PathBuf::from(format!("/bundle/{b}")), "a".repeat(64)),
        );
    }
    renderer.add_binaries(&cluster, &mut r, &bundle);
    let err = kubeforge_plan::plan("t", &r, &Facts::Offline, &[]).unwrap_err();
    assert!(
        err.to_string().contains("the bundle has no `etcd`"),
        "{err}"
    );
    let p = kubeforge_plan::plan("t", &r, &Facts::Offline, &["node".to_string()]).unwrap();
    let puts: Vec<&str> = p.phases[0].nodes[0]
        .puts
        .iter()
        .map(|x| x.path.as_str())
        .collect();
    assert!(puts.contains(&"/usr/local/bin/kubelet"), "{puts:?}");
}

#[tokio::test]
async fn the_whole_apply_on_a_converged_cluster_only_reads() {
    let r = rendered("single.toml");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../inventories/single.toml");
    let cluster = kubeforge_inventory::load(&path).unwrap().cluster;
    let rec = recorder(&r);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for n in &r.nodes {
        // The one gather round trip, as the node would answer it.
        let mut out = format!(
            "H hostname={0}\nH machine_id={0}\nH time={now}\nH kernel=Linux\nH arch=x86_64\nH systemd=yes\nK 0\n",
            n.name
        );
        for f in n.files.values() {
            out.push_str(&format!(
                "F {:o} {} {} {}\n",
                f.mode, f.owner, f.sha256, f.path
            ));
        }
        for u in &n.units {
            out.push_str(&format!("U {} active enabled\n", u.name));
        }
        for i in 0..n.steps.len() {
            out.push_str(&format!("S {i} 0\n"));
        }
        rec.answer(Some(&n.name), "gather facts", vec![ok(&out)]);
    }
    // The API: ready, every addon object as rendered.
    rec.answer(
        None,
        "read the API's readiness",
        vec![ok(&api_answer(200, "ok"))],
    );
    let mut objects = String::new();
    for o in r.addons.iter().flat_map(|a| &a.objects) {
        objects.push_str(&api_answer(200, &o.body));
        objects.push_str(&api_answer(200, &o.body));
    }
    rec.answer(None, "read the addon objects", vec![ok(&objects)]);
    rec.answer(
        None,
        "list certificate signing requests",
        vec![ok(&api_answer(200, r#"{"items":[]}"#))],
    );
    let t = transports(&rec, &r);
    let req = kubeforge_apply::Request {
        cluster: &cluster,
        rendered: &r,
        phases: &[],
        transports: &t,
        opts: &opts(),
        owner: "test",
    };
    let mut persisted = false;
    let mut persist = |_: &kubeforge_plan::Plan| {
        persisted = true;
        Ok(())
    };
    let out = kubeforge_apply::apply(&req, &mut persist, &Marks(rec.clone()))
        .await
        .unwrap();
    assert!(
        out.applied.is_none(),
        "{}",
        kubeforge_plan::to_text(&out.plan)
    );
    assert!(!persisted, "nothing to persist on a converged cluster");
    let whats: Vec<String> = rec.log().iter().map(|c| c.what.clone()).collect();
    for w in &whats {
        assert!(
            !w.starts_with("write ") && !w.starts_with("systemctl ") || w == "systemctl is-active",
            "a converged apply ran {w}"
        );
    }
    assert_eq!(
        whats.first().map(String::as_str),
        Some("take the apply lock")
    );
}

#[tokio::test]
async fn binaries_go_out_a_few_times_and_from_node_to_node() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../inventories/ha.toml");
    let cluster = kubeforge_inventory::load(&path).unwrap().cluster;
    let mut r = rendered("ha.toml");
    let dir = tempfile::tempdir().unwrap();
    let renderer = kubeforge_render::Renderer::new().unwrap();
    let mut bundle = BTreeMap::new();
    for b in renderer.table().binary.iter().map(|b| b.name.clone()) {
        let file = dir.path().join(&b);
        let bytes = format!("binary {b}").repeat(1000).into_bytes();
        std::fs::write(&file, &bytes).unwrap();
        bundle.insert(b, (file, sha_hex(&bytes)));
    }
    renderer.add_binaries(&cluster, &mut r, &bundle);
    let p = kubeforge_plan::plan("t", &r, &Facts::Offline, &["node".to_string()]).unwrap();
    let rec = recorder(&r);
    rec.answer(
        None,
        "list the blob store",
        vec![ok("zstd\ngzip\nfetch\nserve\n")],
    );
    rec.answer(None, "serve a binary", vec![ok("ready\n")]);
    run(&rec, &r, &p).await.unwrap();
    let log = rec.log();
    let kubelets = r.kubelet_nodes().len();
    let kubelet_sha = &bundle["kubelet"].1;
    let sent = log
        .iter()
        .filter(|c| c.what == "receive a binary" && c.args[1] == *kubelet_sha)
        .count();
    let fetched = log
        .iter()
        .filter(|c| c.what == "fetch a binary from another node" && c.args[1] == *kubelet_sha)
        .count();
    assert_eq!(sent + fetched, kubelets, "every kubelet node got it once");
    assert!(
        fetched > 0 && sent < kubelets,
        "sent {sent}, fetched {fetched}"
    );
    // Each node installs from its store after its blob arrived, and the
    // stores are cleared at the end.
    let lines = rec.lines();
    for (n, _) in r.kubelet_nodes() {
        let arrived = log
            .iter()
            .position(|c| {
                c.node == n
                    && c.args.get(1) == Some(kubelet_sha)
                    && (c.what == "receive a binary" || c.what.starts_with("fetch a binary"))
            })
            .unwrap();
        let installed = pos(&lines, &[&format!("{n}: write /usr/local/bin/kubelet")]);
        assert!(arrived < installed, "{n}");
        assert!(pos(&lines, &[&format!("{n}: clear the blob store")]) > installed);
    }
}

fn sha_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn an_etcd_restore_is_a_plan_the_engine_walks_in_order() {
    let r = rendered("ha.toml");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap.db");
    std::fs::write(&file, b"not really a snapshot").unwrap();
    let snap = kubeforge_plan::restore::Snapshot {
        file: file.clone(),
        sha256: sha_hex(b"not really a snapshot"),
    };
    let p = kubeforge_apply::etcd::restore_plan("ha", &r, &snap, "1700000000").unwrap();
    let names: Vec<&str> = p.phases.iter().map(|x| x.phase.as_str()).collect();
    assert_eq!(
        names,
        [
            "stop the control plane",
            "stop etcd",
            "restore etcd",
            "start etcd",
            "start the apiservers",
            "start the controllers",
            "restart the node agents"
        ]
    );
    let text = kubeforge_plan::work_to_text("Restore:", &p);
    assert!(
        text.contains("cp1: stop kube-apiserver, kube-controller-manager, kube-scheduler"),
        "{text}"
    );
    assert!(text.contains("(0600, secret)"), "{text}");
    let rec = recorder(&r);
    rec.answer(None, "check the VIP", vec![ok("no\n")]);
    rec.answer(Some("lb1"), "check the VIP", vec![ok("yes\n")]);
    run(&rec, &r, &p).await.unwrap();
    let log = rec.log();
    let lines = rec.lines();
    // Nothing talks to etcd when its members stop; every data directory is
    // restored before any member starts; the apiservers start one at a
    // time after etcd's gate; the snapshot never travels node to node.
    let last_control_stop = ["cp1", "cp2", "cp3"]
        .iter()
        .map(|n| pos(&lines, &[n, "systemctl stop kube-apiserver"]))
        .max()
        .unwrap();
    let first_etcd_stop = pos(&lines, &["systemctl stop etcd"]);
    assert!(last_control_stop < first_etcd_stop);
    let restores: Vec<usize> = ["cp1", "cp2", "cp3"]
        .iter()
        .map(|n| {
            pos(
                &lines,
                &[n, "restore the snapshot into etcd's data directory"],
            )
        })
        .collect();
    let first_start = pos(&lines, &["systemctl start --no-block etcd"]);
    assert!(restores.iter().all(|&r| r < first_start));
    let gate = pos(&lines, &["etcd endpoint health"]);
    let api = pos(&lines, &["systemctl start kube-apiserver"]);
    assert!(first_start < gate && gate < api);
    assert!(!log.iter().any(|c| c.what.contains("fetch a binary")));
    let agents = pos(&lines, &["worker1", "systemctl restart kube-proxy"]);
    assert!(api < agents);
    let restore_step = log
        .iter()
        .find(|c| c.node == "cp2" && c.what.starts_with("restore the snapshot"))
        .unwrap();
    assert!(restore_step.args.is_empty());
    let script = &p.phases[2].nodes[1].steps[0].script;
    for want in [
        "--name 'cp2'",
        "--initial-cluster 'cp1=https://10.77.0.11:2380,cp2=https://10.77.0.12:2380,cp3=https://10.77.0.13:2380'",
        "--initial-advertise-peer-urls 'https://10.77.0.12:2380'",
        "mv -- \"$data\" \"$data.before-restore-1700000000\"",
        "--bump-revision 1000000000 --mark-compacted",
    ] {
        assert!(script.contains(want), "{want} not in\n{script}");
    }
}
