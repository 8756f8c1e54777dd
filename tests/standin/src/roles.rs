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
use crate::{notify, tls, Role, VERSION};

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
            ("bootstrap-kubeconfig", Yaml),
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
                if role == Role::Kubelet
                    && !path.exists()
                    && path_of(p, "bootstrap-kubeconfig").is_some()
                {
                    log!("{fp} does not exist yet; the kubelet would bootstrap it");
                    continue;
                }
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
                }
                match (&c.tls_cert_file, &c.tls_private_key_file) {
                    (Some(cert), Some(key)) => {
                        files::load_pair(
                            &field("tlsCertFile"),
                            cert,
                            &field("tlsPrivateKeyFile"),
                            key,
                        )?;
                        log!(
                            "checked {} with {}: the key matches",
                            cert.display(),
                            key.display()
                        );
                    }
                    (None, None) => {}
                    _ => {
                        return Err(format!(
                            "{fp}: tlsCertFile and tlsPrivateKeyFile must be set together"
                        ))
                    }
                }
                log!("checked {fp}: KubeletConfiguration");
                loaded.kubelet_config = Some(c);
            }
            Kind::ProxyConfig => {
                let c = files::load_proxy_config(flag, path)?;
                if let Some(kc_path) = &c.kubeconfig {
                    let kc = files::load_kubeconfig(
                        &format!("{flag}={} clientConnection.kubeconfig", path.display()),
                        kc_path,
                    )?;
                    log!(
                        "checked {fp}: clientConnection.kubeconfig {} (server {})",
                        kc_path.display(),
                        kc.server
                    );
                    loaded.config_kubeconfig = Some(kc);
                }
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

    let state = Arc::new(Service::ApiServer(ApiServer {
        etcd,
        etcd_tls,
        ready: Cached::new(ETCD_RECHECK),
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

async fn kubelet(p: &Parsed) -> Result<(), String> {
    let loaded = load_files(Role::Kubelet, p)?;
    let config = loaded.kubelet_config.as_ref();
    // Flags override the config file, as in the real kubelet.
    let bind = p
        .get("healthz-bind-address")
        .map(str::to_string)
        .or_else(|| config.map(|c| c.healthz_bind_address.clone()))
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = match p.get("healthz-port") {
        Some(v) => v
            .parse::<u16>()
            .map_err(|_| format!("--healthz-port={v}: not a port"))?,
        None => config.map_or(10248, |c| c.healthz_port),
    };
    let ip: IpAddr = bind
        .parse()
        .map_err(|_| format!("healthz bind address {bind:?}: not an IP address"))?;
    if port == 0 {
        log!("healthz port 0: not serving /healthz");
        notify_ready();
        return idle().await;
    }
    let listener = listen(SocketAddr::new(ip, port), "HTTP /healthz").await?;
    notify_ready();
    serve(listener, None, Arc::new(Service::Node)).await
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
    let loaded = load_files(Role::KubeProxy, p)?;
    // With --config, the real kube-proxy ignores its other flags.
    let addr = match (&loaded.proxy_config, p.get("healthz-bind-address")) {
        (Some(c), _) => parse_ipport("healthzBindAddress", &c.healthz_bind_address)?,
        (None, Some(flag)) => parse_ipport("--healthz-bind-address", flag)?,
        (None, None) => parse_ipport("default", "0.0.0.0:10256")?,
    };
    if addr.port() == 0 {
        log!("healthz port 0: not serving /healthz");
        notify_ready();
        return idle().await;
    }
    let listener = listen(addr, "HTTP /healthz").await?;
    notify_ready();
    serve(listener, None, Arc::new(Service::Node)).await
}

// --- serving ------------------------------------------------------------------

enum Service {
    ApiServer(ApiServer),
    Controller(Controller),
    Node,
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
                format!("{{\"major\":\"1\",\"minor\":\"31\",\"gitVersion\":\"{VERSION}\"}}"),
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
            (Service::Node, "/healthz" | "/livez") => ok,
            (Service::Node, _) => (404, TEXT, "404 page not found\n".into()),
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
    let (status, content_type, body) = match request.method.as_str() {
        "GET" | "HEAD" => service.respond(request.path(), client.is_some()).await,
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
    let who = match &client {
        Some(subject) => format!("{peer}, client certificate {subject}"),
        None => peer.to_string(),
    };
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
            let table = crate::flags::FlagTable::parse(role.flag_list()).unwrap();
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
        let node = Service::Node;
        assert_eq!(node.respond("/healthz", false).await.0, 200);
        assert_eq!(node.respond("/metrics", false).await.0, 404);
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
