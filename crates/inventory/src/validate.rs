//! Raw inventory -> validated model. Collects every finding before deciding.

use crate::diagnostic::{Diagnostic, InventoryError, Severity, Source};
use crate::model::*;
use crate::raw::*;
use crate::values::{self, InterfaceProblem, MirrorProblem, PathProblem};
use crate::Loaded;
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::path::Path;
use toml::Spanned;

const TAINT_EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

struct Checker<'a> {
    src: Source<'a>,
    out: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>, help: impl Into<String>) {
        let d = self.src.diag(Severity::Error, span, message, help);
        self.out.push(d);
    }

    fn warn(&mut self, span: Range<usize>, message: impl Into<String>, help: impl Into<String>) {
        let d = self.src.diag(Severity::Warning, span, message, help);
        self.out.push(d);
    }

    fn cidr(&mut self, key: &str, value: &Spanned<String>) -> Option<Ipv4Net> {
        let text = value.get_ref();
        match text.parse::<ipnet::IpNet>() {
            Ok(ipnet::IpNet::V4(net)) => {
                if net.addr() != net.network() {
                    self.error(
                        value.span(),
                        format!("{key} {text:?} has host bits set"),
                        format!("write the network address: \"{}\"", net.trunc()),
                    );
                    return None;
                }
                Some(net)
            }
            Ok(ipnet::IpNet::V6(_)) => {
                self.error(
                    value.span(),
                    format!("{key} {text:?} is IPv6, which kubeforge does not support yet"),
                    "use an IPv4 range",
                );
                None
            }
            Err(_) => {
                self.error(
                    value.span(),
                    format!("{key} {text:?} is not a CIDR range"),
                    "write it as ADDRESS/PREFIX, for example \"10.96.0.0/12\"",
                );
                None
            }
        }
    }

    fn ipv4(&mut self, key: &str, value: &Spanned<String>) -> Option<Ipv4Addr> {
        let text = value.get_ref();
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => Some(ip),
            Ok(IpAddr::V6(_)) => {
                self.error(
                    value.span(),
                    format!("{key} {text:?} is IPv6, which kubeforge does not support yet"),
                    "use an IPv4 address",
                );
                None
            }
            Err(_) => {
                self.error(
                    value.span(),
                    format!("{key} {text:?} is not an IP address"),
                    "write a dotted IPv4 address, for example \"10.77.0.11\"",
                );
                None
            }
        }
    }

    fn port(&mut self, key: &str, value: &Spanned<i64>) -> Option<u16> {
        match u16::try_from(*value.get_ref()) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                self.error(
                    value.span(),
                    format!("{key} {} is not a TCP port", value.get_ref()),
                    "use a number from 1 to 65535",
                );
                None
            }
        }
    }

    fn days(&mut self, key: &str, value: &Option<Spanned<i64>>, default: u32) -> u32 {
        let Some(v) = value else { return default };
        match u32::try_from(*v.get_ref()) {
            Ok(d) if d > 0 && d <= 36500 => d,
            _ => {
                self.error(
                    v.span(),
                    format!("{key} {} is out of range", v.get_ref()),
                    "use a number of days from 1 to 36500",
                );
                default
            }
        }
    }

    fn choice<T: Copy>(
        &mut self,
        key: &str,
        value: &Option<Spanned<String>>,
        choices: &[(&str, T)],
        default: T,
    ) -> T {
        let Some(v) = value else { return default };
        if let Some((_, t)) = choices.iter().find(|(name, _)| *name == v.get_ref()) {
            return *t;
        }
        let names: Vec<_> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        self.error(
            v.span(),
            format!("unknown {key} {:?}", v.get_ref()),
            format!("use one of {}", names.join(", ")),
        );
        default
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(crate) fn is_dns_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A Kubernetes qualified name (label key or taint key), with optional prefix.
fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    name_ok && prefix.is_none_or(is_dns_name)
}

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

/// `MAJOR.MINOR.PATCH` with an optional leading `v`: digits only, no
/// leading zeros (but "0" itself), no sign, pre-release or build suffix.
fn parse_version(text: &str) -> Option<KubeVersion> {
    let t = text.strip_prefix('v').unwrap_or(text);
    let mut parts = t.split('.').map(version_number);
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next()??;
    if parts.next().is_some() {
        return None;
    }
    Some(KubeVersion {
        major,
        minor,
        patch,
    })
}

fn version_number(s: &str) -> Option<u32> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn toml_error(src: &Source<'_>, e: &toml::de::Error) -> Diagnostic {
    let span = e.span().unwrap_or(0..0);
    let message = e.message().trim().to_string();
    let help = if message.starts_with("unknown field") {
        "remove the key or fix its spelling; the inventory reference in README.md lists every key"
    } else if message.starts_with("missing field") {
        "add the missing key; `kubeforge init` writes a complete example"
    } else {
        "fix the TOML syntax or the value's type"
    };
    src.diag(Severity::Error, span, message, help)
}

pub(crate) fn validate(path: &Path, text: &str) -> Result<Loaded, InventoryError> {
    let mut c = Checker {
        src: Source::new(path, text),
        out: Vec::new(),
    };
    let raw: RawInventory = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            return Err(InventoryError {
                diagnostics: vec![toml_error(&c.src, &e)],
            })
        }
    };
    let cluster = check(&mut c, raw);
    let mut diagnostics = c.out;
    diagnostics.sort_by_key(|d| (d.severity, d.line, d.column));
    if diagnostics.iter().any(|d| d.severity == Severity::Error) {
        return Err(InventoryError { diagnostics });
    }
    match cluster {
        Some(cluster) => Ok(Loaded {
            cluster,
            warnings: diagnostics,
        }),
        None => Err(InventoryError { diagnostics }),
    }
}

/// The cluster's address ranges, each as far as it is valid.
#[derive(Clone, Copy)]
struct Networks {
    service: Option<Ipv4Net>,
    pod: Option<Ipv4Net>,
    node: Option<Ipv4Net>,
}

/// The images the nodes pull, and where from.
struct Images {
    registry: String,
    mirrors: BTreeMap<String, String>,
    sandbox: String,
}

/// What the node step found.
struct Nodes {
    /// The nodes with a usable address.
    nodes: Vec<Node>,
    /// The roles of every node, also of those left out of `nodes` for a bad
    /// address: the topology checks count these, so that one bad address does
    /// not add "no node has the role ..." for roles the file does list.
    declared: Vec<(String, Vec<Role>)>,
    /// The span of every node's table, by name.
    spans: BTreeMap<String, Range<usize>>,
}

impl Nodes {
    fn count(&self, role: Role) -> usize {
        self.declared
            .iter()
            .filter(|(_, r)| r.contains(&role))
            .count()
    }
}

/// The names and addresses seen so far, to find duplicates.
#[derive(Default)]
struct Seen {
    names: HashMap<String, Range<usize>>,
    addrs: HashMap<Ipv4Addr, (String, Range<usize>)>,
}

/// Every check, in the order its findings are made: the cluster settings,
/// the PKI settings, SSH, the nodes, then the checks across nodes and the
/// load balancer.
fn check(c: &mut Checker<'_>, raw: RawInventory) -> Option<Cluster> {
    let cluster_span = raw.cluster.span();
    let rc = raw.cluster.into_inner();

    // --- cluster ---------------------------------------------------------
    let name = cluster_name(c, &rc.name);
    let version = kubernetes_version(c, &rc.kubernetes_version);
    let nets = networks(c, &rc, &cluster_span);
    let pod_subnet_prefix = pod_subnet_prefix(c, &rc.pod_subnet_prefix, nets.pod);
    let cluster_domain = cluster_domain(c, &rc.cluster_domain);
    let dns_service_ip = dns_service_ip(c, &rc.dns_service_ip, nets.service);
    let apiserver_port = match &rc.apiserver_port {
        None => Some(6443),
        Some(v) => c.port("apiserver_port", v),
    };
    let runtime = c.choice(
        "container_runtime",
        &rc.container_runtime,
        &[("containerd", Runtime::Containerd)],
        Runtime::Containerd,
    );
    let cni = cni(c, &rc, pod_subnet_prefix);
    let kubelet_join = c.choice(
        "kubelet_join",
        &rc.kubelet_join,
        &[
            ("certificate", KubeletJoin::Certificate),
            ("bootstrap-token", KubeletJoin::BootstrapToken),
        ],
        KubeletJoin::Certificate,
    );
    let proxy_mode = proxy_mode(c, &rc.kube_proxy_mode, version);
    let bin_dir = bin_dir(c, &rc.bin_dir);
    let node_profile = c.choice(
        "node_profile",
        &rc.node_profile,
        &[
            ("host", NodeProfile::Host),
            ("container", NodeProfile::Container),
        ],
        NodeProfile::Host,
    );
    let images = images(c, &rc);

    // --- pki, ssh, nodes -------------------------------------------------
    let pki = pki_settings(c, raw.pki.as_ref());
    let cluster_ssh = cluster_ssh(c, raw.ssh.as_ref());
    let checked = nodes(c, &raw.nodes, &cluster_span, nets, &cluster_ssh);

    // --- across nodes ----------------------------------------------------
    let control_planes = topology(c, &checked, &cluster_span);
    pod_capacity(c, &rc, &cluster_span, nets, pod_subnet_prefix, &checked);
    let loadbalancer = loadbalancer(
        c,
        raw.loadbalancer.as_ref(),
        &cluster_span,
        &checked,
        control_planes,
        apiserver_port,
        nets,
    );

    Some(Cluster {
        source: c.src.path.to_path_buf(),
        name,
        version: version?,
        service_cidr: nets.service?,
        pod_cidr: nets.pod?,
        node_cidr: nets.node,
        pod_subnet_prefix,
        cluster_domain,
        dns_service_ip: dns_service_ip?,
        apiserver_port: apiserver_port?,
        runtime,
        cni,
        proxy_mode,
        bin_dir,
        image_registry: images.registry,
        registry_mirrors: images.mirrors,
        sandbox_image: images.sandbox,
        node_profile,
        coredns: rc.coredns.unwrap_or(true),
        kubelet_join,
        pki,
        loadbalancer,
        etcd_backups: etcd_backups(c, raw.etcd.as_ref()),
        nodes: checked.nodes,
    })
}

/// `[etcd]`: the schedule of the nodes' own snapshots, a systemd calendar
/// event of plain characters, and how many each node keeps.
fn etcd_backups(c: &mut Checker<'_>, raw: Option<&Spanned<RawEtcd>>) -> Option<EtcdBackups> {
    let e = raw?.get_ref();
    let keep = match &e.backup_keep {
        None => 7,
        Some(v) => match u32::try_from(*v.get_ref()) {
            Ok(k) if (1..=1000).contains(&k) => k,
            _ => {
                c.error(
                    v.span(),
                    format!("backup_keep {} is out of range", v.get_ref()),
                    "keep from 1 to 1000 snapshots on each etcd node",
                );
                7
            }
        },
    };
    let schedule = e.backup_schedule.as_ref()?;
    let text = schedule.get_ref();
    let plain = !text.is_empty()
        && text.len() <= 100
        && text.trim() == text
        && text
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || " *-:/,.~".contains(ch));
    if !plain {
        c.error(
            schedule.span(),
            format!("backup_schedule {text:?} is not a calendar event"),
            "write a systemd calendar event (OnCalendar=), for example \"daily\" or \"*-*-* 03:00:00\"",
        );
        return None;
    }
    Some(EtcdBackups {
        schedule: text.clone(),
        keep,
    })
}

// --- cluster settings ------------------------------------------------------

fn cluster_name(c: &mut Checker<'_>, value: &Spanned<String>) -> String {
    let name = value.get_ref().clone();
    if !is_dns_label(&name) {
        c.error(
            value.span(),
            format!("cluster name {name:?} is not a DNS label"),
            "use lowercase letters, digits and '-', at most 63 characters",
        );
    }
    name
}

fn kubernetes_version(c: &mut Checker<'_>, value: &Spanned<String>) -> Option<KubeVersion> {
    match parse_version(value.get_ref()) {
        None => {
            c.error(
                value.span(),
                format!("kubernetes_version {:?} is not a version", value.get_ref()),
                "write MAJOR.MINOR.PATCH, for example \"1.31.4\"",
            );
            None
        }
        Some(v) if v.major != 1 || v.minor < MIN_MINOR || v.minor > MAX_MINOR => {
            c.error(
                value.span(),
                format!("Kubernetes {v} is not supported"),
                format!("use a version from 1.{MIN_MINOR} to 1.{MAX_MINOR}"),
            );
            None
        }
        Some(v) => Some(v),
    }
}

/// service_cidr, pod_cidr and node_cidr: each a valid range of a usable
/// size, and no two of them overlapping.
fn networks(c: &mut Checker<'_>, rc: &RawCluster, cluster_span: &Range<usize>) -> Networks {
    let default_service = Spanned::new(0..0, "10.96.0.0/12".to_string());
    let default_pod = Spanned::new(0..0, "10.244.0.0/16".to_string());
    let service_cidr = c.cidr(
        "service_cidr",
        rc.service_cidr.as_ref().unwrap_or(&default_service),
    );
    let pod_cidr = c.cidr("pod_cidr", rc.pod_cidr.as_ref().unwrap_or(&default_pod));
    let node_cidr = rc.node_cidr.as_ref().and_then(|v| c.cidr("node_cidr", v));
    let service_span = rc
        .service_cidr
        .as_ref()
        .map_or(cluster_span.clone(), |v| v.span());
    // A pod_cidr left at its default has no span: point at service_cidr.
    let pod_span = rc
        .pod_cidr
        .as_ref()
        .map_or(service_span.clone(), |v| v.span());

    if let Some(svc) = service_cidr {
        if svc.prefix_len() < 12 {
            c.error(
                service_span.clone(),
                format!("service_cidr {svc} is larger than the apiserver allows"),
                "use a prefix of /12 or longer",
            );
        } else if svc.prefix_len() > 28 {
            c.error(
                service_span.clone(),
                format!("service_cidr {svc} is too small for the cluster's services"),
                "use a prefix of /28 or shorter",
            );
        }
    }
    if let (Some(svc), Some(pod)) = (service_cidr, pod_cidr) {
        if overlaps(svc, pod) {
            let default = if rc.pod_cidr.is_none() {
                " (the default)"
            } else {
                ""
            };
            c.error(
                pod_span.clone(),
                format!("pod_cidr {pod}{default} overlaps service_cidr {svc}"),
                "give pods and services separate ranges",
            );
        }
    }
    if let Some(node_net) = node_cidr {
        let span = rc.node_cidr.as_ref().map_or(0..0, |v| v.span());
        for (key, other) in [("service_cidr", service_cidr), ("pod_cidr", pod_cidr)] {
            if let Some(other) = other {
                if overlaps(node_net, other) {
                    c.error(
                        span.clone(),
                        format!("node_cidr {node_net} overlaps {key} {other}"),
                        "node addresses, pods and services need separate ranges",
                    );
                }
            }
        }
    }
    Networks {
        service: service_cidr,
        pod: pod_cidr,
        node: node_cidr,
    }
}

fn pod_subnet_prefix(
    c: &mut Checker<'_>,
    value: &Option<Spanned<i64>>,
    pod_cidr: Option<Ipv4Net>,
) -> u8 {
    let Some(v) = value else { return 24 };
    let p = *v.get_ref();
    let min = pod_cidr.map_or(0, |n| i64::from(n.prefix_len()));
    if p < min.max(8) || p > 28 {
        c.error(
            v.span(),
            format!("pod_subnet_prefix {p} does not fit pod_cidr"),
            format!(
                "use a prefix from {} to 28 (each node gets one such subnet of pod_cidr)",
                min.max(8)
            ),
        );
        24
    } else {
        u8::try_from(p).unwrap_or(24)
    }
}

fn cluster_domain(c: &mut Checker<'_>, value: &Option<Spanned<String>>) -> String {
    let Some(v) = value else {
        return "cluster.local".to_string();
    };
    if !is_dns_name(v.get_ref()) {
        c.error(
            v.span(),
            format!("cluster_domain {:?} is not a DNS name", v.get_ref()),
            "use lowercase DNS labels separated by dots, for example \"cluster.local\"",
        );
    }
    v.get_ref().clone()
}

fn dns_service_ip(
    c: &mut Checker<'_>,
    value: &Option<Spanned<String>>,
    service_cidr: Option<Ipv4Net>,
) -> Option<Ipv4Addr> {
    let Some(v) = value else {
        return service_cidr.map(|svc| nth_host(svc, 10));
    };
    let ip = c.ipv4("dns_service_ip", v);
    if let (Some(ip), Some(svc)) = (ip, service_cidr) {
        if !svc.contains(&ip) {
            c.error(
                v.span(),
                format!("dns_service_ip {ip} is outside service_cidr {svc}"),
                "pick an address inside service_cidr, or remove the key to use the tenth one",
            );
        } else if ip == nth_host(svc, 1) || ip == svc.network() || ip == svc.broadcast() {
            c.error(
                v.span(),
                format!("dns_service_ip {ip} is reserved in service_cidr {svc}"),
                "the network, broadcast and first addresses are taken; remove the key to use the tenth one",
            );
        }
    }
    ip
}

fn cni(c: &mut Checker<'_>, rc: &RawCluster, pod_subnet_prefix: u8) -> Cni {
    let cni = c.choice(
        "cni",
        &rc.cni,
        &[
            ("bridge", Cni::Bridge),
            ("flannel", Cni::Flannel),
            ("calico", Cni::Calico),
        ],
        Cni::Bridge,
    );
    // Calico's IPAM hands out blocks of /20 to /32 only.
    if let (Cni::Calico, Some(v)) = (cni, &rc.pod_subnet_prefix) {
        if pod_subnet_prefix < 20 {
            c.error(
                v.span(),
                format!(
                    "pod_subnet_prefix {pod_subnet_prefix} is too large a block for cni \"calico\""
                ),
                "use a prefix from 20 to 28: Calico allocates pod addresses in blocks of that size",
            );
        }
    }
    cni
}

fn proxy_mode(
    c: &mut Checker<'_>,
    value: &Option<Spanned<String>>,
    version: Option<KubeVersion>,
) -> ProxyMode {
    let proxy_mode = c.choice(
        "kube_proxy_mode",
        value,
        &[
            ("iptables", ProxyMode::Iptables),
            ("ipvs", ProxyMode::Ipvs),
            ("nftables", ProxyMode::Nftables),
        ],
        ProxyMode::Iptables,
    );
    if let (Some(v), Some(span)) = (version, value.as_ref().map(|m| m.span())) {
        if proxy_mode == ProxyMode::Nftables && v.minor < 31 {
            c.error(
                span.clone(),
                format!("kube_proxy_mode \"nftables\" needs Kubernetes 1.31 or newer, not {v}"),
                "use \"iptables\" or raise kubernetes_version",
            );
        }
        if proxy_mode == ProxyMode::Ipvs && v.minor >= 35 {
            c.warn(
                span,
                format!("kube_proxy_mode \"ipvs\" is deprecated in Kubernetes {v}"),
                "prefer \"nftables\"",
            );
        }
    }
    proxy_mode
}

fn bin_dir(c: &mut Checker<'_>, value: &Option<Spanned<String>>) -> String {
    let Some(v) = value else {
        return "/usr/local/bin".to_string();
    };
    let s = v.get_ref();
    match values::bin_dir(s) {
        Ok(()) => {}
        Err(PathProblem::NotAbsolute) => c.error(
            v.span(),
            format!("bin_dir {s:?} is not an absolute path"),
            "write the directory on the nodes, for example \"/usr/local/bin\"",
        ),
        Err(PathProblem::Char(ch)) => c.error(
            v.span(),
            format!("bin_dir {s:?} holds {ch:?}"),
            "use letters, digits, '/', '.', '_', '-' and '+' only: the directory is written into every systemd unit",
        ),
        Err(PathProblem::NotNormal) => c.error(
            v.span(),
            format!("bin_dir {s:?} is not a normalised path"),
            "write it without \".\" or \"..\" components, doubled slashes or a trailing slash, for example \"/usr/local/bin\"",
        ),
    }
    s.trim_end_matches('/').to_string()
}

/// image_registry, registry_mirrors and sandbox_image.
fn images(c: &mut Checker<'_>, rc: &RawCluster) -> Images {
    let registry = image_registry(c, &rc.image_registry);
    let mirrors = registry_mirrors(c, &rc.registry_mirrors);
    let sandbox = sandbox_image(c, &rc.sandbox_image, &registry);
    Images {
        registry,
        mirrors,
        sandbox,
    }
}

fn image_registry(c: &mut Checker<'_>, value: &Option<Spanned<String>>) -> String {
    let Some(v) = value else {
        return "registry.k8s.io".to_string();
    };
    let s = v.get_ref();
    let r = s.trim_end_matches('/');
    if r.contains("://") {
        c.error(
            v.span(),
            format!("image_registry {s:?} is not a registry host"),
            "write HOST[:PORT][/PATH] without a scheme, for example \"registry.local:5000\"",
        );
    } else if let Err(why) = values::registry_prefix(r) {
        c.error(
            v.span(),
            format!("image_registry {s:?} is not a registry host: {why}"),
            "write HOST[:PORT] and an optional /PATH prefix, without a tag, for example \"registry.local:5000\" or \"registry.local/k8s\"",
        );
    }
    r.to_string()
}

fn registry_mirrors(
    c: &mut Checker<'_>,
    value: &BTreeMap<Spanned<String>, Spanned<String>>,
) -> BTreeMap<String, String> {
    let mut registry_mirrors = BTreeMap::new();
    for (host, mirror) in value {
        let h = host.get_ref();
        // The key also names a directory on the nodes
        // (/etc/containerd/certs.d/HOST): lowercase only.
        if values::registry_host(h).is_err() || h.to_ascii_lowercase() != *h {
            c.error(
                host.span(),
                format!("registry_mirrors key {h:?} is not a registry host"),
                "write the registry as images name it, for example \"docker.io\" or \"registry.k8s.io\"",
            );
            continue;
        }
        let m = mirror.get_ref();
        let problem = match values::mirror_url(m) {
            Ok(()) => None,
            Err(MirrorProblem::NotHttpUrl) => Some((
                format!("mirror {m:?} of {h} is not an http(s) URL"),
                "write the mirror's URL, for example \"https://registry.local:5000\"",
            )),
            Err(MirrorProblem::Char(ch)) => Some((
                format!("mirror {m:?} of {h} holds {ch:?}"),
                "write the mirror's URL without white space, quotes, backslashes or braces, for example \"https://registry.local:5000\"",
            )),
            Err(MirrorProblem::Credentials) => Some((
                format!("mirror {m:?} of {h} holds a user name or password"),
                "remove USER:PASSWORD@ from the URL: it is written in plain text to every node",
            )),
            Err(MirrorProblem::QueryOrFragment) => Some((
                format!("mirror {m:?} of {h} has a query or a fragment"),
                "write the scheme, host, port and path only, for example \"https://registry.local:5000/docker\"",
            )),
        };
        if let Some((message, help)) = problem {
            c.error(mirror.span(), message, help);
            continue;
        }
        registry_mirrors.insert(h.clone(), m.trim_end_matches('/').to_string());
    }
    registry_mirrors
}

fn sandbox_image(c: &mut Checker<'_>, value: &Option<Spanned<String>>, registry: &str) -> String {
    let Some(v) = value else {
        return format!("{registry}/pause:3.10");
    };
    let s = v.get_ref();
    if let Err(why) = values::image_reference(s) {
        c.error(
            v.span(),
            format!("sandbox_image {s:?} is not an image reference: {why}"),
            "write [HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST] with a lowercase path, for example \"registry.k8s.io/pause:3.10\"",
        );
    }
    s.clone()
}

// --- pki settings ----------------------------------------------------------

fn pki_settings(c: &mut Checker<'_>, raw: Option<&Spanned<RawPki>>) -> PkiSettings {
    let rp = raw.map(|p| p.get_ref());
    let none = None;
    let ca_validity_days = c.days(
        "ca_validity_days",
        rp.map_or(&none, |p| &p.ca_validity_days),
        3650,
    );
    let leaf_validity_days = c.days(
        "leaf_validity_days",
        rp.map_or(&none, |p| &p.leaf_validity_days),
        365,
    );
    let renew_before_days = c.days(
        "renew_before_days",
        rp.map_or(&none, |p| &p.renew_before_days),
        30,
    );
    if let Some(p) = rp {
        // A value left at its default has no span of its own: point at
        // the other value of the comparison, and say which is the default.
        let pki_span = raw.map_or(0..0, |p| p.span());
        let span_of = |first: &Option<Spanned<i64>>, second: &Option<Spanned<i64>>| {
            first
                .as_ref()
                .or(second.as_ref())
                .map_or(pki_span.clone(), |v| v.span())
        };
        let note = |v: &Option<Spanned<i64>>| if v.is_some() { "" } else { " (the default)" };
        if leaf_validity_days > ca_validity_days {
            c.error(
                span_of(&p.leaf_validity_days, &p.ca_validity_days),
                format!(
                    "leaf_validity_days {leaf_validity_days}{} exceeds ca_validity_days {ca_validity_days}{}",
                    note(&p.leaf_validity_days),
                    note(&p.ca_validity_days),
                ),
                "a certificate cannot outlive the CA that signs it",
            );
        } else if renew_before_days >= leaf_validity_days {
            c.error(
                span_of(&p.renew_before_days, &p.leaf_validity_days),
                format!(
                    "renew_before_days {renew_before_days}{} is not shorter than leaf_validity_days {leaf_validity_days}{}",
                    note(&p.renew_before_days),
                    note(&p.leaf_validity_days),
                ),
                "every run would reissue every certificate; use a smaller number",
            );
        }
        extra_apiserver_sans(c, &p.extra_apiserver_sans);
    }
    let bootstrap_token_ttl_hours = match rp.and_then(|p| p.bootstrap_token_ttl_hours.as_ref()) {
        None => 24,
        Some(v) => match u32::try_from(*v.get_ref()) {
            Ok(h) if (1..=8760).contains(&h) => h,
            _ => {
                c.error(
                    v.span(),
                    format!("bootstrap_token_ttl_hours {} is out of range", v.get_ref()),
                    "use a number of hours from 1 to 8760 (a year); the token only has to outlive a node's join",
                );
                24
            }
        },
    };
    PkiSettings {
        bootstrap_token_ttl_hours,
        ca_validity_days,
        leaf_validity_days,
        renew_before_days,
        extra_apiserver_sans: rp.map_or_else(Vec::new, |p| {
            p.extra_apiserver_sans
                .iter()
                .map(|s| s.get_ref().clone())
                .collect()
        }),
    }
}

fn extra_apiserver_sans(c: &mut Checker<'_>, sans: &[Spanned<String>]) {
    for san in sans {
        let s = san.get_ref();
        if s.parse::<IpAddr>().is_err() && !is_dns_name(s.strip_prefix("*.").unwrap_or(s)) {
            c.error(
                san.span(),
                format!("extra_apiserver_sans entry {s:?} is neither an IP address nor a DNS name"),
                "write an IP address or a lowercase DNS name",
            );
        }
    }
}

// --- ssh -------------------------------------------------------------------

/// The [ssh] table over the built-in defaults: what every node starts from.
fn cluster_ssh(c: &mut Checker<'_>, raw: Option<&RawSsh>) -> Ssh {
    let default_ssh = Ssh {
        user: "root".into(),
        port: 22,
        key: None,
        sudo: false,
        accept_new_host_keys: false,
    };
    match raw {
        Some(s) => merge_ssh(c, &default_ssh, s),
        None => default_ssh,
    }
}

// --- nodes -----------------------------------------------------------------

fn nodes(
    c: &mut Checker<'_>,
    raw: &[Spanned<RawNode>],
    cluster_span: &Range<usize>,
    nets: Networks,
    cluster_ssh: &Ssh,
) -> Nodes {
    if raw.is_empty() {
        c.error(
            cluster_span.clone(),
            "the inventory has no nodes",
            "add at least one [[nodes]] table with name, address and roles",
        );
    }
    let mut out = Nodes {
        nodes: Vec::new(),
        declared: Vec::new(),
        spans: BTreeMap::new(),
    };
    let mut seen = Seen::default();
    for rn in raw {
        let rn_span = rn.span();
        let rn = rn.get_ref();
        let name = node_name(c, &rn.name, &mut seen);
        out.spans.insert(name.clone(), rn_span);
        let address = node_address(c, &name, &rn.address, &mut seen, nets);
        let roles = node_roles(c, &name, &rn.roles);
        let labels = node_labels(c, &name, &rn.labels);
        let taints = node_taints(c, &name, &rn.taints);
        let ssh = match &rn.ssh {
            Some(s) => merge_ssh(c, cluster_ssh, s),
            None => cluster_ssh.clone(),
        };

        out.declared.push((name.clone(), roles.clone()));
        if let Some(address) = address {
            out.nodes.push(Node {
                name,
                address,
                roles,
                labels,
                taints,
                ssh,
            });
        }
    }
    out
}

fn node_name(c: &mut Checker<'_>, value: &Spanned<String>, seen: &mut Seen) -> String {
    let name = value.get_ref().clone();
    if !is_dns_label(&name) {
        c.error(
            value.span(),
            format!("node name {name:?} is not a DNS label"),
            "use lowercase letters, digits and '-'; the name becomes the Kubernetes node name",
        );
    } else if let Some(first) = seen.names.get(&name) {
        let line = c.src.line_of(first);
        c.error(
            value.span(),
            format!("duplicate node name {name:?} (first used on line {line})"),
            "give every node its own name",
        );
    } else {
        seen.names.insert(name.clone(), value.span());
    }
    name
}

fn node_address(
    c: &mut Checker<'_>,
    name: &str,
    value: &Spanned<String>,
    seen: &mut Seen,
    nets: Networks,
) -> Option<Ipv4Addr> {
    let ip = c.ipv4(&format!("node {name:?}: address"), value)?;
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
        c.error(
            value.span(),
            format!("address {ip} of node {name:?} cannot be reached by other nodes"),
            "use the address the node has on the cluster network",
        );
    }
    if let Some((other, span)) = seen.addrs.get(&ip) {
        let line = c.src.line_of(span);
        c.error(
            value.span(),
            format!(
                "node {name:?} has address {ip}, already used by node {other:?} on line {line}"
            ),
            "give every node its own address",
        );
    } else {
        seen.addrs.insert(ip, (name.to_string(), value.span()));
    }
    for (key, net) in [("service_cidr", nets.service), ("pod_cidr", nets.pod)] {
        if let Some(net) = net {
            if net.contains(&ip) {
                c.error(
                    value.span(),
                    format!("address {ip} of node {name:?} lies inside {key} {net}"),
                    "node addresses, pods and services need separate ranges",
                );
            }
        }
    }
    if let Some(net) = nets.node {
        if !net.contains(&ip) {
            c.error(
                value.span(),
                format!("address {ip} of node {name:?} lies outside node_cidr {net}"),
                "fix the address or widen node_cidr",
            );
        }
    }
    Some(ip)
}

fn node_roles(c: &mut Checker<'_>, name: &str, value: &Spanned<Vec<Spanned<String>>>) -> Vec<Role> {
    let mut roles = Vec::new();
    if value.get_ref().is_empty() {
        c.error(
            value.span(),
            format!("node {name:?} has no roles"),
            "give it one or more of \"etcd\", \"control-plane\", \"worker\", \"lb\"",
        );
    }
    for r in value.get_ref() {
        match Role::ALL.iter().find(|role| role.as_str() == r.get_ref()) {
            Some(role) if roles.contains(role) => c.error(
                r.span(),
                format!("node {name:?} lists role {:?} twice", r.get_ref()),
                "list each role once",
            ),
            Some(role) => roles.push(*role),
            None => c.error(
                r.span(),
                format!("unknown role {:?} on node {name:?}", r.get_ref()),
                "use \"etcd\", \"control-plane\", \"worker\" or \"lb\"",
            ),
        }
    }
    roles
}

fn node_labels(
    c: &mut Checker<'_>,
    name: &str,
    value: &BTreeMap<Spanned<String>, Spanned<String>>,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    for (k, v) in value {
        if !is_qualified_name(k.get_ref()) {
            c.error(
                k.span(),
                format!("label key {:?} on node {name:?} is not valid", k.get_ref()),
                "use [prefix/]name with letters, digits, '-', '_' or '.'",
            );
        } else if !is_label_value(v.get_ref()) {
            c.error(
                v.span(),
                format!(
                    "label value {:?} on node {name:?} is not valid",
                    v.get_ref()
                ),
                "use at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric",
            );
        } else if k.get_ref().contains("kubernetes.io/")
            && !k.get_ref().starts_with("node-role.kubernetes.io/")
        {
            c.error(
                k.span(),
                format!(
                    "label {:?} on node {name:?} is in a namespace reserved for Kubernetes",
                    k.get_ref()
                ),
                "use a prefix of your own, for example \"example.com/zone\"",
            );
        } else {
            labels.insert(k.get_ref().clone(), v.get_ref().clone());
        }
    }
    labels
}

fn node_taints(c: &mut Checker<'_>, name: &str, value: &[Spanned<String>]) -> Vec<Taint> {
    let mut taints = Vec::new();
    for t in value {
        match parse_taint(t.get_ref()) {
            Some(taint) => taints.push(taint),
            None => c.error(
                t.span(),
                format!("taint {:?} on node {name:?} is not valid", t.get_ref()),
                "write KEY[=VALUE]:EFFECT with EFFECT NoSchedule, PreferNoSchedule or NoExecute",
            ),
        }
    }
    taints
}

// --- cross-checks ----------------------------------------------------------

/// Enough control-plane and etcd nodes; returns the number of control-plane
/// nodes.
fn topology(c: &mut Checker<'_>, checked: &Nodes, cluster_span: &Range<usize>) -> usize {
    let control_planes = checked.count(Role::ControlPlane);
    let etcds = checked.count(Role::Etcd);
    if !checked.declared.is_empty() {
        if control_planes == 0 {
            c.error(
                cluster_span.clone(),
                "no node has the role \"control-plane\"",
                "add \"control-plane\" to the roles of one node (three for high availability)",
            );
        }
        if etcds == 0 {
            c.error(
                cluster_span.clone(),
                "no node has the role \"etcd\"",
                "add \"etcd\" to the roles of one node, or of three for high availability",
            );
        } else if etcds.is_multiple_of(2) {
            c.warn(
                cluster_span.clone(),
                format!(
                    "{etcds} etcd members tolerate no more failures than {}",
                    etcds - 1
                ),
                "use an odd number of etcd members",
            );
        }
    }
    control_planes
}

/// pod_cidr holds one /pod_subnet_prefix subnet for every node that runs a
/// kubelet (render assigns them, and kube-controller-manager allocates the
/// same).
fn pod_capacity(
    c: &mut Checker<'_>,
    rc: &RawCluster,
    cluster_span: &Range<usize>,
    nets: Networks,
    prefix: u8,
    checked: &Nodes,
) {
    let Some(pod) = nets.pod else { return };
    // A pod_subnet_prefix refused above has its own finding already.
    let given = rc.pod_subnet_prefix.as_ref().map(|v| *v.get_ref());
    if given.is_some_and(|p| p != i64::from(prefix)) || prefix < pod.prefix_len() {
        return;
    }
    let kubelets = checked
        .declared
        .iter()
        .filter(|(_, r)| r.contains(&Role::ControlPlane) || r.contains(&Role::Worker))
        .count();
    let bits = u32::from(prefix - pod.prefix_len());
    let fit = 1usize.checked_shl(bits).unwrap_or(usize::MAX);
    if kubelets <= fit {
        return;
    }
    // Bits needed to number every kubelet node.
    let needed = u8::try_from(usize::BITS - (kubelets - 1).leading_zeros()).unwrap_or(u8::MAX);
    let wider = prefix.saturating_sub(needed);
    let longer = pod.prefix_len().saturating_add(needed);
    let change = if longer <= 28 {
        format!("widen pod_cidr to a /{wider} or shorter prefix, or raise pod_subnet_prefix to {longer}")
    } else {
        format!("widen pod_cidr to a /{wider} or shorter prefix")
    };
    let span = match (&rc.pod_cidr, &rc.pod_subnet_prefix) {
        (Some(v), _) => v.span(),
        (None, Some(v)) => v.span(),
        (None, None) => cluster_span.clone(),
    };
    c.error(
        span,
        format!(
            "pod_cidr {pod} has room for {fit} node{} with a /{prefix} pod subnet each, but {kubelets} nodes run a kubelet",
            if fit == 1 { "" } else { "s" }
        ),
        format!("{change}: every control-plane and worker node gets one /{prefix} of pod_cidr"),
    );
}

// --- load balancer ---------------------------------------------------------

/// The [loadbalancer] table, or the lack of one, against the nodes.
fn loadbalancer(
    c: &mut Checker<'_>,
    raw: Option<&Spanned<RawLoadBalancer>>,
    cluster_span: &Range<usize>,
    checked: &Nodes,
    control_planes: usize,
    apiserver_port: Option<u16>,
    nets: Networks,
) -> Option<LoadBalancer> {
    let lb_names: Vec<&str> = checked
        .declared
        .iter()
        .filter(|(_, r)| r.contains(&Role::Lb))
        .map(|(n, _)| n.as_str())
        .collect();
    let Some(rlb) = raw else {
        missing_loadbalancer(c, cluster_span, checked, control_planes, &lb_names);
        return None;
    };
    let lb_span = rlb.span();
    let rlb = rlb.get_ref();
    let vip = lb_vip(c, &rlb.vip);
    if lb_names.is_empty() {
        c.error(
            lb_span.clone(),
            "[loadbalancer] is set but no node has the role \"lb\"",
            "give two nodes the role \"lb\": they run nginx and keepalived for the VIP",
        );
    } else if lb_names.len() == 1 {
        c.warn(
            lb_span.clone(),
            "only one node has the role \"lb\": the VIP has no standby",
            "give a second node the role \"lb\"",
        );
    }
    let port = lb_port(c, rlb, &lb_span, checked, apiserver_port);
    if let Some(vip) = vip {
        vip_placement(c, &rlb.vip, vip, checked, nets);
    }
    let interface = lb_interface(c, &rlb.interface);
    let virtual_router_id = virtual_router_id(c, &rlb.virtual_router_id);
    let nginx_user = nginx_user(c, &rlb.nginx_user);
    match (vip, port) {
        (Some(vip), Some(port)) => Some(LoadBalancer {
            vip,
            port,
            interface,
            virtual_router_id,
            nginx_user,
        }),
        _ => None,
    }
}

/// Without a [loadbalancer]: at most one control-plane node, no LB nodes.
fn missing_loadbalancer(
    c: &mut Checker<'_>,
    cluster_span: &Range<usize>,
    checked: &Nodes,
    control_planes: usize,
    lb_names: &[&str],
) {
    if control_planes > 1 {
        c.error(
            cluster_span.clone(),
            format!("{control_planes} control-plane nodes need a [loadbalancer] with a virtual IP"),
            "add [loadbalancer] with vip = \"ADDRESS/PREFIX\" and give two nodes the role \"lb\"",
        );
    }
    if let Some(n) = lb_names.first() {
        let span = checked.spans.get(*n).cloned().unwrap_or(0..0);
        c.error(
            span,
            format!("node {n:?} has the role \"lb\" but there is no [loadbalancer] section"),
            "add [loadbalancer] with vip = \"ADDRESS/PREFIX\", or remove the role",
        );
    }
}

fn lb_vip(c: &mut Checker<'_>, value: &Spanned<String>) -> Option<Ipv4Net> {
    match value.get_ref().parse::<ipnet::IpNet>() {
        Ok(ipnet::IpNet::V4(net)) if net.prefix_len() < 32 => Some(net),
        _ => {
            c.error(
                value.span(),
                format!(
                    "vip {:?} is not an IPv4 address with the prefix of its subnet",
                    value.get_ref()
                ),
                "write ADDRESS/PREFIX as on the LB nodes' interface, for example \"10.77.0.100/24\"",
            );
            None
        }
    }
}

/// The load balancer's port, and not the apiserver's on a node that runs
/// both.
fn lb_port(
    c: &mut Checker<'_>,
    rlb: &RawLoadBalancer,
    lb_span: &Range<usize>,
    checked: &Nodes,
    apiserver_port: Option<u16>,
) -> Option<u16> {
    let port = match &rlb.port {
        None => Some(8443),
        Some(p) => c.port("loadbalancer port", p),
    };
    if let (Some(port), Some(api)) = (port, apiserver_port) {
        let shared = checked
            .declared
            .iter()
            .any(|(_, r)| r.contains(&Role::Lb) && r.contains(&Role::ControlPlane));
        if port == api && shared {
            c.error(
                rlb.port.as_ref().map_or(lb_span.clone(), |p| p.span()),
                format!(
                    "loadbalancer port {port} is also the apiserver port on a node that runs both"
                ),
                "use another port for the load balancer, for example 8443",
            );
        }
    }
    port
}

/// The VIP is a free host address in the LB nodes' subnet, outside the
/// cluster's own ranges.
fn vip_placement(
    c: &mut Checker<'_>,
    value: &Spanned<String>,
    vip: Ipv4Net,
    checked: &Nodes,
    nets: Networks,
) {
    let ip = vip.addr();
    if vip.network() == ip || vip.broadcast() == ip {
        c.error(
            value.span(),
            format!(
                "vip {ip} is the network or broadcast address of {}",
                vip.trunc()
            ),
            "pick a free host address in the LB nodes' subnet",
        );
    }
    if let Some(n) = checked.nodes.iter().find(|n| n.address == ip) {
        c.error(
            value.span(),
            format!("vip {ip} is the address of node {:?}", n.name),
            "pick an address no host uses; keepalived moves it between the LB nodes",
        );
    }
    for n in checked.nodes.iter().filter(|n| n.has(Role::Lb)) {
        if !vip.contains(&n.address) {
            c.error(
                value.span(),
                format!(
                    "vip {vip} is outside the subnet of LB node {:?} ({})",
                    n.name, n.address
                ),
                "the VIP must be in the subnet the LB nodes share; fix the address or the prefix",
            );
        }
    }
    for (key, net) in [("service_cidr", nets.service), ("pod_cidr", nets.pod)] {
        if let Some(net) = net {
            if net.contains(&ip) {
                c.error(
                    value.span(),
                    format!("vip {ip} lies inside {key} {net}"),
                    "pick an address on the node network",
                );
            }
        }
    }
}

fn lb_interface(c: &mut Checker<'_>, value: &Option<Spanned<String>>) -> String {
    let Some(i) = value else {
        return "eth0".to_string();
    };
    let s = i.get_ref();
    const HELP: &str = "name the LB nodes' interface that carries the VIP, for example \"eth0\"";
    match values::interface(s) {
        Ok(()) => {}
        Err(InterfaceProblem::NotAName) => c.error(
            i.span(),
            format!("interface {s:?} is not a network interface name"),
            HELP,
        ),
        Err(InterfaceProblem::TooLong) => c.error(
            i.span(),
            format!("interface {s:?} is longer than the 15 bytes of an interface name"),
            HELP,
        ),
        Err(InterfaceProblem::KernelChar(ch)) => c.error(
            i.span(),
            format!("interface {s:?} holds {ch:?}, which interface names cannot hold"),
            HELP,
        ),
        Err(InterfaceProblem::Char(ch)) => c.error(
            i.span(),
            format!("interface {s:?} holds {ch:?}"),
            "use letters, digits, '.', '_' and '-' only: the name is written into keepalived.conf",
        ),
    }
    s.clone()
}

fn nginx_user(c: &mut Checker<'_>, value: &Option<Spanned<String>>) -> Option<String> {
    let v = value.as_ref()?;
    let s = v.get_ref();
    if !values::is_system_user(s) {
        c.error(
            v.span(),
            format!("nginx_user {s:?} is not a system user name"),
            "name the user nginx's workers run as (\"www-data\" on Debian and Ubuntu, \"nginx\" on RHEL and Fedora), or leave nginx_user out for the nginx package's own default",
        );
    }
    Some(s.clone())
}

fn virtual_router_id(c: &mut Checker<'_>, value: &Option<Spanned<i64>>) -> u8 {
    let Some(v) = value else { return 51 };
    match u8::try_from(*v.get_ref()) {
        Ok(id) if id > 0 => id,
        _ => {
            c.error(
                v.span(),
                format!("virtual_router_id {} is out of range", v.get_ref()),
                "use a number from 1 to 255, unique on the LB nodes' network",
            );
            51
        }
    }
}

fn merge_ssh(c: &mut Checker<'_>, base: &Ssh, s: &RawSsh) -> Ssh {
    let mut out = base.clone();
    if let Some(u) = &s.user {
        if !values::is_user_name(u.get_ref()) {
            c.error(
                u.span(),
                format!("ssh user {:?} is not a user name", u.get_ref()),
                "write the login name, for example \"root\" or \"vagrant\"",
            );
        }
        out.user = u.get_ref().clone();
    }
    if let Some(p) = &s.port {
        if let Some(p) = c.port("ssh port", p) {
            out.port = p;
        }
    }
    if let Some(k) = &s.key {
        if !values::is_key_path(k.get_ref()) {
            c.error(
                k.span(),
                format!("ssh key {:?} is not a file path", k.get_ref()),
                "write the path of the private key on this machine, for example \"~/.ssh/id_ed25519\"",
            );
        }
        out.key = Some(k.get_ref().clone());
    }
    if let Some(sudo) = s.sudo {
        out.sudo = sudo;
    }
    if let Some(a) = s.accept_new_host_keys {
        out.accept_new_host_keys = a;
    }
    out
}

fn parse_taint(s: &str) -> Option<Taint> {
    let (kv, effect) = s.rsplit_once(':')?;
    if !TAINT_EFFECTS.contains(&effect) {
        return None;
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, v),
        None => (kv, ""),
    };
    if !is_qualified_name(key) || !is_label_value(value) {
        return None;
    }
    Some(Taint {
        key: key.into(),
        value: value.into(),
        effect: effect.into(),
    })
}
