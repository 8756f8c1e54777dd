//! The kubelet's TLS bootstrapping, as the real kubelet does it (just
//! enough): with `--bootstrap-kubeconfig` and no usable `--kubeconfig` it
//! asks the apiserver, with the bootstrap token, for a client certificate
//! (`kubernetes.io/kube-apiserver-client-kubelet`), stores it with its key
//! in `<cert-dir>/kubelet-client-current.pem` and writes `--kubeconfig`
//! pointing at that file; with `serverTLSBootstrap: true` it asks, with
//! its client certificate, for a serving certificate
//! (`kubernetes.io/kubelet-serving`) for its name and address and serves
//! the kubelet API with `<cert-dir>/kubelet-server-current.pem`. A valid
//! certificate already in the directory is used again: a restart does not
//! ask again. No rotation.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use serde_json::Value;

use crate::files::{self, BootstrapKubeconfig, Kubeconfig, Pair};
use crate::http::{self, Url};
use crate::tls::{self, ServingCert};
use crate::{auth, csr};

pub const CLIENT_PREFIX: &str = "kubelet-client";
pub const SERVER_PREFIX: &str = "kubelet-server";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_secs(1);
/// After a serving request was denied or failed, ask again after this.
const SERVING_RETRY: Duration = Duration::from_secs(30);
pub const CLIENT_USAGES: [&str; 2] = ["digital signature", "client auth"];
pub const SERVING_USAGES: [&str; 3] = ["digital signature", "key encipherment", "server auth"];

/// `<cert-dir>/<prefix>-current.pem`.
pub fn current_path(cert_dir: &Path, prefix: &str) -> PathBuf {
    cert_dir.join(format!("{prefix}-current.pem"))
}

/// A certificate and its key from one PEM file; the certificate valid now.
pub fn load_pem_pair(path: &Path) -> Result<Pair, String> {
    let what = path.display().to_string();
    let pem = std::fs::read(path).map_err(|e| format!("{what}: cannot read: {e}"))?;
    let pair = Pair {
        chain: files::certs_from_pem(&what, &pem)?,
        key: files::key_from_pem(&what, &pem)?,
    };
    files::check_pair(&what, &pair)?;
    Ok(pair)
}

/// Writes `bytes` to `path` with mode 0600: a temporary file next to it,
/// then renamed over it.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Stores a certificate and its key as the kubelet's certificate store
/// does: `<prefix>-<UTC time>.pem` (0600) and the symbolic link
/// `<prefix>-current.pem` to it, replaced atomically. Returns the link.
pub fn store(
    cert_dir: &Path,
    prefix: &str,
    cert_pem: &str,
    key_pem: &str,
    now: time::OffsetDateTime,
) -> Result<PathBuf, String> {
    let t = now.to_offset(time::UtcOffset::UTC);
    let file = cert_dir.join(format!(
        "{prefix}-{:04}-{:02}-{:02}-{:02}-{:02}-{:02}.pem",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ));
    let mut bytes = cert_pem.trim_end().as_bytes().to_vec();
    bytes.push(b'\n');
    bytes.extend_from_slice(key_pem.trim_end().as_bytes());
    bytes.push(b'\n');
    write_private(&file, &bytes)?;
    let current = current_path(cert_dir, prefix);
    let updated = cert_dir.join(format!("{prefix}-updated.pem"));
    let _ = std::fs::remove_file(&updated);
    std::os::unix::fs::symlink(&file, &updated)
        .map_err(|e| format!("{}: {e}", updated.display()))?;
    std::fs::rename(&updated, &current).map_err(|e| format!("{}: {e}", current.display()))?;
    Ok(current)
}

/// The kubeconfig the kubelet writes after bootstrapping (as the real
/// kubelet's, `default-cluster` / `default-auth`), its client certificate
/// and key both in `pem`.
pub fn kubeconfig_text(b: &BootstrapKubeconfig, pem: &Path) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut ca = String::new();
    if let Some(f) = &b.ca_file {
        ca.push_str(&format!(
            "    certificate-authority: {}\n",
            q(&f.display().to_string())
        ));
    }
    if let Some(d) = &b.ca_data {
        ca.push_str(&format!("    certificate-authority-data: {}\n", q(d)));
    }
    let pem = q(&pem.display().to_string());
    format!(
        "apiVersion: v1\nclusters:\n- cluster:\n{ca}    server: {server}\n  name: default-cluster\ncontexts:\n- context:\n    cluster: default-cluster\n    namespace: default\n    user: default-auth\n  name: default-context\ncurrent-context: default-context\nkind: Config\npreferences: {{}}\nusers:\n- name: default-auth\n  user:\n    client-certificate: {pem}\n    client-key: {pem}\n",
        server = q(&b.server),
    )
}

/// POSTs a CertificateSigningRequest and waits until it is issued (Err
/// when it is denied or fails). Authenticates with `token` if given, else
/// with the client certificate of `tls`. Retries what the apiserver does
/// not take (backoff 1 s to 5 s), logging.
async fn request_certificate(
    api: &Url,
    tls: Arc<ClientConfig>,
    token: Option<&str>,
    object: &Value,
    what: &str,
) -> Result<String, String> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("Authorization", b)])
        .unwrap_or_default();
    let body = object.to_string();
    let mut wait = Duration::from_secs(1);
    let name = loop {
        let r = http::send_with_headers(
            api,
            tls.clone(),
            "POST",
            auth::CSR_COLLECTION,
            &headers,
            Some(("application/json", body.as_bytes())),
            REQUEST_TIMEOUT,
        )
        .await;
        let err = match r {
            Ok(r) if r.status == 201 => {
                let created: Value = serde_json::from_str(&r.body)
                    .map_err(|e| format!("{what}: the apiserver's answer: {e}"))?;
                break csr::name(&created).to_string();
            }
            Ok(r) => format!("{} {}", r.status, r.body.trim()),
            Err(e) => e,
        };
        log!(
            "{what}: creating the certificate signing request at https://{}:{}: {err}; retrying in {wait:?}",
            api.host,
            api.port
        );
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    };
    log!(
        "{what}: created certificate signing request {name} (signer {}), waiting for approval",
        csr::signer_name(object)
    );
    let path = format!("{}/{name}", auth::CSR_COLLECTION);
    let mut last = String::new();
    loop {
        let r = http::send_with_headers(
            api,
            tls.clone(),
            "GET",
            &path,
            &headers,
            None,
            REQUEST_TIMEOUT,
        )
        .await;
        let now = match r {
            Ok(r) if r.status == 200 => match serde_json::from_str::<Value>(&r.body) {
                Ok(o) => match csr::state(&o) {
                    csr::State::Issued => {
                        let pem = base64_decode(csr::certificate(&o))
                            .map_err(|e| format!("{what}: {name}: status.certificate: {e}"))?;
                        log!("{what}: certificate signing request {name} approved and issued");
                        return Ok(pem);
                    }
                    csr::State::Denied | csr::State::Failed => {
                        return Err(format!(
                            "{what}: certificate signing request {name} was {}: {}",
                            if csr::state(&o) == csr::State::Denied {
                                "denied"
                            } else {
                                "not signed"
                            },
                            o.pointer("/status/conditions")
                                .map(Value::to_string)
                                .unwrap_or_default()
                        ));
                    }
                    csr::State::Approved => "approved, waiting for the certificate".to_string(),
                    csr::State::Pending => "pending approval".to_string(),
                },
                Err(e) => format!("the apiserver's answer: {e}"),
            },
            Ok(r) => format!("{} {}", r.status, r.body.trim()),
            Err(e) => e,
        };
        if now != last {
            log!("{what}: certificate signing request {name}: {now}");
            last = now;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn base64_decode(s: &str) -> Result<String, String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "not a PEM text".to_string())
}

/// The client certificate of a kubelet without a usable `--kubeconfig`:
/// the one in `cert_dir` if it is valid, else a new one through the
/// bootstrap token. Writes `kubeconfig` (pointing at
/// `<cert_dir>/kubelet-client-current.pem`) and returns it as loaded.
pub async fn client_certificate(
    b: &BootstrapKubeconfig,
    kubeconfig: &Path,
    cert_dir: &Path,
    hostname: &str,
) -> Result<Kubeconfig, String> {
    const WHAT: &str = "TLS bootstrap";
    let current = current_path(cert_dir, CLIENT_PREFIX);
    match load_pem_pair(&current) {
        Ok(pair) => log!(
            "{WHAT}: {} holds a valid client certificate ({}): using it, no new request",
            current.display(),
            files::subject(&pair.chain[0])
        ),
        Err(why) => {
            if current.exists() {
                log!("{WHAT}: {why}: asking for a new client certificate");
            }
            let server = Url::parse(&b.server).map_err(|e| format!("{WHAT}: server: {e}"))?;
            let tls = tls::client_config_without_certificate(
                &format!("{WHAT}: the bootstrap kubeconfig's CA"),
                &b.ca,
            )?;
            log!("{WHAT}: generating a P-256 key for the client certificate of system:node:{hostname}");
            let key = rcgen::KeyPair::generate().map_err(|e| format!("{WHAT}: key: {e}"))?;
            let request = csr::new_request(
                &key,
                &format!("system:node:{hostname}"),
                "system:nodes",
                &[],
                &[],
            )?;
            let object = csr::object("node-csr-", csr::CLIENT_KUBELET, &CLIENT_USAGES, &request);
            let cert = request_certificate(&server, tls, Some(&b.token), &object, WHAT).await?;
            let stored = store(
                cert_dir,
                CLIENT_PREFIX,
                &cert,
                &key.serialize_pem(),
                time::OffsetDateTime::now_utc(),
            )?;
            log!(
                "{WHAT}: wrote the client certificate and key to {} (0600)",
                stored.display()
            );
        }
    }
    write_private(kubeconfig, kubeconfig_text(b, &current).as_bytes())?;
    log!(
        "{WHAT}: wrote {} (client certificate and key: {})",
        kubeconfig.display(),
        current.display()
    );
    files::load_kubeconfig("kubeconfig", kubeconfig)
}

/// Whether a serving certificate names `hostname` and every one of `ips`.
pub fn serves(pair: &Pair, hostname: &str, ips: &[IpAddr]) -> Result<(), String> {
    use x509_parser::prelude::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(&pair.chain[0])
        .map_err(|e| format!("does not parse: {e}"))?;
    let mut dns = Vec::new();
    let mut have_ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for g in &san.value.general_names {
            match g {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => have_ips.extend(<[u8; 4]>::try_from(*b).ok().map(IpAddr::from)),
                    16 => have_ips.extend(<[u8; 16]>::try_from(*b).ok().map(IpAddr::from)),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if !dns.iter().any(|d| d == hostname) {
        return Err(format!("does not name {hostname} (DNS names {dns:?})"));
    }
    if let Some(ip) = ips.iter().find(|ip| !have_ips.contains(ip)) {
        return Err(format!("does not name {ip} (IP addresses {have_ips:?})"));
    }
    Ok(())
}

/// The serving certificate in `cert_dir`, if valid and naming this node.
pub fn current_serving(cert_dir: &Path, hostname: &str, ips: &[IpAddr]) -> Result<Pair, String> {
    let current = current_path(cert_dir, SERVER_PREFIX);
    let pair = load_pem_pair(&current)?;
    serves(&pair, hostname, ips).map_err(|e| format!("{}: {e}", current.display()))?;
    Ok(pair)
}

/// Asks for a serving certificate for `hostname` and `ips` with the
/// kubelet's client certificate until one is issued, stores it and hands
/// it to `serving`.
pub async fn serving_certificate(
    api: Url,
    client: Arc<ClientConfig>,
    cert_dir: PathBuf,
    hostname: String,
    ips: Vec<IpAddr>,
    serving: Arc<ServingCert>,
) {
    const WHAT: &str = "serving certificate";
    loop {
        match request_serving(&api, client.clone(), &cert_dir, &hostname, &ips, &serving).await {
            Ok(path) => {
                log!(
                    "{WHAT}: wrote {} (0600); serving the kubelet API with it",
                    path.display()
                );
                return;
            }
            Err(e) => {
                log!("{e}; asking again in {SERVING_RETRY:?}");
                tokio::time::sleep(SERVING_RETRY).await;
            }
        }
    }
}

async fn request_serving(
    api: &Url,
    client: Arc<ClientConfig>,
    cert_dir: &Path,
    hostname: &str,
    ips: &[IpAddr],
    serving: &ServingCert,
) -> Result<PathBuf, String> {
    const WHAT: &str = "serving certificate";
    log!(
        "{WHAT}: no tlsCertFile and serverTLSBootstrap: true: generating a P-256 key and asking for a certificate for DNS:{hostname} {}",
        ips.iter()
            .map(|ip| format!("IP:{ip}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let key = rcgen::KeyPair::generate().map_err(|e| format!("{WHAT}: key: {e}"))?;
    let request = csr::new_request(
        &key,
        &format!("system:node:{hostname}"),
        "system:nodes",
        &[hostname.to_string()],
        ips,
    )?;
    let object = csr::object("csr-", csr::KUBELET_SERVING, &SERVING_USAGES, &request);
    let cert = request_certificate(api, client, None, &object, WHAT).await?;
    let path = store(
        cert_dir,
        SERVER_PREFIX,
        &cert,
        &key.serialize_pem(),
        time::OffsetDateTime::now_utc(),
    )?;
    let pair = load_pem_pair(&path)?;
    serving.set(&path.display().to_string(), &pair)?;
    Ok(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn self_signed(dns: &[&str], ips: &[&str]) -> (String, String) {
        let mut p =
            rcgen::CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>())
                .unwrap();
        for ip in ips {
            p.subject_alt_names
                .push(rcgen::SanType::IpAddress(ip.parse().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn the_store_writes_private_files_and_a_current_link() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(&["w1"], &["10.77.0.21"]);
        let t = time::OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap();
        let current = store(dir.path(), SERVER_PREFIX, &cert, &key, t).unwrap();
        assert_eq!(current, dir.path().join("kubelet-server-current.pem"));
        let target = std::fs::read_link(&current).unwrap();
        assert_eq!(
            target,
            dir.path().join("kubelet-server-2025-06-15-15-06-40.pem")
        );
        let mode = std::fs::metadata(&current).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let pair = load_pem_pair(&current).unwrap();
        let ips: Vec<IpAddr> = vec!["10.77.0.21".parse().unwrap()];
        serves(&pair, "w1", &ips).unwrap();
        current_serving(dir.path(), "w1", &ips).unwrap();
        let e = current_serving(dir.path(), "w2", &ips).unwrap_err();
        assert!(e.contains("does not name w2"), "{e}");
        let other: Vec<IpAddr> = vec!["10.77.0.22".parse().unwrap()];
        assert!(current_serving(dir.path(), "w1", &other)
            .unwrap_err()
            .contains("10.77.0.22"));
        // Replaced: the link moves, the old file stays.
        let (cert2, key2) = self_signed(&["w1"], &[]);
        let later = t + Duration::from_secs(3);
        store(dir.path(), SERVER_PREFIX, &cert2, &key2, later).unwrap();
        assert!(std::fs::read_link(&current)
            .unwrap()
            .ends_with("kubelet-server-2025-06-15-15-06-43.pem"));
        assert!(target.exists());
        // A key that is not the certificate's.
        let (cert3, _) = self_signed(&["w1"], &[]);
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, format!("{cert3}{key}")).unwrap();
        assert!(load_pem_pair(&bad).unwrap_err().contains("does not match"));
    }

    #[test]
    fn the_written_kubeconfig_loads() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let (cert, key) = self_signed(&[], &[]);
        let current = store(
            dir.path(),
            CLIENT_PREFIX,
            &cert,
            &key,
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        let b = BootstrapKubeconfig {
            server: "https://10.77.0.11:6443".into(),
            ca: Vec::new(),
            ca_file: Some(ca_file),
            ca_data: None,
            token: "abcdef.0123456789abcdef".into(),
        };
        let text = kubeconfig_text(&b, &current);
        assert!(!text.contains("abcdef"), "no token in it: {text}");
        let path = dir.path().join("kubelet.conf");
        write_private(&path, text.as_bytes()).unwrap();
        let kc = files::load_kubeconfig("kubeconfig", &path).unwrap();
        assert_eq!(kc.server, "https://10.77.0.11:6443");
        assert_eq!(kc.ca.len(), 1);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
