//! The engine on a recording transport: plans made from the example
//! inventories and scripted facts, executed against nodes that run nothing
//! and record every script. Each test reads the order of what was done.
#![allow(clippy::unwrap_used)]

use kubeforge_apply::{execute, Applied, ApplyError, Credentials, Event, EventKind, Options};
use kubeforge_apply::{Progress, Transports};
use kubeforge_plan::{Facts, NodeFacts, Plan};
use kubeforge_render::Rendered;
use kubeforge_transport::recording::{fail, ok, Recorder};
use kubeforge_transport::Output;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
    kubeforge_plan::converged_facts("t", r)
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
    // Drains: every node registered, no pods on it; Ready by a status
    // newer than the restart.
    rec.answer(
        None,
        "drain: read the node",
        vec![ok(&api_answer(200, "{}"))],
    );
    rec.answer(None, "drain: cordon", vec![ok(&api_answer(200, "{}"))]);
    rec.answer(None, "uncordon", vec![ok(&api_answer(200, "{}"))]);
    rec.answer(
        None,
        "drain: list the node's pods",
        vec![ok(&api_answer(200, r#"{"items":[]}"#))],
    );
    rec.answer(None, "read the node's clock", vec![ok("1767607200\n")]);
    rec.answer(
        None,
        "read the node's Ready condition",
        vec![ok(&api_answer(200, READY_AFTER))],
    );
    rec
}

/// A Node Ready by a status reported after 1767607200 (the clock the
/// recorder answers).
const READY_AFTER: &str = r#"{"status":{"conditions":[{"type":"Ready","status":"True","lastHeartbeatTime":"2026-01-05T10:00:05Z"}]}}"#;

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
async fn a_new_cluster_starts_its_nodes_and_controllers_together_once_the_apiservers_answer() {
    let r = rendered("ha.toml");
    let p = kubeforge_plan::plan("t", &r, &Facts::Offline, &[]).unwrap();
    // A first start: every apiserver at once (nothing to drain); once they
    // answer, the controllers and the node phase together; the LB beside
    // etcd.
    let phase = |name: &str| p.phases.iter().find(|x| x.phase == name).unwrap();
    assert_eq!(
        phase("apiserver").strategy,
        kubeforge_render::Strategy::Parallel
    );
    assert_eq!(phase("node").with.as_deref(), Some("controllers"));
    assert_eq!(phase("controllers").with, None);
    assert_eq!(phase("lb").with.as_deref(), Some("etcd"));
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
        ("node", "apiserver"),
        ("node", "lb"),
        ("controllers", "apiserver"),
        ("controllers", "lb"),
        ("addons", "apiserver"),
        ("addons", "controllers"),
        ("addons", "lb"),
    ] {
        assert!(
            at(&format!("== {after} done")) < at(&format!("== {phase} started")),
            "{phase} started before {after} was done"
        );
    }
    // The cluster gate comes last.
    let last_done = ["addons", "node", "lb", "controllers"]
        .iter()
        .map(|x| at(&format!("== {x} done")))
        .max()
        .unwrap();
    assert!(pos(&lines, &["list the nodes"]) > last_done);
}

#[tokio::test]
async fn a_new_cluster_starts_no_node_when_its_apiservers_do_not_answer() {
    let r = rendered("ha.toml");
    let p = kubeforge_plan::plan("t", &r, &Facts::Offline, &[]).unwrap();
    let rec = recorder(&r);
    rec.answer(Some("lb1"), "check the VIP", vec![ok("yes\n")]);
    // cp2's apiserver never answers.
    rec.answer(
        Some("cp2"),
        "127.0.0.1:6443/readyz",
        vec![fail(7, "connection refused")],
    );
    let quick = Options {
        gate_timeout: Duration::from_millis(300),
        ..opts()
    };
    let err = run_with(&rec, &r, &p, &quick).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("cp2"), "{text}");
    assert!(text.contains("readyz"), "{text}");
    let lines = rec.lines();
    // Nothing of the node phase or the controllers happened (the
    // binaries may have gone ahead).
    assert_eq!(count(&lines, &["worker1: systemctl"]), 0);
    assert_eq!(count(&lines, &["== node started"]), 0);
    for unit in ["containerd", "kubelet", "kube-proxy"] {
        assert_eq!(
            count(&lines, &[&format!("systemctl start {unit}")]),
            0,
            "{unit}"
        );
    }
    assert_eq!(count(&lines, &["== controllers started"]), 0);
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
    // The records of the nodes it changes, then etcd.
    assert_eq!(p.phases.len(), 2);
    assert_eq!(p.phases[0].phase, "manifest");
    assert_eq!(p.phases[0].nodes.len(), 3);
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
        &["worker1: write ", "/etc/systemd/system/kubelet.service"],
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
    assert_eq!(
        calls[0].what,
        "chmod 0600 /etc/kubernetes/pki/kubelet-server.key"
    );
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
        vec![Output {
            status: kubeforge_transport::ops::START_FAILED,
            stdout: b"kube-proxy\n".to_vec(),
            stderr: b"Job for kube-proxy.service failed".to_vec(),
        }],
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
    let write = pos(&lines, &["worker1: write ", "/etc/containerd/config.toml"]);
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
    assert_eq!(p.phases.len(), 2, "the records of lb1 and lb2, then lb");
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
    let puts: Vec<&str> = p.phases[1].nodes[0]
        .puts
        .iter()
        .map(|x| x.path.as_str())
        .collect();
    assert!(puts.contains(&"/usr/local/bin/kubelet"), "{puts:?}");
}

/// Answers of a converged cluster to the apply's reads: every node's
/// gather round trip as it would answer it (its files, units, steps and
/// record as rendered), the API ready with every addon object as
/// rendered.
fn converged_answers(rec: &Recorder, r: &Rendered, cluster: &str) {
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
        // The record, an M line for each of its lines and one for what
        // follows its last line break.
        let record = kubeforge_plan::Manifest::of(cluster, n, None).to_bytes();
        for line in String::from_utf8(record).unwrap().split('\n') {
            out.push_str(&format!("M {line}\n"));
        }
        rec.answer(Some(&n.name), "gather facts", vec![ok(&out)]);
    }
    // The API, in one round trip: ready, every addon object as rendered
    // (live and dry run), no certificate requests.
    let mut objects = api_answer(200, "ok");
    for o in r.addons.iter().flat_map(|a| &a.objects) {
        objects.push_str(&api_answer(200, &o.body));
        objects.push_str(&api_answer(200, &o.body));
    }
    objects.push_str(&api_answer(200, r#"{"items":[]}"#));
    rec.answer(None, "read the addon objects", vec![ok(&objects)]);
}

#[tokio::test]
async fn the_whole_apply_on_a_converged_cluster_only_reads() {
    let r = rendered("single.toml");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../inventories/single.toml");
    let cluster = kubeforge_inventory::load(&path).unwrap().cluster;
    let rec = recorder(&r);
    converged_answers(&rec, &r, &cluster.name);
    let t = transports(&rec, &r);
    let req = kubeforge_apply::Request {
        cluster: &cluster,
        rendered: &r,
        plan: &kubeforge_plan::Options::default(),
        transports: &t,
        opts: &opts(),
        owner: "test",
        gone: &[],
        prune: Default::default(),
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

/// The HA cluster rendered with a bundle of every binary (small files in
/// `dir`), and the bundle: name -> (file, sha256).
fn with_bundle(dir: &Path) -> (Rendered, BTreeMap<String, (PathBuf, String)>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../inventories/ha.toml");
    let cluster = kubeforge_inventory::load(&path).unwrap().cluster;
    let mut r = rendered("ha.toml");
    let renderer = kubeforge_render::Renderer::new().unwrap();
    let mut bundle = BTreeMap::new();
    for b in renderer.table().binary.iter().map(|b| b.name.clone()) {
        let file = dir.join(&b);
        let bytes = format!("binary {b}").repeat(1000).into_bytes();
        std::fs::write(&file, &bytes).unwrap();
        bundle.insert(b, (file, sha_hex(&bytes)));
    }
    renderer.add_binaries(&cluster, &mut r, &bundle);
    (r, bundle)
}

/// A recorder whose nodes take compressed blobs and fetch from and serve
/// to each other.
fn blob_recorder(r: &Rendered) -> Recorder {
    let rec = recorder(r);
    rec.answer(
        None,
        "list the blob store",
        vec![ok("zstd\ngzip\nfetch\nserve\n")],
    );
    rec.answer(None, "serve binaries", vec![ok("ready\n")]);
    rec
}

/// Where the binary `sha` went (sent or fetched), in log order.
fn transfers_of(log: &[kubeforge_transport::recording::Call], sha: &str) -> Vec<usize> {
    log.iter()
        .enumerate()
        .filter(|(_, c)| {
            (c.what == "receive a binary" || c.what.starts_with("fetch a binary"))
                && c.args.get(1).map(String::as_str) == Some(sha)
        })
        .map(|(i, _)| i)
        .collect()
}

#[tokio::test]
async fn binaries_go_out_a_few_times_and_from_node_to_node() {
    let dir = tempfile::tempdir().unwrap();
    let (r, bundle) = with_bundle(dir.path());
    let p = kubeforge_plan::plan("t", &r, &Facts::Offline, &["node".to_string()]).unwrap();
    let rec = blob_recorder(&r);
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
    // A node serves every blob of its store through one server (one SSH
    // session), however many blobs it hands on.
    let mut servers = BTreeMap::new();
    for c in log.iter().filter(|c| c.what.starts_with("serve binaries")) {
        *servers.entry(c.node.clone()).or_insert(0) += 1;
    }
    assert!(!servers.is_empty());
    assert!(servers.values().all(|n| *n == 1), "{servers:?}");
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
        let installed = pos(&lines, &[&format!("{n}: write "), "/usr/local/bin/kubelet"]);
        assert!(arrived < installed, "{n}");
        assert!(pos(&lines, &[&format!("{n}: clear the blob store")]) > installed);
    }
}

/// A node added to a running cluster gets its binaries from the nodes that
/// hold them in place (a worker first), each serving exactly the files the
/// plan found there; what those peers cannot take on comes from here.
#[tokio::test]
async fn a_new_node_gets_binaries_from_nodes_that_hold_them_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let (r, bundle) = with_bundle(dir.path());
    let mut facts = kubeforge_plan::converged_facts("t", &r);
    facts.insert("worker2".to_string(), NodeFacts::default());
    let p = kubeforge_plan::plan("t", &r, &Facts::Gathered(facts), &["node".to_string()]).unwrap();
    let kubelet_sha = &bundle["kubelet"].1;
    assert_eq!(p.sources[kubelet_sha][0].0, "worker1");
    let rec = blob_recorder(&r);
    run(&rec, &r, &p).await.unwrap();
    let log = rec.log();
    let address = |n: &str| {
        r.nodes
            .iter()
            .find(|t| t.name == n)
            .unwrap()
            .address
            .clone()
    };
    let fetched: Vec<&String> = log
        .iter()
        .filter(|c| c.what == "fetch a binary from another node")
        .map(|c| {
            assert_eq!(c.node, "worker2", "only the new node gets binaries");
            &c.args[3]
        })
        .collect();
    assert!(fetched.contains(&&address("worker1")), "{fetched:?}");
    let sent = log.iter().filter(|c| c.what == "receive a binary").count();
    assert!(
        sent < fetched.len(),
        "sent {sent}, fetched {}",
        fetched.len()
    );
    // worker1 serves what it holds in place, by sha256 and path, and no
    // key: every file it offers is a binary of the bundle at its path.
    let serve = log
        .iter()
        .find(|c| c.what.starts_with("serve binaries") && c.node == "worker1")
        .unwrap();
    let offered: Vec<&str> = serve.args[4..].iter().map(String::as_str).collect();
    assert!(offered.contains(&format!("{kubelet_sha}=/usr/local/bin/kubelet").as_str()));
    for o in &offered {
        let (sha, path) = o.split_once('=').unwrap();
        assert!(bundle.values().any(|(_, s)| s == sha), "{o}");
        assert!(!path.ends_with(".key"), "{o}");
    }
    // Nothing was staged on the nodes that handed binaries on.
    assert!(!log
        .iter()
        .any(|c| c.what == "clear the blob store" && c.node != "worker2"));
}

/// While a node added to a running cluster waits for its binaries, the
/// other nodes already set their `/etc/hosts`: their part of the node
/// phase starts no unit and needs no binary.
#[tokio::test]
async fn the_others_edit_their_hosts_while_a_new_node_gets_its_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = with_bundle(dir.path());
    let hosts = "/etc/hosts entries of the cluster's nodes";
    let mut facts = kubeforge_plan::converged_facts("t", &r);
    for f in facts.values_mut() {
        f.steps_done.retain(|s| s != hosts);
    }
    facts.insert("worker2".to_string(), NodeFacts::default());
    let p = kubeforge_plan::plan("t", &r, &Facts::Gathered(facts), &["node".to_string()]).unwrap();
    let rec = blob_recorder(&r);
    rec.slow("a binary", std::time::Duration::from_millis(200));
    run(&rec, &r, &p).await.unwrap();
    let lines = rec.lines();
    let last_blob = rec
        .log()
        .iter()
        .rposition(|c| c.node == "worker2" && c.what.contains("a binary"))
        .unwrap();
    for n in r.nodes.iter().map(|t| &t.name).filter(|n| *n != "worker2") {
        let edited = pos(&lines, &[&format!("{n}: {hosts}")]);
        assert!(edited < last_blob, "{n}: {lines:#?}");
    }
    let started = pos(&lines, &["worker2: ", "start"]);
    assert!(started > last_blob, "{lines:#?}");
}

/// A compressed binary kept from an earlier run (or made by `kubeforge
/// bundle`) that a node refuses is dropped, compressed again from the
/// bundle's file and sent once more.
#[tokio::test]
async fn a_kept_compressed_binary_a_node_refuses_is_compressed_again() {
    let dir = tempfile::tempdir().unwrap();
    let (r, bundle) = with_bundle(dir.path());
    let p = kubeforge_plan::plan("t", &r, &Facts::Offline, &["node".to_string()]).unwrap();
    let cache = dir.path().join("wire");
    std::fs::create_dir_all(&cache).unwrap();
    for (_, sha) in bundle.values() {
        std::fs::write(cache.join(format!("{sha}.zstd")), b"damaged").unwrap();
    }
    let rec = blob_recorder(&r);
    rec.answer(
        None,
        "receive a binary",
        vec![fail(1, "sha256 mismatch"), ok("")],
    );
    let o = Options {
        wire_cache: Some(cache.clone()),
        ..opts()
    };
    run_with(&rec, &r, &p, &o).await.unwrap();
    let log = rec.log();
    let first = log
        .iter()
        .position(|c| c.what == "receive a binary")
        .unwrap();
    let again = log
        .iter()
        .skip(first + 1)
        .find(|c| {
            c.what == "receive a binary" && c.node == log[first].node && c.args == log[first].args
        })
        .expect("sent again");
    let sha = &log[first].args[1];
    assert_eq!(log[first].stdin, Some(b"damaged".len()));
    let file = &bundle.values().find(|(_, s)| s == sha).unwrap().0;
    let fresh = kubeforge_bundle::wire::zstd(&std::fs::read(file).unwrap()).unwrap();
    assert_eq!(again.stdin, Some(fresh.len()));
    assert!(!cache.join(format!("{sha}.zstd")).exists());
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

/// Phase marks, and the steps that cordon, wait for Ready and uncordon, as
/// `step: ...` lines in the recorder's log.
struct Steps(Recorder);

impl Progress for Steps {
    fn event(&self, e: Event) {
        match e.kind {
            EventKind::PhaseStarted => self.0.mark("-", &format!("== {} started", e.phase)),
            EventKind::PhaseDone => self.0.mark("-", &format!("== {} done", e.phase)),
            EventKind::Step
                if ["cordon ", "uncordon ", "waiting for "]
                    .iter()
                    .any(|s| e.message.starts_with(s)) =>
            {
                self.0.mark("step", &e.message)
            }
            _ => {}
        }
    }
}

/// The HA example with every binary from a bundle, and facts of a cluster
/// that runs older binaries of everything (etcd included): an upgrade from
/// v1.30.2, the control plane's apiservers and controllers running
/// `control_plane`.
fn upgrade(
    dir: &std::path::Path,
    opts: &kubeforge_plan::Options,
    control_plane: &str,
) -> (Rendered, Plan) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../inventories/ha.toml");
    let cluster = kubeforge_inventory::load(&path).unwrap().cluster;
    let mut r = rendered("ha.toml");
    let renderer = kubeforge_render::Renderer::new().unwrap();
    let mut bundle = BTreeMap::new();
    for b in renderer.table().binary.iter().map(|b| b.name.clone()) {
        let file = dir.join(&b);
        let bytes = format!("binary {b}").repeat(100).into_bytes();
        std::fs::write(&file, &bytes).unwrap();
        bundle.insert(b, (file, sha_hex(&bytes)));
    }
    renderer.add_binaries(&cluster, &mut r, &bundle);
    let mut f = converged(&r);
    for tree in &r.nodes {
        let facts = f.get_mut(&tree.name).unwrap();
        for u in &tree.units {
            let version = match u.skew {
                None => continue,
                Some(kubeforge_render::Skew::Node) => "v1.30.2",
                Some(_) => control_plane,
            };
            facts
                .versions
                .insert(u.name.clone(), format!("Kubernetes {version}"));
        }
        for (path, file) in facts.files.iter_mut() {
            if path.starts_with("/usr/local/bin/") {
                file.sha256 = "0".repeat(64);
            }
        }
    }
    let p = kubeforge_plan::plan_with("t", &r, &Facts::Gathered(f), opts).unwrap();
    (r, p)
}

/// A Node Ready by a status from before 1767607200: not yet Ready after
/// its restart.
const READY_BEFORE: &str = r#"{"status":{"conditions":[{"type":"Ready","status":"True","lastHeartbeatTime":"2026-01-05T09:59:00Z"}]}}"#;

/// A recorder for an upgrade: one LB holds the VIP, the blobs go out, and
/// each node is first seen Ready by a status from before its restart.
fn upgrade_recorder(r: &Rendered) -> Recorder {
    let rec = recorder(r);
    rec.answer(Some("lb1"), "check the VIP", vec![ok("yes\n")]);
    rec.answer(Some("lb2"), "check the VIP", vec![ok("no\n")]);
    rec.answer(
        None,
        "list the blob store",
        vec![ok("zstd\ngzip\nfetch\nserve\n")],
    );
    rec.answer(None, "serve binaries", vec![ok("ready\n")]);
    let mut ready = Vec::new();
    for _ in 0..5 {
        ready.push(ok(&api_answer(200, READY_BEFORE)));
        ready.push(ok(&api_answer(200, READY_AFTER)));
    }
    rec.answer(None, "read the node's Ready condition", ready);
    rec
}

async fn run_upgrade(rec: &Recorder, r: &Rendered, p: &Plan) -> Result<Applied, ApplyError> {
    let patient = Options {
        gate_timeout: Duration::from_secs(2),
        ..opts()
    };
    execute(
        p,
        Some(&creds()),
        &transports(rec, r),
        &patient,
        &Steps(rec.clone()),
    )
    .await
}

#[tokio::test]
async fn an_upgrade_restarts_etcd_apiservers_controllers_then_drains_node_by_node() {
    let dir = tempfile::tempdir().unwrap();
    let (r, p) = upgrade(dir.path(), &kubeforge_plan::Options::default(), "v1.30.2");
    let rec = upgrade_recorder(&r);
    let applied = run_upgrade(&rec, &r, &p).await.unwrap();
    let lines = rec.lines();
    // The health it starts from, before anything is written.
    let healthy = pos(&lines, &["== health before the upgrade done"]);
    let first_write = pos(&lines, &["write ", "/usr/local/bin/"]);
    assert!(healthy < first_write);
    // etcd members, then apiservers, one at a time; then the controllers.
    let mut last = healthy;
    for unit in ["etcd", "kube-apiserver"] {
        for n in ["cp1", "cp2", "cp3"] {
            let at = pos(&lines, &[&format!("{n}: systemctl restart {unit}")]);
            assert!(at > last, "{n} {unit} restarted out of order");
            last = at;
        }
    }
    for n in ["cp1", "cp2", "cp3"] {
        let at = pos(&lines, &[n, "systemctl restart kube-controller-manager"]);
        assert!(at > last, "{n}: controllers before the last apiserver");
    }
    // Node agents node by node: cordoned and drained before the kubelet
    // restarts, Ready (by a status after the restart) before uncordoned,
    // the next node only after.
    let node_phase = pos(&lines, &["== node started"]);
    let mut last = node_phase;
    for n in ["cp1", "cp2", "cp3", "worker1", "worker2"] {
        let cordon = pos(&lines, &[&format!("step: cordon {n} ")]);
        let restart = pos(&lines, &[&format!("{n}: systemctl restart"), "kubelet"]);
        let waiting = pos(&lines, &[&format!("step: waiting for {n} to be Ready")]);
        let uncordon = pos(&lines, &[&format!("step: uncordon {n}")]);
        assert!(
            last < cordon,
            "{n} cordoned before the node before it was back"
        );
        assert!(
            cordon < restart && restart < waiting && waiting < uncordon,
            "{n}"
        );
        // Seen Ready by an old status first, then by a fresh one.
        let polls = count(
            &lines[waiting..uncordon],
            &["read the node's Ready condition"],
        );
        assert_eq!(polls, 2, "{n}");
        last = uncordon;
    }
    assert_eq!(applied.drained, ["cp1", "cp2", "cp3", "worker1", "worker2"]);
}

#[tokio::test]
async fn workers_go_max_unavailable_at_a_time_after_the_control_plane_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let opts = kubeforge_plan::Options {
        only: vec!["node".into()],
        max_unavailable: 2,
        ..Default::default()
    };
    let (r, p) = upgrade(dir.path(), &opts, "v1.31.4");
    assert_eq!(
        p.phases[0].batches,
        [
            vec!["cp1"],
            vec!["cp2"],
            vec!["cp3"],
            vec!["worker1", "worker2"]
        ]
    );
    let rec = upgrade_recorder(&r);
    run_upgrade(&rec, &r, &p).await.unwrap();
    let lines = rec.lines();
    let at = |what: &str, n: &str| pos(&lines, &[&format!("step: {what} {n}")]);
    // The control-plane nodes one after the other; both workers out at
    // the same time, after the last of them.
    assert!(at("uncordon", "cp1") < at("cordon", "cp2"));
    assert!(at("uncordon", "cp2") < at("cordon", "cp3"));
    for w in ["worker1", "worker2"] {
        assert!(at("uncordon", "cp3") < at("cordon", w));
        for other in ["worker1", "worker2"] {
            assert!(at("cordon", w) < at("uncordon", other), "{w} {other}");
        }
    }
}

#[tokio::test]
async fn an_upgrade_from_an_unhealthy_control_plane_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (r, p) = upgrade(dir.path(), &kubeforge_plan::Options::default(), "v1.30.2");
    let rec = upgrade_recorder(&r);
    // Both LB nodes hold the VIP.
    rec.answer(Some("lb2"), "check the VIP", vec![ok("yes\n")]);
    // Checked once, not waited for.
    let err = execute(
        &p,
        Some(&creds()),
        &transports(&rec, &r),
        &opts(),
        &Steps(rec.clone()),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ApplyError::Unhealthy(_)), "{msg}");
    assert!(msg.starts_with("refused, nothing was changed"), "{msg}");
    assert!(msg.contains("held by [lb1, lb2]"), "{msg}");
    let lines = rec.lines();
    assert_eq!(count(&lines, &["systemctl restart"]), 0);
    assert_eq!(count(&lines, &["write /"]), 0);
    assert_eq!(count(&lines, &["cordon"]), 0);
}

#[tokio::test]
async fn every_node_records_what_kubeforge_places_before_anything_else() {
    let r = rendered("ha.toml");
    let p = kubeforge_plan::plan("t", &r, &Facts::Offline, &[]).unwrap();
    assert_eq!(p.phases[0].phase, kubeforge_plan::MANIFEST_PHASE);
    assert_eq!(p.manifests.len(), r.nodes.len());
    let rec = recorder(&r);
    rec.answer(Some("lb1"), "check the VIP", vec![ok("yes\n")]);
    run(&rec, &r, &p).await.unwrap();
    let lines = rec.lines();
    let recorded = pos(&lines, &["== manifest done"]);
    for n in &r.nodes {
        let at = pos(&lines, &[&n.name, kubeforge_plan::MANIFEST_PATH]);
        assert!(at < recorded, "{}", n.name);
        // Its record lists every file, binary and unit it gets.
        let m = &p.manifests[&n.name];
        assert_eq!(
            m.files.len() + m.binaries.len(),
            n.files.len(),
            "{}",
            n.name
        );
        assert_eq!(m.units.len(), n.units.len(), "{}", n.name);
    }
    for phase in ["etcd", "lb", "node"] {
        assert!(recorded < pos(&lines, &[&format!("== {phase} started")]));
    }
}

#[test]
fn a_record_is_written_where_it_is_missing_or_old_and_keeps_what_was_placed() {
    let r = rendered("ha.toml");
    let mut f = converged(&r);
    // worker1 has no record yet (a cluster installed before records).
    f.get_mut("worker1").unwrap().manifest = None;
    // worker2's record lists a file the inventory no longer renders.
    let tree = r.nodes.iter().find(|n| n.name == "worker2").unwrap();
    let mut old = kubeforge_plan::Manifest::of("t", tree, None);
    old.files.push("/etc/kubernetes/gone.conf".into());
    old.files.sort();
    f.get_mut("worker2").unwrap().manifest = Some(old.to_bytes());
    let p = plan(&r, &f);
    assert_eq!(p.phases.len(), 1, "{}", kubeforge_plan::to_text(&p));
    assert_eq!(p.phases[0].phase, kubeforge_plan::MANIFEST_PHASE);
    let nodes: Vec<&str> = p.phases[0].nodes.iter().map(|w| w.node.as_str()).collect();
    assert_eq!(nodes, ["worker1"], "worker2's record already says it all");
    assert!(p.manifests["worker2"]
        .files
        .contains(&"/etc/kubernetes/gone.conf".to_string()));
    assert_eq!(p.summary.create, 1);
    // Written, it is a converged cluster again.
    f.get_mut("worker1").unwrap().manifest = Some(p.manifests["worker1"].to_bytes());
    assert!(plan(&r, &f).is_empty());
}

/// The record of a node the inventory no longer names, as the state
/// directory keeps it.
fn record_of(inventory: &str, node: &str) -> kubeforge_plan::Manifest {
    let r = rendered(inventory);
    let tree = r.nodes.iter().find(|n| n.name == node).unwrap();
    kubeforge_plan::Manifest::of("t", tree, None)
}

/// `r` without `node`: as rendered from an inventory that no longer
/// names it (the others' files are left as they are: the plan's own
/// changes are not what these tests look at).
fn without(r: &Rendered, node: &str) -> Rendered {
    let mut r = r.clone();
    r.nodes.retain(|n| n.name != node);
    r
}

fn pruned(
    r: &Rendered,
    gone: &[kubeforge_plan::Manifest],
    force: bool,
) -> Result<Plan, ApplyError> {
    let mut p = plan(r, &converged(r));
    let opts = kubeforge_plan::remove::PruneOptions {
        drain_timeout_secs: 5,
        force,
        ..Default::default()
    };
    kubeforge_apply::with_removals(&mut p, r, gone, &opts).map(|_| p)
}

fn with_gone(rec: &Recorder, r: &Rendered, node: &str) -> Transports {
    let mut t = transports(rec, r);
    t.insert(node.to_string(), rec.node(node));
    t
}

#[tokio::test]
async fn a_removed_worker_is_drained_then_torn_down_then_its_node_deleted() {
    let full = rendered("ha.toml");
    let r = without(&full, "worker2");
    let gone = record_of("ha.toml", "worker2");
    let p = pruned(&r, std::slice::from_ref(&gone), false).unwrap();
    let text = kubeforge_plan::to_text(&p);
    assert!(
        text.contains("worker2 (10.77.0.22): remove from the cluster (worker)"),
        "{text}"
    );
    assert!(text.contains("the inventory no longer names it"), "{text}");
    assert!(text.contains("1 node to remove"), "{text}");
    let rec = recorder(&r);
    // worker2 is registered and runs one pod of a ReplicaSet.
    rec.answer(
        None,
        "drain: read the node",
        vec![ok(&api_answer(200, "{}"))],
    );
    rec.answer(None, "drain: cordon", vec![ok(&api_answer(200, "{}"))]);
    let pod = r#"{"items":[{"metadata":{"namespace":"default","name":"web-1","ownerReferences":[{"kind":"ReplicaSet","name":"web","controller":true}]}}]}"#;
    rec.answer(
        None,
        "drain: list the node's pods",
        vec![
            ok(&api_answer(200, pod)),
            ok(&api_answer(200, r#"{"items":[]}"#)),
        ],
    );
    rec.answer(None, "drain: evict pods", vec![ok(&api_answer(201, "{}"))]);
    rec.answer(
        None,
        "delete the Node object",
        vec![ok(&api_answer(200, "{}"))],
    );
    let done = removing(&p, &rec, &r, "worker2").await;
    let lines = rec.lines();
    let evict = pos(&lines, &["cp1", "drain: evict pods"]);
    let teardown = pos(&lines, &["worker2", "stop and disable"]);
    let delete = pos(&lines, &["cp1", "delete the Node object"]);
    assert!(
        evict < teardown && teardown < delete,
        "{}",
        lines.join("\n")
    );
    assert!(pos(&lines, &["== drain done"]) < pos(&lines, &["== remove started"]));
    // Nothing else ran on worker2.
    assert_eq!(count(&lines, &["worker2"]), 1, "{}", lines.join("\n"));
    assert!(done.warnings.is_empty(), "{:?}", done.warnings);
    // The teardown removes every file and binary of its record.
    let script = &p.phases.iter().find(|x| x.phase == "remove").unwrap().nodes[0].steps[0].script;
    for f in gone.files.iter().chain(&gone.binaries) {
        assert!(script.contains(&format!("rm -f -- '{f}'")), "{f}");
    }
    assert!(script.contains("systemctl disable 'kubelet'"));
}

#[test]
fn removals_that_would_cost_the_cluster_are_refused_before_anything_runs() {
    let full = rendered("ha.toml");
    // The last control-plane node: an inventory of workers only is not
    // one validation lets through, so the trees are cut by hand.
    let mut r = full.clone();
    r.nodes.retain(|n| !n.name.starts_with("cp"));
    let gone: Vec<_> = ["cp1", "cp2", "cp3"]
        .iter()
        .map(|n| record_of("ha.toml", n))
        .collect();
    let err = pruned(&r, &gone, true).unwrap_err().to_string();
    assert!(err.contains("the last control-plane node"), "{err}");
    assert!(err.contains("3 etcd members at once"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    // One etcd member of three: two left, even, refused without force.
    let r = without(&full, "cp3");
    let cp3 = record_of("ha.toml", "cp3");
    let err = pruned(&r, std::slice::from_ref(&cp3), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("leaves 2 etcd members"), "{err}");
    assert!(err.contains("--force"), "{err}");
    let p = pruned(&r, &[cp3], true).unwrap();
    let ops: Vec<String> = p
        .phases
        .iter()
        .flat_map(|x| {
            x.ops
                .iter()
                .map(|o| format!("{}: {}", x.phase, o.describe()))
        })
        .collect();
    assert_eq!(ops.len(), 3, "{ops:#?}");
    assert!(ops[0].starts_with("drain: drain cp3"), "{ops:#?}");
    assert!(
        ops[1].starts_with("remove: etcd member remove cp3"),
        "{ops:#?}"
    );
    assert!(ops[2].starts_with("forget: delete Node cp3"), "{ops:#?}");
}

/// Answers of a member list and the members' health, as the etcd
/// operation's script prints them.
fn etcd_answers(healthy: [bool; 3]) -> (String, String) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let members: Vec<String> = (1..=3)
        .map(|i| {
            format!(
                r#"{{"ID":"{i}","name":"cp{i}","peerURLs":["https://10.77.0.1{i}:2380"],"clientURLs":["https://10.77.0.1{i}:2379"]}}"#
            )
        })
        .collect();
    let list = format!(r#"{{"members":[{}]}}"#, members.join(","));
    let first = format!("members {}\n", b64.encode(&list));
    let mut second = first.clone();
    for (i, h) in healthy.iter().enumerate() {
        second.push_str(&format!(
            "health https://10.77.0.1{}:2379 {}\n",
            i + 1,
            b64.encode(format!(r#"{{"health":"{h}"}}"#))
        ));
    }
    (first, second)
}

#[tokio::test]
async fn an_etcd_member_is_removed_through_a_healthy_member_only_while_quorum_holds() {
    let full = rendered("ha.toml");
    let r = without(&full, "cp3");
    let p = pruned(&r, &[record_of("ha.toml", "cp3")], true).unwrap();
    // cp2 is down: two members left with one healthy. Refused before
    // anything is touched.
    let rec = member_removal(&r, [true, false, true]);
    let err = kubeforge_apply::remove::precheck(&p, &with_gone(&rec, &r, "cp3"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("quorum would be lost"), "{err}");
    assert!(err.contains("unhealthy: cp2"), "{err}");
    assert!(rec.lines().iter().all(|l| l.contains("etcd: member")));
    // All healthy: removed through cp1, before cp3's units stop.
    let rec = member_removal(&r, [true, true, true]);
    no_node_to_drain(&rec);
    kubeforge_apply::remove::precheck(&p, &with_gone(&rec, &r, "cp3"))
        .await
        .unwrap();
    removing(&p, &rec, &r, "cp3").await;
    let lines = rec.lines();
    let removed = pos(&lines, &["cp1", "etcd: member remove"]);
    assert!(removed < pos(&lines, &["cp3", "stop and disable"]));
    assert_eq!(count(&lines, &["etcd: member remove"]), 1);
    // cp3 did not lead (its status has no answer): leadership stays.
    assert!(pos(&lines, &["cp1", "etcd: member status"]) < removed);
    assert_eq!(count(&lines, &["etcd: move leader"]), 0);
}

#[tokio::test]
async fn a_leading_etcd_member_hands_its_leadership_over_before_it_is_removed() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let full = rendered("ha.toml");
    let r = without(&full, "cp3");
    let p = pruned(&r, &[record_of("ha.toml", "cp3")], true).unwrap();
    for (moved, warned) in [
        ("{}", false),
        (r#"{"code":9,"message":"etcdserver: not leader"}"#, true),
        ("", true),
    ] {
        let rec = member_removal(&r, [true, true, true]);
        no_node_to_drain(&rec);
        let status = r#"{"header":{"member_id":"3"},"leader":"3"}"#;
        rec.answer(
            None,
            "etcd: member status",
            vec![ok(&format!("status {}\n", b64.encode(status)))],
        );
        rec.answer(
            None,
            "etcd: move leader",
            vec![ok(&format!("moved {}\n", b64.encode(moved)))],
        );
        let out = removing(&p, &rec, &r, "cp3").await;
        let lines = rec.lines();
        let status = rec
            .log()
            .into_iter()
            .find(|c| c.what == "etcd: member status")
            .unwrap();
        assert!(status.args.iter().any(|a| a == "https://10.77.0.13:2379"));
        let mv = rec
            .log()
            .into_iter()
            .find(|c| c.what == "etcd: move leader")
            .unwrap();
        // Asked of cp3 (the leader), to the first healthy member that stays.
        assert_eq!(mv.args[4..], ["https://10.77.0.13:2379", "1"]);
        let moved_at = pos(&lines, &["cp1", "etcd: move leader"]);
        assert!(moved_at < pos(&lines, &["cp1", "etcd: member remove"]));
        // A transfer that failed is a warning; the removal goes on.
        let warnings = format!("{:?}", out.warnings);
        assert_eq!(
            warnings.contains("did not move from cp3 to cp1"),
            warned,
            "{warnings}"
        );
        assert_eq!(count(&lines, &["etcd: member remove"]), 1);
    }
}

#[tokio::test]
async fn an_unreachable_worker_is_cordoned_and_its_node_deleted_without_a_call_to_it() {
    // The whole apply, as the CLI runs it: no connection to worker2 at all
    // (no lock, no facts, no teardown).
    let full = rendered("ha.toml");
    let r = without(&full, "worker2");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../inventories/ha.toml");
    let cluster = kubeforge_inventory::load(&path).unwrap().cluster;
    let rec = recorder(&r);
    converged_answers(&rec, &r, &cluster.name);
    rec.answer(
        None,
        "delete the Node object",
        vec![ok(&api_answer(200, "{}"))],
    );
    let t = transports(&rec, &r);
    assert!(!t.contains_key("worker2"));
    let gone = [record_of("ha.toml", "worker2")];
    let req = kubeforge_apply::Request {
        cluster: &cluster,
        rendered: &r,
        plan: &kubeforge_plan::Options::default(),
        transports: &t,
        opts: &opts(),
        owner: "test",
        gone: &gone,
        prune: kubeforge_plan::remove::PruneOptions {
            unreachable: vec!["worker2".into()],
            ..Default::default()
        },
    };
    let mut persist = |_: &kubeforge_plan::Plan| Ok(());
    let out = kubeforge_apply::apply(&req, &mut persist, &Marks(rec.clone()))
        .await
        .unwrap();
    let text = kubeforge_plan::to_text(&out.plan);
    assert!(
        text.contains("unreachable: not drained, not torn down; its Node object is removed"),
        "{text}"
    );
    assert!(out.applied.is_some());
    let lines = rec.lines();
    let cordon = pos(&lines, &["cp1", "drain: cordon"]);
    let delete = pos(&lines, &["cp1", "delete the Node object"]);
    assert!(cordon < delete, "{}", lines.join("\n"));
    // Cordoned, never evicted, nothing waited for.
    assert_eq!(count(&lines, &["drain: evict pods"]), 0);
    assert_eq!(count(&lines, &["drain: list the node's pods"]), 0);
    assert!(rec.log().iter().all(|c| c.node != "worker2"));
    // The same plan with a connection to worker2 at hand: nothing goes
    // to it either.
    let rec = recorder(&r);
    rec.answer(
        None,
        "delete the Node object",
        vec![ok(&api_answer(200, "{}"))],
    );
    let done = execute(
        &out.plan,
        Some(&creds()),
        &with_gone(&rec, &r, "worker2"),
        &opts(),
        &Marks(rec.clone()),
    )
    .await
    .unwrap();
    assert_eq!(done.steps_run, 0);
    assert!(
        rec.log().iter().all(|c| c.node != "worker2"),
        "{:?}",
        rec.lines()
    );
    assert_eq!(count(&rec.lines(), &["cp1", "drain: cordon"]), 1);
}

#[tokio::test]
async fn an_unreachable_etcd_member_is_removed_through_a_healthy_one_without_a_call_to_it() {
    let full = rendered("ha.toml");
    let r = without(&full, "cp3");
    let mut p = plan(&r, &converged(&r));
    let opts_ = kubeforge_plan::remove::PruneOptions {
        force: true,
        unreachable: vec!["cp3".into()],
        ..Default::default()
    };
    kubeforge_apply::with_removals(&mut p, &r, &[record_of("ha.toml", "cp3")], &opts_).unwrap();
    assert!(p
        .phases
        .iter()
        .all(|x| x.nodes.iter().all(|w| w.node != "cp3")));
    // cp3 is dead: the member list still names it, its health fails.
    let rec = member_removal(&r, [true, true, false]);
    rec.answer(
        None,
        "delete the Node object",
        vec![ok(&api_answer(200, "{}"))],
    );
    let t = with_gone(&rec, &r, "cp3");
    kubeforge_apply::remove::precheck(&p, &t).await.unwrap();
    execute(&p, Some(&creds()), &t, &opts(), &Marks(rec.clone()))
        .await
        .unwrap();
    let lines = rec.lines();
    let cordon = pos(&lines, &["cp1", "drain: cordon"]);
    let removed = pos(&lines, &["cp1", "etcd: member remove"]);
    let delete = pos(&lines, &["cp1", "delete the Node object"]);
    assert!(cordon < removed && removed < delete, "{}", lines.join("\n"));
    assert_eq!(count(&lines, &["etcd: member remove"]), 1);
    assert!(
        rec.log().iter().all(|c| c.node != "cp3"),
        "{}",
        lines.join("\n")
    );
    // With cp2 down as well, the two left would have one healthy member:
    // refused before anything is touched, as for a reachable member.
    let rec = member_removal(&r, [true, false, false]);
    let err = kubeforge_apply::remove::precheck(&p, &with_gone(&rec, &r, "cp3"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot commit"), "{err}");
}

#[tokio::test]
async fn a_reset_takes_every_node_down_from_its_record_under_the_lock() {
    let r = rendered("ha.toml");
    let records: Vec<kubeforge_plan::Manifest> = r
        .nodes
        .iter()
        .map(|n| kubeforge_plan::Manifest::of("t", n, None))
        .collect();
    let refs: Vec<&kubeforge_plan::Manifest> = records.iter().collect();
    let p = kubeforge_plan::remove::reset("t", &refs, false);
    let text = kubeforge_plan::work_to_text("Reset:", &p);
    assert!(
        text.contains("worker2: run: stop and disable 4 units"),
        "{text}"
    );
    assert!(
        text.contains("run: remove the data in /var/lib/etcd"),
        "{text}"
    );
    let rec = recorder(&r);
    let done = kubeforge_apply::remove::reset(
        &p,
        &transports(&rec, &r),
        &opts(),
        "test",
        &Marks(rec.clone()),
    )
    .await
    .unwrap();
    assert_eq!(done.steps_run, 2 * r.nodes.len());
    let lines = rec.lines();
    // In that order (the steps of a stage run in one round trip, named
    // in order).
    for n in &r.nodes {
        let at = |what: &str| {
            let i = pos(&lines, &[&n.name, what]);
            (i, lines[i].find(what).unwrap())
        };
        assert!(at("stop and disable") < at("remove the data"), "{}", n.name);
    }
    // Nothing but the lock, the teardown and the data.
    assert!(
        lines.iter().all(|l| l.contains("stop and disable")
            || l.contains("remove the data")
            || l.contains("lock")
            || l.starts_with("-: ==")),
        "{}",
        lines.join("\n")
    );
}

/// Facts of `r` converged, except that `node` is bare (a node just added
/// to the inventory).
fn converged_but(r: &Rendered, node: &str) -> BTreeMap<String, NodeFacts> {
    let mut f = converged(r);
    f.insert(node.to_string(), NodeFacts::default());
    f
}

#[tokio::test]
async fn a_new_etcd_member_is_added_then_started_to_join_the_running_cluster() {
    let r = rendered("ha.toml");
    let facts = Facts::Gathered(converged_but(&r, "cp3"));
    let mut p = kubeforge_plan::plan("t", &r, &facts, &[]).unwrap();
    let opts_ = kubeforge_plan::remove::PruneOptions::default();
    kubeforge_apply::with_joins(&mut p, &r, &facts, &opts_).unwrap();
    let etcd = p.phases.iter().find(|x| x.phase == "etcd").unwrap();
    assert_eq!(etcd.strategy, kubeforge_render::Strategy::OneAtATime);
    assert_eq!(etcd.ops.len(), 1);
    let text = kubeforge_plan::to_text(&p);
    assert!(
        text.contains(
            "etcd member add cp3 (https://10.77.0.13:2380) through a healthy member (cp1 or cp2)"
        ),
        "{text}"
    );
    // cp1, cp2 healthy and cp3 not yet a member.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let two = r#"{"members":[{"ID":"1","name":"cp1","peerURLs":["https://10.77.0.11:2380"],"clientURLs":["https://10.77.0.11:2379"]},{"ID":"2","name":"cp2","peerURLs":["https://10.77.0.12:2380"],"clientURLs":["https://10.77.0.12:2379"]}]}"#;
    let list = format!("members {}\n", b64.encode(two));
    let mut health = list.clone();
    for i in 1..=2 {
        health.push_str(&format!(
            "health https://10.77.0.1{i}:2379 {}\n",
            b64.encode(r#"{"health":"true"}"#)
        ));
    }
    let rec = recorder(&r);
    rec.answer(None, "etcd: member list", vec![ok(&list)]);
    rec.answer(None, "etcd: member health", vec![ok(&health)]);
    let added = r#"{"member":{"ID":"3","peerURLs":["https://10.77.0.13:2380"]}}"#;
    rec.answer(
        None,
        "etcd: member add",
        vec![ok(&format!("added {}\n", b64.encode(added)))],
    );
    rec.answer(Some("lb1"), "check the VIP", vec![ok("yes\n")]);
    kubeforge_apply::remove::precheck(&p, &transports(&rec, &r))
        .await
        .unwrap();
    run(&rec, &r, &p).await.unwrap();
    let lines = rec.lines();
    let add = pos(&lines, &["cp1", "etcd: member add"]);
    let join = pos(&lines, &["cp3", "etcd: join the running cluster"]);
    let start = pos(&lines, &["cp3", "systemctl start etcd"]);
    assert!(add < join && join < start, "{}", lines.join("\n"));
    assert_eq!(count(&lines, &["systemctl start --no-block etcd"]), 0);
    // A member in the list already (added, never started) is not added
    // again.
    let three = two.replace(
        "]}]}",
        r#"]},{"ID":"3","name":"","peerURLs":["https://10.77.0.13:2380"]}]}"#,
    );
    let rec = recorder(&r);
    let list = format!("members {}\n", b64.encode(&three));
    let mut health = list.clone();
    for i in 1..=2 {
        health.push_str(&format!(
            "health https://10.77.0.1{i}:2379 {}\n",
            b64.encode(r#"{"health":"true"}"#)
        ));
    }
    rec.answer(None, "etcd: member list", vec![ok(&list)]);
    rec.answer(None, "etcd: member health", vec![ok(&health)]);
    rec.answer(Some("lb1"), "check the VIP", vec![ok("yes\n")]);
    run(&rec, &r, &p).await.unwrap();
    assert_eq!(count(&rec.lines(), &["etcd: member add"]), 0);
}

#[test]
fn etcd_members_join_one_at_a_time_and_an_even_count_needs_force() {
    let r = rendered("ha.toml");
    let opts_ = |force| kubeforge_plan::remove::PruneOptions {
        drain_timeout_secs: 5,
        force,
        ..Default::default()
    };
    let mut f = converged_but(&r, "cp3");
    f.insert("cp2".into(), NodeFacts::default());
    let facts = Facts::Gathered(f);
    let mut p = kubeforge_plan::plan("t", &r, &facts, &[]).unwrap();
    let err = kubeforge_apply::with_joins(&mut p, &r, &facts, &opts_(true))
        .unwrap_err()
        .to_string();
    assert!(err.contains("adding 2 etcd members at once"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    // Two members of which one joins: even.
    let two = without(&r, "cp3");
    let facts = Facts::Gathered(converged_but(&two, "cp2"));
    let mut p = kubeforge_plan::plan("t", &two, &facts, &[]).unwrap();
    let err = kubeforge_apply::with_joins(&mut p, &two, &facts, &opts_(false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("makes 2 etcd members"), "{err}");
    kubeforge_apply::with_joins(&mut p, &two, &facts, &opts_(true)).unwrap();
    // A new cluster starts together, no member added.
    let facts = Facts::Offline;
    let mut p = kubeforge_plan::plan("t", &r, &facts, &[]).unwrap();
    kubeforge_apply::with_joins(&mut p, &r, &facts, &opts_(false)).unwrap();
    assert!(p.phases.iter().all(|x| x.ops.is_empty()));
}

#[test]
fn a_stopped_member_starts_again_without_being_added() {
    let r = rendered("ha.toml");
    let mut f = converged(&r);
    f.get_mut("cp3")
        .unwrap()
        .units
        .get_mut("etcd")
        .unwrap()
        .active = false;
    let facts = Facts::Gathered(f);
    let mut p = kubeforge_plan::plan("t", &r, &facts, &[]).unwrap();
    let opts_ = kubeforge_plan::remove::PruneOptions::default();
    kubeforge_apply::with_joins(&mut p, &r, &facts, &opts_).unwrap();
    let etcd = p.phases.iter().find(|x| x.phase == "etcd").unwrap();
    assert!(etcd.ops.is_empty());
    assert_eq!(etcd.nodes[0].start, ["etcd"]);
}

/// Binaries go out in one line while the phases run, the earliest phase
/// first: on a new cluster (with transfers that take no time) every
/// apiserver has its binary before a kubelet or a controller manager gets
/// its own (they start beside the apiservers).
#[tokio::test]
async fn binaries_go_out_in_phase_order() {
    let dir = tempfile::tempdir().unwrap();
    let (r, bundle) = with_bundle(dir.path());
    let p = kubeforge_plan::plan("t", &r, &Facts::Offline, &[]).unwrap();
    let rec = blob_recorder(&r);
    rec.answer(Some("lb1"), "check the VIP", vec![ok("yes\n")]);
    run(&rec, &r, &p).await.unwrap();
    let log = rec.log();
    let at = |name: &str| transfers_of(&log, &bundle[name].1);
    let (etcd, apiserver) = (at("etcd"), at("kube-apiserver"));
    let (kubelet, kcm) = (at("kubelet"), at("kube-controller-manager"));
    assert!(!etcd.is_empty() && !apiserver.is_empty() && !kubelet.is_empty() && !kcm.is_empty());
    let last = |v: &[usize]| v.iter().copied().max().unwrap();
    let first = |v: &[usize]| v.iter().copied().min().unwrap();
    assert!(last(&etcd) < first(&apiserver));
    assert!(last(&apiserver) < first(&kubelet));
    assert!(last(&apiserver) < first(&kcm));
}

/// Executes `p`, the plan that removes `gone`, over `rec`.
async fn removing(p: &Plan, rec: &Recorder, r: &Rendered, gone: &str) -> Applied {
    execute(
        p,
        Some(&creds()),
        &with_gone(rec, r, gone),
        &opts(),
        &Marks(rec.clone()),
    )
    .await
    .unwrap()
}

/// Answers of an API that does not know the Node being removed: nothing
/// to drain, nothing to delete.
fn no_node_to_drain(rec: &Recorder) {
    for what in ["drain: read the node", "delete the Node object"] {
        rec.answer(None, what, vec![ok(&api_answer(404, "{}"))]);
    }
}

/// A recorder for removing cp3's etcd member: a member list of cp1..cp3
/// with `healthy` health, and a removal that leaves cp1 and cp2.
fn member_removal(r: &Rendered, healthy: [bool; 3]) -> Recorder {
    use base64::Engine as _;
    let rec = recorder(r);
    let (list, health) = etcd_answers(healthy);
    rec.answer(None, "etcd: member list", vec![ok(&list)]);
    rec.answer(None, "etcd: member health", vec![ok(&health)]);
    let left = r#"{"header":{"raft_term":"2"},"members":[{"ID":"1","name":"cp1"},{"ID":"2","name":"cp2"}]}"#;
    rec.answer(
        None,
        "etcd: member remove",
        vec![ok(&format!(
            "removed {}\n",
            base64::engine::general_purpose::STANDARD.encode(left)
        ))],
    );
    rec
}
