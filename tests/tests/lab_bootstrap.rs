//! `kubelet_join = "bootstrap-token"` on lab nodes (cp1 and worker1, with
//! the real Kubernetes binaries from `KUBEFORGE_K8S_BIN_DIR`): the kubelets
//! join with the bootstrap token, get their client certificates from the
//! controller manager and their serving certificates through kubeforge's
//! cluster gates, and a serving request for a name that is not the node's
//! is reported, never approved. Not run with the stand-ins, which do no
//! TLS bootstrapping (their kubelet refuses `--bootstrap-kubeconfig`): it
//! says so and passes.
#![allow(clippy::print_stderr)]

use crate::lab_apply::{
    binaries, curl_admin, real_k8s, small_inventory, start, unit_clock, with_kubelet_join, Kf,
};
use kubeforge_tests::lab::{self, Lab};
use serde_json::Value;
use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::time::Instant;

const TEST: &str = "lab_bootstrap";
const API: &str = "https://10.77.0.11:6443";
const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
const UNITS: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "containerd",
    "kubelet",
    "kube-proxy",
];

fn bootstrap_inventory(lab: &Lab) -> String {
    with_kubelet_join(small_inventory(lab, &["worker1"]), "bootstrap-token")
}

/// The certificate signing requests, as the admin lists them.
fn list_csrs(kf: &Kf) -> Vec<Value> {
    let out = curl_admin(kf, &format!("{API}{CSRS}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let list: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the CSR list is not JSON ({e}): {text}"));
    list["items"].as_array().cloned().unwrap_or_default()
}

fn field<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// `type/reason` of every condition.
fn conditions(csr: &Value) -> Vec<String> {
    csr.pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| format!("{}/{}", field(c, "/type"), field(c, "/reason")))
        .collect()
}

fn describe(csrs: &[Value]) -> String {
    csrs.iter()
        .map(|c| {
            format!(
                "  {:<16} {:<45} {:<32} {:?} certificate: {}\n",
                field(c, "/metadata/name"),
                field(c, "/spec/signerName"),
                field(c, "/spec/username"),
                conditions(c),
                if field(c, "/status/certificate").is_empty() {
                    "none"
                } else {
                    "yes"
                }
            )
        })
        .collect()
}

fn openssl(args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs");
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(stdin.unwrap_or_default());
    }
    child.wait_with_output().expect("openssl runs")
}

/// Subject, issuer and SANs of the PEM certificate `pem` (openssl).
fn x509_text(pem: &[u8]) -> String {
    let o = openssl(
        &[
            "x509",
            "-noout",
            "-subject",
            "-issuer",
            "-ext",
            "subjectAltName,extendedKeyUsage",
        ],
        Some(pem),
    );
    assert!(
        o.status.success(),
        "openssl x509: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn decode_certificate(csr: &Value) -> Vec<u8> {
    let o = openssl(
        &["base64", "-d", "-A"],
        Some(field(csr, "/status/certificate").as_bytes()),
    );
    assert!(o.status.success());
    o.stdout
}

fn stdout_and_stderr(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn kubelets_join_with_a_bootstrap_token() {
    if !lab::available(TEST) {
        return;
    }
    if !real_k8s() {
        eprintln!(
            "note: {TEST} not run: it needs the real Kubernetes binaries in KUBEFORGE_K8S_BIN_DIR"
        );
        return;
    }
    let Some(b) = binaries() else { return };
    if kubeforge_tests::find_tool("openssl", None).is_none() {
        kubeforge_tests::skip(TEST, "openssl not found");
        return;
    }
    let nodes = [
        ("cp1", Ipv4Addr::new(10, 77, 0, 11)),
        ("worker1", Ipv4Addr::new(10, 77, 0, 21)),
    ];
    let (lab, kf) = start(&b, &nodes, bootstrap_inventory);

    // 1. Every phase and gate, the kubelets joining with the token.
    let started = Instant::now();
    let out = kf.apply(&[]);
    let first = started.elapsed();
    assert!(out.status.success(), "apply failed");
    let text = stdout_and_stderr(&out);
    assert!(
        text.contains("api apply: Secret kube-system/bootstrap-token-"),
        "{text}"
    );
    assert!(!text.contains("not approved"), "{text}");
    // Once each kubelet has its own client certificate, the bootstrap
    // kubeconfig (and with it the token) is gone from the node.
    assert!(
        text.contains("remove /etc/kubernetes/bootstrap-kubelet.conf (the kubelet has its client certificate)"),
        "{text}"
    );
    for node in ["cp1", "worker1"] {
        assert_eq!(
            lab.ssh_ok(
                node,
                "[ -e /etc/kubernetes/bootstrap-kubelet.conf ] && echo present || echo gone"
            )
            .trim(),
            "gone",
            "{node}"
        );
    }
    // The token has an expiration, in the state directory and its Secret.
    let token_file =
        std::fs::read_to_string(kf.pki("bootstrap-token")).expect("the bootstrap token file");
    assert!(
        token_file
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("expiration=")),
        "the bootstrap token has no recorded expiration"
    );

    // 2. The requests, through the API with the admin credentials: each
    //    kubelet's client request approved by the controller manager, its
    //    serving request by kubeforge, every one issued.
    let csrs = list_csrs(&kf);
    eprintln!(
        "certificate signing requests after the first apply:\n{}",
        describe(&csrs)
    );
    // "issuer=CN = ..." of what the cluster CA issued.
    let issuer = x509_text(&std::fs::read(kf.pki("ca.crt")).expect("ca.crt"))
        .lines()
        .find_map(|l| l.strip_prefix("subject="))
        .map(|s| format!("issuer={s}"))
        .expect("the CA's subject");
    let token_id = std::fs::read_to_string(kf.dir.join(".kubeforge/lab/pki/bootstrap-token"))
        .expect("the state directory holds the bootstrap token")
        .trim()
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    for (signer, reason) in [
        (CLIENT_SIGNER, "Approved/AutoApproved"),
        (SERVING_SIGNER, "Approved/KubeforgeApproved"),
    ] {
        let of: Vec<&Value> = csrs
            .iter()
            .filter(|c| field(c, "/spec/signerName") == signer)
            .collect();
        assert_eq!(of.len(), 2, "{signer}: {}", describe(&csrs));
        let mut subjects = Vec::new();
        for c in of {
            assert_eq!(conditions(c), [reason], "{c}");
            let cert = x509_text(&decode_certificate(c));
            assert!(cert.contains(&issuer), "{issuer}: {cert}");
            let user = field(c, "/spec/username");
            if signer == CLIENT_SIGNER {
                assert_eq!(user, format!("system:bootstrap:{token_id}"));
                assert!(cert.contains("TLS Web Client Authentication"), "{cert}");
            } else {
                assert!(cert.contains("TLS Web Server Authentication"), "{cert}");
                let node = user.strip_prefix("system:node:").expect("a node's request");
                let address = lab.node_address(node);
                assert!(
                    cert.contains(&format!("DNS:{node}, IP Address:{address}")),
                    "{cert}"
                );
            }
            subjects.push(
                cert.lines()
                    .find(|l| l.starts_with("subject="))
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        subjects.sort();
        assert_eq!(
            subjects,
            [
                "subject=O = system:nodes, CN = system:node:cp1",
                "subject=O = system:nodes, CN = system:node:worker1"
            ],
            "{signer}"
        );
    }

    // 3. On worker1: the certificates the kubelet keeps (0600) and the
    //    kubeconfig it wrote itself.
    let pki = lab.ssh_ok(
        "worker1",
        "cd /var/lib/kubelet/pki && for f in kubelet-client-current.pem kubelet-server-current.pem; do \
           echo \"$f -> $(readlink $f) $(stat -L -c '%a %U' $f)\"; done",
    );
    eprintln!("worker1:/var/lib/kubelet/pki:\n{pki}");
    for line in pki.lines() {
        assert!(line.ends_with(" 600 root"), "{pki}");
        assert!(line.contains("-> /var/lib/kubelet/pki/kubelet-"), "{pki}");
    }
    assert_eq!(pki.lines().count(), 2, "{pki}");
    let conf = lab.ssh_ok("worker1", "cat /etc/kubernetes/kubelet.conf");
    assert!(
        conf.contains("client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem")
            && conf.contains("name: default-auth"),
        "{conf}"
    );
    assert!(!conf.contains("token"), "{conf}");
    // What the kubelet logged of its certificates (for the record; the
    // files and requests above are the proof).
    let journal = lab.journal("worker1", "kubelet", 200);
    let steps: Vec<&str> = journal
        .lines()
        .filter(|l| l.contains("certificate") || l.contains("Certificate"))
        .collect();
    eprintln!("worker1's kubelet:\n{}", steps.join("\n"));
    assert_eq!(
        lab.ssh_ok("worker1", "stat -c '%a' /etc/kubernetes/kubelet.conf")
            .trim(),
        "600"
    );

    // 4. The kubelet API presents the serving certificate: issued by the
    //    cluster CA, for worker1's address (curl verifies both).
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(kf.pki("ca.crt"))
        .arg("--cert")
        .arg(kf.pki("apiserver-kubelet-client.crt"))
        .arg("--key")
        .arg(kf.pki("apiserver-kubelet-client.key"))
        .arg("https://10.77.0.21:10250/healthz")
        .output()
        .expect("curl runs");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "ok",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let ca = kf.pki("ca.crt").display().to_string();
    let cert = kf.pki("apiserver-kubelet-client.crt").display().to_string();
    let key = kf.pki("apiserver-kubelet-client.key").display().to_string();
    let o = openssl(
        &[
            "s_client",
            "-connect",
            "10.77.0.21:10250",
            "-CAfile",
            &ca,
            "-cert",
            &cert,
            "-key",
            &key,
            "-verify_return_error",
            "-verify_ip",
            "10.77.0.21",
        ],
        Some(b""),
    );
    let served = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        served.contains("Verify return code: 0 (ok)"),
        "{served}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let served_cert = x509_text(served.as_bytes());
    eprintln!("the kubelet API on 10.77.0.21:10250 presents:\n{served_cert}");
    assert!(served_cert.contains(&issuer), "{served_cert}");
    assert!(
        served_cert.contains("DNS:worker1, IP Address:10.77.0.21"),
        "{served_cert}"
    );

    // 5. Again: nothing to do, nothing restarts, no new request.
    let before = unit_clock(&lab, &["cp1", "worker1"], &UNITS);
    let started = Instant::now();
    let out = kf.apply(&[]);
    let noop = started.elapsed();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("No changes"),
        "{}",
        stdout_and_stderr(&out)
    );
    assert_eq!(before, unit_clock(&lab, &["cp1", "worker1"], &UNITS));
    assert_eq!(list_csrs(&kf).len(), 4);

    // 6. worker1 (its own client certificate, so the API names it
    //    system:node:worker1) asks for a serving certificate that also
    //    names evil.example.
    let work = kf.dir.join("evil");
    std::fs::create_dir_all(&work).expect("evil dir");
    std::fs::write(
        work.join("worker1.pem"),
        lab.ssh_ok(
            "worker1",
            "cat /var/lib/kubelet/pki/kubelet-client-current.pem",
        ),
    )
    .expect("worker1.pem");
    let req = work.join("evil.csr");
    let o = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(work.join("evil.key"))
        .arg("-out")
        .arg(&req)
        .args([
            "-subj",
            "/O=system:nodes/CN=system:node:worker1",
            "-addext",
            "subjectAltName=DNS:worker1,DNS:evil.example,IP:10.77.0.21",
        ])
        .output()
        .expect("openssl req runs");
    assert!(o.status.success(), "{}", stdout_and_stderr(&o));
    let pem = std::fs::read(&req).expect("evil.csr");
    let b64 = openssl(&["base64", "-A"], Some(&pem));
    let body = serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": "evil-serving"},
        "spec": {
            "request": String::from_utf8_lossy(&b64.stdout).trim(),
            "signerName": SERVING_SIGNER,
            "usages": ["digital signature", "key encipherment", "server auth"],
        }
    });
    std::fs::write(work.join("evil.json"), body.to_string()).expect("evil.json");
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(kf.pki("ca.crt"))
        .arg("--cert")
        .arg(work.join("worker1.pem"))
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(format!("@{}", work.join("evil.json").display()))
        .arg(format!("{API}{CSRS}"))
        .output()
        .expect("curl runs");
    let created: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", stdout_and_stderr(&o)));
    assert_eq!(
        field(&created, "/metadata/name"),
        "evil-serving",
        "{created}"
    );
    assert_eq!(field(&created, "/spec/username"), "system:node:worker1");

    // Make the apply restart worker1's kubelet (a changed config file), so
    // its cluster gates look at the requests again.
    lab.ssh_ok(
        "worker1",
        "echo '# changed by the test' >> /etc/kubernetes/kubelet-config.yaml",
    );
    let before = unit_clock(&lab, &["worker1"], &["kubelet"]);
    let out = kf.apply(&[]);
    assert!(out.status.success(), "apply after the evil request failed");
    assert_ne!(
        before,
        unit_clock(&lab, &["worker1"], &["kubelet"]),
        "kubelet did not restart"
    );
    let text = stdout_and_stderr(&out);
    assert!(
        text.contains("warning: certificate signing request evil-serving not approved:")
            && text.contains("evil.example"),
        "{text}"
    );
    let csrs = list_csrs(&kf);
    eprintln!(
        "certificate signing requests at the end:\n{}",
        describe(&csrs)
    );
    let evil = csrs
        .iter()
        .find(|c| field(c, "/metadata/name") == "evil-serving")
        .expect("evil-serving is listed");
    assert_eq!(conditions(evil), Vec::<String>::new(), "{evil}");
    assert_eq!(field(evil, "/status/certificate"), "");
    // The restarted kubelet asked for nothing new.
    assert_eq!(csrs.len(), 5, "{}", describe(&csrs));

    // 7. worker1 loses its client certificate (and the kubeconfig naming
    //    it): the apply gives it the bootstrap kubeconfig again, with the
    //    current token, the kubelet joins anew, and the file goes again.
    lab.ssh_ok(
        "worker1",
        "rm -f /var/lib/kubelet/pki/kubelet-client-*.pem /etc/kubernetes/kubelet.conf",
    );
    let out = kf.apply(&[]);
    let text = stdout_and_stderr(&out);
    assert!(
        out.status.success(),
        "apply after a lost certificate failed"
    );
    assert!(
        text.contains("/etc/kubernetes/bootstrap-kubelet.conf")
            && text.contains("remove /etc/kubernetes/bootstrap-kubelet.conf"),
        "{text}"
    );
    assert_eq!(
        lab.ssh_ok(
            "worker1",
            "[ -e /etc/kubernetes/bootstrap-kubelet.conf ] && echo present || echo gone"
        )
        .trim(),
        "gone"
    );
    assert!(lab
        .ssh_ok("worker1", "ls /var/lib/kubelet/pki")
        .contains("kubelet-client-current.pem"));
    let out = kf.apply(&[]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("No changes"),
        "{}",
        stdout_and_stderr(&out)
    );
    eprintln!(
        "{TEST} timings: first apply {:.1} s, no-op re-apply {:.1} s",
        first.as_secs_f64(),
        noop.as_secs_f64()
    );
}
