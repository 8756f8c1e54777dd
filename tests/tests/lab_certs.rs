//! `kubeforge certs` and `kubeforge certs renew` on lab nodes: three etcd
//! members (two of them control-plane nodes with a kubelet) behind an LB
//! with the VIP. After a fresh apply every certificate, in the state
//! directory and on the nodes, checks ok; `certs renew --all` without
//! `--yes` shows its plan and changes nothing (not the state directory,
//! not a node); with `--yes` every leaf on the nodes has a new serial, the
//! CAs stay, a probe through the VIP sees no failed request, every
//! certificate checks ok again and a re-apply changes nothing.
//!
//! Three more tests rotate a CA each (kubernetes, etcd, front-proxy) in
//! its three steps (`certs renew --new-ca CA`): after each, a probe
//! through the VIP saw no failed request, etcd lists its three members
//! over TLS, every certificate checks ok and an apply changes nothing; in
//! between the nodes trust both CAs, at the end only the new one (a client
//! certificate of the old kubernetes or etcd CA is refused); every
//! certificate of that CA on the nodes is new, every other CA's is as it
//! was.
//!
//! The Kubernetes binaries are the stand-ins unless
//! `KUBEFORGE_K8S_BIN_DIR` names the real ones; etcd is Debian's.
#![allow(clippy::print_stderr)]

use crate::lab_apply::{binaries, start, unit_clock, Kf};
use crate::probe::Probe;
use kubeforge_tests::lab::Lab;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

const TEST: &str = "lab_certs";
const CERT_NODES: [&str; 3] = ["cp1", "cp2", "e3"];
const UNITS: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
];

fn inventory(lab: &Lab) -> String {
    crate::lab_etcd::inventory_with(lab, "")
}

/// `kubeforge certs ARGS...` in the control directory.
fn certs(kf: &Kf, args: &[&str]) -> Output {
    kf.run(&["certs"], args)
}

/// One certificate `kubeforge certs --output json` found on a node.
#[derive(Debug, Clone)]
pub(crate) struct OnNode {
    /// `node path name`.
    key: String,
    serial: String,
    check: String,
    /// The CA that issued it; none for a CA's own certificate.
    ca: Option<String>,
}

/// `kubeforge certs --output json`: the state directory's checks and the
/// certificates found on the nodes.
pub(crate) fn checked(kf: &Kf) -> (Vec<String>, Vec<OnNode>) {
    let out = certs(kf, &["--output", "json"]);
    assert!(out.status.success(), "kubeforge certs failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let state = v["state_dir"]
        .as_array()
        .expect("state_dir")
        .iter()
        .map(|c| format!("{}: {}", c["name"], c["check"]["state"]))
        .collect();
    let mut on_nodes = Vec::new();
    for n in v["nodes"].as_array().expect("nodes") {
        assert!(n.get("error").is_none(), "{n}");
        for c in n["certificates"].as_array().expect("certificates") {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            on_nodes.push(OnNode {
                key: format!("{} {} {}", s("node"), s("path"), s("name")),
                serial: s("serial"),
                check: c["check"]["state"].as_str().unwrap_or_default().into(),
                ca: c["ca"].as_str().map(str::to_string),
            });
        }
    }
    (state, on_nodes)
}

pub(crate) fn all_ok(state: &[String], on_nodes: &[OnNode]) {
    for s in state {
        assert!(s.ends_with(": \"ok\""), "state directory: {s}");
    }
    for c in on_nodes {
        assert_eq!(c.check, "ok", "{c:?}");
    }
}

/// The SHA-256 of every file below the state directory's pki/.
fn pki_sums(kf: &Kf) -> BTreeMap<String, String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg("find . -type f | sort | xargs sha256sum")
        .current_dir(kf.pki(""))
        .output()
        .expect("sha256sum runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(sum, f)| (f.to_string(), sum.to_string()))
        .collect()
}

/// The SHA-256 of every file kubeforge placed below /etc/kubernetes.
fn node_sums(lab: &Lab) -> Vec<String> {
    CERT_NODES
        .iter()
        .map(|n| lab.ssh_ok(n, "find /etc/kubernetes -type f | sort | xargs sha256sum"))
        .collect()
}

#[test]
fn check_renew_all_and_no_changes() {
    if !kubeforge_tests::lab::available(TEST) {
        return;
    }
    let Some(b) = binaries() else { return };
    let (lab, kf) = start(&b, &crate::lab_etcd::NODES, inventory);
    let out = kf.apply(&[]);
    assert!(out.status.success(), "apply failed");

    // 1. Every certificate checks ok, the nodes' as the state directory's.
    let out = certs(&kf, &[]);
    assert!(out.status.success(), "kubeforge certs failed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for want in [
        "CHECK",
        "/etc/kubernetes/pki/etcd/peer.crt",
        "/etc/kubernetes/kubelet.conf",
        "kube-proxy (kubeconfig)",
    ] {
        assert!(text.contains(want), "{want} not in\n{text}");
    }
    let (state, before) = checked(&kf);
    all_ok(&state, &before);
    assert!(
        before.iter().any(|c| c.key.starts_with("e3 ")),
        "the etcd-only member's certificates"
    );
    if crate::lab_apply::real_k8s() {
        // The real kubelet keeps its client certificate in its own
        // directory; the stand-in reads its kubeconfig's.
        assert!(
            before
                .iter()
                .any(|c| c.key.contains("kubelet's own client certificate")),
            "{before:#?}"
        );
    }

    // 2. Without --yes: the plan, exit 0, nothing changed anywhere.
    let (pki_before, nodes_before) = (pki_sums(&kf), node_sums(&lab));
    let clock = |lab: &Lab| unit_clock(lab, &CERT_NODES, &UNITS);
    let units_before = clock(&lab);
    let out = certs(&kf, &["renew", "--all"]);
    assert!(out.status.success(), "renew without --yes");
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    for want in [
        "~ /etc/kubernetes/pki/apiserver.crt",
        "~ /etc/kubernetes/pki/etcd/server.crt",
        "~ /etc/kubernetes/kubelet.conf",
        "etcd (cp1, cp2, e3): one at a time, gated in between",
        "apiserver (cp1, cp2): one at a time, each out of the load balancer while it restarts",
        "Nothing done",
    ] {
        assert!(plan.contains(want), "{want} not in\n{plan}");
    }
    let restarts: Vec<&str> = plan
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("restart: "))
        .collect();
    for unit in UNITS {
        assert!(
            restarts.iter().any(|r| r.split(", ").any(|u| u == unit)),
            "{unit} does not restart:\n{plan}"
        );
    }
    assert!(!plan.contains("ca.crt"), "no CA changes:\n{plan}");
    assert_eq!(pki_sums(&kf), pki_before, "the state directory changed");
    assert_eq!(node_sums(&lab), nodes_before, "a node's file changed");
    assert_eq!(clock(&lab), units_before, "a unit restarted");

    // 3. With --yes: new serials on the nodes, the CAs kept, no failed
    //    request through the VIP.
    let probe = Probe::admin(&kf, &kf.dir.join("probe"));
    let t = Instant::now();
    let out = certs(&kf, &["renew", "--all", "--yes"]);
    let renew_secs = t.elapsed().as_secs_f64();
    let probed = probe.finish();
    let (ok, failures) = (probed.ok, probed.failures);
    assert!(out.status.success(), "renew --all --yes failed");
    eprintln!(
        "probe through the VIP during the renewal: {ok} ok, {} failed",
        failures.len()
    );
    assert!(ok > 10, "the probe loop ran");
    assert!(failures.is_empty(), "failed probes: {failures:?}");
    let after_units = clock(&lab);
    for (b, a) in units_before.iter().zip(&after_units) {
        if b.contains("ActiveState=active") {
            assert_ne!(b, a, "every unit using a certificate restarts");
        }
    }

    // 4. Every certificate checks ok again; every leaf is new, no CA.
    let (state, after) = checked(&kf);
    all_ok(&state, &after);
    let serials = |v: &[OnNode]| -> BTreeMap<String, (String, bool)> {
        v.iter()
            .map(|c| (c.key.clone(), (c.serial.clone(), c.ca.is_some())))
            .collect()
    };
    let (old, new) = (serials(&before), serials(&after));
    let mut renewed = 0;
    for (key, (serial, leaf)) in &old {
        let Some((now, _)) = new.get(key) else {
            panic!("{key} gone after the renewal");
        };
        if *leaf {
            assert_ne!(serial, now, "{key} kept its serial");
            renewed += 1;
        } else {
            assert_eq!(serial, now, "{key}: a CA changed");
        }
    }
    assert!(renewed > 10, "{renewed} certificates on the nodes renewed");

    // 5. Converged: a plain apply changes nothing.
    let out = kf.apply(&[]);
    assert!(out.status.success(), "re-apply after the renewal");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("No changes"),
        "a renewal leaves the cluster as the inventory says"
    );
    eprintln!(
        "lab_certs: renew --all {renew_secs:.1} s, {renewed} certificates on the nodes renewed, probe {ok} ok / {} failed (real binaries: {})",
        failures.len(),
        crate::lab_apply::real_k8s()
    );
}

/// The certificates in a PEM text.
fn count_certs(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

/// One CA of the rotation tests.
struct Rotated {
    /// The name `--new-ca` takes.
    ca: &'static str,
    /// Its certificate in the state directory's pki/.
    state: &'static str,
    /// Its trust bundle on the nodes.
    bundle: &'static str,
    /// A leaf it issues (`node path name`), reissued in step 2.
    leaf: &'static str,
    /// A URL that answers 200 only to a client certificate of the CA, and
    /// that certificate's stem in the state directory's pki/.
    client: Option<(&'static str, &'static str)>,
}

const KUBERNETES: Rotated = Rotated {
    ca: "kubernetes",
    state: "ca.crt",
    bundle: "/etc/kubernetes/pki/ca.crt",
    leaf: "cp1 /etc/kubernetes/pki/apiserver.crt apiserver",
    client: Some((
        "https://10.77.0.100:8443/api/v1/namespaces/default/serviceaccounts/default",
        "admin",
    )),
};
const ETCD: Rotated = Rotated {
    ca: "etcd",
    state: "etcd/ca.crt",
    bundle: "/etc/kubernetes/pki/etcd/ca.crt",
    leaf: "e3 /etc/kubernetes/pki/etcd/server.crt etcd-server",
    client: Some(("https://10.77.0.13:2379/health", "etcd-healthcheck-client")),
};
const FRONT_PROXY: Rotated = Rotated {
    ca: "front-proxy",
    state: "front-proxy-ca.crt",
    bundle: "/etc/kubernetes/pki/front-proxy-ca.crt",
    leaf: "cp1 /etc/kubernetes/pki/front-proxy-client.crt front-proxy-client",
    // The stand-in apiserver does not authenticate by request headers.
    client: None,
};

/// The number of certificates in each CA's trust bundle, which is the
/// same on every node holding it.
fn bundles(lab: &Lab) -> BTreeMap<&'static str, usize> {
    [KUBERNETES, ETCD, FRONT_PROXY]
        .iter()
        .map(|r| {
            let held: Vec<String> = CERT_NODES
                .iter()
                .map(|n| lab.ssh_ok(n, &format!("cat {} 2>/dev/null || true", r.bundle)))
                .filter(|t| !t.is_empty())
                .collect();
            assert!(!held.is_empty(), "{} on no node", r.bundle);
            assert!(
                held.iter().all(|t| *t == held[0]),
                "{} differs between the nodes",
                r.bundle
            );
            (r.ca, count_certs(&held[0]))
        })
        .collect()
}

/// Whether `url` answers 200 to the client certificate `stem`.crt/.key,
/// trusting `ca`.
fn accepted(url: &str, ca: &Path, stem: &Path) -> bool {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-o", "/dev/null"])
        .args(["-w", "%{http_code}", "--cacert"])
        .arg(ca)
        .arg("--cert")
        .arg(format!("{}.crt", stem.display()))
        .arg("--key")
        .arg(format!("{}.key", stem.display()))
        .arg(url)
        .output()
        .expect("curl runs");
    out.stdout == b"200"
}

/// The CA a certificate on the nodes belongs to: the issuer of a leaf, the
/// CA itself for a CA's certificate (`etcd CA`, `kubernetes CA (1 of 2)`).
fn owner(c: &OnNode) -> String {
    c.ca.clone().unwrap_or_else(|| {
        let name = c.key.splitn(3, ' ').nth(2).unwrap_or_default();
        name.split(" CA").next().unwrap_or_default().to_string()
    })
}

/// Rotates `r`'s CA in its three steps with a probe through the VIP during
/// each: no failed request, both CAs in the nodes' bundle until step 3,
/// every certificate checks ok, etcd has its three members, a client
/// certificate of the old CA is accepted until step 3 and refused after
/// it, and an apply changes nothing after each step. At the end every
/// certificate of that CA on the nodes is new and every other CA's
/// certificate is as it was.
fn rotation_in_three_steps(r: &Rotated) {
    if !kubeforge_tests::lab::available(TEST) {
        return;
    }
    let Some(b) = binaries() else { return };
    let etcdctl = b.etcd_dir.join("etcdctl");
    let (lab, kf) = start(&b, &crate::lab_etcd::NODES, inventory);
    let out = kf.apply(&[]);
    assert!(out.status.success(), "apply failed");
    let old_ca = std::fs::read_to_string(kf.pki(r.state)).expect("the CA");
    let (_, before) = checked(&kf);
    let probe_dir = kf.dir.join("probe");
    std::fs::create_dir_all(&probe_dir).expect("probe dir");
    for f in ["ca.crt", "admin.crt", "admin.key"] {
        std::fs::copy(kf.pki(f), probe_dir.join(f)).expect("credentials");
    }
    // The probe's credentials are the kubernetes CA's: they follow only its
    // rotation.
    let follows = r.ca == KUBERNETES.ca;
    // A client certificate of the old CA, kept to show it is accepted until
    // step 3 and refused after it.
    let old_client = kf.dir.join("old-client");
    std::fs::create_dir_all(&old_client).expect("old-client dir");
    let clients = r.client.map(|(url, stem)| {
        for ext in ["crt", "key"] {
            let f = format!("{stem}.{ext}");
            std::fs::copy(kf.pki(&f), old_client.join(&f)).expect("client certificate");
        }
        let ca = kf.pki(r.state);
        assert!(accepted(url, &ca, &old_client.join(stem)), "{url}: {stem}");
        (url, kf.pki(stem), old_client.join(stem))
    });
    let mut figures = Vec::new();
    for step in 1..=3 {
        // The probe trusts what the nodes trust (both CAs from step 1 on);
        // from step 3 on the old CA's admin certificate is refused: the new
        // one.
        if follows && step == 3 {
            for f in ["ca.crt", "admin.crt", "admin.key"] {
                std::fs::copy(kf.pki(f), probe_dir.join(f)).expect("credentials");
            }
        }
        let probe = Probe::with(&probe_dir);
        let t = Instant::now();
        let out = certs(
            &kf,
            &[
                "renew",
                "--new-ca",
                r.ca,
                "--step",
                &step.to_string(),
                "--yes",
            ],
        );
        let secs = t.elapsed().as_secs_f64();
        let probed = probe.finish();
        assert!(out.status.success(), "step {step} failed");
        eprintln!(
            "probe through the VIP during step {step}: {} ok, {} failed",
            probed.ok,
            probed.failed()
        );
        assert!(
            probed.failures.is_empty(),
            "step {step}: failed probes: {:?}",
            probed.failures
        );
        figures.push(format!(
            "step {step} {secs:.1} s (probe {} ok / {} failed)",
            probed.ok,
            probed.failed()
        ));
        let held = bundles(&lab);
        for (ca, n) in &held {
            let want = if *ca == r.ca && step < 3 { 2 } else { 1 };
            assert_eq!(*n, want, "step {step}: the nodes' {ca} CA bundle");
        }
        if follows && step == 1 {
            let bundle = lab.ssh_ok("cp1", &format!("cat {}", r.bundle));
            std::fs::write(probe_dir.join("ca.crt"), bundle).expect("bundle");
        }
        if let Some((url, current, old)) = &clients {
            let ca = kf.pki(r.state);
            assert!(
                accepted(url, &ca, current),
                "step {step}: {url}: {current:?}"
            );
            assert_eq!(
                accepted(url, &ca, old),
                step < 3,
                "step {step}: {url}: a client certificate of the old {} CA",
                r.ca
            );
        }
        assert_eq!(
            crate::lab_remove::etcd_members(&kf, &etcdctl),
            ["cp1", "cp2", "e3"],
            "step {step}: etcd's members, over TLS with the state directory's certificates"
        );
        let (state, now) = checked(&kf);
        all_ok(&state, &now);
        let out = kf.apply(&[]);
        assert!(out.status.success(), "apply after step {step}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("No changes"),
            "step {step} leaves the cluster as the inventory says"
        );
    }
    let new_ca = std::fs::read_to_string(kf.pki(r.state)).expect("the CA");
    assert_ne!(new_ca, old_ca, "the {} CA is new", r.ca);
    // Every certificate of the rotated CA on the nodes is new; those of the
    // other CAs are not.
    let (_, after) = checked(&kf);
    let now: BTreeMap<&str, &OnNode> = after.iter().map(|c| (c.key.as_str(), c)).collect();
    let (mut renewed, mut kept) = (Vec::new(), 0);
    for c in &before {
        let Some(a) = now.get(c.key.as_str()) else {
            panic!("{} gone after the rotation", c.key);
        };
        if owner(c) == r.ca {
            assert_ne!(c.serial, a.serial, "{} kept its serial", c.key);
            renewed.push(c.key.as_str());
        } else {
            assert_eq!(
                c.serial, a.serial,
                "{}: another CA's certificate changed",
                c.key
            );
            kept += 1;
        }
    }
    assert!(
        renewed.contains(&r.leaf),
        "{} not renewed: {renewed:?}",
        r.leaf
    );
    assert!(kept > 0, "the other CAs' certificates");
    eprintln!(
        "lab_certs: {} CA rotation: {}; {} certificates on the nodes new, {kept} kept (real binaries: {})",
        r.ca,
        figures.join(", "),
        renewed.len(),
        crate::lab_apply::real_k8s()
    );
}

#[test]
fn kubernetes_ca_rotation_in_three_steps() {
    rotation_in_three_steps(&KUBERNETES);
}

#[test]
fn etcd_ca_rotation_in_three_steps() {
    rotation_in_three_steps(&ETCD);
}

#[test]
fn front_proxy_ca_rotation_in_three_steps() {
    rotation_in_three_steps(&FRONT_PROXY);
}
