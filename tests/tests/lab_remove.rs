//! Removing nodes with `kubeforge apply --prune` on an HA lab (cp1..cp3
//! with etcd, lb1 and lb2 with the VIP, worker1 and worker2):
//!
//! 1. a fresh apply writes every node's record; a re-apply says "No
//!    changes";
//! 2. worker2 leaves the inventory: `plan` names it and why, `apply`
//!    without --prune refuses and touches nothing; with --prune it is
//!    drained (with the real binaries: the pods of a Deployment are
//!    evicted and come back on worker1), its units stop, the files and
//!    binaries of its record are gone, its Node object is deleted and the
//!    other nodes lose its pod route; a re-apply says "No changes";
//! 3. cp3 (etcd and control plane) leaves: refused without --force (two
//!    members left), then removed with it: the etcd member list has two
//!    members, the nginx upstreams lose cp3, its Node is gone, its etcd
//!    data is moved aside; a re-apply says "No changes";
//! 4. cp3 comes back: `member add` through a healthy member, then its etcd
//!    starts joining the running cluster; three members, "No changes";
//! 5. `kubeforge reset --node worker1` shows its plan and does nothing
//!    without --yes; with it, worker1's units, files and data are gone.
//!
//! A probe through the VIP counts failed requests during both removals and
//! the addition (none expected).
//!
//! Its second test removes dead nodes (`--unreachable`) from a smaller lab
//! (cp1..cp3 with etcd, lb1, worker1 and worker2): worker2's power is cut;
//! apply --prune fails and names `--unreachable worker2`; `plan` shows the
//! node cordoned and forgotten, neither drained nor torn down; names that
//! are not being removed are refused; apply --prune --unreachable worker2
//! deletes its Node (with the real binaries its pods come back on
//! worker1), the others lose its hosts entry and pod route, and a
//! re-apply says "No changes". Then cp3's power is cut: refused without
//! --force (the member is lost already), removed with it (two members,
//! nginx without cp3, its Node gone), "No changes".
//!
//! The Kubernetes binaries are the stand-ins unless `KUBEFORGE_K8S_BIN_DIR`
//! names the real ones; etcd is Debian's.
#![allow(clippy::print_stderr)]

use crate::lab_apply::{
    admin_kubeconfig, binaries, curl_admin, k8s_version, kubectl, kubectl_ok, real_k8s, start, Kf,
    PAUSE_IMAGE,
};
use crate::lab_nodes::{bundle_with_images, BUSYBOX_IMAGE};
use crate::probe::Probe;
use kubeforge_tests::lab::{self, Lab};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

const TEST: &str = "lab_remove";

const NODES: [(&str, [u8; 4], &str); 7] = [
    ("cp1", [10, 77, 0, 11], r#"["etcd", "control-plane"]"#),
    ("cp2", [10, 77, 0, 12], r#"["etcd", "control-plane"]"#),
    ("cp3", [10, 77, 0, 13], r#"["etcd", "control-plane"]"#),
    ("lb1", [10, 77, 0, 31], r#"["lb"]"#),
    ("lb2", [10, 77, 0, 32], r#"["lb"]"#),
    ("worker1", [10, 77, 0, 21], r#"["worker"]"#),
    ("worker2", [10, 77, 0, 22], r#"["worker"]"#),
];

/// The inventory without the nodes `without`.
fn inventory(lab: &Lab, without: &[&str]) -> String {
    inventory_of(lab, &NODES, without)
}

/// The inventory of `nodes` without the nodes `without`.
fn inventory_of(lab: &Lab, nodes: &[(&str, [u8; 4], &str)], without: &[&str]) -> String {
    let mut s = format!(
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
"#,
        key = lab.key().display(),
        pause = PAUSE_IMAGE,
        version = k8s_version(),
    );
    for &(name, a, roles) in nodes {
        if without.contains(&name) {
            continue;
        }
        let pool = if name.starts_with("worker") {
            "labels = { \"lab/pool\" = \"web\" }\n"
        } else {
            ""
        };
        s.push_str(&format!(
            "\n[[nodes]]\nname = \"{name}\"\naddress = \"{}.{}.{}.{}\"\nroles = {roles}\n{pool}",
            a[0], a[1], a[2], a[3]
        ));
    }
    s
}

/// `kubeforge plan` online, whatever its exit status: (success, stdout and
/// stderr).
fn plan(kf: &Kf) -> (bool, String) {
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
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("$ kubeforge plan\n{text}");
    (out.status.success(), text)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// HTTP status of a GET through the VIP with the admin certificate.
fn api_code(kf: &Kf, path: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            "--cacert",
        ])
        .arg(kf.pki("ca.crt"))
        .arg("--cert")
        .arg(kf.pki("admin.crt"))
        .arg("--key")
        .arg(kf.pki("admin.key"))
        .arg(format!("https://10.77.0.100:8443{path}"))
        .output()
        .expect("curl runs");
    stdout(&out)
}

/// The etcd member names, through cp1.
pub(crate) fn etcd_members(kf: &Kf, etcdctl: &Path) -> Vec<String> {
    let mut names: Vec<String> = etcd(kf, etcdctl, CP1, &["member", "list", "-w", "simple"])
        .lines()
        .filter_map(|l| l.split(", ").nth(2).map(str::to_string))
        .collect();
    names.sort();
    names
}

const CP1: &str = "https://10.77.0.11:2379";
const CPS: &str = "https://10.77.0.11:2379,https://10.77.0.12:2379,https://10.77.0.13:2379";

/// `etcdctl ARGS` against the etcd `endpoints`, with the health-check
/// client certificate: its output (it must succeed).
fn etcd(kf: &Kf, etcdctl: &Path, endpoints: &str, args: &[&str]) -> String {
    let out = Command::new(etcdctl)
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=3s", "--command-timeout=20s"])
        .arg(format!("--cacert={}", kf.pki("etcd/ca.crt").display()))
        .arg(format!(
            "--cert={}",
            kf.pki("etcd-healthcheck-client.crt").display()
        ))
        .arg(format!(
            "--key={}",
            kf.pki("etcd-healthcheck-client.key").display()
        ))
        .args(args)
        .output()
        .expect("etcdctl runs");
    assert!(out.status.success(), "etcdctl {args:?}: {}", stderr(&out));
    stdout(&out)
}

/// Makes etcd member `name` the leader (`etcdctl move-leader`, asked of
/// the endpoints, the leader among them).
fn make_leader(kf: &Kf, etcdctl: &Path, name: &str) {
    let list = etcd(kf, etcdctl, CPS, &["member", "list", "-w", "simple"]);
    let id = list
        .lines()
        .find(|l| l.split(", ").nth(2) == Some(name))
        .and_then(|l| l.split(", ").next())
        .unwrap_or_else(|| panic!("{name} is not in the member list:\n{list}"))
        .to_string();
    let status = etcd(kf, etcdctl, CPS, &["endpoint", "status", "-w", "json"]);
    if !status.contains(&format!(
        "\"leader\":{}",
        u64::from_str_radix(&id, 16).expect("a hex ID")
    )) {
        etcd(kf, etcdctl, CPS, &["move-leader", &id]);
    }
    let status = etcd(kf, etcdctl, CPS, &["endpoint", "status", "-w", "table"]);
    eprintln!("{TEST}: etcd leader is {name} ({id}):\n{status}");
}

/// What kubeforge placed on `node` that is still there (of a few files
/// every node of its kind gets), and its units that are active or enabled.
fn left_on(lab: &Lab, node: &str) -> String {
    lab.ssh_ok(
        node,
        "for f in /var/lib/kubeforge/manifest.json /etc/kubernetes/kubelet.conf \
           /etc/systemd/system/kubelet.service /usr/local/bin/kubelet /usr/local/bin/kube-proxy \
           /etc/kubernetes/pki/ca.crt; do [ -e $f ] && echo \"file $f\"; done; \
         for u in kubelet kube-proxy containerd etcd kube-apiserver; do \
           systemctl is-active -q $u && echo \"active $u\"; \
           systemctl is-enabled -q $u 2>/dev/null && echo \"enabled $u\"; done; true",
    )
}

fn no_changes(kf: &Kf) {
    let out = kf.apply(&[]);
    assert!(out.status.success(), "re-apply failed");
    assert!(
        stdout(&out).contains("No changes"),
        "the re-apply changed something:\n{}",
        stdout(&out)
    );
}

/// A Deployment of four pods spread over the web pool (worker1, worker2).
fn web() -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 4
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      nodeSelector: {{lab/pool: web}}
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels: {{app: web}}
      terminationGracePeriodSeconds: 2
      containers:
        - name: web
          image: {BUSYBOX_IMAGE}
          imagePullPolicy: Never
          command: ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
"#
    )
}

#[test]
fn remove_a_worker_then_an_etcd_control_plane_node() {
    if !lab::available(TEST) {
        return;
    }
    let Some(b) = binaries() else { return };
    let etcdctl = b.etcd_dir.join("etcdctl");
    let nodes: Vec<(&str, Ipv4Addr)> = NODES
        .iter()
        .map(|(n, a, _)| (*n, Ipv4Addr::from(*a)))
        .collect();
    let (lab, mut kf) = start(&b, &nodes, |lab| inventory(lab, &[]));
    let real = real_k8s();
    if real {
        kf.bundle = bundle_with_images(&kf);
    }
    eprintln!(
        "{TEST}: Kubernetes v{}, real binaries: {real}",
        k8s_version()
    );
    let write_inventory = |without: &[&str]| {
        std::fs::write(kf.dir.join("inventory.toml"), inventory(&lab, without)).expect("inventory");
    };

    // 1. Every node gets its record; the state directory keeps them.
    let t = Instant::now();
    let out = kf.apply(&[]);
    assert!(out.status.success(), "fresh apply failed");
    eprintln!("{TEST}: fresh apply {:.1} s", t.elapsed().as_secs_f64());
    for (n, _, _) in NODES {
        let record = lab.ssh_ok(n, "cat /var/lib/kubeforge/manifest.json");
        assert!(record.contains(&format!("\"node\": \"{n}\"")), "{record}");
        assert!(kf
            .dir
            .join(format!(".kubeforge/lab/nodes/{n}.json"))
            .exists());
    }
    let t = Instant::now();
    no_changes(&kf);
    eprintln!("{TEST}: no-op re-apply {:.1} s", t.elapsed().as_secs_f64());

    let kc = admin_kubeconfig(&kf);
    let k = kubectl();
    if real {
        let Some(k) = &k else {
            panic!("kubectl not found (tests/setup.sh unpacks Debian's)");
        };
        deploy_web(&kf, k, &kc);
        let on = web_nodes(k, &kc);
        eprintln!("{TEST}: web pods on {on}");
        assert!(on.contains("worker2"), "no pod on worker2: {on}");
    }

    // 2. worker2 leaves the inventory.
    write_inventory(&["worker2"]);
    let (ok, text) = plan(&kf);
    assert!(ok, "plan failed");
    assert!(
        text.contains("worker2 (10.77.0.22): remove from the cluster (worker)"),
        "{text}"
    );
    assert!(text.contains("the inventory no longer names it"), "{text}");
    assert!(text.contains("refuses to run until these nodes are removed with --prune"));
    let out = kf.apply(&[]);
    assert!(!out.status.success(), "apply without --prune ran");
    assert!(stderr(&out).contains("--prune"), "{}", stderr(&out));
    assert!(left_on(&lab, "worker2").contains("active kubelet"));

    let probe = Probe::admin(&kf, &kf.dir.join("probe"));
    let t = Instant::now();
    let out = kf.apply(&["--prune", "--drain-timeout", "120"]);
    let took = t.elapsed();
    let probed = probe.finish();
    let (ok, failed, failures) = (probed.ok, probed.failed(), probed.failures);
    assert!(out.status.success(), "apply --prune failed");
    eprintln!(
        "{TEST}: worker2 removed in {:.1} s; probe through the VIP: {ok} ok, {failed} failed",
        took.as_secs_f64()
    );
    let left = left_on(&lab, "worker2");
    assert_eq!(left.trim(), "", "left on worker2:\n{left}");
    assert_eq!(api_code(&kf, "/api/v1/nodes/worker2"), "404");
    assert!(!kf.dir.join(".kubeforge/lab/nodes/worker2.json").exists());
    for n in ["cp1", "worker1"] {
        let routes = lab.ssh_ok(n, "ip route show root 10.244.0.0/16");
        assert!(!routes.contains("10.77.0.22"), "{n}: {routes}");
        let hosts = lab.ssh_ok(n, "cat /etc/hosts");
        assert!(!hosts.contains("worker2"), "{n}: {hosts}");
    }
    if let (true, Some(k)) = (real, &k) {
        kubectl_ok(
            k,
            &kc,
            &["rollout", "status", "deployment/web", "--timeout=120s"],
        );
        let on = web_nodes(k, &kc);
        eprintln!("{TEST}: web pods after the drain on {on}");
        assert!(!on.contains("worker2"), "{on}");
    }
    assert_eq!(failed, 0, "failed probes: {failures:?}");
    assert!(ok > 5, "the probe ran");
    no_changes(&kf);

    // 3. cp3 (etcd and control plane) leaves: two members would be left.
    write_inventory(&["worker2", "cp3"]);
    let (_, text) = plan(&kf);
    assert!(text.contains("leaves 2 etcd members"), "{text}");
    let out = kf.apply(&["--prune"]);
    assert!(!out.status.success(), "an even member count was accepted");
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(etcd_members(&kf, &etcdctl), ["cp1", "cp2", "cp3"]);

    // It leads etcd: the removal hands its leadership over first (a
    // removed leader leaves the others without one until an election, and
    // the API servers' etcd readiness checks fail meanwhile).
    make_leader(&kf, &etcdctl, "cp3");
    let probe = Probe::admin(&kf, &kf.dir.join("probe"));
    let t = Instant::now();
    let out = kf.apply(&["--prune", "--force"]);
    let took = t.elapsed();
    let probed = probe.finish();
    let (ok, failed, failures) = (probed.ok, probed.failed(), probed.failures);
    assert!(out.status.success(), "apply --prune --force failed");
    eprintln!(
        "{TEST}: cp3 removed in {:.1} s; probe through the VIP: {ok} ok, {failed} failed",
        took.as_secs_f64()
    );
    assert!(
        stderr(&out).contains("etcd leadership moves from cp3 to"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("did not move"), "{}", stderr(&out));
    assert_eq!(etcd_members(&kf, &etcdctl), ["cp1", "cp2"]);
    let left = left_on(&lab, "cp3");
    assert_eq!(left.trim(), "", "left on cp3:\n{left}");
    assert_eq!(api_code(&kf, "/api/v1/nodes/cp3"), "404");
    for lb in ["lb1", "lb2"] {
        let conf = lab.ssh_ok(lb, "cat /etc/nginx/nginx.conf");
        assert!(!conf.contains("10.77.0.13"), "{lb}: {conf}");
    }
    let r = curl_admin(&kf, "https://10.77.0.100:8443/readyz");
    assert_eq!(stdout(&r), "ok");
    assert_eq!(failed, 0, "failed probes: {failures:?}");
    assert!(ok > 5, "the probe ran");
    no_changes(&kf);
    // Its etcd data was moved aside.
    let aside = lab.ssh_ok("cp3", "ls -d /var/lib/etcd.removed-* 2>/dev/null; true");
    assert!(aside.contains("/var/lib/etcd.removed-"), "{aside}");

    // 4. cp3 comes back: added to the running etcd cluster first, then
    //    started to join it.
    write_inventory(&["worker2"]);
    let (ok, text) = plan(&kf);
    assert!(ok, "plan failed");
    assert!(text.contains("etcd member add cp3"), "{text}");
    let probe = Probe::admin(&kf, &kf.dir.join("probe"));
    let t = Instant::now();
    let out = kf.apply(&[]);
    let took = t.elapsed();
    let probed = probe.finish();
    let (ok, failed, failures) = (probed.ok, probed.failed(), probed.failures);
    assert!(out.status.success(), "adding cp3 back failed");
    eprintln!(
        "{TEST}: cp3 added back in {:.1} s; probe through the VIP: {ok} ok, {failed} failed",
        took.as_secs_f64()
    );
    assert_eq!(etcd_members(&kf, &etcdctl), ["cp1", "cp2", "cp3"]);
    assert_eq!(failed, 0, "failed probes: {failures:?}");
    no_changes(&kf);

    // 5. `kubeforge reset` of worker1: the plan alone without --yes, then
    //    its units, files and data gone.
    let reset = |extra: &[&str]| {
        let out = Command::new(&kf.bin)
            .current_dir(&kf.dir)
            .args([
                "reset",
                "-i",
                "inventory.toml",
                "--ssh-config",
                "ssh_config",
                "--node",
                "worker1",
            ])
            .args(extra)
            .output()
            .expect("kubeforge reset runs");
        eprintln!(
            "$ kubeforge reset --node worker1 {}\n--- exit {:?}\n{}{}",
            extra.join(" "),
            out.status.code(),
            stdout(&out),
            stderr(&out)
        );
        out
    };
    let out = reset(&[]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("Nothing done"), "{}", stdout(&out));
    assert!(left_on(&lab, "worker1").contains("active kubelet"));
    let out = reset(&["--yes"]);
    assert!(out.status.success(), "reset failed");
    let left = left_on(&lab, "worker1");
    assert_eq!(left.trim(), "", "left on worker1:\n{left}");
    let data = lab.ssh_ok(
        "worker1",
        "find /var/lib/kubelet /var/lib/kubeforge -mindepth 1 2>/dev/null | head; true",
    );
    assert_eq!(data.trim(), "", "data left on worker1:\n{data}");
}

/// The lab of [`remove_dead_nodes_without_contacting_them`].
const DEAD: [(&str, [u8; 4], &str); 6] = [
    ("cp1", [10, 77, 0, 11], r#"["etcd", "control-plane"]"#),
    ("cp2", [10, 77, 0, 12], r#"["etcd", "control-plane"]"#),
    ("cp3", [10, 77, 0, 13], r#"["etcd", "control-plane"]"#),
    ("lb1", [10, 77, 0, 31], r#"["lb"]"#),
    ("worker1", [10, 77, 0, 21], r#"["worker"]"#),
    ("worker2", [10, 77, 0, 22], r#"["worker"]"#),
];

/// `node` name and phase of every web pod, one per line.
/// The nodes of the web pods, space-separated.
fn web_nodes(k: &Path, kc: &Path) -> String {
    kubectl_ok(
        k,
        kc,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].spec.nodeName}",
        ],
    )
}

fn web_pods(k: &Path, kc: &Path) -> String {
    kubectl_ok(
        k,
        kc,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName} {.status.phase}{\"\\n\"}{end}",
        ],
    )
}

#[test]
fn remove_dead_nodes_without_contacting_them() {
    const TEST: &str = "lab_remove (dead nodes)";
    if !lab::available(TEST) {
        return;
    }
    let Some(b) = binaries() else { return };
    let etcdctl = b.etcd_dir.join("etcdctl");
    let nodes: Vec<(&str, Ipv4Addr)> = DEAD
        .iter()
        .map(|(n, a, _)| (*n, Ipv4Addr::from(*a)))
        .collect();
    let (mut lab, mut kf) = start(&b, &nodes, |lab| inventory_of(lab, &DEAD, &[]));
    let real = real_k8s();
    if real {
        kf.bundle = bundle_with_images(&kf);
    }
    eprintln!(
        "{TEST}: Kubernetes v{}, real binaries: {real}",
        k8s_version()
    );
    let write_inventory = |lab: &Lab, without: &[&str]| {
        std::fs::write(
            kf.dir.join("inventory.toml"),
            inventory_of(lab, &DEAD, without),
        )
        .expect("inventory");
    };
    let bundle = kf.bundle.display().to_string();

    let t = Instant::now();
    let out = kf.apply(&[]);
    assert!(out.status.success(), "fresh apply failed");
    eprintln!("{TEST}: fresh apply {:.1} s", t.elapsed().as_secs_f64());
    no_changes(&kf);
    let kc = admin_kubeconfig(&kf);
    let k = kubectl();
    if real {
        let Some(k) = &k else {
            panic!("kubectl not found (tests/setup.sh unpacks Debian's)");
        };
        deploy_web(&kf, k, &kc);
        let on = web_pods(k, &kc);
        eprintln!("{TEST}: web pods on\n{on}");
        assert!(on.contains("worker2"), "no pod on worker2: {on}");
    }

    // 1. worker2 dies and leaves the inventory.
    lab.power_off("worker2");
    write_inventory(&lab, &["worker2"]);
    let out = kf.apply(&["--prune"]);
    assert!(!out.status.success(), "apply reached a dead node");
    let err = stderr(&out);
    assert!(err.contains("cannot reach every node"), "{err}");
    assert!(
        err.contains("`kubeforge apply --prune --unreachable worker2`"),
        "{err}"
    );
    assert_eq!(api_code(&kf, "/api/v1/nodes/worker2"), "200");
    assert!(lab.ssh_ok("cp1", "cat /etc/hosts").contains("worker2"));

    // Names that are not being removed are refused before anything is
    // contacted.
    for (name, says) in [
        ("cp1", "the inventory names cp1"),
        ("worker9", "no record of worker9"),
    ] {
        let out = kf.run(
            &["apply"],
            &["--prune", "--unreachable", name, "--bundle", &bundle],
        );
        assert!(!out.status.success(), "--unreachable {name} accepted");
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
    }
    let out = kf.run(
        &["plan"],
        &["--prune", "--unreachable", "worker2", "--bundle", &bundle],
    );
    assert!(out.status.success(), "plan failed");
    let text = stdout(&out);
    assert!(
        text.contains("unreachable: not drained, not torn down; its Node object is removed"),
        "{text}"
    );
    assert!(text.contains("cordon worker2, no evictions"), "{text}");

    let probe = Probe::admin(&kf, &kf.dir.join("probe"));
    let t = Instant::now();
    let out = kf.apply(&["--prune", "--unreachable", "worker2"]);
    let took = t.elapsed();
    let probed = probe.finish();
    assert!(out.status.success(), "apply --prune --unreachable failed");
    eprintln!(
        "{TEST}: dead worker2 removed in {:.1} s; probe through the VIP: {} ok, {} failed",
        took.as_secs_f64(),
        probed.ok,
        probed.failed()
    );
    assert!(
        stdout(&out).contains("1 node to remove"),
        "{}",
        stdout(&out)
    );
    assert_eq!(api_code(&kf, "/api/v1/nodes/worker2"), "404");
    assert!(!kf.dir.join(".kubeforge/lab/nodes/worker2.json").exists());
    for n in ["cp1", "cp3", "lb1", "worker1"] {
        let hosts = lab.ssh_ok(n, "cat /etc/hosts");
        assert!(!hosts.contains("worker2"), "{n}: {hosts}");
    }
    for n in ["cp1", "worker1"] {
        let routes = lab.ssh_ok(n, "ip route show root 10.244.0.0/16");
        assert!(!routes.contains("10.77.0.22"), "{n}: {routes}");
    }
    assert_eq!(probed.failed(), 0, "failed probes: {:?}", probed.failures);
    if let (true, Some(k)) = (real, &k) {
        // The cluster garbage-collects the pods of a Node that is gone;
        // their ReplicaSet starts them again on worker1.
        let t = Instant::now();
        let mut on = web_pods(k, &kc);
        while (on.contains("worker2") || on.matches("worker1 Running").count() < 4)
            && t.elapsed() < std::time::Duration::from_secs(300)
        {
            std::thread::sleep(std::time::Duration::from_secs(2));
            on = web_pods(k, &kc);
        }
        eprintln!(
            "{TEST}: web pods {:.0} s after the removal:\n{on}",
            t.elapsed().as_secs_f64()
        );
        assert!(!on.contains("worker2"), "{on}");
        assert_eq!(on.matches("worker1 Running").count(), 4, "{on}");
    }
    no_changes(&kf);

    // 2. cp3 (etcd, control plane) dies and leaves the inventory: its
    //    member is lost already, removing it leaves two.
    lab.power_off("cp3");
    write_inventory(&lab, &["worker2", "cp3"]);
    let out = kf.apply(&["--prune", "--unreachable", "cp3"]);
    assert!(!out.status.success(), "an even member count was accepted");
    let err = stderr(&out);
    assert!(err.contains("its member is lost already"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(etcd_members(&kf, &etcdctl), ["cp1", "cp2", "cp3"]);

    let probe = Probe::admin(&kf, &kf.dir.join("probe"));
    let t = Instant::now();
    let out = kf.apply(&["--prune", "--unreachable", "cp3", "--force"]);
    let took = t.elapsed();
    let probed = probe.finish();
    assert!(
        out.status.success(),
        "apply --prune --unreachable cp3 failed"
    );
    eprintln!(
        "{TEST}: dead cp3 removed in {:.1} s; probe through the VIP: {} ok, {} failed",
        took.as_secs_f64(),
        probed.ok,
        probed.failed()
    );
    assert_eq!(etcd_members(&kf, &etcdctl), ["cp1", "cp2"]);
    assert_eq!(api_code(&kf, "/api/v1/nodes/cp3"), "404");
    let conf = lab.ssh_ok("lb1", "cat /etc/nginx/nginx.conf");
    assert!(!conf.contains("10.77.0.13"), "lb1: {conf}");
    for n in ["cp1", "cp2", "lb1", "worker1"] {
        let hosts = lab.ssh_ok(n, "cat /etc/hosts");
        assert!(!hosts.contains("cp3"), "{n}: {hosts}");
    }
    let r = curl_admin(&kf, "https://10.77.0.100:8443/readyz");
    assert_eq!(stdout(&r), "ok");
    assert!(!kf.dir.join(".kubeforge/lab/nodes/cp3.json").exists());
    assert_eq!(probed.failed(), 0, "failed probes: {:?}", probed.failures);
    no_changes(&kf);
}

/// The web Deployment applied and rolled out.
fn deploy_web(kf: &Kf, k: &Path, kc: &Path) {
    let path = kf.dir.join("web.yaml");
    std::fs::write(&path, web()).expect("web.yaml");
    kubectl_ok(k, kc, &["apply", "-f", &path.display().to_string()]);
    kubectl_ok(
        k,
        kc,
        &["rollout", "status", "deployment/web", "--timeout=120s"],
    );
}
