//! The placement table (`templates/files.toml`): which file goes to which
//! nodes and which units restart or reload when it changes.

use kubeforge_inventory::{Cluster, Cni, KubeletJoin, NodeProfile, ProxyMode, Selector};
use kubeforge_pki::{catalog, CaId};
use serde::{Deserialize, Serialize};

pub const FILES_TOML: &str = include_str!("../../../templates/files.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum When {
    CniBridge,
    /// cni = "flannel".
    CniFlannel,
    /// cni = "calico".
    CniCalico,
    /// The CNI uses the standard plugins from the bundle (bridge,
    /// host-local, portmap, loopback): bridge and flannel. Calico installs
    /// its own.
    CniPlugins,
    /// The nodes are real hosts (node_profile = "host").
    HostProfile,
    /// The nodes are containers (node_profile = "container").
    ContainerProfile,
    /// kubeforge applies CoreDNS (`coredns = true`, the default).
    Coredns,
    /// Kubelets get the client certificate kubeforge issued.
    JoinCertificate,
    /// Kubelets join with a bootstrap token.
    JoinBootstrapToken,
    /// The etcd nodes take snapshots themselves (`[etcd] backup_schedule`).
    EtcdBackups,
    /// Kubernetes 1.32 or later: kube-apiserver's AuthenticationConfiguration
    /// limits anonymous requests to the health endpoints
    /// (AnonymousAuthConfigurableEndpoints, on by default from 1.32).
    AnonymousEndpoints,
    /// kube_proxy_mode = "iptables".
    ProxyIptables,
    /// kube_proxy_mode = "ipvs".
    ProxyIpvs,
    /// kube_proxy_mode = "nftables".
    ProxyNftables,
    /// The kubelet refuses cgroup v1 (Kubernetes 1.35+, `failCgroupV1`
    /// true by default) and kubeforge does not turn that off (host nodes).
    KubeletCgroupV2,
}

/// The first minor whose kubelet refuses cgroup v1 by default.
pub const KUBELET_CGROUP_V2_MINOR: u32 = 35;

/// The first minor whose AuthenticationConfiguration limits anonymous
/// requests to named paths by default.
pub const ANONYMOUS_ENDPOINTS_MINOR: u32 = 32;

impl When {
    pub fn holds(self, cluster: &Cluster) -> bool {
        match self {
            When::CniBridge => cluster.cni == Cni::Bridge,
            When::CniFlannel => cluster.cni == Cni::Flannel,
            When::CniCalico => cluster.cni == Cni::Calico,
            When::CniPlugins => matches!(cluster.cni, Cni::Bridge | Cni::Flannel),
            When::HostProfile => cluster.node_profile == NodeProfile::Host,
            When::ContainerProfile => cluster.node_profile == NodeProfile::Container,
            When::Coredns => cluster.coredns,
            When::JoinCertificate => cluster.kubelet_join == KubeletJoin::Certificate,
            When::JoinBootstrapToken => cluster.kubelet_join == KubeletJoin::BootstrapToken,
            When::EtcdBackups => cluster.etcd_backups.is_some(),
            When::AnonymousEndpoints => cluster.version.minor >= ANONYMOUS_ENDPOINTS_MINOR,
            When::ProxyIptables => cluster.proxy_mode == ProxyMode::Iptables,
            When::ProxyIpvs => cluster.proxy_mode == ProxyMode::Ipvs,
            When::ProxyNftables => cluster.proxy_mode == ProxyMode::Nftables,
            When::KubeletCgroupV2 => {
                cluster.node_profile == NodeProfile::Host
                    && cluster.version.minor >= KUBELET_CGROUP_V2_MINOR
            }
        }
    }
}

/// How an apply walks the nodes of a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Every node at once (bounded by the concurrency); each node's gates
    /// right after its own units start or restart.
    Parallel,
    /// One node after the other; the next starts when the previous one's
    /// gates passed.
    OneAtATime,
    /// When a unit of the phase starts for the first time (a new etcd
    /// cluster), every node starts it at once without waiting for it, then
    /// the gates of all run; otherwise (restarts) one node at a time.
    Together,
    /// One node at a time; a node whose unit restarts is first taken out of
    /// the load balancers (the table's `drain` files rendered with
    /// `drained` = its name, and their units reloaded), restarted, gated,
    /// and put back before the next. When nothing restarts (a first
    /// start), every node at once.
    DrainFromLb,
    /// Nodes whose units only start (or that change no unit) all at once;
    /// nodes where a unit restarts in batches: the nodes the phase's
    /// `serial` selects one at a time, first, then the others
    /// `--max-unavailable` at a time. A node where a `drain` unit restarts
    /// is first cordoned and its pods evicted (PodDisruptionBudgets
    /// respected); after its restarts and gates it must be Ready in the API
    /// again (a fresh status from its restarted kubelet), then it is
    /// uncordoned, before the next batch.
    DrainNodes,
    /// No node work: the addon objects go into the API, and pending
    /// kubelet serving certificate requests are approved.
    Api,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Parallel => "parallel",
            Strategy::OneAtATime => "one-at-a-time",
            Strategy::Together => "together",
            Strategy::DrainFromLb => "drain-from-lb",
            Strategy::DrainNodes => "drain-nodes",
            Strategy::Api => "api",
        }
    }
}

/// A gate of a phase as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseGate {
    /// After the phase's nodes: exactly one LB node holds the VIP, and the
    /// API answers through it.
    Vip,
    /// After the last phase, when the plan applies API objects or starts or
    /// restarts a unit that `registers` a node: every kubelet node Ready in
    /// the API, the kubelets' serving certificates issued (bootstrap-token
    /// joins), every addon Deployment available.
    Cluster,
}

/// An apply phase, in table order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseRow {
    pub name: String,
    pub strategy: Strategy,
    #[serde(default)]
    pub gate: Option<PhaseGate>,
    /// `api` phases: the unit whose gate must pass on the node the objects
    /// go through before anything is sent.
    #[serde(default)]
    pub wait_for: Option<String>,
    /// An earlier phase this one may start together with when it only
    /// starts units for the first time (new nodes): then it runs beside
    /// the phases from that one on, instead of after them. Never when one
    /// of its units restarts (an upgrade keeps the phases' order).
    #[serde(default)]
    pub early: Option<String>,
    /// `drain-nodes` phases: the nodes that go one at a time, before the
    /// batches of the others.
    #[serde(default)]
    pub serial: Option<Selector>,
    /// Before a plan that replaces the binary of a running unit (an
    /// upgrade), every running unit of this phase must pass its gate, and
    /// the phase gate `vip` must pass; otherwise nothing is touched.
    #[serde(default)]
    pub healthy_before_upgrade: bool,
}

/// A health check: a read-only script on a node that exits 0 when healthy,
/// retried until it passes or the gate timeout ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// args: URL, CA file. GET over HTTPS, verified with the CA; the body
    /// must be `ok`.
    HttpsOk,
    /// args: URL. GET over plain HTTP answers 2xx.
    HttpOk,
    /// args: client URL, CA file, client certificate, client key, member
    /// count. etcd's /health is true over mutual TLS, and the member list
    /// has that many members, every one started.
    EtcdMembers,
    /// args: socket. containerd answers on its socket, and its CRI plugin
    /// loaded (checked with `ctr` where it is installed).
    Containerd,
}

impl Check {
    /// How many arguments the check takes.
    pub fn arity(self) -> usize {
        match self {
            Check::HttpsOk => 2,
            Check::HttpOk | Check::Containerd => 1,
            Check::EtcdMembers => 5,
        }
    }
}

/// Where a unit's gate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GateScope {
    /// On the node whose unit started or restarted.
    #[default]
    Node,
    /// On every node that runs the unit (the members of a cluster).
    All,
}

/// A unit's health gate: after it starts or restarts. `name` and `args`
/// are templates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateRow {
    pub check: Check,
    pub args: Vec<String>,
    /// What the gate waits for, as progress and errors say it.
    pub name: String,
    #[serde(default)]
    pub scope: GateScope,
}

/// A preparation step: `check` (read-only, exits 0 when the node is as it
/// should be) and `run` (makes it so). Both are templates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepRow {
    pub name: String,
    pub on: Selector,
    #[serde(default)]
    pub when: Option<When>,
    #[serde(default)]
    pub stage: Stage,
    /// Read-only; exits 0 when nothing needs doing. A step with `written`
    /// has none.
    #[serde(default)]
    pub check: Option<String>,
    /// Read-only; prints what the check's answer depends on (nothing when
    /// it cannot vouch for it): a check that passed is not run again while
    /// the key prints the same.
    #[serde(default)]
    pub key: Option<String>,
    /// The step runs exactly when the plan writes this file on the node
    /// (and never otherwise), instead of when a check fails.
    #[serde(default)]
    pub written: Option<String>,
    pub run: String,
}

/// When a step runs within its phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Before the phase's files are written (the default).
    #[default]
    BeforeFiles,
    /// After the phase's files are written, before its units are started
    /// (a step that works on a file the phase puts there).
    AfterFiles,
    /// After the phase's units are started, restarted or reloaded (for
    /// steps that talk to a unit, such as importing images into
    /// containerd).
    AfterUnits,
}

impl Stage {
    pub fn is_before_files(&self) -> bool {
        *self == Stage::BeforeFiles
    }
}

/// The container image archives of the bundle (`images/<file>.tar`): each
/// is copied to `dir` on the nodes the row is `on`, and one step (`check`
/// and `run`, templates that see `images`, a list of `{file, path,
/// names}`) imports them after the phase's units run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesRow {
    /// The step's name, as the plan shows it.
    pub name: String,
    pub on: Selector,
    pub dir: String,
    pub check: String,
    /// As a step's `key`.
    #[serde(default)]
    pub key: Option<String>,
    pub run: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Server {
    Local,
    Endpoint,
    LocalIfControlPlane,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitRow {
    pub name: String,
    pub on: Selector,
    pub phase: String,
    #[serde(default)]
    pub when: Option<When>,
    /// Shipped by the node's own package (nginx, keepalived): not rendered.
    #[serde(default)]
    pub packaged: bool,
    /// TCP ports it listens on (templates): pre-flight checks that they are
    /// free while it is not running.
    #[serde(default)]
    pub ports: Vec<String>,
    /// What must pass after it starts or restarts.
    #[serde(default)]
    pub gate: Option<GateRow>,
    /// It registers its node in the API (the kubelet): its start or restart
    /// calls for the cluster gate.
    #[serde(default)]
    pub registers: bool,
    /// Its pods would be disturbed by its restart: in a `drain-nodes`
    /// phase the node is cordoned and drained first.
    #[serde(default)]
    pub drain: bool,
    /// Its place in the Kubernetes version skew policy: its running
    /// version is gathered, and a plan that would break the policy is
    /// refused.
    #[serde(default)]
    pub skew: Option<Skew>,
}

/// What the version skew policy says of a component
/// (<https://kubernetes.io/releases/version-skew-policy/>).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Skew {
    /// kube-apiserver: moves one minor version at a time; the apiservers
    /// of a cluster at most one minor apart.
    Apiserver,
    /// kube-controller-manager, kube-scheduler: not newer than any
    /// apiserver, at most one minor older than the newest.
    Controller,
    /// kubelet, kube-proxy: not newer than any apiserver, at most three
    /// minors older than the newest.
    Node,
}

impl Skew {
    /// How many minors it may be older than the newest apiserver.
    pub fn oldest_behind(self) -> u32 {
        match self {
            Skew::Apiserver | Skew::Controller => 1,
            Skew::Node => 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRow {
    pub template: String,
    /// A template itself when `each` is set.
    pub path: String,
    /// One file per item of this context list (available as `item`).
    #[serde(default)]
    pub each: Option<String>,
    pub on: Selector,
    #[serde(default)]
    pub when: Option<When>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub secret: bool,
    #[serde(default)]
    pub restarts: Vec<String>,
    #[serde(default)]
    pub reloads: Vec<String>,
    /// The file stays on a node only until this holds there; then it is
    /// removed (the bootstrap kubeconfig, once the kubelet has its client
    /// certificate).
    #[serde(default)]
    pub until: Option<Until>,
    /// Rendered again with `drained` = a node's name for each node that
    /// a `drain-from-lb` phase restarts: the file that takes that node out
    /// of the load balancer while it restarts (its `reloads` apply it).
    #[serde(default)]
    pub drain: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeconfigRow {
    pub cert: String,
    pub path: String,
    pub on: Selector,
    #[serde(default)]
    pub when: Option<When>,
    pub server: Server,
    #[serde(default)]
    pub restarts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaRow {
    pub ca: String,
    /// `<path>.crt` holds the CA's trust bundle (the CA, and during a
    /// rotation the old and the new one); `<path>.key` the key of the CA
    /// that signs, with `key`.
    pub path: String,
    pub on: Selector,
    #[serde(default)]
    pub key: bool,
    /// A file holding only the certificate of the CA that signs (the
    /// pair of `<path>.key`), for a component that takes exactly one.
    #[serde(default)]
    pub signer: Option<String>,
    #[serde(default)]
    pub restarts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertRow {
    pub cert: String,
    pub path: String,
    pub on: Selector,
    #[serde(default)]
    pub when: Option<When>,
    #[serde(default)]
    pub restarts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyfileRow {
    pub key: String,
    pub path: String,
    pub on: Selector,
    #[serde(default)]
    pub restarts: Vec<String>,
}

/// A node fact that ends a file's stay (`until`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Until {
    /// The kubelet holds a valid client certificate of its own
    /// (`/var/lib/kubelet/pki/kubelet-client-current.pem`, signed by the
    /// cluster CA for `system:node:<name>`, valid now).
    KubeletClientCertificate,
}

/// What a `[[requirement]]` row checks on a node, read-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Need {
    /// `arg` is a command on the PATH.
    Command,
    /// `arg` is a kernel module that is loaded, built in, or loadable
    /// (`/sys/module/ARG`, `modules.builtin`, `modprobe -n`).
    Module,
    /// The path `arg` exists.
    File,
    /// nginx has the stream module: built in, or a module that the
    /// rendered nginx.conf loads (from Debian's `modules-enabled` or
    /// RHEL's `/usr/share/nginx/modules`). No `arg`.
    NginxStream,
}

impl Need {
    /// The read-only shell test for `arg`: exits 0 when it is met. `arg`
    /// is checked when the table loads (no character the shell would
    /// read).
    pub fn script(self, arg: &str) -> String {
        match self {
            Need::Command => format!("command -v {arg}"),
            Need::Module => format!(
                "[ -d /sys/module/{arg} ] || grep -qs '/{arg}\\.ko' \"/lib/modules/$(uname -r)/modules.builtin\" || modprobe -n {arg}"
            ),
            Need::File => format!("[ -e {arg} ]"),
            Need::NginxStream => concat!(
                "v=$(nginx -V 2>&1 | tr ' ' '\\n'); ",
                "printf '%s\\n' \"$v\" | grep -qx -- --with-stream || ",
                "{ printf '%s\\n' \"$v\" | grep -qx -- --with-stream=dynamic && ",
                "grep -qs ngx_stream_module /etc/nginx/modules-enabled/*.conf /usr/share/nginx/modules/*.conf; }"
            )
            .to_string(),
        }
    }
}

/// Something a node must have before anything changes (pre-flight): a
/// command, a kernel module, a file, and what provides it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequirementRow {
    /// What the node needs, as the message names it ("iptables").
    pub name: String,
    pub on: Selector,
    #[serde(default)]
    pub when: Option<When>,
    pub check: Need,
    /// The command, module or path (not for `nginx-stream`).
    #[serde(default)]
    pub arg: Option<String>,
    /// What it is for.
    #[serde(rename = "for")]
    pub purpose: String,
    /// The Debian and Ubuntu package that provides it.
    #[serde(default)]
    pub package: Option<String>,
    /// A hint for other distribution families.
    #[serde(default)]
    pub other: Option<String>,
    /// What to do when no package provides it.
    #[serde(default)]
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinaryRow {
    pub name: String,
    pub on: Selector,
    /// Where it goes on the node (default: the cluster's bin_dir).
    #[serde(default)]
    pub dir: Option<String>,
    #[serde(default)]
    pub when: Option<When>,
    /// Installed when the bundle has it; no error when it does not.
    #[serde(default)]
    pub optional: bool,
    #[serde(default)]
    pub restarts: Vec<String>,
    /// The phase that installs it, when not that of the units it restarts
    /// or of its nodes' first unit (a tool no unit needs to start).
    #[serde(default)]
    pub phase: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    #[serde(default)]
    pub phase: Vec<PhaseRow>,
    #[serde(default)]
    pub step: Vec<StepRow>,
    #[serde(default)]
    pub images: Vec<ImagesRow>,
    #[serde(default)]
    pub binary: Vec<BinaryRow>,
    #[serde(default)]
    pub unit: Vec<UnitRow>,
    #[serde(default)]
    pub file: Vec<FileRow>,
    #[serde(default)]
    pub kubeconfig: Vec<KubeconfigRow>,
    #[serde(default)]
    pub ca: Vec<CaRow>,
    #[serde(default)]
    pub cert: Vec<CertRow>,
    #[serde(default)]
    pub keyfile: Vec<KeyfileRow>,
    #[serde(default)]
    pub requirement: Vec<RequirementRow>,
}

impl Table {
    /// Parses and cross-checks a table: every CA, certificate, key file,
    /// template and unit it names must exist.
    pub fn parse(text: &str, templates: &[&str]) -> Result<Table, String> {
        let t: Table = toml::from_str(text).map_err(|e| e.to_string())?;
        t.check_phases()?;
        let units: Vec<&str> = t.unit.iter().map(|u| u.name.as_str()).collect();
        let check_units = |what: &str, list: &[String]| -> Result<(), String> {
            match list.iter().find(|u| !units.contains(&u.as_str())) {
                Some(u) => Err(format!("{what} names unknown unit \"{u}\"")),
                None => Ok(()),
            }
        };
        for f in &t.file {
            if !templates.contains(&f.template.as_str()) {
                return Err(format!(
                    "file {} names unknown template \"{}\"",
                    f.path, f.template
                ));
            }
            if let Some(m) = &f.mode {
                u32::from_str_radix(m, 8)
                    .map_err(|_| format!("file {} has mode \"{m}\", not octal", f.path))?;
            }
            check_units(&f.path, &f.restarts)?;
            check_units(&f.path, &f.reloads)?;
            if f.drain && (f.reloads.is_empty() || f.each.is_some()) {
                return Err(format!(
                    "file {} is a drain file: it needs `reloads` (the units that apply it) and no `each`",
                    f.path
                ));
            }
        }
        for k in &t.kubeconfig {
            if catalog::spec(&k.cert).is_none() {
                return Err(format!(
                    "kubeconfig {} names unknown certificate \"{}\"",
                    k.path, k.cert
                ));
            }
            check_units(&k.path, &k.restarts)?;
        }
        for c in &t.ca {
            if CaId::parse(&c.ca).is_none() {
                return Err(format!("{} names unknown CA \"{}\"", c.path, c.ca));
            }
            if c.signer.is_some() && !c.key {
                return Err(format!(
                    "{} has a `signer` file but no `key`: the signer's key is <path>.key",
                    c.path
                ));
            }
            check_units(&c.path, &c.restarts)?;
        }
        for st in &t.step {
            match (&st.check, &st.written) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return Err(format!(
                        "step \"{}\" needs either a `check` or `written` (the file whose writing runs it), not both",
                        st.name
                    ))
                }
            }
            if st.key.is_some() && st.check.is_none() {
                return Err(format!(
                    "step \"{}\" has a `key` but no `check`: the key says when the check's last answer still holds",
                    st.name
                ));
            }
            if st.written.is_some() && st.stage == Stage::BeforeFiles {
                return Err(format!(
                    "step \"{}\" runs when a file is written: give it stage \"after-files\" or \"after-units\"",
                    st.name
                ));
            }
        }
        for c in &t.cert {
            if catalog::spec(&c.cert).is_none() {
                return Err(format!(
                    "{} names unknown certificate \"{}\"",
                    c.path, c.cert
                ));
            }
            check_units(&c.path, &c.restarts)?;
        }
        for b in &t.binary {
            check_units(&b.name, &b.restarts)?;
        }
        for i in &t.images {
            if !i.dir.starts_with('/') {
                return Err(format!(
                    "images \"{}\" has dir \"{}\", not an absolute path",
                    i.name, i.dir
                ));
            }
        }
        for k in &t.keyfile {
            if !["sa.key", "sa.pub"].contains(&k.key.as_str()) {
                return Err(format!("{} names unknown key \"{}\"", k.path, k.key));
            }
            check_units(&k.path, &k.restarts)?;
        }
        for r in &t.requirement {
            r.check_row()?;
        }
        Ok(t)
    }

    /// The requirements that hold for `node` of `cluster`, each once.
    pub fn requirements_of(
        &self,
        cluster: &Cluster,
        node: &kubeforge_inventory::Node,
    ) -> Vec<&RequirementRow> {
        let mut out: Vec<&RequirementRow> = Vec::new();
        for r in &self.requirement {
            if r.on.matches(node)
                && r.when.is_none_or(|w| w.holds(cluster))
                && !out.iter().any(|o| o.name == r.name)
            {
                out.push(r);
            }
        }
        out
    }

    /// Phases are named once; every unit (and binary that names one)
    /// names a declared phase, its gate
    /// has the arguments its check takes, and an `api` phase waits for a
    /// known unit.
    fn check_phases(&self) -> Result<(), String> {
        let mut names: Vec<&str> = Vec::new();
        for p in &self.phase {
            if names.contains(&p.name.as_str()) {
                return Err(format!("phase \"{}\" is declared twice", p.name));
            }
            names.push(&p.name);
            match (p.strategy, &p.wait_for) {
                (Strategy::Api, Some(u)) if self.unit.iter().any(|x| &x.name == u) => {}
                (Strategy::Api, Some(u)) => {
                    return Err(format!(
                        "phase \"{}\" waits for unknown unit \"{u}\"",
                        p.name
                    ))
                }
                (Strategy::Api, None) => {
                    return Err(format!(
                        "phase \"{}\" (strategy api) needs `wait_for`: the unit whose gate says the API answers",
                        p.name
                    ))
                }
                (_, Some(_)) => {
                    return Err(format!(
                        "phase \"{}\": only api phases take `wait_for`",
                        p.name
                    ))
                }
                (_, None) => {}
            }
            if p.serial.is_some() && p.strategy != Strategy::DrainNodes {
                return Err(format!(
                    "phase \"{}\": only drain-nodes phases take `serial`",
                    p.name
                ));
            }
        }
        if self
            .phase
            .iter()
            .filter(|p| p.strategy == Strategy::Api)
            .count()
            > 1
        {
            return Err("more than one phase has strategy api".into());
        }
        // A unit, or a binary that names its phase, is placed in a
        // declared phase that has nodes.
        let placed = |what: &str, name: &str, phase: &str| -> Result<(), String> {
            if !names.contains(&phase) {
                return Err(format!(
                    "{what} \"{name}\" names unknown phase \"{phase}\" (declared: {})",
                    names.join(", ")
                ));
            }
            if self
                .phase_row(phase)
                .is_some_and(|r| r.strategy == Strategy::Api)
            {
                return Err(format!(
                    "{what} \"{name}\" is in phase \"{phase}\", which has no nodes (strategy api)"
                ));
            }
            Ok(())
        };
        for u in &self.unit {
            placed("unit", &u.name, &u.phase)?;
            if let Some(g) = &u.gate {
                if g.args.len() != g.check.arity() {
                    return Err(format!(
                        "unit \"{}\": its gate check {:?} takes {} arguments, not {}",
                        u.name,
                        g.check,
                        g.check.arity(),
                        g.args.len()
                    ));
                }
            }
        }
        for b in &self.binary {
            if let Some(p) = &b.phase {
                placed("binary", &b.name, p)?;
            }
        }
        Ok(())
    }

    /// The phase row of that name.
    pub fn phase_row(&self, name: &str) -> Option<&PhaseRow> {
        self.phase.iter().find(|p| p.name == name)
    }
}

impl RequirementRow {
    /// Its argument takes only characters the shell reads as they are, its
    /// check gets the argument it takes, and it says how to get it.
    fn check_row(&self) -> Result<(), String> {
        let what = format!("requirement \"{}\"", self.name);
        let plain = |s: &str| {
            !s.is_empty()
                && s.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'+')
                })
                && !s.starts_with('-')
        };
        match (self.check, &self.arg) {
            (Need::NginxStream, None) => {}
            (Need::NginxStream, Some(_)) => {
                return Err(format!("{what}: nginx-stream takes no `arg`"))
            }
            (_, None) => return Err(format!("{what}: {:?} needs `arg`", self.check)),
            (_, Some(a)) if !plain(a) => {
                return Err(format!(
                    "{what}: arg \"{a}\" may hold only letters, digits, '/', '.', '_', '-' and '+'"
                ))
            }
            (_, Some(_)) => {}
        }
        if self.package.is_none() && self.fix.is_none() {
            return Err(format!(
                "{what}: give the `package` that provides it, or a `fix`"
            ));
        }
        Ok(())
    }

    /// The problem pre-flight reports when `node` lacks it.
    pub fn problem(&self, node: &str) -> String {
        let mut s = format!("{node}: needs {} ({})", self.name, self.purpose);
        match (&self.package, &self.fix) {
            (Some(p), _) => {
                s.push_str(&format!("; install package {p}"));
                match &self.other {
                    Some(o) => s.push_str(&format!(" (Debian, Ubuntu; elsewhere: {o})")),
                    None => s.push_str(" (Debian, Ubuntu)"),
                }
            }
            (None, Some(f)) => s.push_str(&format!("; {f}")),
            (None, None) => {}
        }
        s
    }
}
