//! The lab with the real Kubernetes server binaries, given by directory in
//! `KUBEFORGE_K8S_BIN_DIR` (v1.28 or newer; the inventory takes their
//! version). Not run with the stand-ins, which run no pods: it says so and
//! passes.
//!
//! cp1 (etcd + control plane), worker1 and worker2; containerd, runc and
//! the CNI plugins are Debian's, the pause and busybox images are built
//! here and carried in the bundle (no registry anywhere). apply itself
//! waits for every node to be Ready in the API; then, with Debian's kubectl
//! and the kubeconfig `kubeforge kubeconfig` writes: a pod from the local
//! busybox image is scheduled on worker1, and a NodePort service answers
//! from the other nodes (worker2 through its own node port too, which
//! crosses to worker1's pod subnet over the routes kubeforge set), and
//! `kubectl logs` and `exec` reach the pod through the kubelet's serving
//! certificate. Run twice: kubelets joining with the certificates kubeforge
//! issued, and with a bootstrap token (their client and serving
//! certificates then come through CSRs, the serving ones approved by
//! kubeforge). The bootstrap-token cluster then has its kubernetes CA
//! rotated in three steps: the kubelets join again with the new CA in
//! step 2, and after step 3 every node is Ready, `exec`, `logs` and the
//! node port work, and every certificate checks ok.
#![allow(clippy::print_stderr)]

use crate::lab_apply::{
    admin_kubeconfig, binaries, k8s_version, kubectl, kubectl_ok, real_k8s, small_inventory, start,
    with_kubelet_join, Kf, TEST,
};
use crate::lab_nodes::{bundle_with_images, BUSYBOX_IMAGE};
use kubeforge_tests::lab;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const NODE_PORT: u16 = 30080;

fn workload() -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {{app: web}}
spec:
  nodeSelector:
    kubernetes.io/hostname: worker1
  containers:
    - name: web
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: Never
      command: ["/bin/sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
      ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: NodePort
  selector: {{app: web}}
  ports:
    - port: 80
      targetPort: 8080
      nodePort: {NODE_PORT}
"#
    )
}

/// `curl` on `from` to `url` until it answers (kube-proxy needs a moment
/// to program the node port), at most a minute.
fn curl_from(lab: &lab::Lab, from: &str, url: &str) -> String {
    let start = Instant::now();
    loop {
        let o = lab.ssh_timeout(
            from,
            &format!("curl -sS --max-time 3 {url}"),
            Duration::from_secs(10),
        );
        let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if o.status.success() && !out.is_empty() {
            eprintln!(
                "{from}$ curl {url} -> {out:?} ({:.1} s)",
                start.elapsed().as_secs_f64()
            );
            return out;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{from}: {url} did not answer: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn real_binaries_nodes_ready_pod_on_worker_and_node_port() {
    real_cluster("certificate");
}

#[test]
fn real_binaries_with_bootstrap_token_join() {
    real_cluster("bootstrap-token");
}

fn real_cluster(join: &str) {
    if !lab::available(TEST) {
        return;
    }
    if !real_k8s() {
        eprintln!(
            "note: lab_real not run: it needs the real Kubernetes binaries in KUBEFORGE_K8S_BIN_DIR"
        );
        return;
    }
    let Some(b) = binaries() else { return };
    let Some(kubectl) = kubectl() else {
        kubeforge_tests::skip(TEST, "kubectl not found (tests/setup.sh unpacks Debian's)");
        return;
    };
    let nodes = [
        ("cp1", Ipv4Addr::new(10, 77, 0, 11)),
        ("worker1", Ipv4Addr::new(10, 77, 0, 21)),
        ("worker2", Ipv4Addr::new(10, 77, 0, 22)),
    ];
    let (lab, mut kf) = start(&b, &nodes, |lab| {
        with_kubelet_join(small_inventory(lab, &["worker1", "worker2"]), join)
    });
    kf.bundle = bundle_with_images(&kf);
    eprintln!(
        "lab_real: Kubernetes v{}, kubelet_join = {join}",
        k8s_version()
    );

    let t = Instant::now();
    let out = kf.apply(&[]);
    assert!(out.status.success(), "apply failed");
    eprintln!(
        "lab_real: apply with every gate (nodes Ready in the API) {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let kc = admin_kubeconfig(&kf);
    let k = |args: &[&str]| kubectl_ok(&kubectl, &kc, args);

    let nodes = k(&["get", "nodes", "-o", "wide"]);
    eprintln!("$ kubectl get nodes -o wide\n{nodes}");
    let ready = k(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
    ]);
    let mut ready: Vec<&str> = ready.lines().collect();
    ready.sort_unstable();
    assert_eq!(ready, ["cp1=True", "worker1=True", "worker2=True"]);

    let manifest = kf.dir.join("web.yaml");
    std::fs::write(&manifest, workload()).expect("web.yaml");
    let manifest = manifest.display().to_string();
    eprintln!(
        "$ kubectl apply -f web.yaml\n{}",
        k(&["apply", "-f", &manifest])
    );
    let t = Instant::now();
    k(&["wait", "--for=condition=Ready", "pod/web", "--timeout=120s"]);
    eprintln!(
        "lab_real: pod web Ready after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let pods = k(&["get", "pods", "-o", "wide"]);
    eprintln!("$ kubectl get pods -o wide\n{pods}");
    let on = k(&["get", "pod", "web", "-o", "jsonpath={.spec.nodeName}"]);
    assert_eq!(on, "worker1", "the scheduler placed the pod on {on}");

    // The node port of worker1 from worker2, and of worker2 from cp1 (the
    // pod is on worker1: kube-proxy on worker2 forwards across nodes).
    let a = curl_from(&lab, "worker2", &format!("http://10.77.0.21:{NODE_PORT}/"));
    let b2 = curl_from(&lab, "cp1", &format!("http://10.77.0.22:{NODE_PORT}/"));
    assert_eq!(a, "web", "the pod's hostname");
    assert_eq!(b2, "web");

    // The API server reaches the pod through the kubelet's serving
    // certificate (kubeforge's, or one it approved).
    let served = k(&["exec", "web", "--", "cat", "/www/index.html"]);
    assert_eq!(served.trim(), "web");
    k(&["logs", "web"]);
    if join == "bootstrap-token" {
        let csrs = k(&["get", "csr"]);
        eprintln!("$ kubectl get csr\n{csrs}");
        assert!(csrs.contains("kubernetes.io/kubelet-serving"), "{csrs}");
        assert!(!csrs.contains("Pending"), "{csrs}");
    }

    // A second apply changes nothing.
    let out = kf.apply(&[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("No changes"));

    if join == "bootstrap-token" {
        rotate_kubernetes_ca(&kf);
        // The kubeconfig of the old CA is refused now: a new one.
        let kc = admin_kubeconfig(&kf);
        let k = |args: &[&str]| kubectl_ok(&kubectl, &kc, args);
        let ready = k(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        assert_eq!(
            ready, "True True True",
            "every node Ready after the rotation"
        );
        let served = k(&["exec", "web", "--", "cat", "/www/index.html"]);
        assert_eq!(
            served.trim(),
            "web",
            "exec through the kubelet's new serving certificate"
        );
        k(&["logs", "web"]);
        assert_eq!(
            curl_from(&lab, "worker2", &format!("http://10.77.0.21:{NODE_PORT}/")),
            "web"
        );
    }
}

/// The kubernetes CA rotated in its three steps under kubelets that
/// joined with a bootstrap token: in step 2 they join again (their client
/// and serving certificates come through CSRs from the new CA), so step 3
/// drops the old CA without locking them out. After each step every
/// certificate, on the nodes too, checks ok and an apply changes nothing.
fn rotate_kubernetes_ca(kf: &Kf) {
    for step in ["1", "2", "3"] {
        let t = Instant::now();
        let out = kf.run(
            &["certs"],
            &["renew", "--new-ca", "kubernetes", "--step", step, "--yes"],
        );
        assert!(out.status.success(), "rotation step {step} failed");
        eprintln!(
            "lab_real: kubernetes CA rotation, step {step}: {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let (state, on_nodes) = crate::lab_certs::checked(kf);
        crate::lab_certs::all_ok(&state, &on_nodes);
        let out = kf.apply(&[]);
        assert!(out.status.success(), "apply after step {step}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("No changes"),
            "step {step} leaves the cluster as the inventory says"
        );
    }
}
