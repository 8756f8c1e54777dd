//! The certificates on the nodes (`kubeforge certs`): every certificate
//! file kubeforge placed, the client certificates of its kubeconfigs and
//! the kubelet's own ones (`/var/lib/kubelet/pki/*-current.pem`), read in
//! one round trip per node (certificate blocks only: no key leaves a
//! node), each compared with the state directory's copy and judged as the
//! state directory's are (expiry, the CA that signs now, the names the
//! inventory needs).

use crate::{bounded, Transports};
use kubeforge_inventory::Cluster;
use kubeforge_pki::{catalog, CaId, CertState, San, Stored};
use kubeforge_plan::cert;
use kubeforge_render::{NodeTree, Rendered};
use kubeforge_transport::{Script, Transport};
use serde::Serialize;
use std::net::IpAddr;
use std::time::Duration;
use time::OffsetDateTime;

/// `== PATH` and the certificate blocks of each file: of a PEM file as
/// they are, of a kubeconfig (`kubeconfig:PATH`) its decoded
/// client-certificate-data; with `$1` = 1 also the kubelet's own
/// certificates in /var/lib/kubelet/pki (the `-current` links, and files
/// without a rotation timestamp in their name). Keys never leave the node.
pub(crate) const CERTS: &str = r#"kubelet=$1; shift
for p in "$@"; do
  case "$p" in
    kubeconfig:*)
      f=${p#kubeconfig:}
      [ -f "$f" ] || continue
      echo "== $f"
      sed -n 's/^[[:space:]]*client-certificate-data:[[:space:]]*//p' "$f" | base64 -d 2>/dev/null
      echo ;;
    *)
      [ -f "$p" ] || continue
      echo "== $p"
      sed -n '/-----BEGIN CERTIFICATE-----/,/-----END CERTIFICATE-----/p' "$p" ;;
  esac
done
if [ "$kubelet" = 1 ] && [ -d /var/lib/kubelet/pki ]; then
  for f in /var/lib/kubelet/pki/*.pem; do
    [ -e "$f" ] || continue
    if [ ! -L "$f" ]; then
      case "${f##*/}" in *-[0-9][0-9][0-9][0-9]-*) continue ;; esac
    fi
    echo "== $f"
    sed -n '/-----BEGIN CERTIFICATE-----/,/-----END CERTIFICATE-----/p' "$f"
  done
fi
"#;

/// Where the kubelet keeps the certificates it asked for itself.
const KUBELET_PKI: &str = "/var/lib/kubelet/pki/";

/// The certificate files the table places on the node, and its
/// kubeconfigs (for their client certificates): the arguments of
/// [`CERTS`].
pub(crate) fn certificate_args(tree: &NodeTree) -> Vec<String> {
    let kubelet = tree.units.iter().any(|u| u.name == "kubelet");
    let mut args = vec![if kubelet { "1" } else { "0" }.to_string()];
    for f in tree.files.values().filter(|f| f.from_file.is_none()) {
        if cert::is_kubeconfig(&f.content) {
            if String::from_utf8_lossy(&f.content).contains("client-certificate-data:") {
                args.push(format!("kubeconfig:{}", f.path));
            }
        } else if !f.secret && cert::is_certificate_pem(&f.content) {
            args.push(f.path.clone());
        }
    }
    args
}

/// The `== PATH` sections of [`CERTS`]' output: (path, its text).
pub(crate) fn sections(out: &str) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = Vec::new();
    for line in out.lines() {
        if let Some(path) = line.strip_prefix("== ") {
            found.push((path.to_string(), String::new()));
        } else if let Some((_, body)) = found.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    found
}

/// Reads the node's certificates in one round trip: (path, certificate
/// blocks).
pub async fn read(t: &dyn Transport, tree: &NodeTree) -> Result<Vec<(String, String)>, String> {
    let out = t
        .run(
            Script::new("read the node's certificates", CERTS)
                .args(certificate_args(tree))
                .timeout(Duration::from_secs(60)),
        )
        .await
        .map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!(
            "reading the certificates failed: {}{}",
            out.stdout_str(),
            out.stderr_str()
        ));
    }
    Ok(sections(&out.stdout_str()))
}

/// One certificate on a node, judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeCert {
    pub node: String,
    /// The file (a kubeconfig's path for its client certificate).
    pub path: String,
    /// What it is: `apiserver`, `kube-proxy (kubeconfig)`, `kubernetes
    /// CA`, `kubernetes CA (1 of 2)` (a trust bundle during a rotation),
    /// `kubelet's own client certificate`, ...
    pub name: String,
    pub subject: String,
    /// The CA that issues it (none for a CA certificate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
    pub check: CertState,
}

/// The certificate blocks of a PEM text, each without line breaks (for
/// comparing two files).
fn blocks(text: &str) -> Vec<String> {
    text.split("-----END CERTIFICATE-----")
        .filter_map(|b| b.split_once("-----BEGIN CERTIFICATE-----").map(|(_, x)| x))
        .map(|b| b.split_whitespace().collect())
        .collect()
}

fn block_pem(b64: &str) -> String {
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    let chars: Vec<char> = b64.chars().collect();
    for line in chars.chunks(64) {
        s.extend(line);
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

/// What a rendered certificate file is, from its source.
enum Kind {
    /// A CA's trust bundle: the CA, or during its rotation the old and
    /// the new one.
    Ca(CaId),
    /// The certificate of the CA that signs (for a component that takes
    /// exactly one).
    Signer(CaId),
    /// A leaf of the catalog; `kubeconfig`: a kubeconfig's client
    /// certificate.
    Leaf {
        spec: &'static catalog::CertSpec,
        kubeconfig: bool,
    },
}

fn kind_of(source: &str) -> Option<Kind> {
    let (what, id) = source.split_once(':')?;
    match what {
        "ca" => CaId::parse(id).map(Kind::Ca),
        "ca-signer" => CaId::parse(id).map(Kind::Signer),
        "cert" => catalog::spec(id).map(|spec| Kind::Leaf {
            spec,
            kubeconfig: false,
        }),
        "kubeconfig" => catalog::spec(id).map(|spec| Kind::Leaf {
            spec,
            kubeconfig: true,
        }),
        _ => None,
    }
}

/// Judges what was read from one node against the state directory.
pub fn judge_node(
    tree: &NodeTree,
    found: &[(String, String)],
    stored: &Stored,
    cluster: &Cluster,
    now: OffsetDateTime,
) -> Vec<NodeCert> {
    let days = cluster.pki.renew_before_days;
    let requests = catalog::requests(cluster);
    let mut out = Vec::new();
    let expected_paths: Vec<String> = certificate_args(tree)
        .into_iter()
        .skip(1)
        .map(|a| a.trim_start_matches("kubeconfig:").to_string())
        .collect();
    for path in &expected_paths {
        let Some(file) = tree.files.get(path) else {
            continue;
        };
        let Some(kind) = kind_of(&file.source) else {
            continue;
        };
        let text = found.iter().find(|(p, _)| p == path).map(|(_, t)| t);
        let (name, ca, expected) = match &kind {
            Kind::Ca(ca) => (ca.to_string(), None, stored.trust.get(ca).cloned()),
            Kind::Signer(ca) => (
                format!("{ca} (signer)"),
                None,
                stored.signers.get(ca).cloned(),
            ),
            Kind::Leaf { spec, kubeconfig } => {
                let per_node = matches!(spec.scope, catalog::Scope::PerNode(_));
                let stem = if per_node {
                    format!("nodes/{}/{}", tree.name, spec.id)
                } else {
                    spec.id.to_string()
                };
                let name = if *kubeconfig {
                    format!("{} (kubeconfig)", spec.id)
                } else {
                    spec.id.to_string()
                };
                (name, Some(spec.ca), stored.leaves.get(&stem).cloned())
            }
        };
        let Some(text) = text else {
            out.push(NodeCert {
                node: tree.name.clone(),
                path: path.clone(),
                name,
                subject: String::new(),
                ca,
                serial: None,
                not_after: None,
                check: CertState::Missing,
            });
            continue;
        };
        let have = blocks(text);
        let differs = expected.as_deref().map(blocks) != Some(have.clone());
        let total = have.len();
        for (i, b) in have.iter().enumerate() {
            let pem = block_pem(b);
            let state = match &kind {
                Kind::Ca(_) | Kind::Signer(_) => kubeforge_pki::judge_ca(&pem, days, now),
                Kind::Leaf { spec, .. } => {
                    let sans: Vec<San> = requests
                        .iter()
                        .find(|r| {
                            r.spec.id == spec.id && r.node.as_deref().is_none_or(|n| n == tree.name)
                        })
                        .map(|r| r.sans.clone())
                        .unwrap_or_default();
                    match stored.signers.get(&spec.ca) {
                        Some(signer) => kubeforge_pki::judge(&pem, signer, &sans, days, now),
                        None => CertState::NotSignedByCurrentCa,
                    }
                }
            };
            let check = if differs {
                state.worst(CertState::Differs)
            } else {
                state
            };
            let name = if total > 1 {
                format!("{name} ({} of {total})", i + 1)
            } else {
                name.clone()
            };
            out.push(row(tree, path, name, ca, &pem, check));
        }
    }
    // The kubelet's own certificates.
    for (path, text) in found.iter().filter(|(p, _)| p.starts_with(KUBELET_PKI)) {
        let file = path.trim_start_matches(KUBELET_PKI);
        let (name, sans) = if file.starts_with("kubelet-client") {
            ("kubelet's own client certificate".to_string(), Vec::new())
        } else if file.starts_with("kubelet-server") {
            let mut sans = vec![San::Dns(tree.name.clone())];
            if let Ok(ip) = tree.address.parse::<IpAddr>() {
                sans.push(San::Ip(ip));
            }
            ("kubelet's own serving certificate".to_string(), sans)
        } else {
            (format!("kubelet's {file}"), Vec::new())
        };
        let Some(b) = blocks(text).into_iter().next() else {
            continue;
        };
        let pem = block_pem(&b);
        let check = match stored.signers.get(&CaId::Kubernetes) {
            Some(signer) => kubeforge_pki::judge(&pem, signer, &sans, days, now),
            None => CertState::NotSignedByCurrentCa,
        };
        out.push(row(tree, path, name, Some(CaId::Kubernetes), &pem, check));
    }
    out
}

fn row(
    tree: &NodeTree,
    path: &str,
    name: String,
    ca: Option<CaId>,
    pem: &str,
    check: CertState,
) -> NodeCert {
    let parsed = cert::parse_pem(pem.as_bytes())
        .ok()
        .and_then(|v| v.into_iter().next());
    NodeCert {
        node: tree.name.clone(),
        path: path.to_string(),
        name,
        subject: parsed
            .as_ref()
            .map(|c| c.common_name().to_string())
            .unwrap_or_default(),
        ca,
        serial: parsed.as_ref().map(|c| c.serial.clone()),
        not_after: parsed
            .as_ref()
            .and_then(|c| OffsetDateTime::from_unix_timestamp(c.not_after).ok()),
        check: match parsed {
            Some(_) => check,
            None => CertState::Invalid("not a readable certificate".into()),
        },
    }
}

/// What [`nodes`] found on one node: its certificates, or why they could
/// not be read.
#[derive(Debug, Clone, Serialize)]
pub struct NodeCerts {
    pub node: String,
    pub certificates: Vec<NodeCert>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Reads and judges every reachable node's certificates, `concurrency`
/// nodes at a time; `unreachable` nodes are reported with why.
pub async fn nodes(
    rendered: &Rendered,
    transports: &Transports,
    unreachable: &std::collections::BTreeMap<String, String>,
    stored: &Stored,
    cluster: &Cluster,
    concurrency: usize,
) -> Vec<NodeCerts> {
    let now = OffsetDateTime::now_utc();
    bounded(
        rendered.nodes.iter().collect(),
        concurrency,
        |tree| async move {
            let Some(t) = transports.get(&tree.name) else {
                return NodeCerts {
                    node: tree.name.clone(),
                    certificates: Vec::new(),
                    error: Some(
                        unreachable
                            .get(&tree.name)
                            .cloned()
                            .unwrap_or_else(|| "not reached".into()),
                    ),
                };
            };
            match read(t.as_ref(), tree).await {
                Ok(found) => NodeCerts {
                    node: tree.name.clone(),
                    certificates: judge_node(tree, &found, stored, cluster, now),
                    error: None,
                },
                Err(e) => NodeCerts {
                    node: tree.name.clone(),
                    certificates: Vec::new(),
                    error: Some(e),
                },
            }
        },
    )
    .await
}
