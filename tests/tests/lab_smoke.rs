//! The lab harness itself (`kubeforge_tests::lab`): three nodes boot with
//! systemd, are separate machines (host name, machine-id, cgroups: stopping
//! a unit in one leaves the same unit in another alone), carry nginx and
//! keepalived installed but not running, reach each other over the lab
//! bridge and nothing else, and leave nothing behind when dropped.
//!
//! Needs root, systemd-nspawn, ip, ssh and (for the first run, which builds
//! the node root file system) debootstrap; skipped without them unless
//! `CI` is set.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use kubeforge_tests::lab::{self, Lab, BRIDGE, NETNS_PREFIX};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const TEST: &str = "lab_smoke";

fn nodes() -> [(&'static str, Ipv4Addr); 3] {
    [
        ("n1", Ipv4Addr::new(10, 77, 0, 11)),
        ("n2", Ipv4Addr::new(10, 77, 0, 12)),
        ("n3", Ipv4Addr::new(10, 77, 0, 13)),
    ]
}

/// `systemctl is-active UNIT` on `node`.
fn state(lab: &Lab, node: &str, unit: &str) -> String {
    let out = lab.ssh(node, &format!("systemctl is-active {unit}"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn lab_smoke() {
    if !lab::available(TEST) {
        return;
    }
    let nodes = nodes();
    let started = Instant::now();
    let mut lab = Lab::up(&nodes);
    let timings = lab.timings();
    eprintln!(
        "{TEST}: rootfs build {}, up (3 nodes, SSH ready) {:.2} s, total {:.2} s",
        timings
            .rootfs_build
            .map_or("cached".to_string(), |d| format!(
                "{:.1} s",
                d.as_secs_f64()
            )),
        timings.up.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    lab.watch_units(&["kf-sleep", "ssh", "nginx", "keepalived"]);
    let checks = Instant::now();

    // Separate machines.
    let mut ids = BTreeSet::new();
    for (name, address) in &nodes {
        assert_eq!(lab.node_address(name), *address);
        assert_eq!(lab.ssh_ok(name, "hostname").trim(), *name);
        let id = lab.ssh_ok(name, "cat /etc/machine-id").trim().to_string();
        assert!(
            id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{name}: machine-id {id:?}"
        );
        assert!(
            ids.insert(id.clone()),
            "{name}: machine-id {id} is not unique"
        );
        let hosts = lab.ssh_ok(name, "cat /etc/hosts");
        assert!(
            hosts.lines().any(|l| l
                .split_whitespace()
                .eq([address.to_string().as_str(), *name])),
            "{name}: /etc/hosts lacks `{address} {name}`:\n{hosts}"
        );
        // Only the lab's subnet: no default route out of the lab.
        let routes = lab.ssh_ok(name, "ip -4 route");
        assert!(
            !routes.contains("default") && routes.contains("10.77.0.0/24 dev eth0"),
            "{name}: routes:\n{routes}"
        );
        let addr = lab.ssh_ok(name, "ip -4 -o addr show dev eth0");
        assert!(addr.contains(&format!("{address}/24")), "{name}: {addr}");
    }

    // systemd runs (degraded is fine, but say why).
    for (name, _) in &nodes {
        let out = lab.ssh(name, "systemctl is-system-running --wait");
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            matches!(state.as_str(), "running" | "degraded"),
            "{name}: system state {state:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if state == "degraded" {
            eprintln!(
                "{TEST}: {name} is degraded; failed units:\n{}",
                lab.ssh_ok(name, "systemctl --failed --no-legend --no-pager")
            );
        }
    }

    // Own cgroups: stopping a unit in n1 leaves n2's alone.
    for node in ["n1", "n2"] {
        lab.ssh_ok(node, "systemd-run --unit=kf-sleep sleep 600");
        assert_eq!(state(&lab, node, "kf-sleep"), "active", "{node}");
    }
    lab.ssh_ok("n1", "systemctl stop kf-sleep");
    assert_ne!(state(&lab, "n1", "kf-sleep"), "active", "n1 after stop");
    assert_eq!(
        state(&lab, "n2", "kf-sleep"),
        "active",
        "stopping kf-sleep in n1 stopped it in n2: the nodes share a cgroup"
    );
    lab.ssh_ok("n2", "systemctl stop kf-sleep");

    // nginx (with the stream module) and keepalived: installed, not enabled,
    // not running: the installer under test starts them.
    for (name, _) in &nodes {
        lab.ssh_ok(
            name,
            "test -x /usr/sbin/nginx && test -x /usr/sbin/keepalived && test -f /usr/lib/nginx/modules/ngx_stream_module.so",
        );
        for unit in ["nginx", "keepalived"] {
            let enabled = lab.ssh(name, &format!("systemctl is-enabled {unit}"));
            assert_eq!(
                String::from_utf8_lossy(&enabled.stdout).trim(),
                "disabled",
                "{name}: {unit}"
            );
            assert_eq!(state(&lab, name, unit), "inactive", "{name}: {unit}");
        }
        let procs = lab.ssh(name, "pgrep -l -x 'nginx|keepalived'");
        assert!(
            !procs.status.success(),
            "{name}: running: {}",
            String::from_utf8_lossy(&procs.stdout)
        );
    }

    // n1 reaches n2's sshd over the bridge (no ping or nc in the nodes).
    let banner = lab.ssh_ok(
        "n1",
        "timeout 5 bash -c 'exec 3<>/dev/tcp/10.77.0.12/22; head -c 8 <&3'",
    );
    assert!(banner.starts_with("SSH-2.0"), "n1 -> n2:22 said {banner:?}");

    // The host keys differ too.
    let keys: BTreeSet<String> = nodes
        .iter()
        .map(|(n, _)| lab.ssh_ok(n, "cat /etc/ssh/ssh_host_ed25519_key.pub"))
        .map(|k| k.split_whitespace().nth(1).unwrap_or_default().to_string())
        .collect();
    assert_eq!(keys.len(), 3, "ssh host keys are shared: {keys:?}");

    eprintln!(
        "{TEST}: checks over SSH {:.2} s",
        checks.elapsed().as_secs_f64()
    );

    // Teardown leaves nothing behind.
    let dir = lab.path().to_path_buf();
    let t = Instant::now();
    drop(lab);
    eprintln!("{TEST}: down {:.2} s", t.elapsed().as_secs_f64());
    assert!(!dir.exists(), "{} is left", dir.display());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mountinfo
        .lines()
        .filter(|l| l.contains(&*dir.to_string_lossy()))
        .collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !netns.lines().any(|l| l.starts_with(NETNS_PREFIX)),
        "namespaces left:\n{netns}"
    );
    assert!(
        !Path::new("/sys/class/net").join(BRIDGE).exists(),
        "bridge {BRIDGE} is left"
    );
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("kfveth"), "veths left:\n{links}");
}
