//! Pre-flight over the local transport: two "nodes" that are really this
//! one machine share a hostname and a machine-id, which must be refused
//! with every problem named, before anything changes.
#![allow(clippy::unwrap_used)]

use kubeforge_apply::{gather, preflight, ApplyError, Options, Transports};
use kubeforge_plan::Facts;
use kubeforge_transport::{LocalTransport, Transport};
use std::sync::Arc;

const INVENTORY: &str = r#"
[cluster]
name = "t"
kubernetes_version = "1.31.4"

[[nodes]]
name = "a"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "b"
address = "10.77.0.12"
roles = ["worker"]
"#;

/// The inventory text rendered (the PKI in a temporary directory).
fn rendered(text: &str) -> kubeforge_render::Rendered {
    let cluster = kubeforge_inventory::parse(std::path::Path::new("t.toml"), text)
        .unwrap()
        .cluster;
    let state = tempfile::tempdir().unwrap();
    kubeforge_render::prepare(state.path(), &cluster, &Default::default())
        .unwrap()
        .rendered
}

#[tokio::test]
async fn cloned_hosts_are_refused() {
    let rendered = rendered(INVENTORY);
    let mut transports: Transports = Transports::new();
    for n in ["a", "b"] {
        transports.insert(
            n.into(),
            Arc::new(LocalTransport::new(n)) as Arc<dyn Transport>,
        );
    }
    // The local transport gathers this one machine's facts for both.
    let g = gather(&transports, &rendered, 2, false).await.unwrap();
    let err = preflight(&rendered, &g.hosts, &g.facts, &Options::default()).unwrap_err();
    let ApplyError::Preflight(problems) = &err else {
        panic!("{err}");
    };
    let text = err.to_string();
    assert!(
        text.starts_with("pre-flight checks failed; nothing was changed:"),
        "{text}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("nodes a, b share the hostname")),
        "{text}"
    );
    // A container may have no machine-id; when it has one it is shared too.
    if std::fs::read_to_string("/etc/machine-id").is_ok_and(|m| !m.trim().is_empty()) {
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("nodes a, b share the machine-id")),
            "{text}"
        );
    }
}

#[tokio::test]
async fn clock_skew_bound_is_checked() {
    let rendered = rendered(&INVENTORY.replace(
        "[[nodes]]\nname = \"b\"\naddress = \"10.77.0.12\"\nroles = [\"worker\"]\n",
        "",
    ));
    assert_eq!(rendered.nodes.len(), 1);
    let mut transports: Transports = Transports::new();
    transports.insert(
        "a".into(),
        Arc::new(LocalTransport::new("a")) as Arc<dyn Transport>,
    );
    // The same machine: no skew, and (unless a tool is missing) no problem.
    let g = gather(&transports, &rendered, 2, false).await.unwrap();
    assert_eq!(g.hosts.len(), 1);
    match preflight(&rendered, &g.hosts, &Facts::Offline, &Options::default()) {
        Ok(()) => {}
        Err(e) => {
            let text = e.to_string();
            assert!(!text.contains("clock differs"), "{text}");
        }
    }
}

#[test]
fn the_clock_is_judged_against_the_round_trip_that_read_it() {
    let rendered = rendered(&INVENTORY.replace(
        "[[nodes]]\nname = \"b\"\naddress = \"10.77.0.12\"\nroles = [\"worker\"]\n",
        "",
    ));
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - 100.0;
    let clock = |time: f64, asked_at: f64, answered_at: f64| {
        let host = kubeforge_transport::ops::HostFacts {
            hostname: "a".into(),
            machine_id: "a".into(),
            kernel: "Linux".into(),
            arch: "x86_64".into(),
            has_systemd: true,
            time,
            asked_at,
            answered_at,
            ..Default::default()
        };
        let hosts = std::collections::BTreeMap::from([("a".to_string(), host)]);
        match preflight(&rendered, &hosts, &Facts::Offline, &Options::default()) {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    // Read 5 s into a 60 s round trip (a busy link, many nodes), judged
    // 100 s later: in step.
    let text = clock(t0 + 5.0, t0, t0 + 60.0);
    assert!(!text.contains("clock differs"), "{text}");
    // 40 s behind the moment it was asked for.
    let text = clock(t0 - 40.0, t0, t0 + 0.5);
    assert!(
        text.contains("a: clock differs from this machine's by 40.0 s"),
        "{text}"
    );
    // 40 s ahead of the answer.
    let text = clock(t0 + 40.5, t0, t0 + 0.5);
    assert!(text.contains("by 40.0 s"), "{text}");
}

#[test]
fn unsynchronized_clocks_are_a_warning() {
    use kubeforge_transport::ops::HostFacts;
    let mut hosts = std::collections::BTreeMap::new();
    for (name, ntp) in [("a", Some(true)), ("b", Some(false)), ("c", None)] {
        hosts.insert(
            name.to_string(),
            HostFacts {
                ntp_synchronized: ntp,
                ..HostFacts::default()
            },
        );
    }
    assert_eq!(
        kubeforge_apply::preflight_warnings(&hosts),
        ["b: the clock is not synchronized (timedatectl: NTPSynchronized=no); enable chrony or systemd-timesyncd"]
    );
}

/// What a node lacks of its requirements (the table's `[[requirement]]`
/// rows) is reported per node with what it is for and the package, and the
/// apply stops before anything changes on any node.
#[tokio::test]
async fn missing_requirements_are_named_and_nothing_changes() {
    use kubeforge_transport::recording::{ok, Recorder};
    let rendered = rendered(INVENTORY);
    let cluster = kubeforge_inventory::parse(std::path::Path::new("t.toml"), INVENTORY)
        .unwrap()
        .cluster;
    let rec = Recorder::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The API is not up yet (a fresh cluster): "000" and no body for
    // the readiness and every other request (each addon object read and
    // applied in a dry run, the certificate requests).
    let requests = 2 + 2 * rendered.addons.iter().flat_map(|a| &a.objects).count();
    rec.answer(
        None,
        "read the addon objects",
        vec![ok(&"000 \n".repeat(requests))],
    );
    let mut transports: Transports = Transports::new();
    for n in &rendered.nodes {
        // "b" (a worker) lacks iptables, "a" has everything.
        let unmet: String = n
            .requirements
            .iter()
            .enumerate()
            .filter(|(_, r)| n.name == "b" && r.name == "iptables")
            .map(|(i, _)| format!("unmet={i}\n"))
            .collect();
        let unmet: String = unmet.lines().map(|l| format!("H {l}\n")).collect();
        rec.answer(
            Some(&n.name),
            "gather facts",
            vec![ok(&format!(
                "H hostname={0}\nH machine_id={0}\nH time={now}\nH kernel=Linux\nH arch=x86_64\nH systemd=yes\n{unmet}",
                n.name
            ))],
        );
        transports.insert(n.name.clone(), rec.node(&n.name));
    }
    let opts = Options::default();
    let req = kubeforge_apply::Request {
        cluster: &cluster,
        rendered: &rendered,
        plan: &kubeforge_plan::Options::default(),
        transports: &transports,
        opts: &opts,
        owner: "test",
        gone: &[],
        prune: Default::default(),
    };
    struct Quiet;
    impl kubeforge_apply::Progress for Quiet {
        fn event(&self, _: kubeforge_apply::Event) {}
    }
    let mut persisted = false;
    let mut persist = |_: &kubeforge_plan::Plan| {
        persisted = true;
        Ok(())
    };
    let err = kubeforge_apply::apply(&req, &mut persist, &Quiet)
        .await
        .unwrap_err();
    let ApplyError::Preflight(problems) = &err else {
        panic!("{err}");
    };
    assert_eq!(
        problems,
        &["b: needs iptables (kube-proxy writes the service rules with it in iptables mode); install package iptables (Debian, Ubuntu; elsewhere: iptables on RHEL, Fedora and SUSE)"],
        "{err}"
    );
    assert!(!persisted);
    // Only reads ran: no file written, no mode changed, no unit touched,
    // no preparation step run (their checks ride in the facts' round trip,
    // one per node).
    let log = rec.log();
    for call in &log {
        assert!(
            !call.what.starts_with("write ")
                && !call.what.starts_with("systemctl ")
                && !call.what.starts_with("chmod ")
                && (call.stdin.is_none()
                    || call.what.starts_with("read ")
                    || call.what == "gather facts"),
            "{call} ran although pre-flight failed"
        );
        assert!(
            rendered
                .nodes
                .iter()
                .all(|n| n.steps.iter().all(|s| s.name != call.what)),
            "{call}: a step ran"
        );
    }
    for n in &rendered.nodes {
        let times = log
            .iter()
            .filter(|c| c.node == n.name && c.what == "gather facts")
            .count();
        assert_eq!(times, 1, "{}", n.name);
    }
}

/// The rendered checks, run by a real shell: met and unmet commands, files
/// and kernel modules, each reported once with its package or fix.
#[tokio::test]
async fn requirement_checks_run_in_the_host_facts_round_trip() {
    let table = format!(
        "{}{}",
        kubeforge_render::FILES_TOML,
        r#"
[[requirement]]
name = "sh"
on = "all"
check = "command"
arg = "sh"
for = "every script"
package = "dash"

[[requirement]]
name = "a missing command"
on = "all"
check = "command"
arg = "kubeforge-no-such-command"
for = "the test"
package = "kubeforge-test-package"
other = "kubeforge-test on RHEL"

[[requirement]]
name = "the root directory"
on = "all"
check = "file"
arg = "/"
for = "the test"
fix = "nothing"

[[requirement]]
name = "a missing file"
on = "all"
check = "file"
arg = "/kubeforge/no/such/file"
for = "the test"
fix = "create it"

[[requirement]]
name = "a missing kernel module"
on = "all"
check = "module"
arg = "kubeforge_no_such_module"
for = "the test"
package = "linux-image-amd64"
"#
    );
    let renderer = kubeforge_render::Renderer::with(kubeforge_render::TEMPLATES, &table).unwrap();
    let text = INVENTORY.replace(
        "[[nodes]]\nname = \"b\"\naddress = \"10.77.0.12\"\nroles = [\"worker\"]\n",
        "",
    );
    let cluster = kubeforge_inventory::parse(std::path::Path::new("t.toml"), &text)
        .unwrap()
        .cluster;
    let state = tempfile::tempdir().unwrap();
    let pki = kubeforge_pki::reconcile(state.path(), &cluster, &Default::default())
        .unwrap()
        .pki;
    let subnets = kubeforge_render::allocate_pod_subnets(state.path(), &cluster)
        .unwrap()
        .subnets;
    let rendered = renderer.render(&cluster, &pki, &subnets).unwrap();
    let mut transports: Transports = Transports::new();
    transports.insert(
        "a".into(),
        Arc::new(LocalTransport::new("a")) as Arc<dyn Transport>,
    );
    let g = gather(&transports, &rendered, 1, false).await.unwrap();
    let err = preflight(&rendered, &g.hosts, &Facts::Offline, &Options::default()).unwrap_err();
    let ApplyError::Preflight(problems) = &err else {
        panic!("{err}");
    };
    let ours: Vec<&String> = problems
        .iter()
        .filter(|p| p.contains("(the test)") || p.contains("every script"))
        .collect();
    assert_eq!(
        ours,
        [
            "a: needs a missing command (the test); install package kubeforge-test-package (Debian, Ubuntu; elsewhere: kubeforge-test on RHEL)",
            "a: needs a missing file (the test); create it",
            "a: needs a missing kernel module (the test); install package linux-image-amd64 (Debian, Ubuntu)",
        ],
        "{err}"
    );
}
