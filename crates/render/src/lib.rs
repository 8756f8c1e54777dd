//! Rendering: the cluster model and its PKI in, the exact set of files
//! every node must hold out, each with its mode, owner and the units that
//! restart or reload when it changes. Pure: nothing here writes to a node.

mod cni;
mod formats;
mod images;
mod manifests;
mod subnets;
mod table;
mod templates;

pub use cni::{cni_images, CALICO_VERSION, FLANNEL_CNI_PLUGIN_VERSION, FLANNEL_VERSION};
pub use formats::check_rendered;
pub use images::CONTAINERD_SOCKET;
pub use kubeforge_images::ImageArchive;
pub use manifests::{Addon, ApiObject, ADDON_DIR};
pub use subnets::{allocate as allocate_pod_subnets, Allocation, PodSubnets};
pub use table::{
    Check, GateScope, Need, PhaseGate, PhaseRow, RequirementRow, Skew, Stage, Strategy, Table,
    Until, FILES_TOML,
};
pub use templates::TEMPLATES;

use base64::Engine;
pub use kubeforge_inventory::KubeVersion;
use kubeforge_inventory::{Cluster, KubeletJoin, Node, Role, Selector};
use kubeforge_pki::{catalog, CaId, KeyCert, Pki};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Pki(#[from] kubeforge_pki::PkiError),
    #[error("templates/files.toml: {0}")]
    Table(String),
    #[error("template {template} for node {node}: {detail}")]
    Template {
        template: String,
        node: String,
        detail: String,
    },
    #[error("node {node}: {detail} (rendered from {from})\n  help: a value of the inventory broke this file's syntax: change the value that appears at that line")]
    Unparsable {
        node: String,
        /// The template, certificate or key the file came from.
        from: String,
        /// The path, the line and column, and what does not parse.
        detail: String,
    },
    #[error("{what} for node {node} is missing from the PKI")]
    MissingPki { what: String, node: String },
    #[error("templates/files.toml places {path} on node {node} twice with different {what}")]
    Conflict {
        path: String,
        node: String,
        what: &'static str,
    },
    #[error("addon manifest {template} ({path}): {detail}")]
    Addon {
        template: String,
        path: String,
        detail: String,
    },
    #[error("{path}: {detail}")]
    State { path: PathBuf, detail: String },
    #[error("the bundle has no `{name}`, which node {node} needs\n  help: add it to the bundle directory and its SHA256SUMS")]
    MissingBinary { name: String, node: String },
    #[error("{path}: {source}\n  help: check that the output directory is writable")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One file as it must be on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenderedFile {
    pub path: String,
    pub mode: u32,
    pub owner: String,
    #[serde(skip)]
    pub content: Vec<u8>,
    pub sha256: String,
    /// Holds key material: never printed or diffed.
    pub secret: bool,
    pub restarts: Vec<String>,
    pub reloads: Vec<String>,
    /// The template, certificate or key it came from.
    pub source: String,
    /// The apply phase that installs it (the phase of the first unit it
    /// restarts or reloads, else of the role it is placed by).
    pub phase: String,
    /// For binaries: the local file whose bytes it is (content stays empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_file: Option<PathBuf>,
}

impl RenderedFile {
    /// A program from the bundle (`bundle:NAME`), not one of its image
    /// archives (`bundle:images/FILE`).
    pub fn is_binary(&self) -> bool {
        self.source.starts_with("bundle:") && !self.source.starts_with("bundle:images/")
    }
}

/// A systemd unit a node runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitInfo {
    pub name: String,
    pub phase: String,
    /// Shipped by the node's package rather than rendered.
    pub packaged: bool,
    /// TCP ports it listens on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// What must pass after it starts or restarts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
    /// It registers its node in the API: its start or restart calls for
    /// the cluster gate.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub registers: bool,
    /// Its restart drains the node first (a `drain-nodes` phase).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub drain: bool,
    /// Its place in the version skew policy: its running version is read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skew: Option<Skew>,
}

/// A health gate, rendered for one node: `check` with `args` must pass
/// there (or, with [`GateScope::All`], on every node of the unit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gate {
    /// What it waits for, for progress and errors.
    pub name: String,
    /// The unit whose journal a failure shows.
    pub unit: String,
    pub check: Check,
    pub args: Vec<String>,
    pub scope: GateScope,
}

/// A required binary the bundle does not have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissingBinary {
    pub name: String,
    pub phase: String,
}

/// A `drain` file as it is while one node is taken out of the load
/// balancer, for one LB node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    /// The LB node that holds the file.
    pub lb: String,
    /// The file with the node drained (`drained` = its name).
    pub file: RenderedFile,
}

/// What the VIP gate checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vip {
    pub address: String,
    /// The LB nodes that may hold it.
    pub holders: Vec<String>,
    /// The API's readiness through the VIP, checked from a control-plane
    /// node (it holds the cluster CA).
    pub ready: Option<(String, Gate)>,
}

/// How long the step that removes the bootstrap files waits for the
/// kubelet's client certificate.
const BOOTSTRAP_WAIT_SECS: u32 = 120;

/// Where a kubelet keeps the client certificate it got through a CSR.
pub const KUBELET_CLIENT_CERT: &str = "/var/lib/kubelet/pki/kubelet-client-current.pem";

/// Files a node holds only until its kubelet has a valid client
/// certificate of its own (bootstrap-token joins): then they are removed,
/// and placed again when it has none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bootstrap {
    pub files: Vec<String>,
    /// The step (in the node's `steps`, after the units) that removes
    /// them once the kubelet's client certificate is newer than they are:
    /// planned while they are on the node or about to be written.
    pub step: String,
    /// The kubelet's certificate on the node ([`KUBELET_CLIENT_CERT`]).
    pub cert: String,
    /// The serving certificate the kubelet got through a CSR
    /// ([`KUBELET_SERVING_CERT`]).
    pub serving_cert: String,
    /// The step (after the files, before the units) that moves the
    /// kubelet's certificates aside when a CA other than the current one
    /// signed them (after a rotation of the kubernetes CA): the kubelet
    /// then joins again with the bootstrap files, and asks for a new
    /// serving certificate. Planned only then.
    pub rejoin: String,
    /// The CA that signs the kubelets' certificates now.
    #[serde(skip)]
    pub ca_pem: String,
    pub common_name: String,
}

/// What a node's kubelet holds, judged against the current CA
/// ([`Bootstrap::judge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KubeletCerts {
    /// A valid client certificate of its own, of the current CA.
    pub joined: bool,
    /// Certificates a CA other than the current one signed: the kubelet
    /// must join again.
    pub rejoin: bool,
}

impl Bootstrap {
    /// Whether `cert_pem`, read from [`Bootstrap::cert`] (certificates
    /// only), is the kubelet's own valid client certificate.
    pub fn has_client_certificate(&self, cert_pem: &str, now: std::time::SystemTime) -> bool {
        kubeforge_pki::client_certificate_valid(cert_pem, &self.ca_pem, &self.common_name, now)
            .is_ok()
    }

    /// The kubelet's client and serving certificates (certificates only,
    /// `None` when absent) against the current CA. A certificate signed by
    /// another CA calls for joining again, and the kubelet is then not
    /// joined.
    pub fn judge(
        &self,
        client: Option<&str>,
        serving: Option<&str>,
        now: std::time::SystemTime,
    ) -> KubeletCerts {
        let foreign = |pem: Option<&str>| {
            pem.is_some_and(|p| {
                kubeforge_pki::inspect(p).is_ok() && !kubeforge_pki::signed_by(p, &self.ca_pem)
            })
        };
        let rejoin = foreign(client) || foreign(serving);
        KubeletCerts {
            joined: !rejoin && client.is_some_and(|c| self.has_client_certificate(c, now)),
            rejoin,
        }
    }
}

/// Where the etcd nodes keep the snapshots they take themselves
/// (`[etcd] backup_schedule`).
pub const NODE_BACKUP_DIR: &str = "/var/lib/kubeforge/etcd-backups";

/// Where etcd keeps its data on its nodes.
pub const ETCD_DATA_DIR: &str = "/var/lib/etcd";

/// An etcd member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EtcdMember {
    pub name: String,
    pub address: String,
}

/// What operations on the etcd cluster (backups, restores) need: its
/// members, where their data and binaries are, and the client certificate
/// the etcd nodes hold for reading their member's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EtcdInfo {
    pub members: Vec<EtcdMember>,
    pub data_dir: String,
    pub bin_dir: String,
    /// The etcd CA, and the client certificate and key, on etcd nodes.
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl EtcdInfo {
    /// `name=https://address:2380,...`: the `--initial-cluster` of the
    /// members.
    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=https://{}:2380", m.name, m.address))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Where a kubelet keeps the serving certificate it got through a CSR.
pub const KUBELET_SERVING_CERT: &str = "/var/lib/kubelet/pki/kubelet-server-current.pem";

/// A preparation step, rendered for one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub name: String,
    pub phase: String,
    /// Before the phase's files (the default) or after its units.
    #[serde(skip_serializing_if = "Stage::is_before_files")]
    pub stage: Stage,
    /// Read-only; exits 0 when nothing needs doing (empty with
    /// `written`).
    #[serde(skip)]
    pub check: String,
    /// Read-only; prints what the check's answer depends on, or nothing
    /// when that cannot be told cheaply. A check that passed is not run
    /// again while this prints the same (see
    /// `kubeforge_transport::gather`).
    #[serde(skip)]
    pub check_key: Option<String>,
    /// The step runs exactly when the plan writes this file on the node,
    /// instead of when its check fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written: Option<String>,
    #[serde(skip)]
    pub run: String,
}

/// Something a node must have before anything changes (the table's
/// `[[requirement]]` rows that hold for it), checked by pre-flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Requirement {
    pub name: String,
    /// Read-only shell; exits 0 when the node has it.
    #[serde(skip)]
    pub check: String,
    /// What pre-flight reports when it fails: the node, what is needed,
    /// what for, and the package that provides it.
    pub problem: String,
}

/// Everything one node must hold.
#[derive(Debug, Clone, Serialize)]
pub struct NodeTree {
    pub name: String,
    pub address: String,
    pub roles: Vec<Role>,
    pub files: BTreeMap<String, RenderedFile>,
    pub units: Vec<UnitInfo>,
    /// Preparation steps, run before the phase's files are written (or,
    /// with `Stage::AfterUnits`, after its units are started).
    pub steps: Vec<Step>,
    /// Required binaries the bundle lacks: an error for a plan of their
    /// phase.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<MissingBinary>,
    /// What the node must have before anything changes.
    #[serde(skip)]
    pub requirements: Vec<Requirement>,
    /// Files held only until the kubelet has its client certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<Bootstrap>,
}

/// The rendered cluster: one tree per node plus the control machine's
/// kubeconfigs.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub nodes: Vec<NodeTree>,
    /// The API objects applied after the node phases, from the first
    /// control-plane node's addon manifests, in path order.
    pub addons: Vec<Addon>,
    /// The control-plane node addons are applied through.
    pub addon_node: Option<String>,
    /// The API servers' port on the control-plane nodes.
    pub api_port: u16,
    pub admin_kubeconfig: Vec<u8>,
    pub super_admin_kubeconfig: Vec<u8>,
    /// The apply phases, in order.
    pub phases: Vec<PhaseRow>,
    /// Per node that a `drain-from-lb` phase may restart: its `drain`
    /// files, rendered with it taken out of the load balancer.
    pub drains: BTreeMap<String, Vec<Drained>>,
    /// The VIP gate, with a load balancer.
    pub vip: Option<Vip>,
    /// Kubelets get their serving certificates through CSRs that kubeforge
    /// approves (bootstrap-token joins).
    pub serving_csrs: bool,
    /// The etcd cluster, for backups and restores.
    pub etcd: Option<EtcdInfo>,
    /// The Kubernetes version the inventory names: the version of the
    /// bundle's Kubernetes binaries.
    pub version: KubeVersion,
}

impl Rendered {
    /// The nodes that run a kubelet, with their addresses: whose serving
    /// certificate requests kubeforge approves.
    pub fn kubelet_nodes(&self) -> Vec<(&str, std::net::Ipv4Addr)> {
        self.nodes
            .iter()
            .filter(|t| {
                t.roles
                    .iter()
                    .any(|r| matches!(r, Role::ControlPlane | Role::Worker))
            })
            .filter_map(|t| Some((t.name.as_str(), t.address.parse().ok()?)))
            .collect()
    }

    pub fn phase(&self, name: &str) -> Option<&PhaseRow> {
        self.phases.iter().find(|p| p.name == name)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let _ = write!(s, ": {c}");
        cur = c.source();
    }
    s
}

/// The renderer: the templates and the placement table, loaded and checked.
pub struct Renderer {
    tera: tera::Tera,
    table: Table,
}

/// Where a rendered file comes from and what it does on its node.
struct Meta<'a> {
    mode: u32,
    secret: bool,
    restarts: &'a [String],
    reloads: &'a [String],
    source: &'a str,
    phase: &'a str,
}

impl<'a> Meta<'a> {
    /// A `[[file]]` row's metadata, installed in `phase`.
    fn of_file(row: &'a table::FileRow, phase: &'a str) -> Meta<'a> {
        Meta {
            mode: file_mode(row.mode.as_deref()),
            secret: row.secret,
            restarts: &row.restarts,
            reloads: &row.reloads,
            source: &row.template,
            phase,
        }
    }
}

fn file(path: &str, content: Vec<u8>, m: &Meta<'_>) -> RenderedFile {
    RenderedFile {
        phase: m.phase.to_string(),
        from_file: None,
        path: path.to_string(),
        mode: m.mode,
        owner: "root:root".into(),
        sha256: sha256_hex(&content),
        content,
        secret: m.secret,
        restarts: m.restarts.to_vec(),
        reloads: m.reloads.to_vec(),
        source: m.source.to_string(),
    }
}

/// One node's files as they are collected: a path placed by several rows
/// is one file, which must have the same content and mode everywhere; its
/// restarts and reloads are merged, and it goes in with the earliest phase.
struct Files<'r> {
    renderer: &'r Renderer,
    node: &'r str,
    files: BTreeMap<String, RenderedFile>,
}

impl Files<'_> {
    fn add(&mut self, f: RenderedFile) -> Result<(), RenderError> {
        parses(self.node, &f)?;
        let Some(existing) = self.files.get_mut(&f.path) else {
            self.files.insert(f.path.clone(), f);
            return Ok(());
        };
        let conflict = |what| RenderError::Conflict {
            path: f.path.clone(),
            node: self.node.to_string(),
            what,
        };
        if existing.content != f.content {
            return Err(conflict("contents"));
        }
        if existing.mode != f.mode {
            return Err(conflict("modes"));
        }
        if self.renderer.phase_rank(&f.phase) < self.renderer.phase_rank(&existing.phase) {
            existing.phase = f.phase.clone();
        }
        for u in f.restarts {
            if !existing.restarts.contains(&u) {
                existing.restarts.push(u);
            }
        }
        for u in f.reloads {
            if !existing.reloads.contains(&u) {
                existing.reloads.push(u);
            }
        }
        Ok(())
    }
}

/// A rendered file must still parse as the format its path says it has
/// ([`check_rendered`]): a value that broke its syntax stops rendering.
fn parses(node: &str, f: &RenderedFile) -> Result<(), RenderError> {
    check_rendered(&f.path, &f.content).map_err(|detail| RenderError::Unparsable {
        node: node.to_string(),
        from: f.source.clone(),
        detail,
    })
}

/// What rendering one node needs.
struct NodeInput<'a> {
    cluster: &'a Cluster,
    pki: &'a Pki,
    node: &'a Node,
    base: &'a Value,
    ctx: Value,
}

impl Renderer {
    /// Loads the built-in templates and table.
    pub fn new() -> Result<Renderer, RenderError> {
        Renderer::with(TEMPLATES, FILES_TOML)
    }

    pub fn with(templates: &[(&str, &str)], files_toml: &str) -> Result<Renderer, RenderError> {
        let mut tera = tera::Tera::default();
        tera.autoescape_on(vec![]);
        tera.add_raw_templates(templates.iter().copied())
            .map_err(|e| RenderError::Table(error_chain(&e)))?;
        let names: Vec<&str> = templates.iter().map(|(n, _)| *n).collect();
        let table = Table::parse(files_toml, &names).map_err(RenderError::Table)?;
        Ok(Renderer { tera, table })
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The apply phases in order (the table's `[[phase]]` rows).
    pub fn phases(&self) -> Vec<String> {
        self.table.phase.iter().map(|p| p.name.clone()).collect()
    }

    pub fn phase_rank(&self, phase: &str) -> usize {
        self.table
            .phase
            .iter()
            .position(|p| p.name == phase)
            .unwrap_or(usize::MAX)
    }

    /// The phase that installs a file: that of the first unit it restarts
    /// or reloads, else that of the first unit placed on the same nodes,
    /// else the last phase.
    fn phase_of(&self, on: Selector, restarts: &[String], reloads: &[String]) -> String {
        let unit_phase = |name: &String| {
            self.table
                .unit
                .iter()
                .find(|u| &u.name == name)
                .map(|u| u.phase.clone())
        };
        restarts
            .iter()
            .chain(reloads)
            .find_map(unit_phase)
            .or_else(|| {
                self.table
                    .unit
                    .iter()
                    .find(|u| u.on == on)
                    .map(|u| u.phase.clone())
            })
            .unwrap_or_else(|| {
                self.table
                    .phase
                    .last()
                    .map(|p| p.name.clone())
                    .unwrap_or_default()
            })
    }

    fn template(&self, name: &str, ctx: &Value, node: &str) -> Result<Vec<u8>, RenderError> {
        let context =
            tera::Context::from_value(ctx.clone()).map_err(|e| RenderError::Template {
                template: name.into(),
                node: node.into(),
                detail: error_chain(&e),
            })?;
        self.tera
            .render(name, &context)
            .map(String::into_bytes)
            .map_err(|e| RenderError::Template {
                template: name.into(),
                node: node.into(),
                detail: error_chain(&e),
            })
    }

    /// Adds the binaries each node needs from a bundle (name -> local path
    /// and sha256). A required binary the bundle lacks is recorded in the
    /// node's `missing` list: a plan of its phase refuses to run.
    pub fn add_binaries(
        &self,
        cluster: &Cluster,
        rendered: &mut Rendered,
        bundle: &BTreeMap<String, (PathBuf, String)>,
    ) {
        for tree in &mut rendered.nodes {
            let Some(node) = cluster.node(&tree.name) else {
                continue;
            };
            for row in self.table.binary.iter().filter(|r| r.on.matches(node)) {
                if row.when.is_some_and(|w| !w.holds(cluster)) {
                    continue;
                }
                let phase = row
                    .phase
                    .clone()
                    .unwrap_or_else(|| self.phase_of(row.on, &row.restarts, &[]));
                let Some((path, sha)) = bundle.get(&row.name) else {
                    if !row.optional {
                        tree.missing.push(MissingBinary {
                            name: row.name.clone(),
                            phase,
                        });
                    }
                    continue;
                };
                let dir = row.dir.as_deref().unwrap_or(&cluster.bin_dir);
                let target = format!("{}/{}", dir.trim_end_matches('/'), row.name);
                tree.files.insert(
                    target.clone(),
                    RenderedFile {
                        path: target,
                        mode: 0o755,
                        owner: "root:root".into(),
                        content: Vec::new(),
                        sha256: sha.clone(),
                        secret: false,
                        restarts: row.restarts.clone(),
                        reloads: Vec::new(),
                        source: format!("bundle:{}", row.name),
                        phase,
                        from_file: Some(path.clone()),
                    },
                );
            }
        }
    }

    /// Renders every node's files.
    pub fn render(
        &self,
        cluster: &Cluster,
        pki: &Pki,
        subnets: &PodSubnets,
    ) -> Result<Rendered, RenderError> {
        let base = cluster_context(cluster);
        let mut nodes = Vec::new();
        let mut drains = BTreeMap::new();
        for node in &cluster.nodes {
            let input = NodeInput {
                cluster,
                pki,
                node,
                base: &base,
                ctx: node_context(cluster, subnets, node, pki, &base),
            };
            nodes.push(self.render_node(&input)?);
            if self.drained_by_rollout(cluster, node) {
                drains.insert(
                    node.name.clone(),
                    self.drained(cluster, pki, subnets, node, &base)?,
                );
            }
        }
        let admin = self.kubeconfig(cluster, pki, "admin", None, cluster.api_url(), &base)?;
        let super_admin =
            self.kubeconfig(cluster, pki, "super-admin", None, cluster.api_url(), &base)?;
        let addon_node = cluster
            .nodes_with(Role::ControlPlane)
            .next()
            .map(|n| n.name.clone());
        let addons = addons_of(&nodes, addon_node.as_deref())?;
        Ok(Rendered {
            nodes,
            addons,
            addon_node,
            api_port: cluster.apiserver_port,
            admin_kubeconfig: admin,
            super_admin_kubeconfig: super_admin,
            phases: self.table.phase.clone(),
            drains,
            vip: self.vip(cluster),
            serving_csrs: cluster.kubelet_join == KubeletJoin::BootstrapToken,
            etcd: self.etcd(cluster),
            version: cluster.version,
        })
    }

    /// Whether a `drain-from-lb` phase may restart a unit of this node.
    fn drained_by_rollout(&self, cluster: &Cluster, node: &Node) -> bool {
        let draining: Vec<&str> = self
            .table
            .phase
            .iter()
            .filter(|p| p.strategy == Strategy::DrainFromLb)
            .map(|p| p.name.as_str())
            .collect();
        self.table.unit.iter().any(|u| {
            draining.contains(&u.phase.as_str())
                && u.on.matches(node)
                && u.when.is_none_or(|w| w.holds(cluster))
        })
    }

    /// The `drain` files of every node that holds one, rendered with
    /// `drained` taken out of the load balancer.
    fn drained(
        &self,
        cluster: &Cluster,
        pki: &Pki,
        subnets: &PodSubnets,
        drained: &Node,
        base: &Value,
    ) -> Result<Vec<Drained>, RenderError> {
        let mut out = Vec::new();
        for holder in &cluster.nodes {
            for row in self.table.file.iter().filter(|r| r.drain) {
                if !row.on.matches(holder) || row.when.is_some_and(|w| !w.holds(cluster)) {
                    continue;
                }
                let mut ctx = node_context(cluster, subnets, holder, pki, base);
                ctx["drained"] = json!(drained.name);
                let content = self.template(&row.template, &ctx, &holder.name)?;
                let phase = self.phase_of(row.on, &row.restarts, &row.reloads);
                let meta = Meta::of_file(row, &phase);
                let file = file(&row.path, content, &meta);
                parses(&holder.name, &file)?;
                out.push(Drained {
                    lb: holder.name.clone(),
                    file,
                });
            }
        }
        Ok(out)
    }

    /// The etcd members, and the client certificate the table places on
    /// etcd nodes (`etcd-healthcheck-client`) with the etcd CA.
    fn etcd(&self, cluster: &Cluster) -> Option<EtcdInfo> {
        let members: Vec<EtcdMember> = cluster
            .nodes_with(Role::Etcd)
            .map(|n| EtcdMember {
                name: n.name.clone(),
                address: n.address.to_string(),
            })
            .collect();
        if members.is_empty() {
            return None;
        }
        let cert = self
            .table
            .cert
            .iter()
            .find(|r| r.cert == "etcd-healthcheck-client" && r.on == Selector::Etcd)?;
        let ca = self
            .table
            .ca
            .iter()
            .find(|r| r.ca == "etcd" && r.on == Selector::Etcd)?;
        Some(EtcdInfo {
            members,
            data_dir: ETCD_DATA_DIR.to_string(),
            bin_dir: cluster.bin_dir.clone(),
            ca: format!("{}.crt", ca.path),
            cert: format!("{}.crt", cert.path),
            key: format!("{}.key", cert.path),
        })
    }

    /// The VIP gate: which LB nodes may hold it, and the API's readiness
    /// through it, from the first control-plane node with the cluster CA
    /// the table places there.
    fn vip(&self, cluster: &Cluster) -> Option<Vip> {
        let lb = cluster.loadbalancer.as_ref()?;
        let address = lb.vip.addr().to_string();
        let ca = self
            .table
            .ca
            .iter()
            .find(|r| r.ca == "kubernetes" && r.on == Selector::ControlPlane)
            .map(|r| format!("{}.crt", r.path));
        let ready = cluster
            .nodes_with(Role::ControlPlane)
            .next()
            .zip(ca)
            .map(|(cp, ca)| {
                let url = format!("https://{address}:{}/readyz", lb.port);
                (
                    cp.name.clone(),
                    Gate {
                        name: format!("{url} to answer ok"),
                        unit: "kube-apiserver".into(),
                        check: Check::HttpsOk,
                        args: vec![url, ca],
                        scope: GateScope::Node,
                    },
                )
            });
        Some(Vip {
            address,
            holders: cluster
                .nodes_with(Role::Lb)
                .map(|n| n.name.clone())
                .collect(),
            ready,
        })
    }

    fn kubeconfig(
        &self,
        cluster: &Cluster,
        pki: &Pki,
        cert: &str,
        node: Option<&Node>,
        server: String,
        base: &Value,
    ) -> Result<Vec<u8>, RenderError> {
        let node_name = node.map(|n| n.name.as_str());
        let spec = catalog::spec(cert)
            .ok_or_else(|| RenderError::Table(format!("unknown certificate \"{cert}\"")))?;
        let per_node = matches!(spec.scope, catalog::Scope::PerNode(_));
        let kc = pki
            .leaf(cert, if per_node { node_name } else { None })
            .ok_or_else(|| RenderError::MissingPki {
                what: format!("certificate {cert}"),
                node: node_name.unwrap_or("control machine").into(),
            })?;
        let trusted = trust_of(pki, spec.ca, node_name)?;
        let mut ctx = base.clone();
        ctx["kubeconfig"] = json!({
            "server": server,
            "user": spec.cn.replace("{node}", node_name.unwrap_or_default()),
            "ca_data": b64(trusted),
            "cert_data": b64(&kc.cert_pem),
            "key_data": b64(&kc.key.0),
        });
        let _ = cluster;
        self.template(
            "common/kubeconfig.yaml",
            &ctx,
            node_name.unwrap_or("control machine"),
        )
    }

    fn render_node(&self, n: &NodeInput<'_>) -> Result<NodeTree, RenderError> {
        let mut files = Files {
            renderer: self,
            node: &n.node.name,
            files: BTreeMap::new(),
        };
        self.template_files(n, &mut files)?;
        self.kubeconfig_files(n, &mut files)?;
        self.ca_files(n, &mut files)?;
        self.cert_files(n, &mut files)?;
        self.key_files(n, &mut files)?;
        let mut steps = self.steps(n, &files.files)?;
        let bootstrap = self.bootstrap(n, &mut steps)?;
        Ok(NodeTree {
            bootstrap,
            name: n.node.name.clone(),
            address: n.node.address.to_string(),
            roles: n.node.roles.clone(),
            files: files.files,
            units: self.units(n)?,
            steps,
            missing: Vec::new(),
            requirements: self
                .table
                .requirements_of(n.cluster, n.node)
                .into_iter()
                .map(|r| Requirement {
                    name: r.name.clone(),
                    check: r.check.script(r.arg.as_deref().unwrap_or_default()),
                    problem: r.problem(&n.node.name),
                })
                .collect(),
        })
    }

    /// The `[[file]]` rows: templates (one file per item with `each`).
    fn template_files(&self, n: &NodeInput<'_>, files: &mut Files<'_>) -> Result<(), RenderError> {
        let (cluster, node) = (n.cluster, n.node);
        for row in self.table.file.iter().filter(|r| r.on.matches(node)) {
            if row.when.is_some_and(|w| !w.holds(cluster)) {
                continue;
            }
            let phase = self.phase_of(row.on, &row.restarts, &row.reloads);
            let meta = Meta::of_file(row, &phase);
            let Some(list) = &row.each else {
                let content = self.template(&row.template, &n.ctx, &node.name)?;
                files.add(file(&row.path, content, &meta))?;
                continue;
            };
            let items = n
                .ctx
                .get(list)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for item in items {
                let mut item_ctx = n.ctx.clone();
                item_ctx["item"] = item;
                let content = self.template(&row.template, &item_ctx, &node.name)?;
                let path = render_str(&row.path, &item_ctx, &row.template, &node.name)?;
                files.add(file(&path, content, &meta))?;
            }
        }
        Ok(())
    }

    /// The `[[kubeconfig]]` rows: a certificate and its key embedded, 0600.
    fn kubeconfig_files(
        &self,
        n: &NodeInput<'_>,
        files: &mut Files<'_>,
    ) -> Result<(), RenderError> {
        let (cluster, node) = (n.cluster, n.node);
        for row in self
            .table
            .kubeconfig
            .iter()
            .filter(|r| r.on.matches(node) && r.when.is_none_or(|w| w.holds(cluster)))
        {
            let local = format!("https://127.0.0.1:{}", cluster.apiserver_port);
            let server = match row.server {
                table::Server::Local => local,
                table::Server::Endpoint => cluster.api_url(),
                table::Server::LocalIfControlPlane if node.has(Role::ControlPlane) => local,
                table::Server::LocalIfControlPlane => cluster.api_url(),
            };
            let content = self.kubeconfig(cluster, n.pki, &row.cert, Some(node), server, n.base)?;
            let phase = self.phase_of(row.on, &row.restarts, &[]);
            let meta = Meta {
                mode: 0o600,
                secret: true,
                restarts: &row.restarts,
                reloads: &[],
                source: &format!("kubeconfig:{}", row.cert),
                phase: &phase,
            };
            files.add(file(&row.path, content, &meta))?;
        }
        Ok(())
    }

    /// The `[[ca]]` rows: the CAs' trust bundles, and where a component
    /// signs, the key and certificate of the CA that signs.
    fn ca_files(&self, n: &NodeInput<'_>, files: &mut Files<'_>) -> Result<(), RenderError> {
        for row in self.table.ca.iter().filter(|r| r.on.matches(n.node)) {
            let ca_id = CaId::parse(&row.ca)
                .ok_or_else(|| RenderError::Table(format!("unknown CA \"{}\"", row.ca)))?;
            let ca = ca_of(n.pki, ca_id, Some(&n.node.name))?;
            let trusted = KeyCert {
                cert_pem: trust_of(n.pki, ca_id, Some(&n.node.name))?.to_string(),
                key: ca.key.clone(),
            };
            let phase = self.phase_of(row.on, &row.restarts, &[]);
            let source = format!("ca:{}", row.ca);
            for f in key_pair_files(&row.path, &trusted, row.key, &row.restarts, &source, &phase) {
                files.add(f)?;
            }
            if let Some(signer) = &row.signer {
                let meta = Meta {
                    mode: 0o644,
                    secret: false,
                    restarts: &row.restarts,
                    reloads: &[],
                    source: &format!("ca-signer:{}", row.ca),
                    phase: &phase,
                };
                files.add(file(signer, ca.cert_pem.clone().into_bytes(), &meta))?;
            }
        }
        Ok(())
    }

    /// The `[[cert]]` rows: leaf certificates with their keys; per-node
    /// certificates only on their own node.
    fn cert_files(&self, n: &NodeInput<'_>, files: &mut Files<'_>) -> Result<(), RenderError> {
        let (cluster, node) = (n.cluster, n.node);
        for row in self
            .table
            .cert
            .iter()
            .filter(|r| r.on.matches(node) && r.when.is_none_or(|w| w.holds(cluster)))
        {
            let spec = catalog::spec(&row.cert).ok_or_else(|| {
                RenderError::Table(format!("unknown certificate \"{}\"", row.cert))
            })?;
            let per_node = matches!(spec.scope, catalog::Scope::PerNode(_));
            let kc = n
                .pki
                .leaf(&row.cert, per_node.then_some(node.name.as_str()))
                .ok_or_else(|| RenderError::MissingPki {
                    what: format!("certificate {}", row.cert),
                    node: node.name.clone(),
                })?;
            let phase = self.phase_of(row.on, &row.restarts, &[]);
            let source = format!("cert:{}", row.cert);
            for f in key_pair_files(&row.path, kc, true, &row.restarts, &source, &phase) {
                files.add(f)?;
            }
        }
        Ok(())
    }

    /// The `[[keyfile]]` rows: the service-account key pair.
    fn key_files(&self, n: &NodeInput<'_>, files: &mut Files<'_>) -> Result<(), RenderError> {
        for row in self.table.keyfile.iter().filter(|r| r.on.matches(n.node)) {
            let (content, secret, mode) = match row.key.as_str() {
                "sa.key" => (n.pki.sa_private.0.clone(), true, 0o600),
                _ => (n.pki.sa_public_pem.clone(), false, 0o644),
            };
            let phase = self.phase_of(row.on, &row.restarts, &[]);
            let meta = Meta {
                mode,
                secret,
                restarts: &row.restarts,
                reloads: &[],
                source: &format!("key:{}", row.key),
                phase: &phase,
            };
            files.add(file(&row.path, content.into_bytes(), &meta))?;
        }
        Ok(())
    }

    /// The `until = "kubelet-client-certificate"` files of the node, and
    /// the step that removes them (added to `steps`).
    fn bootstrap(
        &self,
        n: &NodeInput<'_>,
        steps: &mut Vec<Step>,
    ) -> Result<Option<Bootstrap>, RenderError> {
        let rows: Vec<&table::FileRow> = self
            .table
            .file
            .iter()
            .filter(|r| {
                r.until == Some(Until::KubeletClientCertificate)
                    && r.on.matches(n.node)
                    && r.when.is_none_or(|w| w.holds(n.cluster))
            })
            .collect();
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let files: Vec<String> = rows.iter().map(|r| r.path.clone()).collect();
        let name = format!(
            "remove {} (the kubelet has its client certificate)",
            files.join(", ")
        );
        let quoted: Vec<String> = files.iter().map(|f| format!("'{f}'")).collect();
        // After the units: the kubelet has started with the files, and its
        // certificate is newer than them once it has joined with them (or
        // renewed its certificate since).
        let newer = quoted
            .iter()
            .map(|f| format!("[ '{KUBELET_CLIENT_CERT}' -nt {f} ]"))
            .collect::<Vec<_>>()
            .join(" && ");
        steps.push(Step {
            name: name.clone(),
            phase: self.phase_of(first.on, &first.restarts, &first.reloads),
            stage: Stage::AfterUnits,
            written: None,
            check_key: None,
            check: quoted
                .iter()
                .map(|f| format!("[ ! -e {f} ]"))
                .collect::<Vec<_>>()
                .join(" && "),
            run: format!(
                "i=0\nuntil {newer}; do\n  i=$((i + 1))\n  if [ \"$i\" -gt {BOOTSTRAP_WAIT_SECS} ]; then\n    echo \"the kubelet has no client certificate newer than {list} ({KUBELET_CLIENT_CERT}) after {BOOTSTRAP_WAIT_SECS} s, so the bootstrap files stay: see journalctl -u kubelet\" >&2\n    exit 1\n  fi\n  sleep 1\ndone\nrm -f -- {}\n",
                quoted.join(" "),
                list = files.join(", "),
            ),
        });
        // Both certificates are moved, not deleted (the kubelet keeps the
        // files they point to as well): the client certificate's absence
        // makes the kubelet join again with the bootstrap files.
        let rejoin = "move aside the kubelet's certificates of a previous CA (it joins again)";
        steps.push(Step {
            name: rejoin.to_string(),
            phase: self.phase_of(first.on, &first.restarts, &first.reloads),
            stage: Stage::AfterFiles,
            written: None,
            check_key: None,
            check: format!("[ ! -e '{KUBELET_CLIENT_CERT}' ] && [ ! -e '{KUBELET_SERVING_CERT}' ]"),
            run: format!(
                "for f in '{KUBELET_CLIENT_CERT}' '{KUBELET_SERVING_CERT}'; do\n  if [ -e \"$f\" ] || [ -L \"$f\" ]; then\n    mv -f -- \"$f\" \"$f.previous-ca\"\n  fi\ndone\n"
            ),
        });
        Ok(Some(Bootstrap {
            files,
            step: name,
            cert: KUBELET_CLIENT_CERT.to_string(),
            serving_cert: KUBELET_SERVING_CERT.to_string(),
            rejoin: rejoin.to_string(),
            ca_pem: ca_of(n.pki, CaId::Kubernetes, Some(&n.node.name))?
                .cert_pem
                .clone(),
            common_name: format!("system:node:{}", n.node.name),
        }))
    }

    /// The `[[step]]` rows, their check and run scripts rendered (`files`:
    /// the node's files, for the phase of a step run by a file's writing).
    fn steps(
        &self,
        n: &NodeInput<'_>,
        files: &BTreeMap<String, RenderedFile>,
    ) -> Result<Vec<Step>, RenderError> {
        let mut steps = Vec::new();
        for row in self.table.step.iter().filter(|r| r.on.matches(n.node)) {
            if row.when.is_some_and(|w| !w.holds(n.cluster)) {
                continue;
            }
            let what = format!("step {}", row.name);
            let check = match &row.check {
                Some(c) => render_str(c, &n.ctx, &what, &n.node.name)?,
                None => String::new(),
            };
            let check_key = row
                .key
                .as_deref()
                .map(|k| render_str(k, &n.ctx, &what, &n.node.name))
                .transpose()?;
            // A step run by a file's writing goes with that file's phase.
            let phase = row
                .written
                .as_ref()
                .and_then(|w| files.get(w))
                .map_or_else(|| self.phase_of(row.on, &[], &[]), |f| f.phase.clone());
            steps.push(Step {
                name: row.name.clone(),
                phase,
                stage: row.stage,
                check,
                check_key,
                written: row.written.clone(),
                run: render_str(&row.run, &n.ctx, &what, &n.node.name)?,
            });
        }
        Ok(steps)
    }

    /// The `[[unit]]` rows of the node, with their ports and gates.
    fn units(&self, n: &NodeInput<'_>) -> Result<Vec<UnitInfo>, RenderError> {
        let mut units = Vec::new();
        for u in self
            .table
            .unit
            .iter()
            .filter(|u| u.on.matches(n.node) && u.when.is_none_or(|w| w.holds(n.cluster)))
        {
            let what = format!("unit {}", u.name);
            let mut ports = Vec::new();
            for p in &u.ports {
                let text = render_str(p, &n.ctx, &what, &n.node.name)?;
                ports.push(text.trim().parse().map_err(|_| RenderError::Template {
                    template: what.clone(),
                    node: n.node.name.clone(),
                    detail: format!("port \"{p}\" renders as \"{text}\", not a TCP port"),
                })?);
            }
            let gate = match &u.gate {
                None => None,
                Some(g) => Some(Gate {
                    name: render_str(&g.name, &n.ctx, &what, &n.node.name)?,
                    unit: u.name.clone(),
                    check: g.check,
                    args: g
                        .args
                        .iter()
                        .map(|a| render_str(a, &n.ctx, &what, &n.node.name))
                        .collect::<Result<_, _>>()?,
                    scope: g.scope,
                }),
            };
            units.push(UnitInfo {
                name: u.name.clone(),
                phase: u.phase.clone(),
                packaged: u.packaged,
                ports,
                gate,
                registers: u.registers,
                drain: u.drain,
                skew: u.skew,
            });
        }
        Ok(units)
    }
}

/// A row's octal mode (checked when the table loads), 0644 by default.
fn file_mode(mode: Option<&str>) -> u32 {
    mode.and_then(|m| u32::from_str_radix(m, 8).ok())
        .unwrap_or(0o644)
}

/// The addon objects: every manifest the table places under [`ADDON_DIR`]
/// on the addon node, split into its objects, in path order.
fn addons_of(nodes: &[NodeTree], addon_node: Option<&str>) -> Result<Vec<Addon>, RenderError> {
    let mut addons = Vec::new();
    let Some(tree) = nodes.iter().find(|t| Some(t.name.as_str()) == addon_node) else {
        return Ok(addons);
    };
    for (path, f) in tree.files.iter().filter(|(p, _)| p.starts_with(ADDON_DIR)) {
        let err = |detail: String| RenderError::Addon {
            template: f.source.clone(),
            path: path.clone(),
            detail,
        };
        let text = std::str::from_utf8(&f.content).map_err(|e| err(e.to_string()))?;
        addons.push(Addon {
            path: path.clone(),
            objects: manifests::parse(text).map_err(err)?,
        });
    }
    Ok(addons)
}

/// `<stem>.crt` (0644) and, when asked, `<stem>.key` (0600, secret).
fn key_pair_files(
    stem: &str,
    kc: &KeyCert,
    with_key: bool,
    restarts: &[String],
    source: &str,
    phase: &str,
) -> Vec<RenderedFile> {
    let mut meta = Meta {
        mode: 0o644,
        secret: false,
        restarts,
        reloads: &[],
        source,
        phase,
    };
    let mut out = vec![file(
        &format!("{stem}.crt"),
        kc.cert_pem.clone().into_bytes(),
        &meta,
    )];
    if with_key {
        meta.mode = 0o600;
        meta.secret = true;
        out.push(file(
            &format!("{stem}.key"),
            kc.key.0.clone().into_bytes(),
            &meta,
        ));
    }
    out
}

/// Renders a one-off template string (the paths of `each` rows, steps,
/// unit ports and gates).
fn render_str(text: &str, ctx: &Value, what: &str, node: &str) -> Result<String, RenderError> {
    let err = |e: &dyn std::error::Error| RenderError::Template {
        template: what.to_string(),
        node: node.to_string(),
        detail: error_chain(e),
    };
    let context = tera::Context::from_value(ctx.clone()).map_err(|e| err(&e))?;
    let mut tera = tera::Tera::default();
    tera.autoescape_on(vec![]);
    tera.render_str(text, &context).map_err(|e| err(&e))
}

/// The trust bundle of a CA: the CA, or during its rotation the old and
/// the new one.
fn trust_of<'a>(pki: &'a Pki, ca: CaId, node: Option<&str>) -> Result<&'a str, RenderError> {
    match pki.trust.get(&ca) {
        Some(t) => Ok(t),
        None => ca_of(pki, ca, node).map(|kc| kc.cert_pem.as_str()),
    }
}

fn ca_of<'a>(pki: &'a Pki, ca: CaId, node: Option<&str>) -> Result<&'a KeyCert, RenderError> {
    pki.cas.get(&ca).ok_or_else(|| RenderError::MissingPki {
        what: ca.to_string(),
        node: node.unwrap_or("control machine").into(),
    })
}

fn cluster_context(cluster: &Cluster) -> Value {
    let cps: Vec<Value> = cluster
        .nodes_with(Role::ControlPlane)
        .map(|n| json!({"name": n.name, "address": n.address.to_string()}))
        .collect();
    let etcd: Vec<&Node> = cluster.nodes_with(Role::Etcd).collect();
    let initial_cluster = etcd
        .iter()
        .map(|n| format!("{}=https://{}:2380", n.name, n.address))
        .collect::<Vec<_>>()
        .join(",");
    let client_urls = etcd
        .iter()
        .map(|n| format!("https://{}:2379", n.address))
        .collect::<Vec<_>>()
        .join(",");
    json!({
        "cluster": {
            "name": cluster.name,
            "version": cluster.version.to_string(),
            "minor": cluster.version.minor,
            // The table's "anonymous-endpoints": the apiserver unit names
            // the AuthenticationConfiguration instead of --anonymous-auth.
            "anonymous_endpoints": table::When::AnonymousEndpoints.holds(cluster),
            "bin_dir": cluster.bin_dir,
            "service_cidr": cluster.service_cidr.to_string(),
            "pod_cidr": cluster.pod_cidr.to_string(),
            "pod_subnet_prefix": cluster.pod_subnet_prefix,
            "cluster_domain": cluster.cluster_domain,
            "dns_service_ip": cluster.dns_service_ip.to_string(),
            "apiserver_port": cluster.apiserver_port,
            "api_url": cluster.api_url(),
            "cni": cluster.cni,
            "proxy_mode": cluster.proxy_mode,
            "runtime": cluster.runtime,
            "sandbox_image": cluster.sandbox_image,
            "image_registry": cluster.image_registry,
            "node_profile": cluster.node_profile,
            "kubelet_join": cluster.kubelet_join,
            "leaf_validity_hours": u64::from(cluster.pki.leaf_validity_days) * 24,
        },
        "control_planes": cps,
        "cni_images": cni::context(cluster),
        "etcd": {
            "initial_cluster": initial_cluster,
            "client_urls": client_urls,
            "members": etcd.len(),
            "data_dir": ETCD_DATA_DIR,
            "backup": cluster.etcd_backups.as_ref().map(|b| json!({
                "schedule": b.schedule,
                "keep": b.keep,
                "dir": NODE_BACKUP_DIR,
            })),
        },
        "containerd": { "socket": CONTAINERD_SOCKET },
        // A `drain` file's node taken out of the load balancer (none here).
        "drained": "",
    })
}

fn node_context(
    cluster: &Cluster,
    subnets: &PodSubnets,
    node: &Node,
    pki: &Pki,
    base: &Value,
) -> Value {
    let mut ctx = base.clone();
    // The kubelet may not set node-role labels itself (NodeRestriction).
    let labels = node
        .labels
        .iter()
        .filter(|(k, _)| !k.starts_with("node-role.kubernetes.io/"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut taints = node.taints.clone();
    if node.has(Role::ControlPlane) && !node.has(Role::Worker) {
        taints.insert(
            0,
            kubeforge_inventory::Taint {
                key: "node-role.kubernetes.io/control-plane".into(),
                value: String::new(),
                effect: "NoSchedule".into(),
            },
        );
    }
    // Routes to the other kubelet nodes' pod subnets (bridge CNI).
    let routes: Vec<Value> = cluster
        .nodes
        .iter()
        .filter(|n| n.name != node.name && n.runs_kubelet())
        .filter_map(|n| {
            subnets.get(&n.name).map(
                |s| json!({"node": n.name, "subnet": s.to_string(), "via": n.address.to_string()}),
            )
        })
        .collect();
    ctx["pod_routes"] = json!(routes);
    ctx["registry_mirrors"] = json!(cluster
        .registry_mirrors
        .iter()
        .map(|(host, mirror)| {
            let upstream = if host == "docker.io" {
                "registry-1.docker.io"
            } else {
                host.as_str()
            };
            json!({"host": host, "upstream": upstream, "mirror": mirror})
        })
        .collect::<Vec<_>>());
    ctx["hosts"] = json!(cluster
        .nodes
        .iter()
        .map(|n| json!({"name": n.name, "address": n.address.to_string()}))
        .collect::<Vec<_>>());
    ctx["node"] = json!({
        "name": node.name,
        "address": node.address.to_string(),
        "labels": labels,
        "taints": taints,
        "pod_subnet": subnets.get(&node.name).map(|s| s.to_string()).unwrap_or_default(),
        // Where this node's kubelet reaches the API (as in its kubeconfig).
        "api_server": if node.has(Role::ControlPlane) {
            format!("https://127.0.0.1:{}", cluster.apiserver_port)
        } else {
            cluster.api_url()
        },
    });
    if let Some(lb) = &cluster.loadbalancer {
        let lbs: Vec<&Node> = cluster.nodes_with(Role::Lb).collect();
        let index = lbs.iter().position(|n| n.name == node.name).unwrap_or(0);
        let peers: Vec<Value> = lbs
            .iter()
            .filter(|n| n.name != node.name)
            .map(|n| json!({"name": n.name, "address": n.address.to_string()}))
            .collect();
        let priority = 150u32
            .saturating_sub(10 * u32::try_from(index).unwrap_or(0))
            .max(50);
        ctx["lb"] = json!({
            "vip": lb.vip.to_string(),
            "port": lb.port,
            "interface": lb.interface,
            "virtual_router_id": lb.virtual_router_id,
            "nginx_user": lb.nginx_user,
            "priority": priority,
            "peers": peers,
        });
    }
    let token = pki
        .bootstrap_token
        .as_ref()
        .map(|t| t.0.as_str())
        .unwrap_or_default();
    let (token_id, token_secret) = token.split_once('.').unwrap_or_default();
    ctx["secrets"] = json!({
        "encryption_key": pki.encryption_key.0,
        "bootstrap_token": token,
        "bootstrap_token_id": token_id,
        "bootstrap_token_secret": token_secret,
        "bootstrap_token_expiration": pki.bootstrap_token_expiration.clone().unwrap_or_default(),
    });
    ctx
}

/// The PKI (decided, not yet written), the pod subnets and every node's
/// rendered files: where render, plan, apply and kubeconfig start.
pub struct Prepared {
    pub reconciled: kubeforge_pki::Reconciled,
    pub alloc: Allocation,
    pub renderer: Renderer,
    pub rendered: Rendered,
}

/// Reads the state directory, decides the PKI and the pod subnets, and
/// renders every node's files. Writes nothing.
pub fn prepare(
    state_dir: &Path,
    cluster: &Cluster,
    opts: &kubeforge_pki::Options,
) -> Result<Prepared, RenderError> {
    let reconciled = kubeforge_pki::reconcile(state_dir, cluster, opts)?;
    let alloc = allocate_pod_subnets(state_dir, cluster)?;
    let renderer = Renderer::new()?;
    let rendered = renderer.render(cluster, &reconciled.pki, &alloc.subnets)?;
    Ok(Prepared {
        reconciled,
        alloc,
        renderer,
        rendered,
    })
}

impl Prepared {
    /// Writes what the PKI and the pod subnets decided into the state
    /// directory.
    pub fn persist(&self, state_dir: &Path) -> Result<(), RenderError> {
        self.reconciled.persist(state_dir)?;
        self.alloc.persist(state_dir)?;
        Ok(())
    }
}

/// Writes a rendered cluster below `out`: `out/<node>/<path>` with each
/// file's mode, `out/admin.conf` (0600) and `out/manifest.json`, which
/// lists every file with its mode, owner, sha256 and units.
pub fn write_tree(rendered: &Rendered, out: &Path) -> Result<Vec<PathBuf>, RenderError> {
    let manifest = serde_json::to_vec_pretty(&rendered.nodes).map_err(|e| RenderError::State {
        path: out.join("manifest.json"),
        detail: e.to_string(),
    })?;
    let mut items: Vec<(PathBuf, &[u8], u32)> = Vec::new();
    for node in &rendered.nodes {
        for f in node.files.values() {
            let rel = f.path.trim_start_matches('/');
            items.push((out.join(&node.name).join(rel), &f.content, f.mode));
        }
    }
    items.push((out.join("admin.conf"), &rendered.admin_kubeconfig, 0o600));
    items.push((out.join("manifest.json"), &manifest, 0o644));
    kubeforge_pki::write_files(&items).map_err(|e| RenderError::State {
        path: out.to_path_buf(),
        detail: e.to_string(),
    })?;
    Ok(items.into_iter().map(|(p, _, _)| p).collect())
}
