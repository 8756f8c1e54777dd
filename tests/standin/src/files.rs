//! Loading and checking the files the flags name. Every error names the flag
//! (or config field) and the path.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, SubjectPublicKeyInfoDer};
use serde_yaml_ng::Value;

use crate::tls;

/// A certificate chain (leaf first) with the private key of its leaf.
#[derive(Debug)]
pub struct Pair {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Pair {
    fn clone(&self) -> Pair {
        Pair {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// What a kubeconfig says about talking to its cluster.
#[derive(Debug, Clone)]
pub struct Kubeconfig {
    pub server: String,
    pub ca: Vec<CertificateDer<'static>>,
    pub client: Pair,
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what}: cannot read {}: {e}", path.display()))
}

/// `--flag=/path` as the errors name it.
pub fn flag_path(flag: &str, path: &Path) -> String {
    format!("--{flag}={}", path.display())
}

/// Subject of a certificate, for messages.
pub fn subject(der: &CertificateDer<'_>) -> String {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, c)) => c.subject().to_string(),
        Err(_) => "<unparsable>".into(),
    }
}

/// Parses every PEM certificate in `pem`; at least one, each a valid X.509
/// certificate that is valid now.
pub fn certs_from_pem(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no PEM CERTIFICATE block"));
    }
    for (n, der) in certs.iter().enumerate() {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("{what}: certificate #{} is not X.509: {e}", n + 1))?;
        if !cert.validity().is_valid() {
            let v = cert.validity();
            return Err(format!(
                "{what}: certificate #{} ({}) is not valid now (notBefore {}, notAfter {})",
                n + 1,
                cert.subject(),
                v.not_before,
                v.not_after
            ));
        }
    }
    Ok(certs)
}

/// Parses the one PEM private key in `pem` (PKCS#8 "PRIVATE KEY", or SEC1 /
/// PKCS#1) and checks that it is a key rustls can sign with.
pub fn key_from_pem(what: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    let key = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| format!("{what}: no usable PEM private key: {e}"))?;
    tls::provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("{what}: unsupported private key: {e}"))?;
    Ok(key)
}

/// The public key (SubjectPublicKeyInfo DER) of a private key.
fn public_of(what: &str, key: &PrivateKeyDer<'_>) -> Result<Vec<u8>, String> {
    let signer = tls::provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("{what}: unsupported private key: {e}"))?;
    signer
        .public_key()
        .map(|spki| spki.as_ref().to_vec())
        .ok_or_else(|| format!("{what}: cannot derive the public key"))
}

/// Checks that `key` is the private key of the chain's leaf certificate.
pub fn check_pair(what: &str, pair: &Pair) -> Result<(), String> {
    let signer = tls::provider()
        .key_provider
        .load_private_key(pair.key.clone_key())
        .map_err(|e| format!("{what}: unsupported private key: {e}"))?;
    CertifiedKey::new(pair.chain.clone(), signer)
        .keys_match()
        .map_err(|e| {
            format!(
                "{what}: the key does not match the certificate ({}): {e}",
                subject(&pair.chain[0])
            )
        })
}

pub fn load_certs(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let what = flag_path(flag, path);
    certs_from_pem(&what, &read(&what, path)?)
}

pub fn load_key(flag: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let what = flag_path(flag, path);
    key_from_pem(&what, &read(&what, path)?)
}

/// A certificate file and its key file.
pub fn load_pair(cert_flag: &str, cert: &Path, key_flag: &str, key: &Path) -> Result<Pair, String> {
    let pair = Pair {
        chain: load_certs(cert_flag, cert)?,
        key: load_key(key_flag, key)?,
    };
    check_pair(
        &format!(
            "{} with {}",
            flag_path(cert_flag, cert),
            flag_path(key_flag, key)
        ),
        &pair,
    )?;
    Ok(pair)
}

/// Public keys (PEM "PUBLIC KEY") and/or private keys in one file, as
/// `--service-account-key-file` takes them; returns their public keys (DER).
pub fn load_public_keys(flag: &str, path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let what = flag_path(flag, path);
    let pem = read(&what, path)?;
    let mut keys: Vec<Vec<u8>> = SubjectPublicKeyInfoDer::pem_slice_iter(&pem)
        .map(|r| r.map(|k| k.as_ref().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what}: bad PEM: {e}"))?;
    for (n, k) in keys.iter().enumerate() {
        use x509_parser::prelude::FromDer;
        x509_parser::x509::SubjectPublicKeyInfo::from_der(k)
            .map_err(|e| format!("{what}: public key #{} does not parse: {e}", n + 1))?;
    }
    if let Ok(key) = PrivateKeyDer::from_pem_slice(&pem) {
        keys.push(public_of(&what, &key)?);
    }
    if keys.is_empty() {
        return Err(format!("{what}: no PEM PUBLIC KEY or PRIVATE KEY block"));
    }
    Ok(keys)
}

/// The public key of a private key file.
pub fn load_private_key_public(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    let what = flag_path(flag, path);
    let key = load_key(flag, path)?;
    public_of(&what, &key)
}

// --- YAML -----------------------------------------------------------------

pub fn load_yaml(flag: &str, path: &Path) -> Result<Value, String> {
    let what = flag_path(flag, path);
    let text = read(&what, path)?;
    let v: Value =
        serde_yaml_ng::from_slice(&text).map_err(|e| format!("{what}: not YAML: {e}"))?;
    if !v.is_mapping() {
        return Err(format!("{what}: not a YAML mapping"));
    }
    Ok(v)
}

fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_mapping().and_then(|m| m.get(key))
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    field(v, key).and_then(Value::as_str)
}

/// Checks `apiVersion` and `kind`.
fn expect_kind(what: &str, v: &Value, api_version: &str, kind: &str) -> Result<(), String> {
    let got_api = str_field(v, "apiVersion").unwrap_or("<missing>");
    let got_kind = str_field(v, "kind").unwrap_or("<missing>");
    if got_api != api_version || got_kind != kind {
        return Err(format!(
            "{what}: expected apiVersion {api_version} kind {kind}, got apiVersion {got_api} kind {got_kind}"
        ));
    }
    Ok(())
}

/// A file a config field names, relative to the config's directory.
fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.parent().unwrap_or(Path::new(".")).join(p)
    }
}

// --- kubeconfig -------------------------------------------------------------

fn b64(what: &str, s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| format!("{what}: not base64: {e}"))
}

/// The cluster and user entries of a kubeconfig's current context (else
/// the first ones).
fn cluster_and_user(what: &str, v: &Value) -> Result<(Value, Value), String> {
    if let Some(kind) = str_field(v, "kind") {
        if kind != "Config" {
            return Err(format!("{what}: kind {kind}, expected Config"));
        }
    }
    let list = |key: &str| -> Result<&Vec<Value>, String> {
        field(v, key)
            .and_then(Value::as_sequence)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("{what}: no {key}"))
    };
    let clusters = list("clusters")?;
    let users = list("users")?;
    let context = str_field(v, "current-context").and_then(|cur| {
        field(v, "contexts")
            .and_then(Value::as_sequence)?
            .iter()
            .find(|c| str_field(c, "name") == Some(cur))
            .and_then(|c| field(c, "context"))
    });
    let pick = |items: &'_ Vec<Value>, key: &str, which: &str| -> Result<Value, String> {
        let named = context.and_then(|c| str_field(c, key));
        let item = match named {
            Some(name) => items
                .iter()
                .find(|i| str_field(i, "name") == Some(name))
                .ok_or_else(|| {
                    format!(
                        "{what}: the current context names {key} {name:?}, which is not in {which}"
                    )
                })?,
            None => &items[0],
        };
        field(item, key)
            .cloned()
            .ok_or_else(|| format!("{what}: {which} entry without {key}"))
    };
    Ok((
        pick(clusters, "cluster", "clusters")?,
        pick(users, "user", "users")?,
    ))
}

/// `clusters[].cluster.server`, an https:// URL.
fn server_of(what: &str, cluster: &Value) -> Result<String, String> {
    let server = str_field(cluster, "server")
        .ok_or_else(|| format!("{what}: clusters[].cluster.server is missing"))?
        .to_string();
    if !server.starts_with("https://") {
        return Err(format!("{what}: server {server:?} is not an https:// URL"));
    }
    crate::http::Url::parse(&server).map_err(|e| format!("{what}: server: {e}"))?;
    Ok(server)
}

/// Data (base64) or a file (relative to the kubeconfig): (what, bytes).
fn blob(
    what: &str,
    path: &Path,
    obj: &Value,
    data_key: &str,
    file_key: &str,
) -> Result<(String, Vec<u8>), String> {
    if let Some(d) = str_field(obj, data_key) {
        let w = format!("{what}: {data_key}");
        return Ok((w.clone(), b64(&w, d)?));
    }
    if let Some(f) = str_field(obj, file_key) {
        let p = resolve(path, f);
        let w = format!("{what}: {file_key} {}", p.display());
        return Ok((w.clone(), read(&w, &p)?));
    }
    Err(format!("{what}: neither {data_key} nor {file_key} is set"))
}

/// A kubeconfig with a client certificate: the cluster and user of the
/// current context (else the first ones), `server`, the CA and the client
/// certificate and key, embedded (`*-data`, base64) or as file paths.
pub fn load_kubeconfig(flag: &str, path: &Path) -> Result<Kubeconfig, String> {
    let what = flag_path(flag, path);
    let v = load_yaml(flag, path)?;
    let (cluster, user) = cluster_and_user(&what, &v)?;
    let server = server_of(&what, &cluster)?;
    let (w, ca_pem) = blob(
        &what,
        path,
        &cluster,
        "certificate-authority-data",
        "certificate-authority",
    )?;
    let ca = certs_from_pem(&w, &ca_pem)?;
    let (w, cert_pem) = blob(
        &what,
        path,
        &user,
        "client-certificate-data",
        "client-certificate",
    )?;
    let chain = certs_from_pem(&w, &cert_pem)?;
    let (w, key_pem) = blob(&what, path, &user, "client-key-data", "client-key")?;
    let key = key_from_pem(&w, &key_pem)?;
    let client = Pair { chain, key };
    check_pair(&format!("{what}: client certificate"), &client)?;
    Ok(Kubeconfig { server, ca, client })
}

// --- component configs ------------------------------------------------------

/// apiserver.config.k8s.io/v1 EncryptionConfiguration: resources with
/// providers; every key secret is base64 of the right length.
pub fn load_encryption_config(flag: &str, path: &Path) -> Result<(), String> {
    let what = flag_path(flag, path);
    let v = load_yaml(flag, path)?;
    expect_kind(
        &what,
        &v,
        "apiserver.config.k8s.io/v1",
        "EncryptionConfiguration",
    )?;
    let resources = field(&v, "resources")
        .and_then(Value::as_sequence)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{what}: no resources"))?;
    for (i, r) in resources.iter().enumerate() {
        let at = format!("{what}: resources[{i}]");
        let names = field(r, "resources")
            .and_then(Value::as_sequence)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("{at}.resources is empty"))?;
        if names.iter().any(|n| n.as_str().is_none()) {
            return Err(format!("{at}.resources: not a list of strings"));
        }
        let providers = field(r, "providers")
            .and_then(Value::as_sequence)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("{at}.providers is empty"))?;
        for (j, p) in providers.iter().enumerate() {
            let at = format!("{at}.providers[{j}]");
            let m = p
                .as_mapping()
                .filter(|m| m.len() == 1)
                .ok_or_else(|| format!("{at}: must name exactly one provider"))?;
            let (name, conf) = m.iter().next().ok_or_else(|| format!("{at}: empty"))?;
            let name = name.as_str().unwrap_or_default();
            let sizes: &[usize] = match name {
                "identity" | "kms" => continue,
                "secretbox" => &[32],
                "aescbc" | "aesgcm" => &[16, 24, 32],
                other => return Err(format!("{at}: unknown provider {other:?}")),
            };
            let keys = field(conf, "keys")
                .and_then(Value::as_sequence)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("{at}.{name}.keys is empty"))?;
            for (k, key) in keys.iter().enumerate() {
                let at = format!("{at}.{name}.keys[{k}]");
                if str_field(key, "name").is_none_or(str::is_empty) {
                    return Err(format!("{at}: no name"));
                }
                let secret = str_field(key, "secret").ok_or_else(|| format!("{at}: no secret"))?;
                let bytes = b64(&format!("{at}.secret"), secret)?;
                if !sizes.contains(&bytes.len()) {
                    return Err(format!(
                        "{at}.secret: {} bytes, {name} needs {sizes:?}",
                        bytes.len()
                    ));
                }
            }
        }
    }
    Ok(())
}

/// audit.k8s.io/v1 Policy with rules of known levels.
pub fn load_audit_policy(flag: &str, path: &Path) -> Result<(), String> {
    let what = flag_path(flag, path);
    let v = load_yaml(flag, path)?;
    expect_kind(&what, &v, "audit.k8s.io/v1", "Policy")?;
    let rules = field(&v, "rules")
        .and_then(Value::as_sequence)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{what}: no rules"))?;
    for (i, r) in rules.iter().enumerate() {
        match str_field(r, "level") {
            Some("None" | "Metadata" | "Request" | "RequestResponse") => {}
            other => return Err(format!("{what}: rules[{i}].level is {other:?}")),
        }
    }
    Ok(())
}

/// kubescheduler.config.k8s.io/v1 KubeSchedulerConfiguration; returns
/// clientConnection.kubeconfig.
pub fn load_scheduler_config(flag: &str, path: &Path) -> Result<PathBuf, String> {
    let what = flag_path(flag, path);
    let v = load_yaml(flag, path)?;
    expect_kind(
        &what,
        &v,
        "kubescheduler.config.k8s.io/v1",
        "KubeSchedulerConfiguration",
    )?;
    let kc = field(&v, "clientConnection")
        .and_then(|c| str_field(c, "kubeconfig"))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{what}: clientConnection.kubeconfig is not set"))?;
    Ok(resolve(path, kc))
}

/// What the stand-in uses of a KubeletConfiguration.
#[derive(Debug)]
pub struct KubeletConfig {
    pub healthz_bind_address: String,
    pub healthz_port: u16,
    /// `address` and `port`: where the kubelet API (HTTPS) listens.
    pub address: String,
    pub port: u16,
    pub client_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    pub cgroup_driver: String,
    /// The path of `containerRuntimeEndpoint` (`unix://<path>`).
    pub container_runtime_socket: PathBuf,
    pub cluster_dns: Vec<IpAddr>,
}

fn port_field(what: &str, v: &Value, key: &str, default: u16) -> Result<u16, String> {
    match field(v, key) {
        None => Ok(default),
        Some(p) => p
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| format!("{what}: {key} {p:?} is not a port")),
    }
}

pub fn load_kubelet_config(flag: &str, path: &Path) -> Result<KubeletConfig, String> {
    let what = flag_path(flag, path);
    let v = load_yaml(flag, path)?;
    expect_kind(
        &what,
        &v,
        "kubelet.config.k8s.io/v1beta1",
        "KubeletConfiguration",
    )?;
    let healthz_port = port_field(&what, &v, "healthzPort", 10248)?;
    let port = port_field(&what, &v, "port", 10250)?;
    let cgroup_driver = match str_field(&v, "cgroupDriver") {
        Some(d @ ("systemd" | "cgroupfs")) => d.to_string(),
        Some(other) => {
            return Err(format!(
                "{what}: cgroupDriver {other:?} is neither \"systemd\" nor \"cgroupfs\""
            ))
        }
        None => {
            return Err(format!(
                "{what}: cgroupDriver is not set (the stand-in wants it explicit: \"systemd\" or \"cgroupfs\", matching the container runtime)"
            ))
        }
    };
    let endpoint = str_field(&v, "containerRuntimeEndpoint")
        .ok_or_else(|| format!("{what}: containerRuntimeEndpoint is not set"))?;
    let container_runtime_socket = endpoint
        .strip_prefix("unix://")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .ok_or_else(|| {
            format!("{what}: containerRuntimeEndpoint {endpoint:?} is not unix://<absolute path>")
        })?;
    let cluster_dns = match field(&v, "clusterDNS") {
        None => Vec::new(),
        Some(list) => list
            .as_sequence()
            .ok_or_else(|| format!("{what}: clusterDNS is not a list"))?
            .iter()
            .enumerate()
            .map(|(i, e)| {
                e.as_str()
                    .and_then(|s| s.parse::<IpAddr>().ok())
                    .ok_or_else(|| format!("{what}: clusterDNS[{i}] {e:?} is not an IP address"))
            })
            .collect::<Result<_, _>>()?,
    };
    let file = |key: &str| str_field(&v, key).map(|p| resolve(path, p));
    Ok(KubeletConfig {
        healthz_bind_address: str_field(&v, "healthzBindAddress")
            .unwrap_or("127.0.0.1")
            .to_string(),
        healthz_port,
        address: str_field(&v, "address").unwrap_or("0.0.0.0").to_string(),
        port,
        client_ca_file: field(&v, "authentication")
            .and_then(|a| field(a, "x509"))
            .and_then(|x| str_field(x, "clientCAFile"))
            .map(|p| resolve(path, p)),
        tls_cert_file: file("tlsCertFile"),
        tls_private_key_file: file("tlsPrivateKeyFile"),
        cgroup_driver,
        container_runtime_socket,
        cluster_dns,
    })
}

/// Checks `a.b.c.d/n` (or IPv6) notation.
pub fn check_cidr(what: &str, s: &str) -> Result<(), String> {
    let bad = || format!("{what}: {s:?} is not a CIDR");
    let (ip, bits) = s.split_once('/').ok_or_else(bad)?;
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let bits: u8 = bits.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if bits > max {
        return Err(bad());
    }
    Ok(())
}

/// What the stand-in uses of a KubeProxyConfiguration.
#[derive(Debug)]
pub struct ProxyConfig {
    pub kubeconfig: PathBuf,
    pub healthz_bind_address: String,
    pub mode: String,
    pub cluster_cidr: String,
    pub hostname_override: String,
}

pub fn load_proxy_config(flag: &str, path: &Path) -> Result<ProxyConfig, String> {
    let what = flag_path(flag, path);
    let v = load_yaml(flag, path)?;
    expect_kind(
        &what,
        &v,
        "kubeproxy.config.k8s.io/v1alpha1",
        "KubeProxyConfiguration",
    )?;
    let kubeconfig = field(&v, "clientConnection")
        .and_then(|c| str_field(c, "kubeconfig"))
        .filter(|s| !s.is_empty())
        .map(|p| resolve(path, p))
        .ok_or_else(|| {
            format!("{what}: clientConnection.kubeconfig is not set (the stand-in talks to the apiserver it names)")
        })?;
    let mode = match str_field(&v, "mode") {
        Some(m @ ("iptables" | "ipvs" | "nftables")) => m.to_string(),
        other => {
            return Err(format!(
                "{what}: mode {other:?} is not one of iptables, ipvs, nftables"
            ))
        }
    };
    let cluster_cidr = str_field(&v, "clusterCIDR")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{what}: clusterCIDR is not set"))?
        .to_string();
    for part in cluster_cidr.split(',') {
        check_cidr(&format!("{what}: clusterCIDR"), part.trim())?;
    }
    let hostname_override = str_field(&v, "hostnameOverride")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{what}: hostnameOverride is not set"))?
        .to_string();
    Ok(ProxyConfig {
        kubeconfig,
        healthz_bind_address: str_field(&v, "healthzBindAddress")
            .unwrap_or("0.0.0.0:10256")
            .to_string(),
        mode,
        cluster_cidr,
        hostname_override,
    })
}

/// The subject's common name and organizations of a certificate.
pub fn cn_and_orgs(der: &CertificateDer<'_>) -> (Option<String>, Vec<String>) {
    let Ok((_, c)) = x509_parser::parse_x509_certificate(der) else {
        return (None, Vec::new());
    };
    let s = c.subject();
    let cn = s
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string);
    let orgs = s
        .iter_organization()
        .filter_map(|a| a.as_str().ok())
        .map(str::to_string)
        .collect();
    (cn, orgs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn errors_name_flag_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.crt");
        let e = load_certs("client-ca-file", &missing).unwrap_err();
        assert!(e.contains("--client-ca-file="), "{e}");
        assert!(e.contains("nope.crt"), "{e}");
        let junk = write(dir.path(), "junk.crt", "hello\n");
        let e = load_certs("tls-cert-file", &junk).unwrap_err();
        assert!(
            e.contains("--tls-cert-file=") && e.contains("no PEM CERTIFICATE"),
            "{e}"
        );
        let e = load_key("tls-private-key-file", &junk).unwrap_err();
        assert!(e.contains("--tls-private-key-file="), "{e}");
        let bad_pem = write(
            dir.path(),
            "bad.crt",
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        );
        let e = load_certs("client-ca-file", &bad_pem).unwrap_err();
        assert!(e.contains("not X.509"), "{e}");
    }

    #[test]
    fn encryption_config_checks_key_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let key32 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let key8 = base64::engine::general_purpose::STANDARD.encode([7u8; 8]);
        let doc = |secret: &str| {
            format!(
                "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - secretbox:\n          keys:\n            - name: k1\n              secret: {secret}\n      - identity: {{}}\n"
            )
        };
        let ok = write(dir.path(), "ok.yaml", &doc(&key32));
        load_encryption_config("encryption-provider-config", &ok).unwrap();
        let short = write(dir.path(), "short.yaml", &doc(&key8));
        let e = load_encryption_config("encryption-provider-config", &short).unwrap_err();
        assert!(e.contains("8 bytes"), "{e}");
        let notb64 = write(dir.path(), "x.yaml", &doc("%%%"));
        assert!(load_encryption_config("encryption-provider-config", &notb64).is_err());
    }

    #[test]
    fn audit_policy_and_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(
            dir.path(),
            "a.yaml",
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Metadata\n",
        );
        load_audit_policy("audit-policy-file", &good).unwrap();
        let bad = write(
            dir.path(),
            "b.yaml",
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Everything\n",
        );
        assert!(load_audit_policy("audit-policy-file", &bad).is_err());
        let wrong = write(dir.path(), "c.yaml", "apiVersion: v1\nkind: Pod\n");
        let e = load_audit_policy("audit-policy-file", &wrong).unwrap_err();
        assert!(e.contains("expected apiVersion audit.k8s.io/v1"), "{e}");
        let notyaml = write(dir.path(), "d.yaml", "a: [\n");
        assert!(load_yaml("config", &notyaml)
            .unwrap_err()
            .contains("not YAML"));
    }

    #[test]
    fn component_configs() {
        let dir = tempfile::tempdir().unwrap();
        let s = write(
            dir.path(),
            "s.yaml",
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nclientConnection:\n  kubeconfig: sched.conf\n",
        );
        assert_eq!(
            load_scheduler_config("config", &s).unwrap(),
            dir.path().join("sched.conf")
        );
        let k = write(
            dir.path(),
            "k.yaml",
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nhealthzPort: 12345\nauthentication:\n  x509:\n    clientCAFile: /etc/ca.crt\ncgroupDriver: systemd\ncontainerRuntimeEndpoint: unix:///run/c.sock\nclusterDNS: [10.96.0.10]\n",
        );
        let kc = load_kubelet_config("config", &k).unwrap();
        assert_eq!(kc.healthz_port, 12345);
        assert_eq!(kc.healthz_bind_address, "127.0.0.1");
        assert_eq!((kc.address.as_str(), kc.port), ("0.0.0.0", 10250));
        assert_eq!(kc.client_ca_file, Some(PathBuf::from("/etc/ca.crt")));
        assert_eq!(kc.container_runtime_socket, PathBuf::from("/run/c.sock"));
        assert_eq!(kc.cluster_dns, ["10.96.0.10".parse::<IpAddr>().unwrap()]);
        let base = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";
        for (extra, why) in [
            (
                "cgroupDriver: none\ncontainerRuntimeEndpoint: unix:///c\n",
                "cgroupDriver",
            ),
            (
                "containerRuntimeEndpoint: unix:///c\n",
                "cgroupDriver is not set",
            ),
            (
                "cgroupDriver: systemd\ncontainerRuntimeEndpoint: tcp://x:1\n",
                "unix://",
            ),
            (
                "cgroupDriver: systemd\ncontainerRuntimeEndpoint: unix:///c\nclusterDNS: [dns]\n",
                "clusterDNS[0]",
            ),
        ] {
            let bad = write(dir.path(), "kb.yaml", &format!("{base}{extra}"));
            let e = load_kubelet_config("config", &bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let p = write(
            dir.path(),
            "p.yaml",
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nhealthzBindAddress: 127.0.0.1:1\nclientConnection:\n  kubeconfig: proxy.conf\nmode: ipvs\nclusterCIDR: 10.244.0.0/16\nhostnameOverride: w1\n",
        );
        let pc = load_proxy_config("config", &p).unwrap();
        assert_eq!(pc.healthz_bind_address, "127.0.0.1:1");
        assert_eq!(pc.kubeconfig, dir.path().join("proxy.conf"));
        assert_eq!(
            (pc.mode.as_str(), pc.hostname_override.as_str()),
            ("ipvs", "w1")
        );
        let base = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclientConnection:\n  kubeconfig: p.conf\n";
        for (extra, why) in [
            (
                "mode: userspace\nclusterCIDR: 10.0.0.0/8\nhostnameOverride: a\n",
                "mode",
            ),
            (
                "mode: iptables\nclusterCIDR: 10.0.0.0/33\nhostnameOverride: a\n",
                "not a CIDR",
            ),
            (
                "mode: iptables\nclusterCIDR: 10.0.0.0/8\n",
                "hostnameOverride",
            ),
        ] {
            let bad = write(dir.path(), "pb.yaml", &format!("{base}{extra}"));
            let e = load_proxy_config("config", &bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        assert!(load_proxy_config(
            "config",
            &write(dir.path(), "pc.yaml", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: iptables\n")
        )
        .unwrap_err()
        .contains("clientConnection.kubeconfig"));
    }
}
