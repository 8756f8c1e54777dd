//! `kubeforge apply` on lab nodes (real systemd, sshd, etcd, nginx,
//! keepalived): the HA control plane behind a keepalived VIP, idempotent
//! re-runs, a rolling change with no failed request through the VIP, VIP
//! failover and an etcd member brought back by apply.
//!
//! kube-apiserver, kube-controller-manager and kube-scheduler are the
//! kubeforge stand-ins (`tests/standin`) unless `KUBEFORGE_K8S_BIN_DIR`
//! names a directory with the real binaries; etcd is Debian's
//! (`KUBEFORGE_ETCD_DIR`).
#![allow(clippy::print_stderr)]

use kubeforge_tests::find_tool;
use kubeforge_tests::lab::{self, Lab};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub(crate) const TEST: &str = "lab_apply";
const CONTROL_PLANE_BINARIES: [&str; 3] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];
/// Units whose restart counters and start times the HA test compares.
const CLOCK_UNITS: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "nginx",
    "keepalived",
];
const UNITS: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "keepalived",
];

/// A binary of this workspace, built next to this test binary.
pub(crate) fn workspace_bin(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?;
    let p = dir.join(name);
    p.exists().then_some(p)
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The control-plane part of a bundle: Debian's etcd and the control-plane
/// binaries (stand-ins or real).
pub(crate) fn control_plane_files(
    etcd_dir: &Path,
    k8s: Option<&Path>,
    standin: &Path,
) -> Vec<(String, PathBuf)> {
    let mut files = vec![
        ("etcd".to_string(), etcd_dir.join("etcd")),
        ("etcdctl".to_string(), etcd_dir.join("etcdctl")),
    ];
    for b in CONTROL_PLANE_BINARIES {
        files.push((
            b.to_string(),
            match k8s {
                Some(d) => d.join(b),
                None => standin.to_path_buf(),
            },
        ));
    }
    files
}

/// Writes a bundle directory: the files under their names, and SHA256SUMS.
pub(crate) fn write_bundle(dir: &Path, files: &[(String, PathBuf)]) {
    std::fs::create_dir_all(dir).expect("bundle dir");
    let mut sums = String::new();
    for (name, from) in files {
        let to = dir.join(name);
        std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        sums.push_str(&format!("{}  {name}\n", sha256(&to)));
    }
    std::fs::write(dir.join("SHA256SUMS"), sums).expect("SHA256SUMS");
}

/// Every binary a cluster needs: etcd, the Kubernetes binaries (stand-ins
/// or real), Debian's containerd, runc and CNI plugins.
pub(crate) fn bundle_files(b: &Binaries) -> Vec<(String, PathBuf)> {
    let mut files = control_plane_files(&b.etcd_dir, b.k8s_dir.as_deref(), &b.standin);
    for name in ["kubelet", "kube-proxy"] {
        files.push((
            name.to_string(),
            match &b.k8s_dir {
                Some(d) => d.join(name),
                None => b.standin.clone(),
            },
        ));
    }
    for (name, rel) in [
        ("containerd", "usr/bin/containerd"),
        ("containerd-shim-runc-v2", "usr/bin/containerd-shim-runc-v2"),
        ("ctr", "usr/bin/ctr"),
        ("runc", "usr/sbin/runc"),
        ("bridge", "usr/lib/cni/bridge"),
        ("host-local", "usr/lib/cni/host-local"),
        ("portmap", "usr/lib/cni/portmap"),
        ("loopback", "usr/lib/cni/loopback"),
    ] {
        files.push((name.to_string(), b.node_dir.join(rel)));
    }
    files
}

pub(crate) struct Kf {
    pub(crate) bin: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) bundle: PathBuf,
}

impl Kf {
    /// `kubeforge apply`, every phase.
    pub(crate) fn apply(&self, extra: &[&str]) -> Output {
        self.apply_phases(&[], extra)
    }

    pub(crate) fn apply_phases(&self, phases: &[&str], extra: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(&self.dir)
            .args(["apply", "-i", "inventory.toml", "--bundle"])
            .arg(&self.bundle)
            .args(["--ssh-config", "ssh_config", "--gate-timeout", "90"])
            .args(phases)
            .args(extra);
        let out = cmd.output().expect("kubeforge runs");
        eprintln!(
            "$ kubeforge apply {}\n--- exit {:?}\n--- stdout\n{}--- stderr\n{}",
            extra.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `kubeforge plan` online; its text (the run must succeed).
    pub(crate) fn plan(&self) -> String {
        let out = Command::new(&self.bin)
            .current_dir(&self.dir)
            .args([
                "plan",
                "-i",
                "inventory.toml",
                "--ssh-config",
                "ssh_config",
                "--bundle",
            ])
            .arg(&self.bundle)
            .output()
            .expect("plan runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("$ kubeforge plan\n{text}{stderr}");
        assert!(out.status.success(), "plan failed: {text}{stderr}");
        text
    }

    /// `kubeforge COMMAND ARGS... -i inventory.toml --ssh-config
    /// ssh_config` in the control directory, printed with its output.
    pub(crate) fn run(&self, command: &[&str], args: &[&str]) -> Output {
        let out = Command::new(&self.bin)
            .current_dir(&self.dir)
            .args(command)
            .args(args)
            .args(["-i", "inventory.toml", "--ssh-config", "ssh_config"])
            .output()
            .expect("kubeforge runs");
        eprintln!(
            "$ kubeforge {} {}\n--- exit {:?}\n--- stdout\n{}--- stderr\n{}",
            command.join(" "),
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub(crate) fn pki(&self, rel: &str) -> PathBuf {
        self.dir.join(".kubeforge/lab/pki").join(rel)
    }
}

/// `NRestarts` and the start time of every watched unit on every node.
pub(crate) fn unit_clock(lab: &Lab, nodes: &[&str], units: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for n in nodes {
        let s = lab.ssh_ok(
            n,
            &format!(
                "for u in {}; do \
                   systemctl show -p Id,NRestarts,ActiveEnterTimestampMonotonic,ActiveState $u | tr '\\n' ' '; echo; done",
                units.join(" ")
            ),
        );
        for line in s.lines() {
            out.push(format!("{n}: {line}"));
        }
    }
    out
}

/// `curl` GET of `url` with the cluster CA and the admin certificate.
pub(crate) fn curl_admin(kf: &Kf, url: &str) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "3", "--cacert"])
        .arg(kf.pki("ca.crt"))
        .arg("--cert")
        .arg(kf.pki("admin.crt"))
        .arg("--key")
        .arg(kf.pki("admin.key"))
        .arg(url)
        .output()
        .expect("curl runs")
}

fn etcd_health(kf: &Kf, etcdctl: &Path) -> Output {
    Command::new(etcdctl)
        .args([
            "--endpoints=https://10.77.0.11:2379",
            "--dial-timeout=3s",
            "--command-timeout=5s",
        ])
        .arg(format!("--cacert={}", kf.pki("etcd/ca.crt").display()))
        .arg(format!(
            "--cert={}",
            kf.pki("etcd-healthcheck-client.crt").display()
        ))
        .arg(format!(
            "--key={}",
            kf.pki("etcd-healthcheck-client.key").display()
        ))
        .args(["endpoint", "health", "--cluster"])
        .output()
        .expect("etcdctl runs")
}

/// The sandbox image of the small inventory: built by the lab tests
/// (`kubeforge_tests::oci`) and imported from the bundle, as no registry is
/// reachable from the lab.
pub(crate) const PAUSE_IMAGE: &str = "lab.local/pause:3.10";

/// An inventory text with `kubelet_join` set in its [cluster] table.
pub(crate) fn with_kubelet_join(inventory: String, join: &str) -> String {
    inventory.replacen(
        "[cluster]\n",
        &format!("[cluster]\nkubelet_join = \"{join}\"\n"),
        1,
    )
}

/// One control-plane + etcd node (cp1) and the given workers, no LB.
pub(crate) fn small_inventory(lab: &Lab, workers: &[&str]) -> String {
    let mut s = format!(
        r#"[cluster]
name = "lab"
kubernetes_version = "{version}"
node_cidr = "10.77.0.0/24"
node_profile = "container"
# No image registry is reachable from the lab: CoreDNS could not run.
coredns = false
sandbox_image = "{pause}"

[ssh]
key = "{key}"
accept_new_host_keys = true

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]
"#,
        key = lab.key().display(),
        pause = PAUSE_IMAGE,
        version = k8s_version(),
    );
    for w in workers {
        s.push_str(&format!(
            "\n[[nodes]]\nname = \"{w}\"\naddress = \"{}\"\nroles = [\"worker\"]\n",
            lab.node_address(w)
        ));
    }
    s
}

pub(crate) fn inventory(lab: &Lab, extra_san: Option<&str>) -> String {
    let sans = match extra_san {
        Some(s) => format!("[\"{s}\"]"),
        None => "[]".into(),
    };
    format!(
        r#"[cluster]
name = "lab"
kubernetes_version = "{version}"
node_cidr = "10.77.0.0/24"
node_profile = "container"
# No image registry is reachable from the lab: CoreDNS could not run.
coredns = false

[pki]
extra_apiserver_sans = {sans}

[loadbalancer]
vip = "10.77.0.100/24"
port = 8443
interface = "eth0"

[ssh]
user = "root"
key = "{key}"
accept_new_host_keys = true

[[nodes]]
name = "cp1"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "cp2"
address = "10.77.0.12"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "cp3"
address = "10.77.0.13"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "lb1"
address = "10.77.0.31"
roles = ["lb"]

[[nodes]]
name = "lb2"
address = "10.77.0.32"
roles = ["lb"]

[[nodes]]
name = "worker1"
address = "10.77.0.21"
roles = ["worker"]
"#,
        key = lab.key().display(),
        version = k8s_version(),
    )
}

/// The Kubernetes version the lab inventories name: that of the real
/// binaries in `KUBEFORGE_K8S_BIN_DIR` (`kube-apiserver --version`), else
/// the version the stand-ins' flag lists come from.
pub(crate) fn k8s_version() -> String {
    let standin = "1.31.4".to_string();
    let Some(dir) = std::env::var_os("KUBEFORGE_K8S_BIN_DIR") else {
        return standin;
    };
    let out = Command::new(Path::new(&dir).join("kube-apiserver"))
        .arg("--version")
        .output()
        .expect("kube-apiserver --version runs");
    let text = String::from_utf8_lossy(&out.stdout);
    // "Kubernetes v1.31.4"; the stand-in says something else.
    text.trim()
        .strip_prefix("Kubernetes v")
        .map(|v| v.split(['-', '+']).next().unwrap_or(v).to_string())
        .unwrap_or(standin)
}

/// True when `KUBEFORGE_K8S_BIN_DIR` holds the real binaries.
pub(crate) fn real_k8s() -> bool {
    std::env::var_os("KUBEFORGE_K8S_BIN_DIR").is_some_and(|dir| {
        Command::new(Path::new(&dir).join("kube-apiserver"))
            .arg("--version")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("Kubernetes v"))
    })
}

/// Debian's kubectl that tests/setup.sh unpacks, else one on PATH.
pub(crate) fn kubectl() -> Option<PathBuf> {
    let unpacked = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-tools/kubectl/usr/bin/kubectl");
    if unpacked.exists() {
        return Some(unpacked);
    }
    find_tool("kubectl", None)
}

/// Writes the admin kubeconfig with `kubeforge kubeconfig` and returns it.
pub(crate) fn admin_kubeconfig(kf: &Kf) -> PathBuf {
    let path = kf.dir.join("admin.conf");
    let out = Command::new(&kf.bin)
        .current_dir(&kf.dir)
        .args(["kubeconfig", "-i", "inventory.toml", "--out"])
        .arg(&path)
        .output()
        .expect("kubeforge kubeconfig runs");
    assert!(
        out.status.success(),
        "kubeforge kubeconfig: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// Runs kubectl with the admin kubeconfig; returns stdout, panics with
/// stderr on failure.
pub(crate) fn kubectl_ok(kubectl: &Path, kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kubectl {}: {stdout}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `(A, B)` of the "(A of B sums cached)" of an apply's timing line.
pub(crate) fn sums_cached(stdout: &str) -> (usize, usize) {
    let part = stdout
        .split(" sums cached)")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .unwrap_or_default();
    let mut n = part.split(" of ").map(|x| x.trim().parse::<usize>());
    match (n.next(), n.next()) {
        (Some(Ok(a)), Some(Ok(b))) => (a, b),
        _ => panic!("no \"(A of B sums cached)\" in:\n{stdout}"),
    }
}

fn vip_holders(lab: &Lab) -> Vec<String> {
    ["lb1", "lb2"]
        .into_iter()
        .filter(|n| {
            let o = lab.ssh(n, "ip -o -4 addr show dev eth0");
            String::from_utf8_lossy(&o.stdout).contains(" 10.77.0.100/")
        })
        .map(str::to_string)
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// What the lab tests need besides the lab: etcd, the binaries under test.
pub(crate) struct Binaries {
    pub(crate) etcd_dir: PathBuf,
    pub(crate) kubeforge: PathBuf,
    pub(crate) standin: PathBuf,
    pub(crate) k8s_dir: Option<PathBuf>,
    /// Debian's containerd, runc and CNI plugins, unpacked by tests/setup.sh.
    pub(crate) node_dir: PathBuf,
}

/// The binaries, or `None` after reporting what is missing (a failure
/// under CI).
pub(crate) fn binaries() -> Option<Binaries> {
    let missing = |what: &str| {
        kubeforge_tests::skip(TEST, what);
        None
    };
    let Some(etcd_dir) = find_tool("etcd", Some("KUBEFORGE_ETCD_DIR"))
        .and_then(|p| p.parent().map(Path::to_path_buf))
    else {
        return missing("etcd not found (tests/setup.sh unpacks Debian's; set KUBEFORGE_ETCD_DIR)");
    };
    let Some(kubeforge) = workspace_bin("kubeforge") else {
        return missing("the kubeforge binary is not built (cargo test --workspace builds it)");
    };
    let Some(standin) = workspace_bin("kubeforge-standin") else {
        return missing("the stand-ins are not built (cargo test --workspace builds them)");
    };
    if find_tool("curl", None).is_none() {
        return missing("curl not found");
    }
    let node_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools/node");
    if !node_dir.join("usr/bin/containerd").exists() {
        return missing(
            "containerd, runc and the CNI plugins are not unpacked (run tests/setup.sh)",
        );
    }
    let k8s_dir = std::env::var_os("KUBEFORGE_K8S_BIN_DIR").map(PathBuf::from);
    if k8s_dir.is_some() {
        assert_room_for_real_kubelets();
    }
    Some(Binaries {
        etcd_dir,
        kubeforge,
        standin,
        k8s_dir,
        node_dir,
    })
}

/// The lab nodes' file systems are the host's: a real kubelet counts the
/// host's free space as its own, removes images it does not use (the
/// bundle's busybox) when less than 15 % is free (its image garbage
/// collection) and evicts pods below the same mark. A run with real
/// binaries on a host that full fails in ways that look like kubeforge's;
/// it stops here instead, saying so.
fn assert_room_for_real_kubelets() {
    let dir = std::env::temp_dir();
    let out = Command::new("df")
        .args(["--output=size,avail", "-B1"])
        .arg(&dir)
        .output()
        .expect("df runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let numbers: Vec<u64> = text
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    if let [size, avail] = numbers[..] {
        let free = avail.saturating_mul(100) / size.max(1);
        assert!(
            free >= 20,
            "the file system of {} has {free}% free: real kubelets on the lab nodes garbage-collect images and evict pods below 15%; free some space (at least 20%) before running with KUBEFORGE_K8S_BIN_DIR",
            dir.display()
        );
    }
}

/// Boots the lab nodes and prepares a control directory with the
/// inventory `inventory(&lab)`, an empty ssh_config and the bundle.
pub(crate) fn start(
    b: &Binaries,
    nodes: &[(&str, Ipv4Addr)],
    inventory: impl Fn(&Lab) -> String,
) -> (Lab, Kf) {
    let mut lab = Lab::up(nodes);
    lab.watch_units(&UNITS);
    lab.watch_units(&["nginx", "containerd", "kubelet", "kube-proxy"]);
    let work = lab.path().join("control");
    std::fs::create_dir_all(&work).expect("control dir");
    std::fs::write(work.join("ssh_config"), "").expect("ssh_config");
    std::fs::write(work.join("inventory.toml"), inventory(&lab)).expect("inventory");
    let kf = Kf {
        bin: b.kubeforge.clone(),
        dir: work.clone(),
        bundle: work.join("bundle"),
    };
    write_bundle(&kf.bundle, &bundle_files(b));
    (lab, kf)
}

#[test]
fn ha_control_plane_apply_rerun_rolling_change_and_failover() {
    if !lab::available(TEST) {
        return;
    }
    let Some(b) = binaries() else { return };
    let etcdctl = b.etcd_dir.join("etcdctl");
    let nodes = [
        ("cp1", Ipv4Addr::new(10, 77, 0, 11)),
        ("cp2", Ipv4Addr::new(10, 77, 0, 12)),
        ("cp3", Ipv4Addr::new(10, 77, 0, 13)),
        ("lb1", Ipv4Addr::new(10, 77, 0, 31)),
        ("lb2", Ipv4Addr::new(10, 77, 0, 32)),
        ("worker1", Ipv4Addr::new(10, 77, 0, 21)),
    ];
    let (lab, kf) = start(&b, &nodes, |lab| inventory(lab, None));
    let work = kf.dir.clone();

    // 1. Fresh apply converges and every gate passes.
    let t = Instant::now();
    let out = kf.apply(&[]);
    let fresh = t.elapsed();
    assert!(out.status.success(), "fresh apply failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Applied:"), "{stdout}");
    let health = etcd_health(&kf, &etcdctl);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&health.stdout),
        String::from_utf8_lossy(&health.stderr)
    );
    assert!(health.status.success(), "etcd health: {text}");
    assert_eq!(text.matches("is healthy").count(), 3, "{text}");
    let r = curl_admin(&kf, "https://10.77.0.100:8443/readyz");
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "ok",
        "readyz via the VIP"
    );
    assert_eq!(vip_holders(&lab).len(), 1, "exactly one LB holds the VIP");
    // The apply waited for every node to be Ready in the API; look from
    // outside too, through the VIP, with the admin credentials (allowed by
    // the RBAC addon the apply applied).
    assert!(
        stdout.contains("api apply: ClusterRoleBinding kubeforge:cluster-admins"),
        "{stdout}"
    );
    let listed = match kubectl() {
        // Debian's kubectl with the kubeconfig `kubeforge kubeconfig` writes.
        Some(k) => kubectl_ok(
            &k,
            &admin_kubeconfig(&kf),
            &["get", "--raw", "/api/v1/nodes"],
        ),
        None => {
            kubeforge_tests::skip(TEST, "kubectl not found: listing the nodes with curl");
            String::from_utf8_lossy(
                &curl_admin(&kf, "https://10.77.0.100:8443/api/v1/nodes").stdout,
            )
            .into_owned()
        }
    };
    for n in ["cp1", "cp2", "cp3", "worker1"] {
        assert!(
            listed.contains(&format!("\"name\":\"{n}\"")),
            "node {n} not registered: {listed}"
        );
    }
    let r = curl_admin(
        &kf,
        "https://10.77.0.100:8443/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/kubeforge:node-autorenew",
    );
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("selfnodeclient"),
        "{}",
        String::from_utf8_lossy(&r.stdout)
    );

    // node_profile = "container": the node sees the kernel settings the
    // kubelet wants, the host keeps its own.
    let host = std::fs::read_to_string("/proc/sys/kernel/panic").expect("host kernel.panic");
    let seen = lab.ssh_ok(
        "worker1",
        "cat /proc/sys/vm/overcommit_memory /proc/sys/kernel/panic",
    );
    assert_eq!(
        seen.split_whitespace().collect::<Vec<_>>(),
        ["1", "10"],
        "{seen}"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/panic").expect("host kernel.panic"),
        host,
        "the host's kernel.panic changed"
    );

    // 2. Second apply: no changes, no restarts.
    let cps = ["cp1", "cp2", "cp3", "lb1", "lb2"];
    let before = unit_clock(&lab, &cps, &CLOCK_UNITS);
    let t = Instant::now();
    let out = kf.apply(&[]);
    let noop = t.elapsed();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("No changes"),
        "second apply changed something"
    );
    // Every file the fresh apply wrote had its sha256 remembered on the
    // node: nothing was hashed again.
    let (cached, total) = sums_cached(&stdout);
    assert_eq!(cached, total, "sums cached after the fresh apply");
    assert_eq!(
        before,
        unit_clock(&lab, &cps, &CLOCK_UNITS),
        "a unit restarted on a no-op apply"
    );
    eprintln!(
        "lab_apply timings: fresh apply {:.1} s, no-op re-apply {:.1} s",
        fresh.as_secs_f64(),
        noop.as_secs_f64()
    );

    // 3. Change one setting (an extra apiserver SAN): only the apiserver
    //    certificate changes, kube-apiserver restarts one node at a time and
    //    a probe loop through the VIP sees no failed request.
    std::fs::write(
        work.join("inventory.toml"),
        inventory(&lab, Some("api.lab.example")),
    )
    .expect("inventory");
    let plan_text = kf.plan();
    for n in ["cp1", "cp2", "cp3"] {
        assert!(
            plan_text.contains(&format!("{n} (10.77.0.1")),
            "{n} missing from the plan"
        );
    }
    assert_eq!(
        plan_text
            .matches("~ /etc/kubernetes/pki/apiserver.crt")
            .count(),
        3
    );
    assert_eq!(plan_text.matches("restart: kube-apiserver\n").count(), 3);
    assert!(!plan_text.contains("restart: etcd"));
    assert!(plan_text.contains("lb1 (10.77.0.31): no changes"));

    let probe = crate::probe::Probe::admin(&kf, &kf.dir.join("probe"));
    let before = unit_clock(&lab, &cps, &CLOCK_UNITS);
    let out = kf.apply(&[]);
    let probed = probe.finish();
    assert!(out.status.success(), "change apply failed");
    let after = unit_clock(&lab, &cps, &CLOCK_UNITS);
    for (b, a) in before.iter().zip(&after) {
        if b.contains("Id=kube-apiserver.service") && !b.starts_with("lb") {
            assert_ne!(b, a, "kube-apiserver did not restart");
        } else {
            assert_eq!(b, a, "only kube-apiserver may restart");
        }
    }
    eprintln!(
        "probe through the VIP during the rolling change: {} ok, {} failed",
        probed.ok,
        probed.failed()
    );
    assert!(probed.ok > 10, "the probe loop ran");
    assert!(
        probed.failures.is_empty(),
        "failed probes: {:?}",
        probed.failures
    );

    // 4. keepalived stops on the VIP holder: the VIP moves, the API still
    //    answers through it.
    let holder = vip_holders(&lab).pop().expect("a VIP holder");
    lab.ssh_ok(&holder, "systemctl stop keepalived");
    wait_until("the VIP to move", Duration::from_secs(20), || {
        let h = vip_holders(&lab);
        h.len() == 1 && h[0] != holder
    });
    let new_holder = vip_holders(&lab).pop().expect("a VIP holder");
    let r = curl_admin(&kf, "https://10.77.0.100:8443/readyz");
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "ok",
        "readyz after failover"
    );

    // 5. One etcd member stops: the cluster stays available; apply brings
    //    it (and keepalived) back.
    lab.ssh_ok("cp3", "systemctl stop etcd");
    let r = curl_admin(&kf, "https://10.77.0.100:8443/readyz");
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "ok",
        "readyz with one etcd member down"
    );
    let out = kf.apply(&[]);
    assert!(out.status.success(), "apply after a stopped member failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("enable and start: etcd"), "{stdout}");
    let health = etcd_health(&kf, &etcdctl);
    assert_eq!(
        String::from_utf8_lossy(&health.stdout)
            .matches("is healthy")
            .count()
            + String::from_utf8_lossy(&health.stderr)
                .matches("is healthy")
                .count(),
        3
    );
    assert_eq!(
        lab.ssh_ok(&holder, "systemctl is-active keepalived").trim(),
        "active"
    );

    // 6. The first holder's keepalived is back (it has the higher
    //    priority): with nopreempt the VIP stays where it is, no second
    //    move. Watched for well over the adverts a preemption would take.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        assert_eq!(
            vip_holders(&lab),
            vec![new_holder.clone()],
            "the VIP moved back to {holder} when its keepalived returned"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let r = curl_admin(&kf, "https://10.77.0.100:8443/readyz");
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "ok",
        "readyz after the first holder returned"
    );
}

#[test]
fn single_control_plane_without_lb_converges() {
    if !lab::available(TEST) {
        return;
    }
    let Some(b) = binaries() else { return };
    let (_lab, kf) = start(&b, &[("cp1", Ipv4Addr::new(10, 77, 0, 11))], |lab| {
        small_inventory(lab, &[])
    });
    let work = kf.dir.clone();
    let out = kf.apply(&[]);
    assert!(out.status.success(), "apply failed");
    let r = curl_admin(&kf, "https://10.77.0.11:6443/readyz");
    assert_eq!(String::from_utf8_lossy(&r.stdout), "ok");
    let out = kf.apply(&[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("No changes"));
    // The admin kubeconfig points at the only control-plane node.
    let kc = Command::new(&kf.bin)
        .current_dir(&work)
        .args(["kubeconfig", "-i", "inventory.toml"])
        .output()
        .expect("kubeconfig runs");
    assert!(String::from_utf8_lossy(&kc.stdout).contains("server: https://10.77.0.11:6443"));
}
