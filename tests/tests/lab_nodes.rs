//! Node components on lab nodes: containerd, runc and the CNI plugins are
//! Debian's real packages (bundled from `target/test-tools/node`, which
//! tests/setup.sh unpacks), kubelet and kube-proxy the kubeforge stand-ins
//! (or the real binaries from `KUBEFORGE_K8S_BIN_DIR`). The whole cluster
//! converges with every gate passing (containerd's CRI plugin answers,
//! kubelet and kube-proxy report healthy after reaching the apiserver with
//! their own certificates), and adding a worker touches only that worker.
//!
//! The bundle also holds two container images built by the test
//! (`kubeforge_tests::oci`, from Debian's busybox-static): the sandbox
//! image of the inventory and a busybox image. apply imports them into
//! containerd on every kubelet node, and runc runs the busybox image
//! there.
#![allow(clippy::print_stderr)]

use crate::lab_apply::{binaries, small_inventory, start, unit_clock, Kf, PAUSE_IMAGE, TEST};
use kubeforge_tests::{lab, oci};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub(crate) const BUSYBOX_IMAGE: &str = "lab.local/busybox:1";
const IMPORT_STEP: &str = "import the bundle's container images into containerd";

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

/// A new bundle made by `kubeforge bundle --from` the lab's bundle, with
/// the pause and busybox images built here added by `--image`.
pub(crate) fn bundle_with_images(kf: &Kf) -> PathBuf {
    let src = kf.dir.join("image-src");
    std::fs::create_dir_all(&src).expect("image-src");
    let busybox = Path::new(oci::BUSYBOX);
    let pause = src.join("pause.tar");
    // Like the real pause: sleeps until it is told to stop.
    let pause_cmd = [
        "/bin/sh",
        "-c",
        "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done",
    ];
    oci::busybox_image(busybox, PAUSE_IMAGE, &pause_cmd, &pause).expect("pause image");
    let bb = src.join("busybox.tar");
    oci::busybox_image(busybox, BUSYBOX_IMAGE, &["/bin/sh"], &bb).expect("busybox image");
    let out = kf.dir.join("bundle-images");
    let started = Instant::now();
    let o = Command::new(&kf.bin)
        .arg("bundle")
        .arg("--from")
        .arg(&kf.bundle)
        .arg("--image")
        .arg(&pause)
        .arg("--image")
        .arg(&bb)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("kubeforge bundle runs");
    let text = String::from_utf8_lossy(&o.stdout);
    eprintln!(
        "$ kubeforge bundle --from ... --image pause.tar --image busybox.tar ({:.2} s)\n{text}{}",
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "kubeforge bundle failed");
    assert!(
        text.contains(&format!("    images: {PAUSE_IMAGE}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("    images: {BUSYBOX_IMAGE}\n")),
        "{text}"
    );
    out
}

/// The image names containerd's k8s.io namespace holds on `node`.
fn images_on(lab: &lab::Lab, node: &str) -> Vec<String> {
    lab.ssh_ok(node, "ctr -n k8s.io images ls -q")
        .lines()
        .map(str::to_string)
        .collect()
}

fn assert_images(lab: &lab::Lab, node: &str) {
    let have = images_on(lab, node);
    for want in [PAUSE_IMAGE, BUSYBOX_IMAGE] {
        assert!(
            have.iter().any(|h| h == want),
            "{node} lacks {want}: {have:?}"
        );
    }
    let st = lab.ssh_ok(
        node,
        "stat -c '%a %U' /var/lib/kubeforge/images/pause.tar /var/lib/kubeforge/images/busybox.tar",
    );
    assert_eq!(
        st.lines().collect::<Vec<_>>(),
        ["644 root", "644 root"],
        "{node}"
    );
}

/// `ctr run` of the busybox image on `node`: runc, the overlayfs
/// snapshotter and the image's own /bin/echo. Returns its output.
fn run_busybox(lab: &lab::Lab, node: &str) -> String {
    let started = Instant::now();
    let o = lab.ssh_timeout(
        node,
        &format!("ctr -n k8s.io run --rm {BUSYBOX_IMAGE} kf-probe /bin/echo hello-from-runc"),
        Duration::from_secs(60),
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!(
        "{node}: ctr run {BUSYBOX_IMAGE} ({:.2} s): exit {:?}\n--- stdout\n{out}--- stderr\n{}",
        started.elapsed().as_secs_f64(),
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "ctr run failed on {node}");
    out
}

/// The pause image runs as a task and stops on SIGTERM, as a sandbox must.
fn pause_stops_on_sigterm(lab: &lab::Lab, node: &str) {
    let script = format!(
        r#"set -e
ctr -n k8s.io run -d {PAUSE_IMAGE} kf-pause >/dev/null
sleep 1
ctr -n k8s.io task ls | grep -q '^kf-pause .* RUNNING$'
t0=$(date +%s%N)
ctr -n k8s.io task kill kf-pause
for i in $(seq 1 50); do
  ctr -n k8s.io task ls | grep -q '^kf-pause .* STOPPED$' && break
  sleep 0.1
done
t1=$(date +%s%N)
ctr -n k8s.io task ls | grep -q '^kf-pause .* STOPPED$'
ctr -n k8s.io task rm kf-pause >/dev/null
ctr -n k8s.io container rm kf-pause
echo "stopped in $(( (t1 - t0) / 1000000 )) ms""#
    );
    let out = lab.ssh_ok(node, &script);
    eprintln!("{node}: {PAUSE_IMAGE} {}", out.trim());
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
    if !Path::new(oci::BUSYBOX).exists() {
        kubeforge_tests::skip(
            TEST,
            &format!(
                "{} is missing (tests/setup.sh installs busybox-static)",
                oci::BUSYBOX
            ),
        );
        return;
    }
    let (mut lab, mut kf) = start(&b, &nodes, |lab| small_inventory(lab, &["worker1"]));
    lab.watch_units(&["containerd", "kubelet", "kube-proxy"]);
    kf.bundle = bundle_with_images(&kf);

    // The plan imports the images on both kubelet nodes.
    let text = kf.plan();
    assert_eq!(
        text.matches(&format!("  run: {IMPORT_STEP}\n")).count(),
        2,
        "{text}"
    );

    // Every phase, every gate.
    let started = Instant::now();
    let out = kf.apply_phases(&[], &[]);
    assert!(out.status.success(), "apply failed");
    eprintln!("first apply: {:.1} s", started.elapsed().as_secs_f64());
    for n in ["cp1", "worker1"] {
        assert_images(&lab, n);
    }
    let hello = run_busybox(&lab, "worker1");
    assert_eq!(hello.trim(), "hello-from-runc");
    pause_stops_on_sigterm(&lab, "worker1");
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
    let started = Instant::now();
    let out = kf.apply_phases(&[], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("No changes"), "{stdout}");
    assert!(!stdout.contains(IMPORT_STEP), "{stdout}");
    eprintln!("second apply: {:.1} s", started.elapsed().as_secs_f64());

    // Add worker2: the plan touches only it; nothing restarts elsewhere.
    std::fs::write(
        kf.dir.join("inventory.toml"),
        small_inventory(&lab, &["worker1", "worker2"]),
    )
    .expect("inventory");
    // Existing nodes only get the new /etc/hosts line and the route to the
    // new pod subnet (live, and in the list read at boot): no file of
    // theirs changes, nothing restarts.
    let text = kf.plan();
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
            ],
            "{text}"
        );
    }
    assert!(text.contains("worker2 (10.77.0.22):\n"), "{text}");
    assert_eq!(
        text.matches(&format!("  run: {IMPORT_STEP}\n")).count(),
        1,
        "only worker2 imports: {text}"
    );
    let before = unit_clock(&lab, &["cp1", "worker1"], &CLOCK_UNITS);
    let out = kf.apply_phases(&[], &[]);
    assert!(out.status.success(), "apply with worker2 failed");
    // Its binaries come from the nodes that hold them in place (worker1
    // first), not all over the control machine's uplink.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.lines()
            .any(|l| l.contains("worker2: fetch binary") && l.ends_with(" from worker1")),
        "{said}"
    );
    assert_eq!(
        before,
        unit_clock(&lab, &["cp1", "worker1"], &CLOCK_UNITS),
        "an existing node restarted a unit"
    );
    // The list the boot script sets the routes from names the new node,
    // and the boot unit sets a lost route again from it.
    let list = lab.ssh_ok("cp1", "cat /var/lib/kubeforge/pod-routes");
    let route = list
        .lines()
        .find(|l| l.starts_with("route replace ") && l.ends_with("# worker2"))
        .unwrap_or_else(|| panic!("no route to worker2's pod subnet in\n{list}"));
    let subnet = route.split_whitespace().nth(2).expect("the subnet");
    lab.ssh_ok(
        "cp1",
        &format!("ip route del {subnet} && systemctl restart kubeforge-pod-routes"),
    );
    let routes = lab.ssh_ok("cp1", &format!("ip route show {subnet}"));
    assert!(
        routes.contains(" via "),
        "{subnet} not routed again: {routes:?}"
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
    assert_images(&lab, "worker2");
    let out = kf.apply_phases(&[], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("No changes"), "{stdout}");
}
