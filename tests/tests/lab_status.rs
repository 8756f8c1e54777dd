//! `kubeforge status` on lab nodes: one control-plane + etcd node, one LB
//! node holding the VIP and one worker, applied by kubeforge; then the
//! table and the exit status of a healthy cluster, a stopped kubelet, a
//! stopped etcd member and an edited managed file.
//!
//! The Kubernetes binaries are the stand-ins unless
//! `KUBEFORGE_K8S_BIN_DIR` names the real ones.
#![allow(clippy::print_stderr)]

use crate::lab_apply::{binaries, k8s_version, start, Kf, PAUSE_IMAGE};
use kubeforge_tests::lab::{self, Lab};
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

const TEST: &str = "lab_status";

/// cp1 (etcd, control-plane), lb1 (the VIP 10.77.0.100) and worker1.
fn inventory(lab: &Lab) -> String {
    format!(
        r#"[cluster]
name = "lab"
kubernetes_version = "{version}"
node_cidr = "10.77.0.0/24"
node_profile = "container"
# No image registry is reachable from the lab: CoreDNS could not run.
coredns = false
sandbox_image = "{pause}"

[loadbalancer]
vip = "10.77.0.100/24"
port = 8443
interface = "eth0"

[ssh]
key = "{key}"
accept_new_host_keys = true

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "lb1"
address = "10.77.0.31"
roles = ["lb"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        key = lab.key().display(),
        pause = PAUSE_IMAGE,
        version = k8s_version(),
    )
}

/// One `kubeforge status` run: exit code, stdout, and how long it took.
struct Run {
    code: i32,
    out: String,
    secs: f64,
}

impl Run {
    /// The table row of `node` and `check`: its state and detail.
    fn row(&self, node: &str, check: &str) -> Option<(String, String)> {
        self.out.lines().find_map(|l| {
            let rest = l.strip_prefix(node)?.trim_start();
            let rest = rest.strip_prefix(check)?;
            if !rest.starts_with("  ") {
                return None;
            }
            let rest = rest.trim_start();
            let (state, detail) = match rest.split_once("  ") {
                Some((s, d)) => (s.trim(), d.trim()),
                None => (rest.trim(), ""),
            };
            Some((state.to_string(), detail.to_string()))
        })
    }

    fn state(&self, node: &str, check: &str) -> String {
        self.row(node, check)
            .map(|r| r.0)
            .unwrap_or_else(|| panic!("no row {node} {check} in:\n{}", self.out))
    }
}

fn status(kf: &Kf, extra: &[&str]) -> Run {
    let t = Instant::now();
    let out = Command::new(&kf.bin)
        .current_dir(&kf.dir)
        .args([
            "status",
            "-i",
            "inventory.toml",
            "--ssh-config",
            "ssh_config",
        ])
        .args(extra)
        .output()
        .expect("kubeforge status runs");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        secs: t.elapsed().as_secs_f64(),
    };
    eprintln!(
        "$ kubeforge status {} ({:.1} s)\n--- exit {}\n{}{}",
        extra.join(" "),
        run.secs,
        run.code,
        run.out,
        String::from_utf8_lossy(&out.stderr)
    );
    run
}

/// Runs status until it exits `code` (or panics after `timeout`).
fn status_until(kf: &Kf, code: i32, timeout: Duration) -> Run {
    let start = Instant::now();
    loop {
        let r = status(kf, &[]);
        if r.code == code {
            return r;
        }
        assert!(
            start.elapsed() < timeout,
            "status did not exit {code} within {} s",
            timeout.as_secs()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn status_of_healthy_stopped_kubelet_stopped_etcd_and_edited_file() {
    if !lab::available(TEST) {
        return;
    }
    let Some(b) = binaries() else { return };
    let nodes = [
        ("cp1", Ipv4Addr::new(10, 77, 0, 11)),
        ("lb1", Ipv4Addr::new(10, 77, 0, 31)),
        ("worker1", Ipv4Addr::new(10, 77, 0, 21)),
    ];
    let (lab, kf) = start(&b, &nodes, inventory);
    let out = kf.apply(&[]);
    assert!(out.status.success(), "apply failed");
    let mut timings = Vec::new();

    // 1. Healthy: exit 0, every unit active with its version, the node
    //    Ready, etcd with its leader, the VIP on lb1, no drift.
    let r = status(&kf, &[]);
    timings.push(("healthy", r.secs));
    assert_eq!(r.code, 0, "healthy cluster:\n{}", r.out);
    assert!(
        r.out
            .starts_with("cluster \"lab\": healthy (3 nodes, 0 problems"),
        "{}",
        r.out
    );
    for (node, unit) in [
        ("cp1", "etcd"),
        ("cp1", "kube-apiserver"),
        ("cp1", "kube-controller-manager"),
        ("cp1", "kube-scheduler"),
        ("cp1", "kubelet"),
        ("lb1", "nginx"),
        ("lb1", "keepalived"),
        ("worker1", "containerd"),
        ("worker1", "kubelet"),
        ("worker1", "kube-proxy"),
    ] {
        let (state, version) = r
            .row(node, unit)
            .unwrap_or_else(|| panic!("no row {node} {unit}"));
        assert_eq!(state, "active", "{node} {unit}");
        assert!(
            version
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit() || c == 'v'),
            "{node} {unit} version {version:?}"
        );
    }
    let (_, api_version) = r.row("cp1", "kube-apiserver").expect("apiserver row");
    assert!(
        api_version.starts_with(&format!("v{}", k8s_version())),
        "{api_version}"
    );
    assert_eq!(r.state("worker1", "node Ready"), "True");
    assert_eq!(r.state("cp1", "node Ready"), "True");
    assert_eq!(r.state("cp1", "etcd member"), "healthy");
    assert_eq!(r.state("cp1", "apiserver"), "ready");
    assert_eq!(r.state("lb1", "VIP"), "holds VIP");
    assert_eq!(r.state("cluster", "etcd"), "1/1 healthy");
    let (_, leader) = r.row("cluster", "etcd").expect("etcd row");
    assert!(leader.contains("leader cp1"), "{leader}");
    assert_eq!(r.state("cluster", "VIP"), "held by lb1");
    assert_eq!(r.state("cluster", "API via VIP"), "ready");
    assert_eq!(r.state("cluster", "API objects"), "in sync");
    assert_eq!(r.state("cluster", "newest backup"), "none");
    for n in ["cp1", "lb1", "worker1"] {
        assert_eq!(r.state(n, "host"), "reachable");
        assert_eq!(r.state(n, "drift"), "none", "{n}");
    }
    // The soonest certificate is a year away (the leaves kubeforge issued).
    for n in ["cp1", "worker1"] {
        let days: i64 = r
            .state(n, "certificates")
            .trim_end_matches(" days")
            .parse()
            .expect("days");
        assert!((360..=366).contains(&days), "{n}: {days}");
    }
    assert_eq!(r.state("lb1", "certificates"), "none read");
    // The same as JSON.
    let j = status(&kf, &["--output", "json"]);
    timings.push(("healthy, json", j.secs));
    assert_eq!(j.code, 0);
    let v: serde_json::Value = serde_json::from_str(&j.out).expect("status JSON");
    assert_eq!(v["verdict"], "healthy");
    assert_eq!(v["etcd"]["leader"], "cp1");
    assert_eq!(v["api"]["vip"]["holders"][0], "lb1");

    // 2. A stopped kubelet: degraded, exit 1, its row and the problem.
    lab.ssh_ok("worker1", "systemctl stop kubelet");
    let r = status(&kf, &[]);
    timings.push(("stopped kubelet", r.secs));
    assert_eq!(r.code, 1, "stopped kubelet:\n{}", r.out);
    assert!(r.out.starts_with("cluster \"lab\": degraded"), "{}", r.out);
    assert_eq!(r.state("worker1", "kubelet"), "inactive");
    assert!(
        r.out.contains("  degraded: worker1: kubelet is inactive"),
        "{}",
        r.out
    );
    assert_eq!(r.state("cp1", "kubelet"), "active");
    lab.ssh_ok("worker1", "systemctl start kubelet");
    status_until(&kf, 0, Duration::from_secs(120));

    // 3. The only etcd member stopped: failed, exit 2 (no quorum, and the
    //    apiserver is not ready without it).
    lab.ssh_ok("cp1", "systemctl stop etcd");
    let r = status(&kf, &[]);
    timings.push(("stopped etcd", r.secs));
    assert_eq!(r.code, 2, "stopped etcd:\n{}", r.out);
    assert!(r.out.starts_with("cluster \"lab\": failed"), "{}", r.out);
    assert_eq!(r.state("cp1", "etcd"), "inactive");
    assert_eq!(r.state("cp1", "etcd member"), "unhealthy");
    assert_eq!(r.state("cluster", "etcd"), "0/1 healthy");
    assert!(
        r.out
            .contains("  failed: etcd has lost quorum: 0 of 1 members healthy"),
        "{}",
        r.out
    );
    // Quick even with the API down: the API is not asked then.
    assert!(r.secs < 30.0, "status took {:.1} s", r.secs);
    lab.ssh_ok("cp1", "systemctl start etcd");
    status_until(&kf, 0, Duration::from_secs(180));

    // 4. A managed file edited on a node: drift, degraded, exit 1, the
    //    file named.
    lab.ssh_ok(
        "worker1",
        "echo '# edited by hand' >> /etc/kubernetes/kube-proxy-config.yaml",
    );
    let r = status(&kf, &[]);
    timings.push(("edited file", r.secs));
    assert_eq!(r.code, 1, "edited file:\n{}", r.out);
    let (state, detail) = r.row("worker1", "drift").expect("drift row");
    assert_eq!(state, "1 file");
    assert_eq!(detail, "/etc/kubernetes/kube-proxy-config.yaml");
    assert_eq!(r.state("cp1", "drift"), "none");
    assert!(
        r.out.contains(
            "  degraded: worker1: 1 file differs from what kubeforge renders (/etc/kubernetes/kube-proxy-config.yaml)"
        ),
        "{}",
        r.out
    );
    // apply puts it back; status is healthy again.
    let out = kf.apply(&[]);
    assert!(out.status.success(), "apply after the edit failed");
    let r = status_until(&kf, 0, Duration::from_secs(60));
    timings.push(("after apply", r.secs));

    eprintln!(
        "lab_status timings ({}): {}",
        if std::env::var_os("KUBEFORGE_K8S_BIN_DIR").is_some() {
            "real binaries"
        } else {
            "stand-ins"
        },
        timings
            .iter()
            .map(|(what, s)| format!("{what} {s:.1} s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
