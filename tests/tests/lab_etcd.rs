//! `kubeforge etcd backup|backups|restore` on lab nodes: three etcd
//! members (two of them control-plane nodes) behind an LB with the VIP. A
//! namespace and a ConfigMap are created, a snapshot is taken, both are
//! deleted, the snapshot is restored: they are back, every member's old
//! data directory is still there, and a re-apply changes nothing. A
//! tampered snapshot is refused before anything is touched; a restore
//! without `--yes` only shows its plan. The members' own timer snapshots
//! are listed by `kubeforge etcd backups`.
//!
//! The Kubernetes binaries are the stand-ins unless
//! `KUBEFORGE_K8S_BIN_DIR` names the real ones; etcd is Debian's.
#![allow(clippy::print_stderr)]

use crate::lab_apply::{binaries, k8s_version, start, unit_clock, Kf};
use kubeforge_tests::lab::Lab;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const TEST: &str = "lab_etcd";
const API: &str = "https://10.77.0.100:8443";
const MEMBERS: [&str; 3] = ["cp1", "cp2", "e3"];

/// The nodes of [`inventory_with`].
pub(crate) const NODES: [(&str, Ipv4Addr); 4] = [
    ("cp1", Ipv4Addr::new(10, 77, 0, 11)),
    ("cp2", Ipv4Addr::new(10, 77, 0, 12)),
    ("e3", Ipv4Addr::new(10, 77, 0, 13)),
    ("lb1", Ipv4Addr::new(10, 77, 0, 31)),
];

/// Two control-plane nodes with etcd, a third etcd member (e3) and an LB
/// (lb1), with `extra` sections after `[cluster]`.
pub(crate) fn inventory_with(lab: &Lab, extra: &str) -> String {
    format!(
        r#"[cluster]
name = "lab"
kubernetes_version = "{version}"
node_cidr = "10.77.0.0/24"
node_profile = "container"
# No image registry is reachable from the lab: CoreDNS could not run.
coredns = false
{extra}
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
name = "cp2"
address = "10.77.0.12"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "e3"
address = "10.77.0.13"
roles = ["etcd"]

[[nodes]]
name = "lb1"
address = "10.77.0.31"
roles = ["lb"]
"#,
        key = lab.key().display(),
        version = k8s_version(),
    )
}

fn inventory(lab: &Lab) -> String {
    inventory_with(
        lab,
        "\n[etcd]\nbackup_schedule = \"daily\"\nbackup_keep = 2\n",
    )
}

/// `kubeforge etcd ARGS...` in the control directory.
fn etcd(kf: &Kf, args: &[&str]) -> Output {
    kf.run(&["etcd"], args)
}

/// An API request through the VIP with the admin certificate: (HTTP
/// status, body).
fn api(kf: &Kf, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-X", method, "--cacert"])
        .arg(kf.pki("ca.crt"))
        .arg("--cert")
        .arg(kf.pki("admin.crt"))
        .arg("--key")
        .arg(kf.pki("admin.key"))
        .args(["-w", "\n%{http_code}"]);
    if let Some(b) = body {
        cmd.args([
            "-H",
            "Content-Type: application/apply-patch+yaml",
            "--data-binary",
            b,
        ]);
    }
    let out = cmd.arg(format!("{API}{path}")).output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or(0),
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

/// Server-side apply of `object` at `path`; must succeed.
fn put(kf: &Kf, path: &str, object: &str) {
    let (code, body) = api(
        kf,
        "PATCH",
        &format!("{path}?fieldManager=lab-etcd&force=true"),
        Some(object),
    );
    assert!((200..300).contains(&code), "apply {path}: {code} {body}");
}

const NS: &str = "/api/v1/namespaces/kf-restore";
const CM: &str = "/api/v1/namespaces/kf-restore/configmaps/kept";

fn wait_gone(kf: &Kf, path: &str) {
    let start = Instant::now();
    loop {
        let (code, body) = api(kf, "GET", path, None);
        if code == 404 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{path} still there: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The snapshots `kubeforge etcd backup` wrote into the state directory.
fn snapshots(kf: &Kf) -> Vec<PathBuf> {
    let dir = kf.dir.join(".kubeforge/lab/backups");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "db"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn json_of(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}.json", db.display()))
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn backup_delete_restore_and_node_snapshots() {
    if !kubeforge_tests::lab::available(TEST) {
        return;
    }
    let Some(b) = binaries() else { return };
    let (lab, kf) = start(&b, &NODES, inventory);
    // etcdutl restores the snapshots.
    let etcdutl = b.etcd_dir.join("etcdutl");
    if etcdutl.exists() {
        let mut files = crate::lab_apply::bundle_files(&b);
        files.push(("etcdutl".into(), etcdutl));
        crate::lab_apply::write_bundle(&kf.bundle, &files);
    }
    let out = kf.apply(&[]);
    assert!(out.status.success(), "apply failed");

    // 1. Objects, then a snapshot of them.
    put(
        &kf,
        NS,
        r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"kf-restore"}}"#,
    );
    put(
        &kf,
        CM,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"kept","namespace":"kf-restore"},"data":{"when":"before the backup"}}"#,
    );
    let t = Instant::now();
    let out = etcd(&kf, &["backup"]);
    let backup_secs = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "backup failed");
    let snaps = snapshots(&kf);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let snap = &snaps[0];
    assert_eq!(mode(snap), 0o600, "the snapshot holds every Secret");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(json_of(snap)).expect("the .json")).expect("JSON");
    assert_eq!(info["cluster"], "lab");
    assert_eq!(info["members"].as_array().map(Vec::len), Some(3), "{info}");
    assert!(info["revision"].as_u64().is_some_and(|r| r > 0), "{info}");
    let listed = etcd(&kf, &["backups"]);
    assert!(listed.status.success());
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let name = snap
        .file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned();
    assert!(listed.contains(&name), "{listed}");

    // 2. Deleted.
    let (code, body) = api(&kf, "DELETE", CM, None);
    assert_eq!(code, 200, "{body}");
    let (code, body) = api(&kf, "DELETE", NS, None);
    assert!(code == 200 || code == 202, "{code} {body}");
    wait_gone(&kf, CM);
    wait_gone(&kf, NS);

    // 3. A tampered snapshot is refused before any node is touched.
    let tampered = kf.dir.join("tampered.db");
    let mut bytes = std::fs::read(snap).expect("snapshot");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&tampered, bytes).expect("tampered copy");
    std::fs::copy(json_of(snap), json_of(&tampered)).expect("its .json");
    let clock = |lab: &Lab| unit_clock(lab, &MEMBERS, &["etcd"]);
    let before = clock(&lab);
    let out = etcd(&kf, &["restore", "--snapshot", "tampered.db", "--yes"]);
    assert!(!out.status.success(), "a tampered snapshot must be refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refusing a changed or corrupted snapshot"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 4. Without --yes: the plan, exit 0, nothing done.
    let snap_arg = snap.display().to_string();
    let out = etcd(&kf, &["restore", "--snapshot", &snap_arg]);
    assert!(out.status.success(), "restore without --yes");
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    for want in [
        "stop etcd",
        "restore etcd",
        "start the apiservers",
        "Nothing done",
    ] {
        assert!(plan.contains(want), "{want} not in\n{plan}");
    }
    assert_eq!(clock(&lab), before, "nothing may restart without --yes");
    assert_eq!(api(&kf, "GET", CM, None).0, 404);

    // 5. Restored: the objects are back, the old data kept on every member,
    //    etcd whole again, and a re-apply changes nothing.
    let t = Instant::now();
    let out = etcd(&kf, &["restore", "--snapshot", &snap_arg, "--yes"]);
    let restore_secs = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "restore failed");
    let (code, body) = api(&kf, "GET", CM, None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("before the backup"), "{body}");
    assert_eq!(api(&kf, "GET", NS, None).0, 200);
    for n in MEMBERS {
        let kept = lab.ssh_ok(n, "ls -d /var/lib/etcd.before-restore-*");
        assert_eq!(kept.lines().count(), 1, "{n}: {kept}");
        let restored = lab.ssh_ok(n, "stat -c %a /var/lib/etcd");
        assert_eq!(restored.trim(), "700", "{n}");
    }
    let members = lab.ssh_ok(
        "cp1",
        "curl -sS --cacert /etc/kubernetes/pki/etcd/ca.crt \
         --cert /etc/kubernetes/pki/etcd/healthcheck-client.crt \
         --key /etc/kubernetes/pki/etcd/healthcheck-client.key \
         -X POST -d '{}' https://127.0.0.1:2379/v3/cluster/member/list",
    );
    assert_eq!(members.matches("\"name\"").count(), 3, "{members}");
    let out = kf.apply(&[]);
    assert!(out.status.success(), "re-apply after the restore");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("No changes"),
        "a restore leaves the cluster as the inventory says"
    );

    // 6. The members' own snapshots: the timer is armed on each; one run
    //    by hand, then listed.
    for n in MEMBERS {
        let on = lab.ssh_ok(n, "systemctl is-enabled kubeforge-etcd-backup.timer");
        assert_eq!(on.trim(), "enabled", "{n}");
    }
    for _ in 0..3 {
        lab.ssh_ok("e3", "systemctl start kubeforge-etcd-backup.service");
        std::thread::sleep(Duration::from_millis(1100));
    }
    let kept = lab.ssh_ok("e3", "ls /var/lib/kubeforge/etcd-backups/*.db | wc -l");
    assert_eq!(kept.trim(), "2", "backup_keep = 2");
    let out = etcd(&kf, &["backups"]);
    assert!(out.status.success());
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        listed.lines().filter(|l| l.starts_with("e3 ")).count(),
        2,
        "{listed}"
    );
    eprintln!(
        "lab_etcd timings: backup {backup_secs:.1} s, restore {restore_secs:.1} s (real binaries: {})",
        crate::lab_apply::real_k8s()
    );
}
