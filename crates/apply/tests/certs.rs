//! `kubeforge certs` on the nodes, judged from what a node's read returns:
//! the state directory's copies check ok; a file that is another
//! certificate differs, one gone is missing, the kubelet's own certificate
//! from another CA is named so, one about to expire is to be renewed soon.
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use kubeforge_apply::certs::{judge_node, NodeCert};
use kubeforge_apply::Transports;
use kubeforge_inventory::Cluster;
use kubeforge_pki::{CertState, Stored};
use kubeforge_render::{NodeTree, Rendered};
use kubeforge_transport::recording::{ok, Recorder};
use std::path::PathBuf;
use time::{Duration, OffsetDateTime};

fn cluster() -> Cluster {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../inventories/single.toml");
    kubeforge_inventory::load(&path).unwrap().cluster
}

/// A cluster whose state directory is written, rendered, and listed.
fn setup(dir: &std::path::Path, c: &Cluster) -> (Rendered, Stored) {
    let p = kubeforge_render::prepare(dir, c, &Default::default()).unwrap();
    p.persist(dir).unwrap();
    let (stored, listed) = kubeforge_pki::list(dir, c, OffsetDateTime::now_utc()).unwrap();
    assert!(
        listed.iter().all(|l| l.check == CertState::Ok),
        "{listed:#?}"
    );
    (p.rendered, stored)
}

/// What reading `tree`'s node returns when it holds exactly the rendered
/// files: each certificate file's text, each kubeconfig's client
/// certificate.
fn as_rendered(tree: &NodeTree) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in tree.files.values() {
        let text = String::from_utf8_lossy(&f.content).into_owned();
        if f.source.starts_with("kubeconfig:") {
            let data = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("client-certificate-data:"))
                .map(str::trim);
            if let Some(d) = data {
                let pem = base64::engine::general_purpose::STANDARD.decode(d).unwrap();
                out.push((f.path.clone(), String::from_utf8(pem).unwrap()));
            }
        } else if (f.source.starts_with("cert:") || f.source.starts_with("ca")) && !f.secret {
            out.push((f.path.clone(), text));
        }
    }
    out
}

fn check_of<'a>(rows: &'a [NodeCert], path: &str) -> &'a CertState {
    &rows
        .iter()
        .find(|r| r.path == path)
        .unwrap_or_else(|| panic!("{path} not in {rows:#?}"))
        .check
}

#[test]
fn a_node_as_rendered_checks_ok_and_each_deviation_is_named() {
    let c = cluster();
    let dir = tempfile::tempdir().unwrap();
    let (rendered, stored) = setup(dir.path(), &c);
    let now = OffsetDateTime::now_utc();
    let cp1 = rendered.nodes.iter().find(|n| n.name == "cp1").unwrap();
    let found = as_rendered(cp1);
    let rows = judge_node(cp1, &found, &stored, &c, now);
    assert!(rows.len() > 8, "{rows:#?}");
    for r in &rows {
        assert_eq!(r.check, CertState::Ok, "{r:#?}");
        assert!(r.serial.is_some() && r.not_after.is_some(), "{r:#?}");
    }
    for path in [
        "/etc/kubernetes/pki/apiserver.crt",
        "/etc/kubernetes/pki/ca.crt",
        "/etc/kubernetes/kubelet.conf",
        "/etc/kubernetes/kube-proxy.conf",
    ] {
        assert_eq!(check_of(&rows, path), &CertState::Ok);
    }

    // Another certificate where the apiserver's should be, the etcd
    // server certificate gone, the kubelet's own client certificate from
    // another cluster's CA.
    let other_dir = tempfile::tempdir().unwrap();
    let (other, _) = setup(other_dir.path(), &c);
    let other_cp1 = other.nodes.iter().find(|n| n.name == "cp1").unwrap();
    let foreign = as_rendered(other_cp1)
        .into_iter()
        .find(|(p, _)| p == "/etc/kubernetes/pki/apiserver.crt")
        .unwrap()
        .1;
    let mut changed: Vec<(String, String)> = found
        .iter()
        .filter(|(p, _)| p != "/etc/kubernetes/pki/etcd/server.crt")
        .map(|(p, t)| {
            if p == "/etc/kubernetes/pki/apiserver.crt" {
                (p.clone(), foreign.clone())
            } else {
                (p.clone(), t.clone())
            }
        })
        .collect();
    changed.push((
        "/var/lib/kubelet/pki/kubelet-client-current.pem".into(),
        foreign.clone(),
    ));
    let rows = judge_node(cp1, &changed, &stored, &c, now);
    assert_eq!(
        check_of(&rows, "/etc/kubernetes/pki/apiserver.crt"),
        &CertState::NotSignedByCurrentCa
    );
    assert_eq!(
        check_of(&rows, "/etc/kubernetes/pki/etcd/server.crt"),
        &CertState::Missing
    );
    let own = rows
        .iter()
        .find(|r| r.path.starts_with("/var/lib/kubelet/pki/"))
        .unwrap();
    assert_eq!(own.name, "kubelet's own client certificate");
    assert_eq!(own.check, CertState::NotSignedByCurrentCa);

    // A node's copy older than the state directory's certificate (same
    // CA): differs.
    let stale_dir = tempfile::tempdir().unwrap();
    for e in walk(dir.path()) {
        let to = stale_dir.path().join(e.strip_prefix(dir.path()).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&e, &to).unwrap();
    }
    // The apiserver certificate reissued (its files gone from the
    // state directory), the rest kept.
    for ext in ["crt", "key"] {
        std::fs::remove_file(stale_dir.path().join(format!("pki/apiserver.{ext}"))).unwrap();
    }
    let reissued = kubeforge_render::prepare(stale_dir.path(), &c, &Default::default()).unwrap();
    reissued.persist(stale_dir.path()).unwrap();
    let (stored_after, _) = kubeforge_pki::list(stale_dir.path(), &c, now).unwrap();
    let rows = judge_node(cp1, &found, &stored_after, &c, now);
    assert_eq!(
        check_of(&rows, "/etc/kubernetes/pki/apiserver.crt"),
        &CertState::Differs
    );
    assert_eq!(
        check_of(&rows, "/etc/kubernetes/pki/apiserver-kubelet-client.crt"),
        &CertState::Ok
    );

    // Judged eleven months later: within renew_before_days.
    let rows = judge_node(cp1, &found, &stored, &c, now + Duration::days(340));
    assert_eq!(
        check_of(&rows, "/etc/kubernetes/pki/apiserver.crt"),
        &CertState::RenewSoon
    );
    assert_eq!(
        check_of(&rows, "/etc/kubernetes/pki/ca.crt"),
        &CertState::Ok
    );
}

/// Every node read through the transport in one script each (keys never
/// named in its arguments), an unreachable node reported as such.
#[test]
fn one_read_per_node_through_the_transport() {
    let c = cluster();
    let dir = tempfile::tempdir().unwrap();
    let (rendered, stored) = setup(dir.path(), &c);
    let rec = Recorder::new();
    for tree in &rendered.nodes {
        let answer: String = as_rendered(tree)
            .into_iter()
            .map(|(p, t)| format!("== {p}\n{t}"))
            .collect();
        rec.answer(
            Some(&tree.name),
            "read the node's certificates",
            vec![ok(&answer)],
        );
    }
    let transports: Transports = rendered
        .nodes
        .iter()
        .filter(|n| n.name != "worker2")
        .map(|n| (n.name.clone(), rec.node(&n.name)))
        .collect();
    let unreachable = [("worker2".to_string(), "worker2: timed out".to_string())].into();
    let found = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(kubeforge_apply::certs::nodes(
            &rendered,
            &transports,
            &unreachable,
            &stored,
            &c,
            4,
        ));
    let log = rec.log();
    assert_eq!(log.len(), rendered.nodes.len() - 1, "{log:#?}");
    for call in &log {
        assert_eq!(call.what, "read the node's certificates");
        assert!(call.args.iter().all(|a| !a.ends_with(".key")), "{call:?}");
    }
    let cp1 = log.iter().find(|c| c.node == "cp1").unwrap();
    assert_eq!(cp1.args[0], "1", "cp1 runs a kubelet");
    assert!(cp1
        .args
        .contains(&"kubeconfig:/etc/kubernetes/kubelet.conf".to_string()));
    for n in &found {
        if n.node == "worker2" {
            assert_eq!(n.error.as_deref(), Some("worker2: timed out"));
            continue;
        }
        assert!(n.error.is_none(), "{n:#?}");
        assert!(!n.certificates.is_empty(), "{}", n.node);
        assert!(
            n.certificates.iter().all(|r| r.check == CertState::Ok),
            "{n:#?}"
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
