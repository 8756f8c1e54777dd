//! `status` on a recording transport: the example HA cluster's nodes answer
//! every read-only probe from scripted rules; each test changes what one
//! part of the cluster says and checks the data and the verdict.
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use kubeforge_apply::status::{status, Status, StatusRequest, Verdict};
use kubeforge_apply::Transports;
use kubeforge_inventory::Cluster;
use kubeforge_render::Rendered;
use kubeforge_transport::recording::{fail, ok, Recorder};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

struct World {
    cluster: Cluster,
    rendered: Rendered,
    rec: Recorder,
    state: tempfile::TempDir,
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

const ETCD_IDS: [(&str, &str); 3] = [("cp1", "101"), ("cp2", "102"), ("cp3", "103")];

/// What an etcd member answers: healthy, cp1 the leader.
fn etcd_answer(node: &str, healthy: bool) -> String {
    let id = ETCD_IDS.iter().find(|(n, _)| *n == node).unwrap().1;
    let members: Vec<String> = ETCD_IDS
        .iter()
        .map(|(n, i)| format!(r#"{{"ID":"{i}","name":"{n}"}}"#))
        .collect();
    let health = if healthy {
        r#"{"health":"true","reason":""}"#.to_string()
    } else {
        "curl: (7) Failed to connect to 127.0.0.1 port 2379".to_string()
    };
    format!(
        "health {}\nstatus {}\nmembers {}\n",
        b64(&health),
        b64(&format!(
            r#"{{"header":{{"member_id":"{id}","revision":"4242"}},"version":"3.5.16","dbSize":"2097152","leader":"101"}}"#
        )),
        b64(&format!(r#"{{"members":[{}]}}"#, members.join(",")))
    )
}

/// The API's answer to `GET /api/v1/nodes`: every kubelet node, Ready
/// unless named in `not_ready`.
fn nodes_answer(r: &Rendered, not_ready: &[&str]) -> String {
    let items: Vec<String> = r
        .kubelet_nodes()
        .iter()
        .map(|(n, _)| {
            let status = if not_ready.contains(n) { "False" } else { "True" };
            format!(
                r#"{{"metadata":{{"name":"{n}"}},"status":{{"conditions":[{{"type":"Ready","status":"{status}","reason":"KubeletNotReady","message":"stopped posting"}}]}}}}"#
            )
        })
        .collect();
    format!(
        "200 {}\n",
        b64(&format!(r#"{{"items":[{}]}}"#, items.join(",")))
    )
}

/// The one round trip of facts (see kubeforge_transport::gather): every
/// file as rendered but `changed` (which then holds `old`), every unit
/// running, every step done.
fn gather_answer(tree: &kubeforge_render::NodeTree, changed: Option<(&str, &str)>) -> String {
    let mut s = String::from("K 0\n");
    for f in tree.files.values() {
        let sha = match changed {
            Some((path, old)) if path == f.path => {
                s.push_str(&format!("C {path} {}\n", b64(old)));
                "0".repeat(64)
            }
            _ => f.sha256.clone(),
        };
        s.push_str(&format!("F {:o} {} {} {}\n", f.mode, f.owner, sha, f.path));
    }
    for u in &tree.units {
        s.push_str(&format!("U {} active enabled\n", u.name));
    }
    for i in 0..tree.steps.len() {
        s.push_str(&format!("S {i} 0\n"));
    }
    s
}

/// Units and their versions, as the status script prints them.
fn units_answer(tree: &kubeforge_render::NodeTree, stopped: &[&str]) -> String {
    tree.units
        .iter()
        .map(|u| {
            let state = if stopped.contains(&u.name.as_str()) {
                "inactive"
            } else {
                "active"
            };
            let version = match u.name.as_str() {
                "etcd" => "etcd Version: 3.5.16",
                "nginx" => "nginx version: nginx/1.22.1",
                "keepalived" => "Keepalived v2.2.7 (01/16,2022)",
                "containerd" => {
                    "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1"
                }
                n if n.starts_with("kube") && !n.starts_with("kubeforge") => "Kubernetes v1.31.4",
                _ => "",
            };
            format!("{}\t{state}\t{version}\n", u.name)
        })
        .collect()
}

/// The certificates a node holds: its rendered ones.
fn certs_answer(tree: &kubeforge_render::NodeTree) -> String {
    let mut s = String::new();
    for f in tree.files.values() {
        if !f.secret && kubeforge_plan::cert::is_certificate_pem(&f.content) {
            s.push_str(&format!(
                "== {}\n{}",
                f.path,
                String::from_utf8_lossy(&f.content)
            ));
        }
    }
    s
}

fn world() -> World {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../inventories/ha.toml");
    let loaded = kubeforge_inventory::load(&path).unwrap();
    let state = tempfile::tempdir().unwrap();
    let rendered = kubeforge_render::prepare(state.path(), &loaded.cluster, &Default::default())
        .unwrap()
        .rendered;
    let rec = Recorder::new();
    rec.answer(None, "status: clock", vec![ok(&format!("{:.3}\n", now()))]);
    rec.answer(None, "status: apiserver readyz", vec![ok("ok")]);
    rec.answer(None, "status: readyz through the VIP", vec![ok("ok")]);
    rec.answer(None, "status: holds the VIP", vec![ok("no\n")]);
    rec.answer(Some("lb1"), "status: holds the VIP", vec![ok("yes\n")]);
    rec.answer(
        None,
        "status: list nodes",
        vec![ok(&nodes_answer(&rendered, &[]))],
    );
    for tree in &rendered.nodes {
        let n = Some(tree.name.as_str());
        rec.answer(
            n,
            "status: units and versions",
            vec![ok(&units_answer(tree, &[]))],
        );
        rec.answer(n, "status: certificates", vec![ok(&certs_answer(tree))]);
        rec.answer(n, "gather facts", vec![ok(&gather_answer(tree, None))]);
        if ETCD_IDS.iter().any(|(e, _)| *e == tree.name) {
            rec.answer(n, "status: etcd", vec![ok(&etcd_answer(&tree.name, true))]);
        }
    }
    // The addon node's API, in one round trip: ready, every object as
    // rendered, no certificate requests.
    let addon = rendered.addon_node.clone().unwrap();
    let objects: String = rendered
        .addons
        .iter()
        .flat_map(|a| &a.objects)
        .map(|o| format!("200 {}\n200 {}\n", b64(&o.body), b64(&o.body)))
        .collect();
    let objects = format!(
        "200 {}\n{objects}200 {}\n",
        b64("ok"),
        b64(r#"{"items":[]}"#)
    );
    rec.answer(Some(&addon), "read the addon objects", vec![ok(&objects)]);
    World {
        cluster: loaded.cluster,
        rendered,
        rec,
        state,
    }
}

fn run(w: &World, skip: &[&str]) -> Status {
    let transports: Transports = w
        .rendered
        .nodes
        .iter()
        .filter(|n| !skip.contains(&n.name.as_str()))
        .map(|n| (n.name.clone(), w.rec.node(&n.name)))
        .collect();
    let unreachable: BTreeMap<String, String> = skip
        .iter()
        .map(|n| {
            (
                n.to_string(),
                format!("{n}: cannot connect to 10.0.0.1: timed out"),
            )
        })
        .collect();
    let req = StatusRequest {
        cluster: &w.cluster,
        rendered: &w.rendered,
        transports: &transports,
        unreachable: &unreachable,
        state_dir: w.state.path(),
        concurrency: 4,
        max_clock_skew: Duration::from_secs(30),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(status(&req))
}

fn messages(s: &Status) -> String {
    s.problems
        .iter()
        .map(|p| format!("{:?} {}", p.level, p.message))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn healthy_cluster() {
    let w = world();
    let s = run(&w, &[]);
    assert_eq!(s.verdict, Verdict::Healthy, "{}", messages(&s));
    assert!(s.problems.is_empty());
    let cp1 = s.nodes.iter().find(|n| n.name == "cp1").unwrap();
    let etcd = cp1.units.iter().find(|u| u.name == "etcd").unwrap();
    assert_eq!(
        (etcd.state.as_str(), etcd.version.as_deref()),
        ("active", Some("3.5.16"))
    );
    let api = cp1
        .units
        .iter()
        .find(|u| u.name == "kube-apiserver")
        .unwrap();
    assert_eq!(api.version.as_deref(), Some("v1.31.4"));
    assert_eq!(cp1.ready.as_ref().unwrap().status, "True");
    assert!(cp1.clock_skew_secs.unwrap().abs() < 5.0);
    assert!(cp1.certificates > 5, "{}", cp1.certificates);
    let soonest = cp1.soonest_certificate.as_ref().unwrap();
    assert!(soonest.days_left >= 360, "{soonest:?}");
    assert_eq!(cp1.drift.as_deref(), Some(&[][..]));
    let etcd = s.etcd.as_ref().unwrap();
    assert_eq!(etcd.leader.as_deref(), Some("cp1"));
    assert!(etcd
        .members
        .iter()
        .all(|m| m.healthy && m.revision == Some(4242)));
    let vip = s.api.vip.as_ref().unwrap();
    assert_eq!(vip.holders, ["lb1"]);
    assert!(vip.readyz.as_ref().unwrap().ready);
    assert_eq!(s.api_drift.as_deref(), Some(&[][..]));
    assert!(s.backup.is_none());
    // LB nodes hold no certificate and run no kubelet.
    let lb1 = s.nodes.iter().find(|n| n.name == "lb1").unwrap();
    assert!(lb1.ready.is_none());
    assert_eq!(lb1.holds_vip, Some(true));
    // Only reads: no file written, no unit touched, no key leaves a node.
    for call in w.rec.log() {
        assert!(
            call.what.starts_with("status: ")
                || ["gather facts", "read ", "list "]
                    .iter()
                    .any(|p| call.what.starts_with(p))
                || w.rendered
                    .nodes
                    .iter()
                    .any(|n| n.steps.iter().any(|s| s.name == call.what)),
            "unexpected script {call}"
        );
        if call.what == "status: certificates" {
            assert!(
                call.args.iter().all(|a| !a.ends_with(".key")),
                "{:?}",
                call.args
            );
        }
    }
    assert_eq!(s.verdict.exit_code(), 0);
}

#[test]
fn stopped_kubelet_is_degraded() {
    let w = world();
    let tree = w
        .rendered
        .nodes
        .iter()
        .find(|n| n.name == "worker1")
        .unwrap();
    w.rec.answer(
        Some("worker1"),
        "status: units and versions",
        vec![ok(&units_answer(tree, &["kubelet"]))],
    );
    w.rec.answer(
        None,
        "status: list nodes",
        vec![ok(&nodes_answer(&w.rendered, &["worker1"]))],
    );
    let s = run(&w, &[]);
    assert_eq!(s.verdict, Verdict::Degraded, "{}", messages(&s));
    assert_eq!(s.verdict.exit_code(), 1);
    let text = messages(&s);
    assert!(text.contains("worker1: kubelet is inactive"), "{text}");
    assert!(
        text.contains("worker1: not Ready in the API: False (KubeletNotReady"),
        "{text}"
    );
    assert!(
        s.problems
            .iter()
            .all(|p| p.node.as_deref() == Some("worker1")),
        "{text}"
    );
}

#[test]
fn unreachable_node_fails_and_its_etcd_member_counts_as_down() {
    let w = world();
    let s = run(&w, &["cp3"]);
    assert_eq!(s.verdict, Verdict::Failed, "{}", messages(&s));
    assert_eq!(s.verdict.exit_code(), 2);
    let text = messages(&s);
    assert!(
        text.contains("Failed cp3: unreachable: cp3: cannot connect"),
        "{text}"
    );
    assert!(
        text.contains("Degraded cp3: etcd member is not healthy: node unreachable"),
        "{text}"
    );
    // Two of three members keep quorum; the rest of the cluster is read.
    assert!(!text.contains("quorum"), "{text}");
    let cp3 = s.nodes.iter().find(|n| n.name == "cp3").unwrap();
    assert!(!cp3.reachable && cp3.units.is_empty() && cp3.drift.is_none());
    assert!(s
        .nodes
        .iter()
        .filter(|n| n.name != "cp3")
        .all(|n| n.drift.is_some()));
}

#[test]
fn etcd_without_quorum_and_no_apiserver_fail() {
    let w = world();
    for n in ["cp2", "cp3"] {
        w.rec
            .answer(Some(n), "status: etcd", vec![ok(&etcd_answer(n, false))]);
    }
    w.rec.answer(
        None,
        "status: apiserver readyz",
        vec![ok(
            "[+]ping ok\n[-]etcd failed: reason withheld\nreadyz check failed\n",
        )],
    );
    w.rec
        .answer(None, "status: readyz through the VIP", vec![fail(7, "")]);
    let s = run(&w, &[]);
    assert_eq!(s.verdict, Verdict::Failed);
    let text = messages(&s);
    assert!(
        text.contains("etcd has lost quorum: 1 of 3 members healthy"),
        "{text}"
    );
    assert!(
        text.contains("Failed no kube-apiserver answers /readyz"),
        "{text}"
    );
    assert!(
        text.contains("cp1: kube-apiserver is not ready: [-]etcd failed"),
        "{text}"
    );
    assert!(
        text.contains("Failed the API does not answer https://"),
        "{text}"
    );
    assert!(
        text.contains("cp2: etcd member is not healthy: curl: (7)"),
        "{text}"
    );
    // Without a ready apiserver, Ready is not known (and no problem of its own).
    let w1 = s.nodes.iter().find(|n| n.name == "worker1").unwrap();
    assert_eq!(w1.ready.as_ref().unwrap().status, "unknown");
    // The API is not asked for the addon objects; the files are compared.
    assert!(w
        .rec
        .log()
        .iter()
        .all(|c| c.what != "read the addon objects"));
    assert!(s.api_drift.is_none() && s.drift_error.is_none());
    assert!(s.nodes.iter().all(|n| n.drift.as_deref() == Some(&[][..])));
}

#[test]
fn api_that_fails_to_answer_leaves_file_drift_known() {
    let w = world();
    let addon = w.rendered.addon_node.clone().unwrap();
    w.rec.answer(
        Some(&addon),
        "read the addon objects",
        vec![fail(1, "curl: (28) Operation timed out")],
    );
    let s = run(&w, &[]);
    assert_eq!(s.verdict, Verdict::Degraded, "{}", messages(&s));
    assert!(s.api_drift.is_none());
    let e = s.drift_error.as_deref().unwrap();
    assert!(
        e.starts_with("addon objects: ") && e.contains("timed out"),
        "{e}"
    );
    assert!(s.nodes.iter().all(|n| n.drift.as_deref() == Some(&[][..])));
}

#[test]
fn edited_file_vip_on_two_nodes_and_skew_are_degraded() {
    let w = world();
    let tree = w
        .rendered
        .nodes
        .iter()
        .find(|n| n.name == "worker2")
        .unwrap();
    w.rec.answer(
        Some("worker2"),
        "gather facts",
        vec![ok(&gather_answer(
            tree,
            Some(("/etc/kubernetes/kubelet-config.yaml", "edited: true\n")),
        ))],
    );
    w.rec
        .answer(Some("lb2"), "status: holds the VIP", vec![ok("yes\n")]);
    w.rec.answer(
        Some("cp2"),
        "status: clock",
        vec![ok(&format!("{:.3}\n", now() + 120.0))],
    );
    let s = run(&w, &[]);
    assert_eq!(s.verdict, Verdict::Degraded, "{}", messages(&s));
    let text = messages(&s);
    assert!(
        text.contains("worker2: 1 file differs from what kubeforge renders (/etc/kubernetes/kubelet-config.yaml)"),
        "{text}"
    );
    assert!(
        text.contains("several LB nodes hold the VIP 10.77.0.100: lb1, lb2"),
        "{text}"
    );
    // The answer was made before status asked for it: up to 120 s ahead,
    // less the time in between.
    let skew: f64 = text
        .split("cp2: clock differs from this machine's by +")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!((90.0..=120.5).contains(&skew), "{text}");
    let w2 = s.nodes.iter().find(|n| n.name == "worker2").unwrap();
    assert_eq!(
        w2.drift.as_ref().unwrap(),
        &["/etc/kubernetes/kubelet-config.yaml"]
    );
}

#[test]
fn certificates_close_to_expiry_and_expired() {
    let w = world();
    let soon = certificate(10);
    let gone = certificate(-2);
    w.rec.answer(
        Some("worker1"),
        "status: certificates",
        vec![ok(&format!(
            "== /var/lib/kubelet/pki/kubelet-client-current.pem\n{soon}"
        ))],
    );
    let s = run(&w, &[]);
    assert_eq!(s.verdict, Verdict::Degraded, "{}", messages(&s));
    let w1 = s.nodes.iter().find(|n| n.name == "worker1").unwrap();
    let c = w1.soonest_certificate.as_ref().unwrap();
    assert_eq!(c.path, "/var/lib/kubelet/pki/kubelet-client-current.pem");
    assert!((9..=10).contains(&c.days_left), "{c:?}");
    assert!(
        messages(&s).contains("expires in 9 days, within renew_before_days (30)")
            || messages(&s).contains("expires in 10 days"),
        "{}",
        messages(&s)
    );

    w.rec.answer(
        Some("worker1"),
        "status: certificates",
        vec![ok(&format!(
            "== /etc/kubernetes/pki/kubelet-server.crt\n{gone}"
        ))],
    );
    let s = run(&w, &[]);
    assert_eq!(s.verdict, Verdict::Failed, "{}", messages(&s));
    assert!(
        messages(&s).contains("/etc/kubernetes/pki/kubelet-server.crt (expiring) expired on"),
        "{}",
        messages(&s)
    );
}

/// A self-signed certificate (CN `expiring`) that ends `days` from now.
fn certificate(days: i64) -> String {
    let mut p = rcgen::CertificateParams::new(vec!["expiring".into()]).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "expiring");
    let end =
        time::OffsetDateTime::now_utc() + time::Duration::days(days) + time::Duration::hours(1);
    p.not_before = end - time::Duration::days(365);
    p.not_after = end;
    let key = rcgen::KeyPair::generate().unwrap();
    p.self_signed(&key).unwrap().pem()
}

#[test]
fn newest_backup_and_its_age() {
    let w = world();
    let dir = w.state.path().join("backups");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("etcd-1.db"), "old").unwrap();
    std::fs::write(dir.join("etcd-2.db"), "new").unwrap();
    let s = run(&w, &[]);
    let b = s.backup.as_ref().unwrap();
    assert!(Path::new(&b.path).starts_with(&dir), "{b:?}");
    assert!(b.age_secs < 60, "{b:?}");
    assert_eq!(s.verdict, Verdict::Healthy, "{}", messages(&s));
}
