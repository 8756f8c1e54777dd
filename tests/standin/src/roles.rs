//! What each part does once its flags parsed: load and check the files,
//! wait for what it depends on, serve its health endpoints.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Mutex;

use crate::files::{self, Kubeconfig, Pair};
use crate::flags::Parsed;
use crate::http::{self, Url};
use crate::store::Store;
use crate::{notify, tls, Role};

/// How long kube-apiserver waits at startup for every etcd server.
const ETCD_STARTUP_WAIT: Duration = Duration::from_secs(60);
/// /readyz asks etcd at most this often.
const ETCD_RECHECK: Duration = Duration::from_secs(1);
/// The controllers' /healthz asks the apiserver at most this often.
const APISERVER_RECHECK: Duration = Duration::from_secs(2);
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `role` until SIGTERM (or SIGINT): Ok on a signal, Err when it
/// cannot start.
pub fn run(role: Role, p: &Parsed) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
        let mut int =
            signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
        let work = async {
            match role {
                Role::ApiServer => apiserver(p).await,
                Role::ControllerManager | Role::Scheduler => controller(role, p).await,
                Role::Kubelet => kubelet(p).await,
                Role::KubeProxy => kube_proxy(p).await,
            }
        };
        tokio::select! {
            r = work => r,
            _ = term.recv() => {
                log!("received SIGTERM, exiting");
                Ok(())
            }
            _ = int.recv() => {
                log!("received SIGINT, exiting");
                Ok(())
            }
        }
    })
}

// --- the files --------------------------------------------------------------

/// How the stand-in reads the file a flag names.
#[derive(Clone, Copy)]
enum Kind {
    /// PEM certificates (a CA bundle).
    Certs,
    /// A certificate (chain) whose key is in the named flag's file.
    CertWithKey(&'static str),
    /// The key of a CertWithKey flag (loaded with it).
    KeyOfPair(&'static str),
    /// A private key on its own.
    Key,
    /// Public and/or private keys, repeatable (`strings`).
    PublicKeys,
    Kubeconfig,
    EncryptionConfig,
    AuditPolicy,
    SchedulerConfig,
    KubeletConfig,
    ProxyConfig,
    /// Some YAML (or JSON) document.
    Yaml,
    /// Read, content not checked.
    Readable,
    /// `cert,key[:names]`.
    SniCertKey,
}

fn file_flags(role: Role) -> &'static [(&'static str, Kind)] {
    use Kind::*;
    match role {
        Role::ApiServer => &[
            ("client-ca-file", Certs),
            ("requestheader-client-ca-file", Certs),
            ("etcd-cafile", Certs),
            ("kubelet-certificate-authority", Certs),
            ("oidc-ca-file", Certs),
            ("peer-ca-file", Certs),
            ("tls-cert-file", CertWithKey("tls-private-key-file")),
            ("tls-private-key-file", KeyOfPair("tls-cert-file")),
            ("etcd-certfile", CertWithKey("etcd-keyfile")),
            ("etcd-keyfile", KeyOfPair("etcd-certfile")),
            (
                "kubelet-client-certificate",
                CertWithKey("kubelet-client-key"),
            ),
            (
                "kubelet-client-key",
                KeyOfPair("kubelet-client-certificate"),
            ),
            (
                "proxy-client-cert-file",
                CertWithKey("proxy-client-key-file"),
            ),
            ("proxy-client-key-file", KeyOfPair("proxy-client-cert-file")),
            ("tls-sni-cert-key", SniCertKey),
            ("service-account-key-file", PublicKeys),
            ("service-account-signing-key-file", Key),
            ("encryption-provider-config", EncryptionConfig),
            ("audit-policy-file", AuditPolicy),
            ("admission-control-config-file", Yaml),
            ("audit-webhook-config-file", Yaml),
            ("authentication-config", Yaml),
            ("authentication-token-webhook-config-file", Yaml),
            ("authorization-config", Yaml),
            ("authorization-webhook-config-file", Yaml),
            ("egress-selector-config-file", Yaml),
            ("tracing-config-file", Yaml),
            ("authorization-policy-file", Readable),
            ("token-auth-file", Readable),
        ],
        Role::ControllerManager => &[
            ("kubeconfig", Kubeconfig),
            ("authentication-kubeconfig", Kubeconfig),
            ("authorization-kubeconfig", Kubeconfig),
            ("client-ca-file", Certs),
            ("requestheader-client-ca-file", Certs),
            ("root-ca-file", Certs),
            ("tls-cert-file", CertWithKey("tls-private-key-file")),
            ("tls-private-key-file", KeyOfPair("tls-cert-file")),
            ("tls-sni-cert-key", SniCertKey),
            (
                "cluster-signing-cert-file",
                CertWithKey("cluster-signing-key-file"),
            ),
            (
                "cluster-signing-key-file",
                KeyOfPair("cluster-signing-cert-file"),
            ),
            (
                "cluster-signing-kubelet-serving-cert-file",
                CertWithKey("cluster-signing-kubelet-serving-key-file"),
            ),
            (
                "cluster-signing-kubelet-serving-key-file",
                KeyOfPair("cluster-signing-kubelet-serving-cert-file"),
            ),
            (
                "cluster-signing-kubelet-client-cert-file",
                CertWithKey("cluster-signing-kubelet-client-key-file"),
            ),
            (
                "cluster-signing-kubelet-client-key-file",
                KeyOfPair("cluster-signing-kubelet-client-cert-file"),
            ),
            (
                "cluster-signing-kube-apiserver-client-cert-file",
                CertWithKey("cluster-signing-kube-apiserver-client-key-file"),
            ),
            (
                "cluster-signing-kube-apiserver-client-key-file",
                KeyOfPair("cluster-signing-kube-apiserver-client-cert-file"),
            ),
            (
                "cluster-signing-legacy-unknown-cert-file",
                CertWithKey("cluster-signing-legacy-unknown-key-file"),
            ),
            (
                "cluster-signing-legacy-unknown-key-file",
                KeyOfPair("cluster-signing-legacy-unknown-cert-file"),
            ),
            ("service-account-private-key-file", Key),
            ("leader-migration-config", Yaml),
        ],
        Role::Scheduler => &[
            ("config", SchedulerConfig),
            ("kubeconfig", Kubeconfig),
            ("authentication-kubeconfig", Kubeconfig),
            ("authorization-kubeconfig", Kubeconfig),
            ("client-ca-file", Certs),
            ("requestheader-client-ca-file", Certs),
            ("tls-cert-file", CertWithKey("tls-private-key-file")),
            ("tls-private-key-file", KeyOfPair("tls-cert-file")),
            ("tls-sni-cert-key", SniCertKey),
        ],
        Role::Kubelet => &[
            ("config", KubeletConfig),
            ("kubeconfig", Kubeconfig),
            ("client-ca-file", Certs),
            ("tls-cert-file", CertWithKey("tls-private-key-file")),
            ("tls-private-key-file", KeyOfPair("tls-cert-file")),
        ],
        Role::KubeProxy => &[("config", ProxyConfig), ("kubeconfig", Kubeconfig)],
    }
}

/// Everything loaded from the files the flags name.
#[derive(Default)]
struct Loaded {
    certs: HashMap<&'static str, Vec<CertificateDer<'static>>>,
    /// By the certificate flag.
    pairs: HashMap<&'static str, Pair>,
    kubeconfigs: HashMap<&'static str, Kubeconfig>,
    /// The kubeconfig a component config names.
    config_kubeconfig: Option<Kubeconfig>,
    kubelet_config: Option<files::KubeletConfig>,
    /// The KubeletConfiguration's tlsCertFile with tlsPrivateKeyFile.
    kubelet_serving: Option<Pair>,
    /// The KubeletConfiguration's authentication.x509.clientCAFile.
    kubelet_client_ca: Option<Vec<CertificateDer<'static>>>,
    proxy_config: Option<files::ProxyConfig>,
}

fn path_of<'a>(p: &'a Parsed, flag: &str) -> Option<&'a Path> {
    p.get(flag).filter(|v| !v.is_empty()).map(Path::new)
}

fn describe_certs(certs: &[CertificateDer<'_>]) -> String {
    let subjects: Vec<String> = certs.iter().map(|c| files::subject(c)).collect();
    format!("{} certificate(s): {}", certs.len(), subjects.join("; "))
}

/// Loads and checks every file the flags of `role` name.
fn load_files(role: Role, p: &Parsed) -> Result<Loaded, String> {
    let mut loaded = Loaded::default();
    let mut sa_public: Vec<Vec<u8>> = Vec::new();
    let mut sa_signing: Option<Vec<u8>> = None;
    for &(flag, kind) in file_flags(role) {
        if kind_is_list(kind) {
            if p.list(flag).is_empty() {
                continue;
            }
        } else if path_of(p, flag).is_none() {
            continue;
        }
        let path = path_of(p, flag).unwrap_or(Path::new(""));
        let fp = files::flag_path(flag, path);
        match kind {
            Kind::Certs => {
                let certs = files::load_certs(flag, path)?;
                log!("checked {fp}: {}", describe_certs(&certs));
                loaded.certs.insert(flag, certs);
            }
            Kind::CertWithKey(key_flag) => {
                let key = path_of(p, key_flag)
                    .ok_or_else(|| format!("{fp} is given without --{key_flag}"))?;
                let pair = files::load_pair(flag, path, key_flag, key)?;
                log!(
                    "checked {fp} ({}) with --{key_flag}={}: the key matches",
                    files::subject(&pair.chain[0]),
                    key.display()
                );
                loaded.pairs.insert(flag, pair);
            }
            Kind::KeyOfPair(cert_flag) => {
                if path_of(p, cert_flag).is_none() {
                    return Err(format!("{fp} is given without --{cert_flag}"));
                }
            }
            Kind::Key => {
                let public = files::load_private_key_public(flag, path)?;
                log!("checked {fp}: a private key");
                if flag == "service-account-signing-key-file" {
                    sa_signing = Some(public);
                }
            }
            Kind::PublicKeys => {
                for v in p.list(flag) {
                    let keys = files::load_public_keys(flag, Path::new(&v))?;
                    log!("checked --{flag}={v}: {} key(s)", keys.len());
                    sa_public.extend(keys);
                }
            }
            Kind::Kubeconfig => {
                let kc = files::load_kubeconfig(flag, path)?;
                log!(
                    "checked {fp}: server {}, client {}",
                    kc.server,
                    files::subject(&kc.client.chain[0])
                );
                loaded.kubeconfigs.insert(flag, kc);
            }
            Kind::EncryptionConfig => {
                files::load_encryption_config(flag, path)?;
                log!("checked {fp}: EncryptionConfiguration");
            }
            Kind::AuditPolicy => {
                files::load_audit_policy(flag, path)?;
                log!("checked {fp}: audit Policy");
            }
            Kind::SchedulerConfig => {
                let kc_path = files::load_scheduler_config(flag, path)?;
                let kc = files::load_kubeconfig(
                    &format!("{flag}={} clientConnection.kubeconfig", path.display()),
                    &kc_path,
                )?;
                log!(
                    "checked {fp}: clientConnection.kubeconfig {} (server {}, client {})",
                    kc_path.display(),
                    kc.server,
                    files::subject(&kc.client.chain[0])
                );
                loaded.config_kubeconfig = Some(kc);
            }
            Kind::KubeletConfig => {
                let c = files::load_kubelet_config(flag, path)?;
                let field = |name: &str| format!("config={} {name}", path.display());
                if let Some(ca) = &c.client_ca_file {
                    let certs = files::load_certs(&field("authentication.x509.clientCAFile"), ca)?;
                    log!("checked {}: {}", ca.display(), describe_certs(&certs));
                    loaded.kubelet_client_ca = Some(certs);
                }
                match (&c.tls_cert_file, &c.tls_private_key_file) {
                    (Some(cert), Some(key)) => {
                        let pair = files::load_pair(
                            &field("tlsCertFile"),
                            cert,
                            &field("tlsPrivateKeyFile"),
                            key,
                        )?;
                        log!(
                            "checked {} ({}) with {}: the key matches",
                            cert.display(),
                            files::subject(&pair.chain[0]),
                            key.display()
                        );
                        loaded.kubelet_serving = Some(pair);
                    }
                    (None, None) => {}
                    _ => {
                        return Err(format!(
                            "{fp}: tlsCertFile and tlsPrivateKeyFile must be set together"
                        ))
                    }
                }
                log!(
                    "checked {fp}: KubeletConfiguration (cgroupDriver {}, containerRuntimeEndpoint unix://{}, clusterDNS {:?})",
                    c.cgroup_driver,
                    c.container_runtime_socket.display(),
                    c.cluster_dns
                );
                loaded.kubelet_config = Some(c);
            }
            Kind::ProxyConfig => {
                let c = files::load_proxy_config(flag, path)?;
                let kc = files::load_kubeconfig(
                    &format!("{flag}={} clientConnection.kubeconfig", path.display()),
                    &c.kubeconfig,
                )?;
                log!(
                    "checked {fp}: KubeProxyConfiguration (mode {}, clusterCIDR {}, hostnameOverride {}); clientConnection.kubeconfig {} (server {}, client {})",
                    c.mode,
                    c.cluster_cidr,
                    c.hostname_override,
                    c.kubeconfig.display(),
                    kc.server,
                    files::subject(&kc.client.chain[0])
                );
                loaded.config_kubeconfig = Some(kc);
                loaded.proxy_config = Some(c);
            }
            Kind::Yaml => {
                files::load_yaml(flag, path)?;
                log!("checked {fp}: YAML");
            }
            Kind::Readable => {
                std::fs::read(path).map_err(|e| format!("{fp}: cannot read: {e}"))?;
                log!("checked {fp}: readable");
            }
            Kind::SniCertKey => {
                for v in p.all().iter().filter(|(n, _)| n == flag).map(|(_, v)| v) {
                    let files_part = v.split(':').next().unwrap_or_default();
                    let (cert, key) = files_part
                        .split_once(',')
                        .ok_or_else(|| format!("--{flag}={v}: expected \"cert,key[:names]\""))?;
                    files::load_pair(flag, Path::new(cert), flag, Path::new(key))?;
                    log!("checked --{flag}={v}: the key matches");
                }
            }
        }
    }
    if let Some(signing) = sa_signing {
        if !sa_public.is_empty() && !sa_public.contains(&signing) {
            return Err(
                "--service-account-signing-key-file: its public key is not among the keys of \
                 --service-account-key-file (tokens it signs would not verify)"
                    .into(),
            );
        }
    }
    Ok(loaded)
}

fn kind_is_list(kind: Kind) -> bool {
    matches!(kind, Kind::PublicKeys | Kind::SniCertKey)
}

fn require<'a>(p: &'a Parsed, flag: &str, why: &str) -> Result<&'a str, String> {
    p.get(flag)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("--{flag} is required ({why})"))
}

/// `--bind-address` and `--secure-port` (with the component's default).
fn secure_addr(p: &Parsed, default_port: u16) -> Result<SocketAddr, String> {
    let bind = p.get("bind-address").unwrap_or("0.0.0.0");
    let ip: IpAddr = bind
        .parse()
        .map_err(|_| format!("--bind-address={bind}: not an IP address"))?;
    let port = match p.get("secure-port") {
        Some(v) => v
            .parse::<u16>()
            .map_err(|_| format!("--secure-port={v}: not a port"))?,
        None => default_port,
    };
    Ok(SocketAddr::new(ip, port))
}

async fn listen(addr: SocketAddr, what: &str) -> Result<TcpListener, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("{what}: cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| format!("{what}: {e}"))?;
    log!("serving {what} on {local}");
    Ok(listener)
}

fn notify_ready() {
    match notify::notify("READY=1\nSTATUS=serving (kubeforge stand-in)") {
        Ok(true) => log!("notified systemd: READY=1"),
        Ok(false) => {}
        Err(e) => log!("cannot notify systemd: {e}"),
    }
}

/// Waits for a signal: for parts told not to serve.
async fn idle() -> Result<(), String> {
    std::future::pending::<()>().await;
    Ok(())
}

// --- kube-apiserver -----------------------------------------------------------

async fn etcd_health(url: &Url, config: Arc<ClientConfig>) -> Result<(), String> {
    let r = http::get(url, config, "/health", CHECK_TIMEOUT).await?;
    let compact: String = r.body.chars().filter(|c| !c.is_whitespace()).collect();
    if r.status == 200 && compact.contains("\"health\":\"true\"") {
        Ok(())
    } else {
        Err(format!("GET /health: {} {}", r.status, r.body.trim()))
    }
}

/// A health answer cached for a while.
struct Cached {
    every: Duration,
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Cached {
    fn new(every: Duration) -> Cached {
        Cached {
            every,
            last: Mutex::new(None),
        }
    }

    async fn get<F, Fut>(&self, check: F) -> Result<(), String>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, r)) = &*last {
            if at.elapsed() < self.every {
                return r.clone();
            }
        }
        let r = check().await;
        *last = Some((Instant::now(), r.clone()));
        r
    }
}

struct ApiServer {
    etcd: Vec<Url>,
    etcd_tls: Arc<ClientConfig>,
    ready: Cached,
    store: Store,
}

impl ApiServer {
    /// Healthy when etcd answers now through any of the servers (a member
    /// reports healthy only while the cluster has a leader).
    async fn readyz(&self) -> Result<(), String> {
        self.ready
            .get(|| async {
                let mut failures = Vec::new();
                for url in &self.etcd {
                    match etcd_health(url, self.etcd_tls.clone()).await {
                        Ok(()) => return Ok(()),
                        Err(e) => failures.push(format!("{}:{}: {e}", url.host, url.port)),
                    }
                }
                Err(failures.join("; "))
            })
            .await
    }
}

async fn apiserver(p: &Parsed) -> Result<(), String> {
    let why = "the stand-in checks etcd over TLS";
    require(p, "etcd-servers", why)?;
    require(p, "etcd-cafile", why)?;
    require(p, "etcd-certfile", why)?;
    require(p, "etcd-keyfile", why)?;
    let why = "the stand-in serves only with the given certificate";
    require(p, "tls-cert-file", why)?;
    require(p, "tls-private-key-file", why)?;
    require(
        p,
        "client-ca-file",
        "the stand-in verifies client certificates with it",
    )?;
    let addr = secure_addr(p, 6443)?;
    if addr.port() == 0 {
        return Err("--secure-port=0: kube-apiserver cannot switch HTTPS off".into());
    }
    let etcd: Vec<Url> = p
        .list("etcd-servers")
        .iter()
        .map(|u| Url::parse(u).map_err(|e| format!("--etcd-servers: {e}")))
        .collect::<Result<_, _>>()?;

    let loaded = load_files(Role::ApiServer, p)?;
    let etcd_ca = loaded
        .certs
        .get("etcd-cafile")
        .ok_or("--etcd-cafile not loaded")?;
    let etcd_pair = loaded
        .pairs
        .get("etcd-certfile")
        .ok_or("--etcd-certfile not loaded")?;
    let etcd_tls = tls::client_config("--etcd-cafile/--etcd-certfile", etcd_ca, etcd_pair)?;
    let serving = loaded
        .pairs
        .get("tls-cert-file")
        .ok_or("--tls-cert-file not loaded")?;
    let client_ca = loaded
        .certs
        .get("client-ca-file")
        .ok_or("--client-ca-file not loaded")?;
    let server_tls = tls::server_config("--tls-cert-file", serving, Some(client_ca))?;

    // Every etcd server must answer before the apiserver serves.
    let deadline = Instant::now() + ETCD_STARTUP_WAIT;
    for url in &etcd {
        loop {
            match etcd_health(url, etcd_tls.clone()).await {
                Ok(()) => {
                    log!("etcd https://{}:{} is healthy", url.host, url.port);
                    break;
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "etcd https://{}:{} is not healthy after {ETCD_STARTUP_WAIT:?}: {e}",
                        url.host, url.port
                    ));
                }
                Err(e) => {
                    log!(
                        "etcd https://{}:{} not healthy yet: {e}; retrying",
                        url.host,
                        url.port
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    let store = Store {
        etcd: etcd.clone(),
        tls: etcd_tls.clone(),
    };
    let state = Arc::new(Service::ApiServer(ApiServer {
        etcd,
        etcd_tls,
        ready: Cached::new(ETCD_RECHECK),
        store,
    }));
    let listener = listen(addr, "HTTPS").await?;
    notify_ready();
    serve(listener, Some(server_tls), state).await
}

// --- kube-controller-manager, kube-scheduler ----------------------------------

struct Controller {
    api: Url,
    api_tls: Arc<ClientConfig>,
    healthy: Cached,
}

async fn apiserver_ready(url: &Url, config: Arc<ClientConfig>) -> Result<(), String> {
    let r = http::get(url, config, "/readyz", CHECK_TIMEOUT).await?;
    if r.status == 200 {
        Ok(())
    } else {
        Err(format!("GET /readyz: {} {}", r.status, r.body.trim()))
    }
}

impl Controller {
    async fn healthz(&self) -> Result<(), String> {
        self.healthy
            .get(|| apiserver_ready(&self.api, self.api_tls.clone()))
            .await
    }
}

async fn controller(role: Role, p: &Parsed) -> Result<(), String> {
    let (default_port, kubeconfig_source) = match role {
        Role::ControllerManager => {
            require(
                p,
                "kubeconfig",
                "the stand-in talks to the apiserver it names",
            )?;
            (10257, "--kubeconfig")
        }
        _ => {
            if p.get("config").is_none() && p.get("kubeconfig").is_none() {
                return Err("--config (or --kubeconfig) is required (the stand-in talks to the apiserver its kubeconfig names)".into());
            }
            (10259, "--config's clientConnection.kubeconfig")
        }
    };
    let why = "the stand-in serves only with the given certificate; the real one would make a self-signed one";
    require(p, "tls-cert-file", why)?;
    require(p, "tls-private-key-file", why)?;
    let addr = secure_addr(p, default_port)?;

    let mut loaded = load_files(role, p)?;
    let kubeconfig = match role {
        Role::ControllerManager => loaded.kubeconfigs.remove("kubeconfig"),
        // --config wins over the deprecated --kubeconfig, as in the real one.
        _ => loaded
            .config_kubeconfig
            .take()
            .or_else(|| loaded.kubeconfigs.remove("kubeconfig")),
    }
    .ok_or_else(|| format!("{kubeconfig_source} was not loaded"))?;
    let api = Url::parse(&kubeconfig.server).map_err(|e| format!("{kubeconfig_source}: {e}"))?;
    let api_tls = tls::client_config(kubeconfig_source, &kubeconfig.ca, &kubeconfig.client)?;
    let serving = loaded
        .pairs
        .get("tls-cert-file")
        .ok_or("--tls-cert-file not loaded")?;
    let server_tls = tls::server_config(
        "--tls-cert-file",
        serving,
        loaded.certs.get("client-ca-file").map(Vec::as_slice),
    )?;

    let mut wait = Duration::from_secs(1);
    loop {
        match apiserver_ready(&api, api_tls.clone()).await {
            Ok(()) => {
                log!("apiserver {} is ready", kubeconfig.server);
                break;
            }
            Err(e) => {
                log!(
                    "apiserver {} not ready: {e}; retrying in {wait:?}",
                    kubeconfig.server
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }

    if role == Role::ControllerManager {
        tokio::spawn(default_service_account(api.clone(), api_tls.clone()));
    }
    let state = Arc::new(Service::Controller(Controller {
        api,
        api_tls,
        healthy: Cached::new(APISERVER_RECHECK),
    }));
    if addr.port() == 0 {
        log!("--secure-port=0: not serving HTTPS");
        notify_ready();
        return idle().await;
    }
    let listener = listen(addr, "HTTPS").await?;
    notify_ready();
    serve(listener, Some(server_tls), state).await
}

// --- kubelet, kube-proxy --------------------------------------------------------

/// How long the kubelet waits at startup for the container runtime's socket.
const CRI_STARTUP_WAIT: Duration = Duration::from_secs(60);
/// The node parts' /healthz is ok while the apiserver answered within this.
const NODE_HEALTH_WINDOW: Duration = Duration::from_secs(10);
/// How often the node parts ask their apiserver once it answered: twice
/// per [`NODE_HEALTH_WINDOW`] (a real kubelet renews its node lease every
/// 10 s), so that a lab of a hundred nodes is not busy with their checks.
const NODE_RECHECK: Duration = Duration::from_secs(5);

/// The node parts' view of their apiserver: a background task asks its
/// `/readyz` every [`NODE_RECHECK`]; /healthz is ok while the last
/// success is at most [`NODE_HEALTH_WINDOW`] old.
struct NodeHealth {
    server: String,
    state: std::sync::Mutex<NodeState>,
}

struct NodeState {
    last_ok: Option<Instant>,
    last_error: String,
}

impl NodeHealth {
    fn new(server: &str) -> NodeHealth {
        NodeHealth {
            server: server.to_string(),
            state: std::sync::Mutex::new(NodeState {
                last_ok: None,
                last_error: "not asked yet".into(),
            }),
        }
    }

    fn record(&self, r: &Result<(), String>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(()) => st.last_ok = Some(Instant::now()),
            Err(e) => st.last_error = e.clone(),
        }
    }

    fn healthz(&self) -> Result<(), String> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match st.last_ok {
            Some(at) if at.elapsed() <= NODE_HEALTH_WINDOW => Ok(()),
            Some(at) => Err(format!(
                "apiserver {} last reachable {:.0?} ago; last error: {}",
                self.server,
                at.elapsed(),
                st.last_error
            )),
            None => Err(format!(
                "apiserver {} not reached yet: {}",
                self.server, st.last_error
            )),
        }
    }
}

/// Asks `/readyz` until it answers 200 (backoff 1 s to 5 s, logging), then
/// keeps asking every [`NODE_RECHECK`] in the background.
async fn reach_apiserver(health: Arc<NodeHealth>, api: Url, api_tls: Arc<ClientConfig>) {
    let mut wait = Duration::from_secs(1);
    loop {
        let r = apiserver_ready(&api, api_tls.clone()).await;
        health.record(&r);
        match r {
            Ok(()) => {
                log!("apiserver {} is ready", health.server);
                break;
            }
            Err(e) => {
                log!(
                    "apiserver {} not ready: {e}; retrying in {wait:?}",
                    health.server
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    tokio::spawn(async move {
        let mut was_ok = true;
        loop {
            tokio::time::sleep(NODE_RECHECK).await;
            let r = apiserver_ready(&api, api_tls.clone()).await;
            health.record(&r);
            match (&r, was_ok) {
                (Err(e), true) => log!("apiserver {} unreachable: {e}", health.server),
                (Ok(()), false) => log!("apiserver {} reachable again", health.server),
                _ => {}
            }
            was_ok = r.is_ok();
        }
    });
}

/// Checks that a kubeconfig's client certificate has `cn` and, if given,
/// organization `org`.
fn check_identity(
    what: &str,
    kc: &Kubeconfig,
    cn: &str,
    org: Option<&str>,
    why: &str,
) -> Result<(), String> {
    let (got_cn, orgs) = files::cn_and_orgs(&kc.client.chain[0]);
    let got_cn = got_cn.unwrap_or_default();
    if got_cn != cn {
        return Err(format!(
            "{what}: the client certificate's CN is {got_cn:?}, expected {cn:?} ({why})"
        ));
    }
    if let Some(org) = org {
        if !orgs.iter().any(|o| o == org) {
            return Err(format!(
                "{what}: the client certificate's O is {orgs:?}, expected {org:?} ({why})"
            ));
        }
    }
    Ok(())
}

/// Label keys (prefix/name) the kubelet may set on its own Node with
/// --node-labels in the kubernetes.io and k8s.io namespaces
/// (k8s.io/kubernetes pkg/kubelet/apis/well_known_labels.go).
const KUBELET_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
];
const KUBELET_LABEL_NAMESPACES: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];

/// `--node-labels=k=v,...`: syntax, and the kubelet's refusal of
/// kubernetes.io / k8s.io labels it may not set.
fn check_node_labels(value: &str) -> Result<(), String> {
    let mut forbidden = Vec::new();
    for item in value.split(',').filter(|i| !i.is_empty()) {
        let (key, val) = item
            .split_once('=')
            .ok_or_else(|| format!("--node-labels={value}: {item:?} is not key=value"))?;
        let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
        let name_ok = |s: &str| {
            s.len() <= 63
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        };
        let prefix_ok = prefix.is_empty()
            || (prefix.len() <= 253
                && prefix.split('.').all(|l| {
                    !l.is_empty()
                        && l.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                }));
        if !name_ok(name) || !prefix_ok {
            return Err(format!(
                "--node-labels={value}: {key:?} is not a valid label key"
            ));
        }
        if !(val.is_empty() || name_ok(val)) {
            return Err(format!(
                "--node-labels={value}: {val:?} is not a valid label value"
            ));
        }
        let k8s_namespace = ["kubernetes.io", "k8s.io"]
            .iter()
            .any(|ns| prefix == *ns || prefix.ends_with(&format!(".{ns}")));
        let allowed = KUBELET_LABELS.contains(&key)
            || KUBELET_LABEL_NAMESPACES
                .iter()
                .any(|ns| prefix == *ns || prefix.ends_with(&format!(".{ns}")));
        if k8s_namespace && !allowed {
            forbidden.push(key.to_string());
        }
    }
    if !forbidden.is_empty() {
        return Err(format!(
            "--node-labels: unknown 'kubernetes.io' or 'k8s.io' labels specified with --node-labels: {forbidden:?} (the kubelet refuses them, as the real one does)"
        ));
    }
    Ok(())
}

/// Connects to the container runtime's socket until it answers, for up to
/// [`CRI_STARTUP_WAIT`].
async fn wait_for_cri(socket: &Path) -> Result<(), String> {
    let deadline = Instant::now() + CRI_STARTUP_WAIT;
    loop {
        let r = tokio::time::timeout(CHECK_TIMEOUT, tokio::net::UnixStream::connect(socket)).await;
        let err = match r {
            Ok(Ok(_)) => {
                log!(
                    "container runtime unix://{} answers (connected)",
                    socket.display()
                );
                return Ok(());
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no connection within {CHECK_TIMEOUT:?}"),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "containerRuntimeEndpoint unix://{}: the container runtime does not answer after {CRI_STARTUP_WAIT:?}: {err}",
                socket.display()
            ));
        }
        log!(
            "container runtime unix://{} not answering yet: {err}; retrying",
            socket.display()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn kubelet(p: &Parsed) -> Result<(), String> {
    if let Some(path) = path_of(p, "bootstrap-kubeconfig") {
        return Err(format!(
            "{}: not supported by the stand-in (kubelet TLS bootstrapping, kubelet_join = \"bootstrap-token\", needs the real kubelet: KUBEFORGE_K8S_BIN_DIR)",
            files::flag_path("bootstrap-kubeconfig", path)
        ));
    }
    require(p, "config", "the stand-in reads its KubeletConfiguration")?;
    let kc_what = files::flag_path(
        "kubeconfig",
        Path::new(require(
            p,
            "kubeconfig",
            "the stand-in talks to the apiserver it names",
        )?),
    );
    let hostname = require(
        p,
        "hostname-override",
        "the stand-in checks the kubeconfig's identity against it",
    )?
    .to_string();
    if let Some(ips) = p.get("node-ip") {
        for ip in ips.split(',') {
            ip.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("--node-ip={ips}: {ip:?} is not an IP address"))?;
        }
    }
    if let Some(labels) = p.get("node-labels") {
        check_node_labels(labels)?;
    }

    let mut loaded = load_files(Role::Kubelet, p)?;
    let config = loaded
        .kubelet_config
        .take()
        .ok_or("--config was not loaded")?;
    let kubeconfig = loaded
        .kubeconfigs
        .remove("kubeconfig")
        .ok_or("--kubeconfig was not loaded")?;
    check_identity(
        &kc_what,
        &kubeconfig,
        &format!("system:node:{hostname}"),
        Some("system:nodes"),
        &format!("the Node authorizer only lets the kubelet of --hostname-override={hostname} act as system:node:{hostname} in group system:nodes"),
    )?;
    log!(
        "{kc_what}: client certificate {} matches --hostname-override={hostname}",
        files::subject(&kubeconfig.client.chain[0])
    );
    let client_ca = match loaded.certs.remove("client-ca-file") {
        Some(c) => c,
        None => loaded.kubelet_client_ca.take().ok_or(
            "--config: authentication.x509.clientCAFile is required (the stand-in's kubelet API requires client certificates)",
        )?,
    };
    // Flags override the config file, as in the real kubelet.
    let serving = loaded
        .pairs
        .remove("tls-cert-file")
        .or_else(|| loaded.kubelet_serving.take())
        .ok_or(
            "--config: tlsCertFile and tlsPrivateKeyFile are required (the stand-in serves the kubelet API only with a given certificate: it makes no self-signed one and asks for none, serverTLSBootstrap is not supported)",
        )?;
    let api_tls_config =
        tls::server_config_requiring_client("kubelet API (tlsCertFile)", &serving, &client_ca)?;
    let bind = p
        .get("healthz-bind-address")
        .map_or(config.healthz_bind_address.as_str(), |v| v);
    let healthz_port = match p.get("healthz-port") {
        Some(v) => v
            .parse::<u16>()
            .map_err(|_| format!("--healthz-port={v}: not a port"))?,
        None => config.healthz_port,
    };
    let healthz_ip: IpAddr = bind
        .parse()
        .map_err(|_| format!("healthz bind address {bind:?}: not an IP address"))?;
    let address = p.get("address").map_or(config.address.as_str(), |v| v);
    let api_ip: IpAddr = address
        .parse()
        .map_err(|_| format!("kubelet address {address:?}: not an IP address"))?;
    let api_port = match p.get("port") {
        Some(v) => v
            .parse::<u16>()
            .map_err(|_| format!("--port={v}: not a port"))?,
        None => config.port,
    };
    let server = Url::parse(&kubeconfig.server).map_err(|e| format!("{kc_what}: {e}"))?;
    let client_tls = tls::client_config(&kc_what, &kubeconfig.ca, &kubeconfig.client)?;

    wait_for_cri(&config.container_runtime_socket).await?;

    let health = Arc::new(NodeHealth::new(&kubeconfig.server));
    let healthz = if healthz_port == 0 {
        log!("healthz port 0: not serving /healthz");
        None
    } else {
        let listener = listen(SocketAddr::new(healthz_ip, healthz_port), "HTTP /healthz").await?;
        Some(tokio::spawn(serve(
            listener,
            None,
            Arc::new(Service::Node(health.clone())),
        )))
    };
    reach_apiserver(health, server.clone(), client_tls.clone()).await;
    let node_ip = p.get("node-ip").unwrap_or_default().to_string();
    let labels = p.get("node-labels").unwrap_or_default().to_string();
    tokio::spawn(register_node(server, client_tls, hostname, node_ip, labels));
    let listener = listen(SocketAddr::new(api_ip, api_port), "HTTPS kubelet API").await?;
    notify_ready();
    let kubelet_api = serve(
        listener,
        Some(api_tls_config),
        Arc::new(Service::KubeletApi),
    );
    match healthz {
        Some(task) => tokio::select! {
            r = kubelet_api => r,
            r = task => r.map_err(|e| format!("/healthz server: {e}"))?,
        },
        None => kubelet_api.await,
    }
}

/// Registers this node with the apiserver, Ready, as the kubelet's own
/// identity (retrying until the apiserver takes it).
async fn register_node(
    api: Url,
    tls: Arc<ClientConfig>,
    name: String,
    node_ip: String,
    labels: String,
) {
    let mut label_map = serde_json::Map::new();
    label_map.insert("kubernetes.io/hostname".into(), name.clone().into());
    for kv in labels.split(',').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        label_map.insert(k.into(), v.into());
    }
    let addresses: Vec<serde_json::Value> = node_ip
        .split(',')
        .filter(|a| !a.is_empty())
        .map(|a| serde_json::json!({"type": "InternalIP", "address": a.trim()}))
        .collect();
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": label_map},
        "status": {
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "kubelet stand-in (not a real kubelet)",
                "lastHeartbeatTime": now_rfc3339(),
            }],
            "addresses": addresses,
            "nodeInfo": {"kubeletVersion": crate::version()},
        },
    })
    .to_string();
    let path = format!("/api/v1/nodes/{name}?fieldManager=kubelet-standin&force=true");
    apply_until_ok(api, tls, &format!("node {name}"), &path, body).await;
}

/// Now, as the API writes times (`2026-01-05T10:00:00Z`).
fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Server-side applies `body` at `path` until the apiserver takes it.
async fn apply_until_ok(api: Url, tls: Arc<ClientConfig>, what: &str, path: &str, body: String) {
    loop {
        let r = http::send(
            &api,
            tls.clone(),
            "PATCH",
            path,
            Some(("application/apply-patch+yaml", body.as_bytes())),
            CHECK_TIMEOUT,
        )
        .await;
        match r {
            Ok(r) if r.status == 200 => {
                log!("applied {what} to apiserver {}:{}", api.host, api.port);
                return;
            }
            Ok(r) => log!("applying {what}: {} {}", r.status, r.body.trim()),
            Err(e) => log!("applying {what}: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// What the serviceaccounts controller of kube-controller-manager does
/// first: the `default` ServiceAccount of the `default` namespace.
async fn default_service_account(api: Url, tls: Arc<ClientConfig>) {
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "default", "namespace": "default"},
    })
    .to_string();
    let path = "/api/v1/namespaces/default/serviceaccounts/default?fieldManager=kube-controller-manager-standin&force=true";
    apply_until_ok(api, tls, "ServiceAccount default/default", path, body).await;
}

fn parse_ipport(what: &str, s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 10256))
        .map_err(|_| format!("{what} {s:?}: not an address:port"))
}

async fn kube_proxy(p: &Parsed) -> Result<(), String> {
    require(
        p,
        "config",
        "the stand-in reads its KubeProxyConfiguration, as kubeforge renders it",
    )?;
    let mut loaded = load_files(Role::KubeProxy, p)?;
    let config = loaded
        .proxy_config
        .take()
        .ok_or("--config was not loaded")?;
    // With --config, the real kube-proxy ignores its other flags.
    let kubeconfig = loaded
        .config_kubeconfig
        .take()
        .ok_or("--config's clientConnection.kubeconfig was not loaded")?;
    let kc_what = format!(
        "--config clientConnection.kubeconfig {}",
        config.kubeconfig.display()
    );
    check_identity(
        &kc_what,
        &kubeconfig,
        "system:kube-proxy",
        None,
        "the system:node-proxier binding names the user system:kube-proxy",
    )?;
    let addr = parse_ipport("healthzBindAddress", &config.healthz_bind_address)?;
    let server = Url::parse(&kubeconfig.server).map_err(|e| format!("{kc_what}: {e}"))?;
    let client_tls = tls::client_config(&kc_what, &kubeconfig.ca, &kubeconfig.client)?;

    let health = Arc::new(NodeHealth::new(&kubeconfig.server));
    let healthz = if addr.port() == 0 {
        log!("healthz port 0: not serving /healthz");
        None
    } else {
        Some(listen(addr, "HTTP /healthz").await?)
    };
    let Some(listener) = healthz else {
        reach_apiserver(health, server, client_tls).await;
        notify_ready();
        return idle().await;
    };
    let serving = serve(listener, None, Arc::new(Service::Node(health.clone())));
    let start = async {
        reach_apiserver(health, server, client_tls).await;
        notify_ready();
        idle().await
    };
    tokio::select! {
        r = serving => r,
        r = start => r,
    }
}

// --- serving ------------------------------------------------------------------

enum Service {
    ApiServer(ApiServer),
    Controller(Controller),
    /// Plain-HTTP /healthz of kubelet and kube-proxy.
    Node(Arc<NodeHealth>),
    /// The kubelet API (HTTPS, client certificates required).
    KubeletApi,
}

const UNAUTHORIZED: &str = "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"Unauthorized\",\"reason\":\"Unauthorized\",\"code\":401}";

impl Service {
    /// (status, content type, body) for a GET of `path`.
    async fn respond(&self, path: &str, verified_client: bool) -> (u16, &'static str, String) {
        const TEXT: &str = "text/plain; charset=utf-8";
        const JSON: &str = "application/json";
        let ok = (200, TEXT, "ok".to_string());
        match (self, path) {
            (Service::ApiServer(_), "/livez" | "/healthz") => ok,
            (Service::ApiServer(a), "/readyz") => match a.readyz().await {
                Ok(()) => ok,
                Err(e) => (
                    500,
                    TEXT,
                    format!("[-]etcd failed: {e}\nreadyz check failed\n"),
                ),
            },
            (Service::ApiServer(_), "/version") => (
                200,
                JSON,
                format!(
                    "{{\"major\":\"1\",\"minor\":\"{}\",\"gitVersion\":\"{}\"}}",
                    crate::minor(),
                    crate::version()
                ),
            ),
            (Service::Controller(c), "/healthz" | "/livez" | "/readyz") => {
                match c.healthz().await {
                    Ok(()) => ok,
                    Err(e) => (
                        500,
                        TEXT,
                        format!(
                            "[-]apiserver https://{}:{} unreachable: {e}\nhealthz check failed\n",
                            c.api.host, c.api.port
                        ),
                    ),
                }
            }
            (Service::Node(h), "/healthz" | "/livez") => match h.healthz() {
                Ok(()) => ok,
                Err(e) => (500, TEXT, format!("[-]{e}\nhealthz check failed\n")),
            },
            (Service::KubeletApi, "/healthz") => ok,
            (Service::Node(_) | Service::KubeletApi, _) => {
                (404, TEXT, "404 page not found\n".into())
            }
            (_, _) if !verified_client => (401, JSON, UNAUTHORIZED.into()),
            (_, _) => (404, TEXT, "404 page not found\n".into()),
        }
    }
}

async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    service: Arc<Service>,
) -> Result<(), String> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                log!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = service.clone();
        tokio::spawn(async move {
            let work = async {
                match acceptor {
                    Some(acceptor) => {
                        let mut stream = acceptor
                            .accept(tcp)
                            .await
                            .map_err(|e| format!("TLS handshake: {e}"))?;
                        // Verified against the client CA by the handshake.
                        let client = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(files::subject);
                        handle(&mut stream, peer, client, &service).await
                    }
                    None => {
                        let mut stream = tcp;
                        handle(&mut stream, peer, None, &service).await
                    }
                }
            };
            match tokio::time::timeout(CONNECTION_TIMEOUT, work).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log!("connection from {peer}: {e}"),
                Err(_) => log!("connection from {peer}: timed out"),
            }
        });
    }
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    client: Option<String>,
    service: &Service,
) -> Result<(), String> {
    let request = match http::read_request(stream).await {
        Ok(r) => r,
        Err(e) => {
            let _ = http::write_response(stream, 400, "text/plain", "bad request\n", false).await;
            return Err(e);
        }
    };
    let health = ["/livez", "/healthz", "/readyz", "/version"].contains(&request.path());
    let who = match &client {
        Some(subject) => format!("{peer}, client certificate {subject}"),
        None => peer.to_string(),
    };
    let (status, content_type, body) = match (service, request.method.as_str()) {
        // API objects, for clients with a certificate of the cluster CA
        // (anyone with one may do anything: no RBAC).
        (Service::ApiServer(a), _) if !health => match client {
            Some(_) => {
                let (status, body) = a.store.handle(&request).await;
                (status, "application/json", body)
            }
            None => (401, "application/json", UNAUTHORIZED.to_string()),
        },
        (_, "GET" | "HEAD") => service.respond(request.path(), client.is_some()).await,
        _ => (405, "text/plain", "method not allowed\n".to_string()),
    };
    let result = http::write_response(
        stream,
        status,
        content_type,
        &body,
        request.method == "HEAD",
    )
    .await;
    log!("\"{}\" {status} ({who})", request.line);
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn file_flags_are_real_flags() {
        for role in Role::ALL {
            let table =
                crate::flags::FlagTable::parse(role.flag_list(), crate::flaglist::DEFAULT_MINOR)
                    .unwrap();
            for (flag, kind) in file_flags(role) {
                assert!(table.lookup(flag).is_some(), "{}: --{flag}", role.name());
                if let Kind::CertWithKey(k) | Kind::KeyOfPair(k) = kind {
                    assert!(
                        file_flags(role).iter().any(|(f, _)| f == k),
                        "{}: --{flag} pairs with --{k}, which is not listed",
                        role.name()
                    );
                }
            }
        }
    }

    #[test]
    fn ipports() {
        assert_eq!(
            parse_ipport("x", "0.0.0.0:10256").unwrap(),
            "0.0.0.0:10256".parse().unwrap()
        );
        assert_eq!(
            parse_ipport("x", "[::1]:1").unwrap(),
            "[::1]:1".parse().unwrap()
        );
        assert_eq!(parse_ipport("x", "127.0.0.1").unwrap().port(), 10256);
        assert!(parse_ipport("x", "localhost:1").is_err());
    }

    #[tokio::test]
    async fn responses() {
        let health = Arc::new(NodeHealth::new("https://127.0.0.1:1"));
        let node = Service::Node(health.clone());
        let (status, _, body) = node.respond("/healthz", false).await;
        assert_eq!(status, 500);
        assert!(body.contains("not reached yet"), "{body}");
        health.record(&Ok(()));
        assert_eq!(node.respond("/healthz", false).await.0, 200);
        assert_eq!(node.respond("/metrics", false).await.0, 404);
        health.state.lock().unwrap().last_ok = Instant::now().checked_sub(Duration::from_secs(11));
        health.record(&Err("refused".into()));
        let (status, _, body) = node.respond("/healthz", false).await;
        assert_eq!(status, 500);
        assert!(
            body.contains("last reachable") && body.contains("refused"),
            "{body}"
        );
        let api = Service::KubeletApi;
        assert_eq!(api.respond("/healthz", true).await.0, 200);
        assert_eq!(api.respond("/pods", true).await.0, 404);
    }

    #[test]
    fn node_labels() {
        check_node_labels("example.com/disk=ssd,tier=web").unwrap();
        check_node_labels("node.kubernetes.io/exclude-from-external-load-balancers=").unwrap();
        check_node_labels("topology.kubernetes.io/zone=a").unwrap();
        let e = check_node_labels("node-role.kubernetes.io/worker=").unwrap_err();
        assert!(e.contains("node-role.kubernetes.io/worker"), "{e}");
        assert!(check_node_labels("a=b=c").is_err());
        assert!(check_node_labels("novalue").is_err());
        assert!(check_node_labels("Bad_Prefix.io/x=y").is_err());
    }

    #[tokio::test]
    async fn cached_checks() {
        let c = Cached::new(Duration::from_secs(60));
        assert_eq!(
            c.get(|| async { Err("down".to_string()) }).await,
            Err("down".into())
        );
        // Within the interval the cached answer stands.
        assert_eq!(c.get(|| async { Ok(()) }).await, Err("down".into()));
        let c = Cached::new(Duration::ZERO);
        assert_eq!(
            c.get(|| async { Err("down".to_string()) }).await,
            Err("down".into())
        );
        assert_eq!(c.get(|| async { Ok(()) }).await, Ok(()));
    }
}
