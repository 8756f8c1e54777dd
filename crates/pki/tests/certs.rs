//! Every certificate of the HA inventory, parsed back with x509-parser and
//! checked against the reference table (docs: pki-and-flags.md), then
//! verified once more with `openssl verify`.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use common::{fresh, ha, now, pki};
use kubeforge_pki::catalog;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::prelude::X509Certificate;

const CA_DAYS: i64 = 3650;
const LEAF_DAYS: i64 = 365;
const TOLERANCE: Duration = Duration::minutes(1);
const BACKDATE: Duration = Duration::minutes(5);

/// (CA name, file stem in pki/, common name)
const CAS: [(&str, &str, &str); 3] = [
    ("kubernetes", "ca", "kubernetes-ca"),
    ("etcd", "etcd/ca", "etcd-ca"),
    ("front-proxy", "front-proxy-ca", "kubernetes-front-proxy-ca"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Server,
    Client,
    Both,
}

impl Kind {
    fn server(self) -> bool {
        matches!(self, Kind::Server | Kind::Both)
    }
    fn client(self) -> bool {
        matches!(self, Kind::Client | Kind::Both)
    }
}

use Kind::{Both, Client, Server};

/// (id, node, CN, O, CA, kind)
type Row = (
    &'static str,
    Option<&'static str>,
    &'static str,
    Option<&'static str>,
    &'static str,
    Kind,
);

/// The reference table of pki-and-flags.md, written out for ha.toml.
#[rustfmt::skip]
const TABLE: &[Row] = &[
    ("apiserver", None, "kube-apiserver", None, "kubernetes", Server),
    ("apiserver-kubelet-client", None, "kube-apiserver-kubelet-client", None, "kubernetes", Client),
    ("apiserver-etcd-client", None, "kube-apiserver-etcd-client", None, "etcd", Client),
    ("front-proxy-client", None, "front-proxy-client", None, "front-proxy", Client),
    ("etcd-server", Some("cp1"), "cp1", None, "etcd", Both),
    ("etcd-server", Some("cp2"), "cp2", None, "etcd", Both),
    ("etcd-server", Some("cp3"), "cp3", None, "etcd", Both),
    ("etcd-peer", Some("cp1"), "cp1", None, "etcd", Both),
    ("etcd-peer", Some("cp2"), "cp2", None, "etcd", Both),
    ("etcd-peer", Some("cp3"), "cp3", None, "etcd", Both),
    ("etcd-healthcheck-client", None, "kube-etcd-healthcheck-client", None, "etcd", Client),
    ("kube-controller-manager", None, "system:kube-controller-manager", None, "kubernetes", Client),
    ("kube-controller-manager-server", Some("cp1"), "kube-controller-manager", None, "kubernetes", Server),
    ("kube-controller-manager-server", Some("cp2"), "kube-controller-manager", None, "kubernetes", Server),
    ("kube-controller-manager-server", Some("cp3"), "kube-controller-manager", None, "kubernetes", Server),
    ("kube-scheduler", None, "system:kube-scheduler", None, "kubernetes", Client),
    ("kube-scheduler-server", Some("cp1"), "kube-scheduler", None, "kubernetes", Server),
    ("kube-scheduler-server", Some("cp2"), "kube-scheduler", None, "kubernetes", Server),
    ("kube-scheduler-server", Some("cp3"), "kube-scheduler", None, "kubernetes", Server),
    ("kubelet-client", Some("cp1"), "system:node:cp1", Some("system:nodes"), "kubernetes", Client),
    ("kubelet-client", Some("cp2"), "system:node:cp2", Some("system:nodes"), "kubernetes", Client),
    ("kubelet-client", Some("cp3"), "system:node:cp3", Some("system:nodes"), "kubernetes", Client),
    ("kubelet-client", Some("worker1"), "system:node:worker1", Some("system:nodes"), "kubernetes", Client),
    ("kubelet-client", Some("worker2"), "system:node:worker2", Some("system:nodes"), "kubernetes", Client),
    ("kubelet-server", Some("cp1"), "cp1", None, "kubernetes", Server),
    ("kubelet-server", Some("cp2"), "cp2", None, "kubernetes", Server),
    ("kubelet-server", Some("cp3"), "cp3", None, "kubernetes", Server),
    ("kubelet-server", Some("worker1"), "worker1", None, "kubernetes", Server),
    ("kubelet-server", Some("worker2"), "worker2", None, "kubernetes", Server),
    ("kube-proxy", None, "system:kube-proxy", None, "kubernetes", Client),
    ("admin", None, "kubernetes-admin", Some("kubeforge:cluster-admins"), "kubernetes", Client),
    ("super-admin", None, "kubernetes-super-admin", Some("system:masters"), "kubernetes", Client),
];

fn node_ip(node: &str) -> &'static str {
    match node {
        "cp1" => "10.77.0.11",
        "cp2" => "10.77.0.12",
        "cp3" => "10.77.0.13",
        "worker1" => "10.77.0.21",
        "worker2" => "10.77.0.22",
        other => panic!("no address for {other} in ha.toml"),
    }
}

/// The SANs each leaf of ha.toml must carry, exactly.
fn expected_sans(id: &str, node: Option<&str>) -> BTreeSet<String> {
    let list: Vec<String> = match (id, node) {
        ("apiserver", None) => [
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster",
            "DNS:kubernetes.default.svc.cluster.local",
            "DNS:cp1",
            "DNS:cp2",
            "DNS:cp3",
            "IP:10.77.0.11",
            "IP:10.77.0.12",
            "IP:10.77.0.13",
            "IP:10.77.0.100",
            "IP:10.96.0.1",
            "DNS:localhost",
            "IP:127.0.0.1",
            "DNS:k8s.example.internal",
        ]
        .map(String::from)
        .to_vec(),
        (
            "etcd-server"
            | "etcd-peer"
            | "kube-controller-manager-server"
            | "kube-scheduler-server",
            Some(n),
        ) => vec![
            format!("DNS:{n}"),
            format!("IP:{}", node_ip(n)),
            "DNS:localhost".into(),
            "IP:127.0.0.1".into(),
        ],
        ("kubelet-server", Some(n)) => vec![format!("DNS:{n}"), format!("IP:{}", node_ip(n))],
        (_, _) => vec![],
    };
    let set: BTreeSet<String> = list.iter().cloned().collect();
    assert_eq!(set.len(), list.len(), "duplicate in the expected SANs");
    set
}

fn stem(id: &str, node: Option<&str>) -> String {
    match node {
        Some(n) => format!("nodes/{n}/{id}"),
        None => id.to_string(),
    }
}

fn ca_stem(ca: &str) -> &'static str {
    CAS.iter()
        .find(|(name, _, _)| *name == ca)
        .map(|(_, stem, _)| *stem)
        .unwrap()
}

fn read_pem(path: &Path) -> Pem {
    let bytes = std::fs::read(path).unwrap();
    let (rest, pem) = x509_parser::pem::parse_x509_pem(&bytes)
        .unwrap_or_else(|e| panic!("{}: not PEM: {e}", path.display()));
    assert!(
        rest.iter().all(u8::is_ascii_whitespace),
        "{}: trailing data after the certificate",
        path.display()
    );
    assert_eq!(pem.label, "CERTIFICATE", "{}", path.display());
    pem
}

fn cert(pem: &Pem) -> X509Certificate<'_> {
    pem.parse_x509().unwrap()
}

fn time_of(t: x509_parser::time::ASN1Time) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.timestamp()).unwrap()
}

fn cns(c: &X509Certificate<'_>) -> Vec<String> {
    c.subject()
        .iter_common_name()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn orgs(c: &X509Certificate<'_>) -> Vec<String> {
    c.subject()
        .iter_organization()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn sans(c: &X509Certificate<'_>) -> Vec<String> {
    let Some(ext) = c.subject_alternative_name().unwrap() else {
        return vec![];
    };
    ext.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("DNS:{d}"),
            GeneralName::IPAddress(b) => match b.len() {
                4 => format!(
                    "IP:{}",
                    std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap())
                ),
                16 => format!(
                    "IP:{}",
                    std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap())
                ),
                l => panic!("an IP SAN of {l} bytes"),
            },
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn key_matches(cert: &X509Certificate<'_>, key_path: &Path) {
    use rcgen::PublicKeyData;
    let key_pem = std::fs::read_to_string(key_path).unwrap();
    let key = rcgen::KeyPair::from_pem(&key_pem)
        .unwrap_or_else(|e| panic!("{}: {e}", key_path.display()));
    assert_eq!(
        key.subject_public_key_info(),
        cert.public_key().raw,
        "{}: the private key does not belong to the certificate",
        key_path.display()
    );
}

#[test]
fn table_covers_exactly_the_catalog_requests() {
    let cluster = ha();
    let got: BTreeSet<(String, Option<String>)> = catalog::requests(&cluster)
        .iter()
        .map(|r| (r.spec.id.to_string(), r.node.clone()))
        .collect();
    let want: BTreeSet<(String, Option<String>)> = TABLE
        .iter()
        .map(|(id, node, ..)| (id.to_string(), node.map(str::to_string)))
        .collect();
    assert_eq!(got, want);
    assert_eq!(catalog::requests(&cluster).len(), TABLE.len());
}

#[test]
fn cas_are_self_signed_with_ca_usages_and_validity() {
    let cluster = ha();
    let t0 = now();
    let (dir, _) = fresh(&cluster, t0);
    for (name, stem, cn) in CAS {
        let path = pki(dir.path()).join(format!("{stem}.crt"));
        let pem = read_pem(&path);
        let c = cert(&pem);
        assert_eq!(c.subject().as_raw(), c.issuer().as_raw(), "{name}: issuer");
        c.verify_signature(None)
            .unwrap_or_else(|e| panic!("{name} CA is not self-signed: {e}"));
        assert_eq!(cns(&c), vec![cn.to_string()], "{name} CA CN");
        assert!(orgs(&c).is_empty(), "{name} CA O");
        let bc = c.basic_constraints().unwrap().expect("basicConstraints");
        assert!(bc.value.ca, "{name} CA: basicConstraints CA:TRUE");
        assert!(bc.critical, "{name} CA: basicConstraints must be critical");
        let ku = c.key_usage().unwrap().expect("keyUsage");
        assert!(ku.value.key_cert_sign(), "{name} CA keyCertSign");
        assert!(ku.value.crl_sign(), "{name} CA cRLSign");
        assert!(ku.value.digital_signature(), "{name} CA digitalSignature");
        assert!(c.is_ca());

        let nb = time_of(c.validity().not_before);
        let na = time_of(c.validity().not_after);
        assert!(
            (nb - (t0 - BACKDATE)).abs() <= TOLERANCE,
            "{name} CA not_before {nb}, issued at {t0}"
        );
        assert!(
            (na - (t0 + Duration::days(CA_DAYS))).abs() <= TOLERANCE,
            "{name} CA not_after {na}, want {CA_DAYS} days from {t0}"
        );
        key_matches(&c, &pki(dir.path()).join(format!("{stem}.key")));
    }
    // Three distinct keys.
    let keys: BTreeSet<Vec<u8>> = CAS
        .iter()
        .map(|(_, stem, _)| std::fs::read(pki(dir.path()).join(format!("{stem}.key"))).unwrap())
        .collect();
    assert_eq!(keys.len(), 3, "the three CAs must not share a key");
}

#[test]
fn leaves_match_the_reference_table() {
    let cluster = ha();
    let t0 = now();
    let (dir, reconciled) = fresh(&cluster, t0);
    let root = pki(dir.path());

    let ca_pems: BTreeMap<&str, Pem> = CAS
        .iter()
        .map(|(name, stem, _)| (*name, read_pem(&root.join(format!("{stem}.crt")))))
        .collect();

    for req in catalog::requests(&cluster) {
        let id = req.spec.id;
        let node = req.node.as_deref();
        let what = req.describe();
        let &(_, _, want_cn, want_o, want_ca, kind) = TABLE
            .iter()
            .find(|(i, n, ..)| *i == id && *n == node)
            .unwrap_or_else(|| panic!("{what} is not in the reference table"));
        assert_eq!(req.stem(), stem(id, node));

        let crt_path = root.join(format!("{}.crt", stem(id, node)));
        let key_path = root.join(format!("{}.key", stem(id, node)));
        let pem = read_pem(&crt_path);
        let c = cert(&pem);

        // What persist wrote is what reconcile hands to the renderer.
        let kc = reconciled.pki.leaf(id, node).unwrap();
        assert_eq!(std::fs::read_to_string(&crt_path).unwrap(), kc.cert_pem);
        assert_eq!(std::fs::read_to_string(&key_path).unwrap(), kc.key.0);

        // Signed by its CA and by no other.
        for (ca_name, ca_pem) in &ca_pems {
            let ca = cert(ca_pem);
            let verified = c.verify_signature(Some(ca.public_key()));
            if *ca_name == want_ca {
                verified.unwrap_or_else(|e| panic!("{what}: not signed by the {ca_name} CA: {e}"));
                assert_eq!(c.issuer().as_raw(), ca.subject().as_raw(), "{what}: issuer");
                assert_eq!(c.issuer().to_string(), ca.subject().to_string());
            } else {
                assert!(
                    verified.is_err(),
                    "{what}: verifies against the {ca_name} CA too"
                );
            }
        }

        // Subject.
        assert_eq!(cns(&c), vec![want_cn.to_string()], "{what}: CN");
        let want_orgs: Vec<String> = want_o.iter().map(|o| o.to_string()).collect();
        assert_eq!(orgs(&c), want_orgs, "{what}: O");

        // Usages.
        let ku = c.key_usage().unwrap().expect("keyUsage");
        assert!(ku.value.digital_signature(), "{what}: digitalSignature");
        assert!(ku.value.key_encipherment(), "{what}: keyEncipherment");
        assert!(!ku.value.key_cert_sign(), "{what}: keyCertSign on a leaf");
        assert!(!ku.value.crl_sign(), "{what}: cRLSign on a leaf");
        let eku = c.extended_key_usage().unwrap().expect("extendedKeyUsage");
        assert_eq!(eku.value.server_auth, kind.server(), "{what}: serverAuth");
        assert_eq!(eku.value.client_auth, kind.client(), "{what}: clientAuth");
        assert!(!eku.value.any, "{what}: anyExtendedKeyUsage");
        assert!(!c.is_ca(), "{what}: is a CA");
        if let Some(bc) = c.basic_constraints().unwrap() {
            assert!(!bc.value.ca, "{what}: basicConstraints CA:TRUE");
        }

        // SANs, exactly.
        let got = sans(&c);
        let got_set: BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(got_set.len(), got.len(), "{what}: duplicate SANs {got:?}");
        assert_eq!(got_set, expected_sans(id, node), "{what}: SANs");

        // Validity.
        let nb = time_of(c.validity().not_before);
        let na = time_of(c.validity().not_after);
        let ca_na = time_of(cert(&ca_pems[want_ca]).validity().not_after);
        assert!(nb <= t0, "{what}: not_before {nb} after issuing time {t0}");
        assert!(
            (nb - (t0 - BACKDATE)).abs() <= TOLERANCE,
            "{what}: not_before {nb}"
        );
        assert!(
            na <= t0 + Duration::days(LEAF_DAYS),
            "{what}: not_after {na} beyond {LEAF_DAYS} days"
        );
        assert!(
            na >= t0 + Duration::days(LEAF_DAYS) - TOLERANCE,
            "{what}: not_after {na} shorter than {LEAF_DAYS} days"
        );
        assert!(na <= ca_na, "{what}: outlives its CA ({na} > {ca_na})");

        // Files.
        assert_eq!(mode(&crt_path), 0o644, "{}", crt_path.display());
        assert_eq!(mode(&key_path), 0o600, "{}", key_path.display());
        key_matches(&c, &key_path);
    }
}

#[test]
fn file_modes() {
    let cluster = ha();
    let (dir, _) = fresh(&cluster, now());
    let root = pki(dir.path());
    assert_eq!(mode(&root), 0o700, "the pki dir");
    let files = common::snapshot(dir.path());
    assert!(files.contains_key(Path::new("sa.key")));
    assert!(files.contains_key(Path::new("sa.pub")));
    assert!(files.contains_key(Path::new("encryption-key")));
    for rel in files.keys() {
        let path = root.join(rel);
        let name = rel.to_string_lossy();
        let want = if name.ends_with(".crt") || name.ends_with(".pub") {
            0o644
        } else if name.ends_with(".key") || name == "encryption-key" {
            0o600
        } else {
            panic!("unexpected file {name} in the pki dir");
        };
        assert_eq!(mode(&path), want, "{name}");
    }
    // Directories other than pki/ itself hold keys too.
    for sub in ["etcd", "nodes", "nodes/cp1"] {
        let m = mode(&root.join(sub));
        assert_eq!(m & 0o022, 0, "pki/{sub} is writable by others: {m:o}");
    }
}

fn openssl_available() -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("openssl is not on PATH; CI must install it (e.g. apt-get install openssl)");
        }
        eprintln!("NOTICE: openssl is not on PATH; skipping the openssl checks");
    }
    ok
}

fn openssl_verify(ca: &Path, purpose: &str, leaf: &Path) -> (bool, String) {
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca)
        .arg("-purpose")
        .arg(purpose)
        .arg(leaf)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn openssl_verifies_every_leaf_against_its_ca_only() {
    if !openssl_available() {
        return;
    }
    let cluster = ha();
    let (dir, _) = fresh(&cluster, now());
    let root = pki(dir.path());
    let ca_file = |ca: &str| -> PathBuf { root.join(format!("{}.crt", ca_stem(ca))) };
    for &(id, node, _, _, want_ca, kind) in TABLE {
        let leaf = root.join(format!("{}.crt", stem(id, node)));
        let mut purposes = vec![];
        if kind.server() {
            purposes.push("sslserver");
        }
        if kind.client() {
            purposes.push("sslclient");
        }
        for purpose in &purposes {
            let (ok, text) = openssl_verify(&ca_file(want_ca), purpose, &leaf);
            assert!(ok, "{id} {node:?} ({purpose}): {text}");
            assert_eq!(
                text.trim(),
                format!("{}: OK", leaf.display()),
                "{id} {node:?} ({purpose})"
            );
            for (other, _, _) in CAS.iter().filter(|(n, _, _)| *n != want_ca) {
                let (ok, text) = openssl_verify(&ca_file(other), purpose, &leaf);
                assert!(
                    !ok && !text.contains(": OK"),
                    "{id} {node:?} verifies against the {other} CA: {text}"
                );
            }
        }
        // The EKU is enforced: a server-only certificate is no client
        // certificate and vice versa.
        let wrong = match kind {
            Server => Some("sslclient"),
            Client => Some("sslserver"),
            Both => None,
        };
        if let Some(purpose) = wrong {
            let (ok, text) = openssl_verify(&ca_file(want_ca), purpose, &leaf);
            assert!(!ok, "{id} {node:?} passes as {purpose}: {text}");
        }
    }
}

#[test]
fn service_account_public_key_belongs_to_private_key() {
    let cluster = ha();
    let (dir, reconciled) = fresh(&cluster, now());
    let root = pki(dir.path());
    let sa_pub = std::fs::read_to_string(root.join("sa.pub")).unwrap();
    assert_eq!(sa_pub, reconciled.pki.sa_public_pem);
    assert!(sa_pub.starts_with("-----BEGIN PUBLIC KEY-----"));
    // The SA key is its own key, not a CA's.
    let sa_key = std::fs::read(root.join("sa.key")).unwrap();
    for (_, stem, _) in CAS {
        assert_ne!(
            sa_key,
            std::fs::read(root.join(format!("{stem}.key"))).unwrap()
        );
    }
    let key = rcgen::KeyPair::from_pem(&String::from_utf8(sa_key).unwrap()).unwrap();
    assert_eq!(key.public_key_pem().trim(), sa_pub.trim());

    if !openssl_available() {
        return;
    }
    let out = Command::new("openssl")
        .arg("pkey")
        .arg("-in")
        .arg(root.join("sa.key"))
        .arg("-pubout")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), sa_pub.trim());
}

/// The base64 lines of every private key (and the encryption key) the PKI
/// holds. A PKCS#8 EC key embeds its public point, so a line may also occur
/// in a certificate or in sa.pub: such lines are public and skipped.
fn secret_lines(p: &kubeforge_pki::Pki) -> Vec<String> {
    let mut public: Vec<&str> = vec![&p.sa_public_pem];
    public.extend(p.cas.values().map(|kc| kc.cert_pem.as_str()));
    public.extend(p.leaves.values().map(|kc| kc.cert_pem.as_str()));
    let public: String = public.concat();
    let mut pems: Vec<&str> = vec![&p.sa_private.0];
    pems.extend(p.cas.values().map(|kc| kc.key.0.as_str()));
    pems.extend(p.leaves.values().map(|kc| kc.key.0.as_str()));
    let mut lines: Vec<String> = pems
        .iter()
        .flat_map(|pem| pem.lines())
        .filter(|l| !l.starts_with("-----") && !l.trim().is_empty())
        .filter(|l| !public.contains(*l))
        .map(str::to_string)
        .collect();
    lines.push(p.encryption_key.0.clone());
    assert!(lines.len() > 2 * (3 + p.leaves.len()));
    lines
}

#[test]
fn debug_output_never_shows_private_keys() {
    let cluster = ha();
    let dir = tempfile::tempdir().unwrap();
    let first = kubeforge_pki::reconcile(dir.path(), &cluster, &common::opts_at(now())).unwrap();
    let check = |r: &kubeforge_pki::Reconciled, when: &str| {
        let debug = format!("{r:?}");
        let pretty = format!("{r:#?}");
        for text in [&debug, &pretty] {
            assert!(
                !text.contains("PRIVATE KEY"),
                "{when}: a PEM key header in Debug"
            );
            for line in secret_lines(&r.pki) {
                assert!(
                    !text.contains(&line),
                    "{when}: private key bytes in Debug: {line}"
                );
            }
        }
        assert!(debug.contains("<redacted>"));
    };
    check(&first, "first run");
    first.persist(dir.path()).unwrap();
    let second = kubeforge_pki::reconcile(dir.path(), &cluster, &common::opts_at(now())).unwrap();
    check(&second, "second run");
}
