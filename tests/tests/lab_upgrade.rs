//! An upgrade on lab nodes: the HA cluster (three etcd and control-plane
//! nodes, two LB nodes with the VIP, two workers) is applied, then applied
//! again with a bundle whose etcd and Kubernetes binaries are rebuilt (the
//! same version, another sha256: bytes appended to each file). The plan
//! shows every component's binary replaced; the apply restarts etcd
//! members one at a time, the apiservers one at a time, the controllers,
//! then the kubelets and kube-proxies node by node (workers two at a time
//! with `--max-unavailable 2`), each node cordoned before and uncordoned
//! after; a probe through the VIP sees no failed request; a re-apply says
//! "No changes".
//!
//! The Kubernetes binaries are the stand-ins unless
//! `KUBEFORGE_K8S_BIN_DIR` names the real ones; etcd is Debian's.
#![allow(clippy::print_stderr)]

use crate::lab_apply::{binaries, bundle_files, curl_admin, k8s_version, start, write_bundle};
use crate::probe::Probe;
use kubeforge_tests::lab::Lab;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Instant;

const TEST: &str = "lab_upgrade";
const CPS: [&str; 3] = ["cp1", "cp2", "cp3"];
const KUBELETS: [&str; 5] = ["cp1", "cp2", "cp3", "worker1", "worker2"];
/// The binaries the upgrade replaces.
const REBUILT: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
];

fn inventory(lab: &Lab) -> String {
    let mut s = crate::lab_apply::inventory(lab, None);
    s.push_str("\n[[nodes]]\nname = \"worker2\"\naddress = \"10.77.0.22\"\nroles = [\"worker\"]\n");
    s
}

/// A copy of `from` with bytes appended: another sha256, the same program.
fn rebuilt(from: &Path, to: &Path) {
    let mut bytes = std::fs::read(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    bytes.extend_from_slice(b"\n# rebuilt for the upgrade test\n");
    std::fs::write(to, bytes).unwrap_or_else(|e| panic!("write {}: {e}", to.display()));
    let mut perms = std::fs::metadata(to).expect("metadata").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(to, perms).expect("chmod");
}

/// When `unit` last became active on `node` (the monotonic clock, shared
/// by the lab's nodes).
fn started(lab: &Lab, node: &str, unit: &str) -> u64 {
    let s = lab.ssh_ok(
        node,
        &format!("systemctl show -p ActiveEnterTimestampMonotonic --value {unit}"),
    );
    s.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{node} {unit}: {s:?}"))
}

#[test]
fn upgrade_to_rebuilt_binaries_rolls_in_skew_order_without_a_failed_request() {
    if !kubeforge_tests::lab::available(TEST) {
        return;
    }
    let Some(b) = binaries() else { return };
    let nodes = [
        ("cp1", Ipv4Addr::new(10, 77, 0, 11)),
        ("cp2", Ipv4Addr::new(10, 77, 0, 12)),
        ("cp3", Ipv4Addr::new(10, 77, 0, 13)),
        ("lb1", Ipv4Addr::new(10, 77, 0, 31)),
        ("lb2", Ipv4Addr::new(10, 77, 0, 32)),
        ("worker1", Ipv4Addr::new(10, 77, 0, 21)),
        ("worker2", Ipv4Addr::new(10, 77, 0, 22)),
    ];
    let (lab, kf) = start(&b, &nodes, inventory);
    let t = Instant::now();
    let out = kf.apply(&[]);
    let fresh = t.elapsed();
    assert!(out.status.success(), "fresh apply failed");

    // 1. The bundle with rebuilt binaries: the plan names every component
    //    whose binary is replaced, at the version it runs.
    let dir = kf.dir.join("rebuilt");
    std::fs::create_dir_all(&dir).expect("rebuilt dir");
    let files: Vec<(String, PathBuf)> = bundle_files(&b)
        .into_iter()
        .map(|(name, from)| {
            if !REBUILT.contains(&name.as_str()) {
                return (name, from);
            }
            let to = dir.join(&name);
            rebuilt(&from, &to);
            (name, to)
        })
        .collect();
    write_bundle(&kf.bundle, &files);
    let plan = kf.plan();
    let v = format!("v{}", k8s_version());
    for (unit, on) in [
        ("kube-apiserver", "cp1, cp2, cp3"),
        ("kube-controller-manager", "cp1, cp2, cp3"),
        ("kube-scheduler", "cp1, cp2, cp3"),
        ("kubelet", "cp1, cp2, cp3, worker1, worker2"),
        ("kube-proxy", "cp1, cp2, cp3, worker1, worker2"),
    ] {
        let line = format!("  {unit} {v} (binary replaced, same version): {on}\n");
        assert!(plan.contains(&line), "{line:?} not in the plan");
    }
    assert!(
        plan.contains(
            "node in 5 batches, one after the other: [cp1] [cp2] [cp3] [worker1] [worker2]"
        ),
        "the node phase's batches"
    );

    // 2. The upgrade, workers two at a time, with a probe through the VIP.
    let before: Vec<(String, &str, u64)> = REBUILT
        .iter()
        .flat_map(|u| {
            let on: &[&str] = if matches!(*u, "kubelet" | "kube-proxy") {
                &KUBELETS
            } else {
                &CPS
            };
            on.iter()
                .map(|n| (n.to_string(), *u, started(&lab, n, u)))
                .collect::<Vec<_>>()
        })
        .collect();
    let probe = Probe::admin(&kf, &kf.dir.join("probe"));
    let t = Instant::now();
    let out = kf.apply(&["--max-unavailable", "2"]);
    let upgrade = t.elapsed();
    let probed = probe.finish();
    let (ok, failed, failures) = (probed.ok, probed.failed(), probed.failures);
    assert!(out.status.success(), "upgrade apply failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("[worker1, worker2]"),
        "workers two at a time"
    );
    eprintln!("probe through the VIP during the upgrade: {ok} ok, {failed} failed");
    assert!(ok > 10, "the probe loop ran");
    assert_eq!(failed, 0, "failed probes: {failures:?}");

    // Every replaced component restarted, in the order of the skew policy.
    let at = |n: &str, u: &str| started(&lab, n, u);
    for (n, u, was) in &before {
        assert!(at(n, u) > *was, "{u} on {n} did not restart");
    }
    let mut last = 0;
    for u in ["etcd", "kube-apiserver"] {
        for n in CPS {
            let now = at(n, u);
            assert!(now > last, "{u} on {n} restarted out of order");
            last = now;
        }
    }
    let controllers = CPS
        .iter()
        .flat_map(|n| [at(n, "kube-controller-manager"), at(n, "kube-scheduler")])
        .collect::<Vec<_>>();
    assert!(
        controllers.iter().all(|c| *c > last),
        "controllers before the apiservers"
    );
    let mut last = controllers.iter().copied().max().unwrap_or_default();
    for n in CPS {
        let now = at(n, "kubelet");
        assert!(now > last, "kubelet on {n} out of order");
        last = now;
    }
    for n in ["worker1", "worker2"] {
        assert!(
            at(n, "kubelet") > last,
            "kubelet on {n} before the control-plane nodes"
        );
    }

    // Every node uncordoned and Ready.
    let nodes = curl_admin(&kf, "https://10.77.0.100:8443/api/v1/nodes");
    let list: serde_json::Value =
        serde_json::from_slice(&nodes.stdout).expect("the node list is JSON");
    let items = list["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), KUBELETS.len(), "{list}");
    for node in &items {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        assert_ne!(
            node["spec"]["unschedulable"],
            serde_json::Value::Bool(true),
            "{name} still cordoned"
        );
        let ready = node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        assert!(ready, "{name} not Ready: {node}");
    }

    // 3. Nothing left to do.
    let t = Instant::now();
    let out = kf.apply(&[]);
    let noop = t.elapsed();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("No changes"),
        "the re-apply after the upgrade changed something"
    );
    // The upgrade told each node's sha256 cache what it wrote (the LB
    // nodes' drained and restored nginx.conf too): nothing hashed again.
    let (cached, total) = crate::lab_apply::sums_cached(&stdout);
    assert_eq!(cached, total, "sums cached after the upgrade");
    eprintln!(
        "lab_upgrade timings: fresh apply {:.1} s, upgrade (6 binaries, 7 nodes) {:.1} s, no-op re-apply {:.1} s",
        fresh.as_secs_f64(),
        upgrade.as_secs_f64(),
        noop.as_secs_f64()
    );
}
