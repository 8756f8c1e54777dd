//! The placement table (`templates/files.toml`): which file goes to which
//! nodes and which units restart or reload when it changes.

use kubeforge_inventory::{Cluster, Cni, KubeletJoin, Node, NodeProfile, Role};
use kubeforge_pki::{catalog, CaId};
use serde::Deserialize;

pub const FILES_TOML: &str = include_str!("../../../templates/files.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum On {
    Etcd,
    ControlPlane,
    Kubelet,
    Lb,
    All,
}

impl On {
    pub fn matches(self, node: &Node) -> bool {
        match self {
            On::Etcd => node.has(Role::Etcd),
            On::ControlPlane => node.has(Role::ControlPlane),
            On::Kubelet => node.runs_kubelet(),
            On::Lb => node.has(Role::Lb),
            On::All => true,
        }
    }
}

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
}

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
        }
    }
}

/// A preparation step: `check` (read-only, exits 0 when the node is as it
/// should be) and `run` (makes it so). Both are templates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepRow {
    pub name: String,
    pub on: On,
    #[serde(default)]
    pub when: Option<When>,
    #[serde(default)]
    pub stage: Stage,
    pub check: String,
    pub run: String,
}

/// When a step runs within its phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Before the phase's files are written (the default).
    #[default]
    BeforeFiles,
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
    pub on: On,
    pub dir: String,
    pub check: String,
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
    pub on: On,
    pub phase: String,
    #[serde(default)]
    pub when: Option<When>,
    /// Shipped by the node's own package (nginx, keepalived): not rendered.
    #[serde(default)]
    pub packaged: bool,
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
    pub on: On,
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeconfigRow {
    pub cert: String,
    pub path: String,
    pub on: On,
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
    pub path: String,
    pub on: On,
    #[serde(default)]
    pub key: bool,
    #[serde(default)]
    pub restarts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertRow {
    pub cert: String,
    pub path: String,
    pub on: On,
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
    pub on: On,
    #[serde(default)]
    pub restarts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinaryRow {
    pub name: String,
    pub on: On,
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
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
}

impl Table {
    /// Parses and cross-checks a table: every CA, certificate, key file,
    /// template and unit it names must exist.
    pub fn parse(text: &str, templates: &[&str]) -> Result<Table, String> {
        let t: Table = toml::from_str(text).map_err(|e| e.to_string())?;
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
            check_units(&c.path, &c.restarts)?;
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
        Ok(t)
    }
}
