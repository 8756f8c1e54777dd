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
pub use images::{ImageArchive, CONTAINERD_SOCKET};
pub use manifests::{Addon, ApiObject, ADDONS_PHASE, ADDON_DIR};
pub use subnets::{allocate as allocate_pod_subnets, Allocation, PodSubnets};
pub use table::{On, Stage, Table, FILES_TOML};
pub use templates::TEMPLATES;

use base64::Engine;
use kubeforge_inventory::{Cluster, Node, Role};
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

/// A systemd unit a node runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitInfo {
    pub name: String,
    pub phase: String,
    /// Shipped by the node's package rather than rendered.
    pub packaged: bool,
}

/// A preparation step, rendered for one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub name: String,
    pub phase: String,
    /// Before the phase's files (the default) or after its units.
    #[serde(skip_serializing_if = "Stage::is_before_files")]
    pub stage: Stage,
    /// Read-only; exits 0 when nothing needs doing.
    #[serde(skip)]
    pub check: String,
    #[serde(skip)]
    pub run: String,
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
    /// The apply phases in order, from the table's units.
    phases: Vec<String>,
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
        let mut phases: Vec<String> = Vec::new();
        for u in &table.unit {
            if !phases.contains(&u.phase) {
                phases.push(u.phase.clone());
            }
        }
        Ok(Renderer {
            tera,
            table,
            phases,
        })
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The apply phases in order: the order of first appearance in the
    /// table's units, with the addons right after the last phase of a
    /// control-plane unit (the API is up; nodes may still be missing).
    pub fn phases(&self) -> Vec<String> {
        let mut p = self.phases.clone();
        let after = self
            .table
            .unit
            .iter()
            .filter(|u| u.on == On::ControlPlane)
            .filter_map(|u| p.iter().position(|x| *x == u.phase))
            .max()
            .map_or(p.len(), |i| i + 1);
        p.insert(after, ADDONS_PHASE.to_string());
        p
    }

    pub fn phase_rank(&self, phase: &str) -> usize {
        self.phases
            .iter()
            .position(|p| p == phase)
            .unwrap_or(usize::MAX)
    }

    /// The phase that installs a file: that of the first unit it restarts
    /// or reloads, else that of the first unit placed on the same nodes.
    fn phase_of(&self, on: On, restarts: &[String], reloads: &[String]) -> String {
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
            .unwrap_or_else(|| self.phases.last().cloned().unwrap_or_default())
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

    /// Adds the binaries each node needs, from a bundle (name -> local
    /// path and sha256), for the given phases only. A required binary
    /// missing from the bundle is an error naming it.
    pub fn add_binaries(
        &self,
        cluster: &Cluster,
        rendered: &mut Rendered,
        bundle: &BTreeMap<String, (PathBuf, String)>,
        phases: &[String],
    ) -> Result<(), RenderError> {
        for tree in &mut rendered.nodes {
            let Some(node) = cluster.node(&tree.name) else {
                continue;
            };
            for row in self.table.binary.iter().filter(|r| r.on.matches(node)) {
                if row.when.is_some_and(|w| !w.holds(cluster)) {
                    continue;
                }
                let phase = self.phase_of(row.on, &row.restarts, &[]);
                if !phases.contains(&phase) {
                    continue;
                }
                let Some((path, sha)) = bundle.get(&row.name) else {
                    if row.optional {
                        continue;
                    }
                    return Err(RenderError::MissingBinary {
                        name: row.name.clone(),
                        node: node.name.clone(),
                    });
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
        Ok(())
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
        for node in &cluster.nodes {
            nodes.push(self.render_node(cluster, pki, subnets, node, &base)?);
        }
        let admin = self.kubeconfig(cluster, pki, "admin", None, cluster.api_url(), &base)?;
        let super_admin =
            self.kubeconfig(cluster, pki, "super-admin", None, cluster.api_url(), &base)?;
        let addon_node = cluster
            .nodes_with(kubeforge_inventory::Role::ControlPlane)
            .next()
            .map(|n| n.name.clone());
        let mut addons = Vec::new();
        if let Some(tree) = nodes.iter().find(|t| Some(&t.name) == addon_node.as_ref()) {
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
        }
        Ok(Rendered {
            nodes,
            addons,
            addon_node,
            api_port: cluster.apiserver_port,
            admin_kubeconfig: admin,
            super_admin_kubeconfig: super_admin,
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
        let ca = ca_of(pki, spec.ca, node_name)?;
        let mut ctx = base.clone();
        ctx["kubeconfig"] = json!({
            "server": server,
            "user": spec.cn.replace("{node}", node_name.unwrap_or_default()),
            "ca_data": b64(&ca.cert_pem),
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

    fn render_node(
        &self,
        cluster: &Cluster,
        pki: &Pki,
        subnets: &PodSubnets,
        node: &Node,
        base: &Value,
    ) -> Result<NodeTree, RenderError> {
        let ctx = node_context(cluster, subnets, node, pki, base);
        let mut files: BTreeMap<String, RenderedFile> = BTreeMap::new();
        let mut add = |f: RenderedFile| -> Result<(), RenderError> {
            match files.get_mut(&f.path) {
                None => {
                    files.insert(f.path.clone(), f);
                }
                Some(existing) => {
                    if existing.content != f.content {
                        return Err(RenderError::Conflict {
                            path: f.path,
                            node: node.name.clone(),
                            what: "contents",
                        });
                    }
                    if existing.mode != f.mode {
                        return Err(RenderError::Conflict {
                            path: f.path,
                            node: node.name.clone(),
                            what: "modes",
                        });
                    }
                    if self.phase_rank(&f.phase) < self.phase_rank(&existing.phase) {
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
                }
            }
            Ok(())
        };
        let t = &self.table;

        for row in t.file.iter().filter(|r| r.on.matches(node)) {
            if row.when.is_some_and(|w| !w.holds(cluster)) {
                continue;
            }
            let mode = row
                .mode
                .as_deref()
                .and_then(|m| u32::from_str_radix(m, 8).ok())
                .unwrap_or(0o644);
            if let Some(list) = &row.each {
                let phase = self.phase_of(row.on, &row.restarts, &row.reloads);
                let items = ctx
                    .get(list)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for item in items {
                    let mut item_ctx = ctx.clone();
                    item_ctx["item"] = item;
                    let content = self.template(&row.template, &item_ctx, &node.name)?;
                    let path = render_str(&row.path, &item_ctx, &row.template, &node.name)?;
                    add(file(
                        &path,
                        mode,
                        row.secret,
                        content,
                        &row.restarts,
                        &row.reloads,
                        &row.template,
                        phase.clone(),
                    ))?;
                }
                continue;
            }
            let content = self.template(&row.template, &ctx, &node.name)?;
            add(file(
                &row.path,
                mode,
                row.secret,
                content,
                &row.restarts,
                &row.reloads,
                &row.template,
                self.phase_of(row.on, &row.restarts, &row.reloads),
            ))?;
        }
        for row in t
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
            let content = self.kubeconfig(cluster, pki, &row.cert, Some(node), server, base)?;
            add(file(
                &row.path,
                0o600,
                true,
                content,
                &row.restarts,
                &[],
                &format!("kubeconfig:{}", row.cert),
                self.phase_of(row.on, &row.restarts, &[]),
            ))?;
        }
        for row in t.ca.iter().filter(|r| r.on.matches(node)) {
            let ca_id = CaId::parse(&row.ca)
                .ok_or_else(|| RenderError::Table(format!("unknown CA \"{}\"", row.ca)))?;
            let ca = ca_of(pki, ca_id, Some(&node.name))?;
            let src = format!("ca:{}", row.ca);
            let phase = self.phase_of(row.on, &row.restarts, &[]);
            for f in key_pair_files(&row.path, ca, row.key, &row.restarts, &src, &phase) {
                add(f)?;
            }
        }
        for row in t
            .cert
            .iter()
            .filter(|r| r.on.matches(node) && r.when.is_none_or(|w| w.holds(cluster)))
        {
            let spec = catalog::spec(&row.cert).ok_or_else(|| {
                RenderError::Table(format!("unknown certificate \"{}\"", row.cert))
            })?;
            let per_node = matches!(spec.scope, catalog::Scope::PerNode(_));
            let kc = pki
                .leaf(&row.cert, per_node.then_some(node.name.as_str()))
                .ok_or_else(|| RenderError::MissingPki {
                    what: format!("certificate {}", row.cert),
                    node: node.name.clone(),
                })?;
            let src = format!("cert:{}", row.cert);
            let phase = self.phase_of(row.on, &row.restarts, &[]);
            for f in key_pair_files(&row.path, kc, true, &row.restarts, &src, &phase) {
                add(f)?;
            }
        }
        for row in t.keyfile.iter().filter(|r| r.on.matches(node)) {
            let (content, secret, mode) = match row.key.as_str() {
                "sa.key" => (pki.sa_private.0.clone(), true, 0o600),
                _ => (pki.sa_public_pem.clone(), false, 0o644),
            };
            add(file(
                &row.path,
                mode,
                secret,
                content.into_bytes(),
                &row.restarts,
                &[],
                &format!("key:{}", row.key),
                self.phase_of(row.on, &row.restarts, &[]),
            ))?;
        }

        let mut steps = Vec::new();
        for row in t.step.iter().filter(|r| r.on.matches(node)) {
            if row.when.is_some_and(|w| !w.holds(cluster)) {
                continue;
            }
            let one = |text: &str| -> Result<String, RenderError> {
                let mut tera = tera::Tera::default();
                tera.autoescape_on(vec![]);
                let context =
                    tera::Context::from_value(ctx.clone()).map_err(|e| RenderError::Template {
                        template: format!("step {}", row.name),
                        node: node.name.clone(),
                        detail: error_chain(&e),
                    })?;
                tera.render_str(text, &context)
                    .map_err(|e| RenderError::Template {
                        template: format!("step {}", row.name),
                        node: node.name.clone(),
                        detail: error_chain(&e),
                    })
            };
            steps.push(Step {
                name: row.name.clone(),
                phase: self.phase_of(row.on, &[], &[]),
                stage: row.stage,
                check: one(&row.check)?,
                run: one(&row.run)?,
            });
        }
        let units = t
            .unit
            .iter()
            .filter(|u| u.on.matches(node) && u.when.is_none_or(|w| w.holds(cluster)))
            .map(|u| UnitInfo {
                name: u.name.clone(),
                phase: u.phase.clone(),
                packaged: u.packaged,
            })
            .collect();
        Ok(NodeTree {
            name: node.name.clone(),
            address: node.address.to_string(),
            roles: node.roles.clone(),
            files,
            units,
            steps,
        })
    }
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
    let mut out = vec![file(
        &format!("{stem}.crt"),
        0o644,
        false,
        kc.cert_pem.clone().into_bytes(),
        restarts,
        &[],
        source,
        phase.to_string(),
    )];
    if with_key {
        out.push(file(
            &format!("{stem}.key"),
            0o600,
            true,
            kc.key.0.clone().into_bytes(),
            restarts,
            &[],
            source,
            phase.to_string(),
        ));
    }
    out
}

/// Renders a one-off template string (the paths of `each` rows).
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

fn ca_of<'a>(pki: &'a Pki, ca: CaId, node: Option<&str>) -> Result<&'a KeyCert, RenderError> {
    pki.cas.get(&ca).ok_or_else(|| RenderError::MissingPki {
        what: ca.to_string(),
        node: node.unwrap_or("control machine").into(),
    })
}

#[allow(clippy::too_many_arguments)]
fn file(
    path: &str,
    mode: u32,
    secret: bool,
    content: Vec<u8>,
    restarts: &[String],
    reloads: &[String],
    source: &str,
    phase: String,
) -> RenderedFile {
    RenderedFile {
        phase,
        from_file: None,
        path: path.to_string(),
        mode,
        owner: "root:root".into(),
        sha256: sha256_hex(&content),
        content,
        secret,
        restarts: restarts.to_vec(),
        reloads: reloads.to_vec(),
        source: source.to_string(),
    }
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
        },
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
    });
    ctx
}

impl Rendered {
    /// Keeps only the files and units of the given phases (an apply or
    /// plan limited with `--phase`).
    pub fn retain_phases(&mut self, phases: &[String]) {
        for node in &mut self.nodes {
            node.files.retain(|_, f| phases.contains(&f.phase));
            node.units.retain(|u| phases.contains(&u.phase));
            node.steps.retain(|s| phases.contains(&s.phase));
        }
        if !phases.iter().any(|p| p == ADDONS_PHASE) {
            self.addons.clear();
        }
    }
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
