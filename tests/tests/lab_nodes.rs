//! Node components on lab nodes: containerd, runc and the CNI plugins are
//! Debian's real packages (bundled from `target/test-tools/node`, which
//! tests/setup.sh unpacks), kubelet and kube-proxy the kubeforge stand-ins
//! (or the real binaries from `KUBEFORGE_K8S_BIN_DIR`). The whole cluster
//! converges with every gate passing (containerd's CRI plugin answers,
//! kubelet and kube-proxy report healthy after reaching the apiserver with
//! their own certificates), and adding a worker touches only that worker.

use crate::lab_apply::{binaries, small_inventory, start, unit_clock, Kf, TEST};
use kubeforge_tests::lab;
use std::net::Ipv4Addr;
use std::process::Command;

/// Units whose restart counters and start times must not change.
const CLOCK_UNITS: [&str; 7] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "containerd",
    "kubelet",
    "kube-proxy",
];

fn plan(kf: &Kf) -> String {
    let out = Command::new(&kf.bin)
        .current_dir(&kf.dir)
        .args([
            "plan",
            "-i",
            "inventory.toml",
            "--ssh-config",
            "ssh_config",
            "--bundle",
        ])
        .arg(&kf.bundle)
        .output()
        .expect("plan runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "plan failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn workers_converge_and_an_added_worker_touches_only_itself() {
    if !lab::available(TEST) {
        return;
    }
    let Some(b) = binaries() else { return };
    let nodes = [
        ("cp1", Ipv4Addr::new(10, 77, 0, 11)),
        ("worker1", Ipv4Addr::new(10, 77, 0, 21)),
        ("worker2", Ipv4Addr::new(10, 77, 0, 22)),
    ];
    let (mut lab, kf) = start(&b, &nodes, |lab| small_inventory(lab, &["worker1"]));
    lab.watch_units(&["containerd", "kubelet", "kube-proxy"]);

    // Every phase, every gate.
    let out = kf.apply_phases(&[], &[]);
    assert!(out.status.success(), "apply failed");
    let cri = lab.ssh_ok(
        "worker1",
        "ctr --address /run/containerd/containerd.sock plugins ls | grep -w cri",
    );
    assert!(cri.trim_end().ends_with("ok"), "{cri}");
    for n in ["cp1", "worker1"] {
        assert_eq!(
            lab.ssh_ok(n, "systemctl is-active containerd kubelet kube-proxy")
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["active", "active", "active"],
            "{n}"
        );
    }
    let out = kf.apply_phases(&[], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("No changes"));

    // Add worker2: the plan touches only it; nothing restarts elsewhere.
    std::fs::write(
        kf.dir.join("inventory.toml"),
        small_inventory(&lab, &["worker1", "worker2"]),
    )
    .expect("inventory");
    // Existing nodes only get the new /etc/hosts line and the route to the
    // new pod subnet (live, and in the boot script): nothing restarts.
    let text = plan(&kf);
    for n in ["cp1 (10.77.0.11)", "worker1 (10.77.0.21)"] {
        let at = text
            .find(n)
            .unwrap_or_else(|| panic!("{n} missing: {text}"));
        // The block of the node, without the diff lines.
        let block: Vec<&str> = text[at..]
            .lines()
            .take_while(|l| !l.is_empty())
            .filter(|l| !l.starts_with("      "))
            .collect();
        assert_eq!(
            block,
            [
                format!("{n}:").as_str(),
                "  run: /etc/hosts entries of the cluster's nodes",
                "  run: routes to the other nodes' pod subnets",
                "  ~ /etc/kubeforge/pod-routes.sh (0755)",
            ],
            "{text}"
        );
    }
    assert!(text.contains("worker2 (10.77.0.22):\n"), "{text}");
    let before = unit_clock(&lab, &["cp1", "worker1"], &CLOCK_UNITS);
    let out = kf.apply_phases(&[], &[]);
    assert!(out.status.success(), "apply with worker2 failed");
    assert_eq!(
        before,
        unit_clock(&lab, &["cp1", "worker1"], &CLOCK_UNITS),
        "an existing node restarted a unit"
    );
    assert_eq!(
        lab.ssh_ok(
            "worker2",
            "systemctl is-active containerd kubelet kube-proxy"
        )
        .split_whitespace()
        .collect::<Vec<_>>(),
        ["active", "active", "active"]
    );
}
