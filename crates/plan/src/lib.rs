//! Planning: the files each node must hold, compared with the facts
//! gathered from it, give an exact per-node list of changes: files to
//! create or update (with a diff for text files that hold no secret),
//! whether systemd must reload its units, and which units to start,
//! restart or reload. The same changes, grouped into the table's phases
//! with their strategies and gates ([`PhasePlan`]), are what apply
//! executes. Pure: facts come in as data.

pub mod cert;
pub mod manifest;
pub mod remove;
pub mod renewal;
pub mod restore;
pub mod skew;
mod text;
mod work;

pub use manifest::{Known, Manifest, ManifestUnit, Reach, MANIFEST_PATH, MANIFEST_PHASE};
pub use skew::{parse_version, VersionChange};
pub use text::{to_text, work_to_text};
pub use work::{
    must_exist, ApiApply, ApiWork, Chmod, ClusterGates, ClusterOp, Content, Cordon, Deployment,
    EtcdTls, GateRun, LbEdit, LbReload, MustExist, NodeWork, PhasePlan, Put, StepWork,
};

use kubeforge_render::{Addon, NodeTree, PhaseGate, Rendered, Strategy};
use serde::Serialize;
use std::collections::BTreeMap;

/// A file as found on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub sha256: String,
    pub mode: u32,
    pub owner: String,
    /// The old content, when it was fetched (text files without secrets).
    pub content: Option<Vec<u8>>,
}

/// State of a systemd unit on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnitFacts {
    pub active: bool,
    pub enabled: bool,
}

/// What was gathered, read-only, from one node.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    /// Every path the renderer wants, present or not (absent = missing).
    pub files: BTreeMap<String, RemoteFile>,
    pub units: BTreeMap<String, UnitFacts>,
    /// Preparation steps whose check passed (nothing to do).
    pub steps_done: Vec<String>,
    /// The addon objects as the API has them (the addon node only).
    pub api: Option<ApiFacts>,
    /// Pending kubelet serving certificate requests, as kubeforge judged
    /// them (the addon node only).
    pub csrs: Vec<PendingCsr>,
    /// The kubelet holds a valid client certificate of its own
    /// ([`kubeforge_render::Bootstrap`]): its bootstrap files are removed,
    /// not written.
    pub bootstrapped: bool,
    /// A CA other than the current one signed the kubelet's certificates
    /// (a kubernetes CA rotation): they are moved aside and the kubelet
    /// joins again ([`kubeforge_render::Bootstrap::rejoin`]).
    pub kubelet_rejoin: bool,
    /// The first line of `--version` of each running unit with a place in
    /// the version skew policy, by unit (from the running process's own
    /// binary).
    pub versions: BTreeMap<String, String>,
    /// The node's record of what kubeforge placed there ([`Manifest`]), as
    /// read from [`MANIFEST_PATH`] (absent: none yet).
    pub manifest: Option<Vec<u8>>,
}

/// A pending kubelet serving certificate request and kubeforge's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingCsr {
    pub name: String,
    /// The inventory node it is for, when it is approved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Why it is not approved (empty when it is).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub refused: String,
}

/// An addon object as found through the API (JSON): the live object, and
/// what a server-side dry-run apply of the rendered one returned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LiveObject {
    pub live: Option<String>,
    pub dry_run: Option<String>,
}

/// What was read from the API, by object path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiFacts {
    /// The API did not answer (a new cluster): everything is applied.
    Unreachable(String),
    Objects(BTreeMap<String, LiveObject>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApiAction {
    Create,
    Update,
    /// Its state is not known (the API is not up yet): applied anyway.
    Apply,
}

/// An addon object to apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiChange {
    /// `Kind namespace/name`.
    pub object: String,
    pub path: String,
    pub action: ApiAction,
    pub secret: bool,
    /// What the apply changes, as a diff of the object's JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// Facts for the whole cluster; `Offline` plans as if every node were bare.
#[derive(Debug, Clone)]
pub enum Facts {
    Offline,
    Gathered(BTreeMap<String, NodeFacts>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileAction {
    Create,
    Update,
    /// Same content, different mode or owner.
    Chmod,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileChange {
    pub path: String,
    pub action: FileAction,
    pub mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_mode: Option<String>,
    pub secret: bool,
    /// Unified diff of a text file that holds no secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// What an update changes in meaning, for files a line diff does not
    /// suit: a certificate's subject, issuer, SANs, validity and key; a
    /// kubeconfig's server and user; "(secret) changed" for a key.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub summary: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodePlan {
    pub node: String,
    pub address: String,
    /// Preparation steps to run (their check did not pass).
    pub steps: Vec<String>,
    pub changes: Vec<FileChange>,
    pub unchanged: usize,
    pub daemon_reload: bool,
    /// Units to enable and start (not running yet).
    pub start: Vec<String>,
    /// Running units whose files changed.
    pub restart: Vec<String>,
    /// Running units that pick up changed files with a reload.
    pub reload: Vec<String>,
    /// Addon objects applied through this node's API server.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub api: Vec<ApiChange>,
    /// Addon objects the API already has as rendered.
    pub api_unchanged: usize,
    /// Kubelet serving certificate requests to approve (their names match
    /// an inventory node's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub approve: Vec<PendingCsr>,
    /// Pending serving certificate requests kubeforge will not approve.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<PendingCsr>,
}

impl NodePlan {
    pub fn is_empty(&self) -> bool {
        self.api.is_empty()
            && self.approve.is_empty()
            && self.changes.is_empty()
            && self.steps.is_empty()
            && !self.daemon_reload
            && self.start.is_empty()
            && self.restart.is_empty()
            && self.reload.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct Summary {
    pub nodes: usize,
    pub nodes_changed: usize,
    pub steps: usize,
    pub create: usize,
    pub update: usize,
    pub unchanged: usize,
    pub start: usize,
    pub restart: usize,
    pub reload: usize,
    /// Addon objects to apply, and those already as rendered.
    pub api_apply: usize,
    pub api_unchanged: usize,
    /// Kubelet serving certificate requests to approve.
    pub csr_approve: usize,
    /// Nodes removed from the cluster (`apply --prune`).
    #[serde(skip_serializing_if = "is_zero")]
    pub remove: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub cluster: String,
    pub offline: bool,
    /// What changes, node by node.
    pub nodes: Vec<NodePlan>,
    /// The same changes as apply executes them: phase by phase, in the
    /// table's order (phases without work left out).
    pub phases: Vec<PhasePlan>,
    /// After the last phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_gates: Option<ClusterGates>,
    /// Components whose version changes, or whose binary is replaced, in
    /// the order of the nodes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionChange>,
    /// A plan that replaces the binary of a running unit (an upgrade):
    /// what must pass, probed once, before anything is touched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy_before: Option<HealthyBefore>,
    pub summary: Summary,
    /// Every node's record of what kubeforge places there as of this
    /// plan, by node (written where it changed, kept in the state
    /// directory).
    #[serde(skip)]
    pub manifests: BTreeMap<String, Manifest>,
    /// Nodes taken out of the cluster, and why ([`remove::prune`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removals: Vec<remove::Removal>,
    /// Where the bundle's files already are: by sha256, the nodes that
    /// hold one in place, unchanged by this plan, as (node, path), the
    /// nodes without a control-plane or etcd role first ([`sources`]).
    #[serde(skip)]
    pub sources: BTreeMap<String, Vec<(String, String)>>,
}

/// The bundle's files (binaries, image archives) each node holds in place
/// as the facts found them, their sha256 that of the bundle: nodes that
/// need one get it from there rather than over the control machine's
/// uplink. Workers come first, so that handing them on keeps off the
/// control plane's CPUs.
pub fn sources(rendered: &Rendered, facts: &Facts) -> BTreeMap<String, Vec<(String, String)>> {
    use kubeforge_inventory::Role;
    let Facts::Gathered(map) = facts else {
        return BTreeMap::new();
    };
    let mut trees: Vec<&NodeTree> = rendered.nodes.iter().collect();
    trees.sort_by_key(|t| {
        t.roles
            .iter()
            .any(|r| matches!(r, Role::ControlPlane | Role::Etcd))
    });
    let mut by: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for tree in trees {
        let Some(found) = map.get(&tree.name) else {
            continue;
        };
        for f in tree.files.values() {
            let from_bundle = f.from_file.is_some() && !f.secret;
            if from_bundle
                && found
                    .files
                    .get(&f.path)
                    .is_some_and(|r| r.sha256 == f.sha256)
            {
                by.entry(f.sha256.clone())
                    .or_default()
                    .push((tree.name.clone(), f.path.clone()));
            }
        }
    }
    by
}

/// The health an upgrade starts from: the gates of the running (or
/// enabled) units of the table's `healthy_before_upgrade` phases, and the
/// VIP gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthyBefore {
    pub gates: Vec<GateRun>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip: Option<kubeforge_render::Vip>,
}

/// How a plan is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Only these phases (every phase when empty): the one place where a
    /// plan is limited to some phases.
    pub only: Vec<String>,
    /// drain-nodes phases: nodes outside `serial` worked on at the same
    /// time (at least 1).
    pub max_unavailable: usize,
    /// A patch release may go back (never a minor version).
    pub allow_downgrade: bool,
    /// Refuse a plan that breaks the version skew policy (`status` only
    /// reads the drift and does not refuse).
    pub refuse_skew: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            only: Vec::new(),
            max_unavailable: 1,
            allow_downgrade: false,
            refuse_skew: true,
        }
    }
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.nodes.iter().all(NodePlan::is_empty) && self.phases.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("unknown phase \"{name}\"\n  help: use one of {}", .known.join(", "))]
    UnknownPhase { name: String, known: Vec<String> },
    #[error("the inventory names no etcd member")]
    NoEtcd,
    #[error("the bundle has no `{name}`, which node {node} needs (phase {phase})\n  help: add it to the bundle directory and its SHA256SUMS, or leave out --bundle to not manage binaries")]
    MissingBinary {
        name: String,
        node: String,
        phase: String,
    },
    #[error("refused, nothing was changed: {detail} (rule: {rule})\n  help: {help}")]
    Refused {
        rule: String,
        detail: String,
        help: String,
    },
    #[error("--max-unavailable must be at least 1")]
    MaxUnavailable,
}

/// Whether systemd must re-read its units after this file changes.
pub fn is_unit_file(path: &str) -> bool {
    path.starts_with("/etc/systemd/system/")
}

fn octal(mode: u32) -> String {
    format!("{mode:04o}")
}

fn is_text(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok() && !bytes.contains(&0)
}

fn unified_diff(path: &str, old: &[u8], new: &[u8]) -> Option<String> {
    if !is_text(old) || !is_text(new) {
        return None;
    }
    let old = String::from_utf8_lossy(old);
    let new = String::from_utf8_lossy(new);
    let diff = similar::TextDiff::from_lines(old.as_ref(), new.as_ref());
    Some(
        diff.unified_diff()
            .context_radius(2)
            .header(&format!("{path} (on node)"), &format!("{path} (rendered)"))
            .to_string(),
    )
}

/// The object without what the API server owns (status, versions, field
/// managers), for comparing the live object with a dry-run apply.
fn normalized(json: &str) -> Option<serde_json::Value> {
    let mut v: serde_json::Value = serde_json::from_str(json).ok()?;
    if let Some(obj) = v.as_object_mut() {
        obj.remove("status");
    }
    if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        for k in ["managedFields", "resourceVersion", "generation"] {
            meta.remove(k);
        }
    }
    Some(v)
}

fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// The addon objects to apply, and how many are already as rendered.
fn plan_api(addons: &[Addon], facts: Option<&ApiFacts>) -> (Vec<ApiChange>, usize) {
    let mut out = Vec::new();
    let mut same = 0;
    for o in addons.iter().flat_map(|a| &a.objects) {
        let change = |action, diff| ApiChange {
            object: o.display(),
            path: o.path.clone(),
            action,
            secret: o.secret,
            diff,
        };
        let found = match facts {
            None | Some(ApiFacts::Unreachable(_)) => {
                out.push(change(ApiAction::Apply, None));
                continue;
            }
            Some(ApiFacts::Objects(map)) => map.get(&o.path).cloned().unwrap_or_default(),
        };
        let Some(live) = found.live.as_deref().and_then(normalized) else {
            out.push(change(ApiAction::Create, None));
            continue;
        };
        match found.dry_run.as_deref().and_then(normalized) {
            Some(dry) if dry == live => same += 1,
            Some(dry) if !o.secret => {
                let (old, new) = (pretty(&live), pretty(&dry));
                let diff = similar::TextDiff::from_lines(&old, &new)
                    .unified_diff()
                    .context_radius(2)
                    .header(
                        &format!("{} (in the API)", o.path),
                        &format!("{} (rendered)", o.path),
                    )
                    .to_string();
                out.push(change(ApiAction::Update, Some(diff)));
            }
            _ => out.push(change(ApiAction::Update, None)),
        }
    }
    (out, same)
}

/// One node's rendered files, units and steps against its facts, for the
/// selected phases.
fn decide<'a>(
    tree: &'a NodeTree,
    facts: Option<&'a NodeFacts>,
    selected: &dyn Fn(&str) -> bool,
) -> (work::Decided<'a>, Vec<FileChange>, usize) {
    let empty = NodeFacts::default();
    let f_facts = facts.unwrap_or(&empty);
    let mut changes = Vec::new();
    let mut unchanged = 0;
    let mut puts = Vec::new();
    let mut chmods = Vec::new();
    let mut restart: Vec<String> = Vec::new();
    let mut reload: Vec<String> = Vec::new();
    // Bootstrap files stay only until the kubelet has its certificate;
    // their removal step runs only from then on.
    let bootstrap = tree.bootstrap.as_ref();
    let gone =
        |path: &String| bootstrap.is_some_and(|b| f_facts.bootstrapped && b.files.contains(path));
    let removal = |step: &String| bootstrap.is_some_and(|b| &b.step == step);
    let rejoin = |step: &String| bootstrap.is_some_and(|b| &b.rejoin == step);
    for f in tree
        .files
        .values()
        .filter(|f| selected(&f.phase) && !gone(&f.path))
    {
        let Some(c) = file_change(f, f_facts.files.get(&f.path)) else {
            unchanged += 1;
            continue;
        };
        if c.action == FileAction::Chmod {
            chmods.push(f);
        } else {
            puts.push(f);
            for u in &f.restarts {
                if !restart.contains(u) {
                    restart.push(u.clone());
                }
            }
            for u in &f.reloads {
                if !reload.contains(u) {
                    reload.push(u.clone());
                }
            }
        }
        changes.push(c);
    }
    // A kubelet that joins again restarts as its bootstrap files would
    // make it, written or already there.
    if let Some(b) = bootstrap.filter(|_| f_facts.kubelet_rejoin) {
        let units = b
            .files
            .iter()
            .filter_map(|p| tree.files.get(p))
            .filter(|f| selected(&f.phase))
            .flat_map(|f| &f.restarts);
        for u in units {
            if !restart.contains(u) {
                restart.push(u.clone());
            }
        }
    }
    let units: Vec<&kubeforge_render::UnitInfo> =
        tree.units.iter().filter(|u| selected(&u.phase)).collect();
    let start: Vec<String> = units
        .iter()
        .filter(|u| {
            let state = f_facts.units.get(&u.name).copied().unwrap_or_default();
            !state.active || !state.enabled
        })
        .map(|u| u.name.clone())
        .collect();
    // Only units this node runs in the selected phases (a file may name
    // units of other roles); a unit started anew needs no restart or
    // reload; every list in the units' own order.
    let runs = |u: &String| units.iter().any(|x| &x.name == u);
    restart.retain(|u| runs(u) && !start.contains(u));
    reload.retain(|u| runs(u) && !start.contains(u) && !restart.contains(u));
    let order = |list: &mut Vec<String>| {
        list.sort_by_key(|u| units.iter().position(|x| &x.name == u));
    };
    order(&mut restart);
    order(&mut reload);
    // The removal step runs where the bootstrap files are, or are about
    // to be written.
    let written = puts
        .iter()
        .any(|f| bootstrap.is_some_and(|b| b.files.contains(&f.path)));
    let steps = tree
        .steps
        .iter()
        .filter(|s| selected(&s.phase))
        .filter(|s| {
            if let Some(file) = &s.written {
                puts.iter().any(|f| &f.path == file)
            } else if removal(&s.name) {
                written || !f_facts.steps_done.contains(&s.name)
            } else if rejoin(&s.name) {
                f_facts.kubelet_rejoin
            } else {
                !f_facts.steps_done.contains(&s.name)
            }
        })
        .collect();
    (
        work::Decided {
            tree,
            puts,
            chmods,
            steps,
            start,
            restart,
            reload,
        },
        changes,
        unchanged,
    )
}

/// How an update is shown: a line diff of a text file without secrets; a
/// summary of what changed in meaning for a certificate, a kubeconfig
/// (server and user) or a key ("(secret) changed"). Never key material,
/// nor the encoded bytes of a certificate.
fn update_shown(
    f: &kubeforge_render::RenderedFile,
    r: &RemoteFile,
) -> (Option<String>, Vec<String>) {
    if f.from_file.is_some() {
        return (None, Vec::new());
    }
    if cert::is_kubeconfig(&f.content) {
        let old = r.content.as_deref().map(String::from_utf8_lossy);
        return (None, cert::kubeconfig_changes(old.as_deref(), &f.content));
    }
    if f.secret {
        return (None, vec!["(secret) changed".into()]);
    }
    if cert::is_certificate_pem(&f.content) {
        return (
            None,
            cert::certificate_changes(r.content.as_deref(), &f.content),
        );
    }
    let diff = r
        .content
        .as_deref()
        .and_then(|old| unified_diff(&f.path, old, &f.content));
    (diff, Vec::new())
}

/// How a rendered file differs from what the node holds (`None`: not at
/// all).
fn file_change(
    f: &kubeforge_render::RenderedFile,
    remote: Option<&RemoteFile>,
) -> Option<FileChange> {
    let change = |action, old_mode: Option<u32>, (diff, summary)| FileChange {
        path: f.path.clone(),
        action,
        mode: octal(f.mode),
        old_mode: old_mode.map(octal),
        secret: f.secret,
        diff,
        summary,
    };
    match remote {
        None => Some(change(FileAction::Create, None, (None, Vec::new()))),
        Some(r) if r.sha256 != f.sha256 => Some(change(
            FileAction::Update,
            (r.mode != f.mode).then_some(r.mode),
            update_shown(f, r),
        )),
        Some(r) if r.mode != f.mode || r.owner != f.owner => {
            Some(change(FileAction::Chmod, Some(r.mode), (None, Vec::new())))
        }
        Some(_) => None,
    }
}

/// The facts of a cluster that holds exactly what `rendered` renders:
/// every file in place (with its text when it holds no secret), every
/// unit active and enabled, every step's check passing, every addon object
/// in the API as rendered and each node's record up to date. A plan
/// against them is empty; what-if plans and tests start from them.
pub fn converged_facts(cluster: &str, rendered: &Rendered) -> BTreeMap<String, NodeFacts> {
    let objects = || -> BTreeMap<String, LiveObject> {
        rendered
            .addons
            .iter()
            .flat_map(|a| &a.objects)
            .map(|o| {
                let live = LiveObject {
                    live: Some(o.body.clone()),
                    dry_run: Some(o.body.clone()),
                };
                (o.path.clone(), live)
            })
            .collect()
    };
    rendered
        .nodes
        .iter()
        .map(|n| {
            let files = n
                .files
                .values()
                .map(|f| {
                    let file = RemoteFile {
                        sha256: f.sha256.clone(),
                        mode: f.mode,
                        owner: f.owner.clone(),
                        content: (!f.secret).then(|| f.content.clone()),
                    };
                    (f.path.clone(), file)
                })
                .collect();
            let units = n
                .units
                .iter()
                .map(|u| {
                    let state = UnitFacts {
                        active: true,
                        enabled: true,
                    };
                    (u.name.clone(), state)
                })
                .collect();
            let facts = NodeFacts {
                files,
                units,
                steps_done: n.steps.iter().map(|s| s.name.clone()).collect(),
                api: (rendered.addon_node.as_ref() == Some(&n.name))
                    .then(|| ApiFacts::Objects(objects())),
                manifest: Some(Manifest::of(cluster, n, None).to_bytes()),
                ..NodeFacts::default()
            };
            (n.name.clone(), facts)
        })
        .collect()
}

/// Compares every node's rendered files with its facts, for the phases
/// named in `only` (every phase when it is empty), with the default
/// [`Options`] otherwise.
pub fn plan(
    cluster: &str,
    rendered: &Rendered,
    facts: &Facts,
    only: &[String],
) -> Result<Plan, PlanError> {
    let opts = Options {
        only: only.to_vec(),
        ..Options::default()
    };
    plan_with(cluster, rendered, facts, &opts)
}

/// Compares every node's rendered files with its facts: what changes on
/// each node, and the phases apply runs, with their strategies, batches
/// and gates. A plan that breaks the version skew policy is refused.
pub fn plan_with(
    cluster: &str,
    rendered: &Rendered,
    facts: &Facts,
    opts: &Options,
) -> Result<Plan, PlanError> {
    if opts.max_unavailable == 0 {
        return Err(PlanError::MaxUnavailable);
    }
    let only = opts.only.as_slice();
    let known: Vec<String> = rendered.phases.iter().map(|p| p.name.clone()).collect();
    if let Some(bad) = only.iter().find(|p| !known.contains(p)) {
        return Err(PlanError::UnknownPhase {
            name: bad.clone(),
            known,
        });
    }
    let selected = |p: &str| only.is_empty() || only.iter().any(|x| x == p);
    for tree in &rendered.nodes {
        if let Some(m) = tree.missing.iter().find(|m| selected(&m.phase)) {
            return Err(PlanError::MissingBinary {
                name: m.name.clone(),
                node: tree.name.clone(),
                phase: m.phase.clone(),
            });
        }
    }
    let api_phase = rendered
        .phases
        .iter()
        .find(|p| p.strategy == Strategy::Api && selected(&p.name));
    let mut nodes = Vec::new();
    let mut decided = Vec::new();
    let mut summary = Summary::default();
    let mut manifests = BTreeMap::new();
    let mut records: Vec<(&str, Option<&[u8]>)> = Vec::new();
    for tree in &rendered.nodes {
        let node_facts = match facts {
            Facts::Offline => None,
            Facts::Gathered(map) => map.get(&tree.name),
        };
        let (d, changes, unchanged) = decide(tree, node_facts, &selected);
        let old_bytes = node_facts.and_then(|f| f.manifest.as_deref());
        let old = old_bytes.and_then(|b| Manifest::parse(b).ok());
        let record = Manifest::of(cluster, tree, old.as_ref());
        records.push((tree.name.as_str(), old_bytes));
        manifests.insert(tree.name.clone(), record);
        let addon_node = api_phase.is_some() && rendered.addon_node.as_ref() == Some(&tree.name);
        let empty = NodeFacts::default();
        let f = node_facts.unwrap_or(&empty);
        let (api, api_unchanged) = if addon_node {
            plan_api(&rendered.addons, f.api.as_ref())
        } else {
            (Vec::new(), 0)
        };
        let (approve, refused): (Vec<PendingCsr>, Vec<PendingCsr>) = if addon_node {
            f.csrs.iter().cloned().partition(|c| c.refused.is_empty())
        } else {
            (Vec::new(), Vec::new())
        };
        let p = NodePlan {
            node: tree.name.clone(),
            address: tree.address.clone(),
            steps: d.steps.iter().map(|s| s.name.clone()).collect(),
            changes,
            unchanged,
            daemon_reload: d.puts.iter().any(|f| is_unit_file(&f.path)),
            start: d.start.clone(),
            restart: d.restart.clone(),
            reload: d.reload.clone(),
            api,
            api_unchanged,
            approve,
            refused,
        };
        add_to_summary(&mut summary, &p);
        nodes.push(p);
        decided.push(d);
    }
    let mut phases = Vec::new();
    for row in rendered.phases.iter().filter(|p| selected(&p.name)) {
        if row.strategy == Strategy::Api {
            let addon = nodes
                .iter()
                .find(|n| Some(&n.node) == rendered.addon_node.as_ref());
            let (changes, approve) = addon
                .map(|n| (n.api.as_slice(), n.approve.as_slice()))
                .unwrap_or_default();
            if let Some(api) = work::api_work(rendered, row.wait_for.as_deref(), changes, approve) {
                phases.push(PhasePlan {
                    phase: row.name.clone(),
                    strategy: row.strategy,
                    nodes: Vec::new(),
                    api: Some(api),
                    vip: None,
                    with: None,
                    batches: Vec::new(),
                    ops: Vec::new(),
                    lb_reload: Vec::new(),
                });
            }
            continue;
        }
        let mut works: Vec<NodeWork> = decided
            .iter()
            .map(|d| work::node_work(rendered, facts, d, &row.name, row.strategy))
            .filter(|w| !w.is_empty())
            .collect();
        if works.is_empty() {
            continue;
        }
        // New servers behind the load balancer start (and pass their
        // gates) before the others restart: a drained node put back writes
        // the load balancer's new configuration, the new servers in it.
        if row.strategy == Strategy::DrainFromLb {
            works.sort_by_key(|w| w.start.is_empty());
        }
        // Early only when nothing restarts or reloads, in this phase or in
        // those it would run beside (an upgrade keeps the order, and a
        // running load balancer takes a new apiserver once it is ready):
        // beside the first phase of this plan from the named one on.
        let rank = |name: &str| rendered.phases.iter().position(|p| p.name == name);
        let restarts_or_reloads = |nodes: &[NodeWork]| {
            nodes
                .iter()
                .any(|w| !w.restart.is_empty() || !w.reload.is_empty())
        };
        let early = row
            .early
            .as_deref()
            .filter(|_| !restarts_or_reloads(&works))
            .and_then(|e| {
                let from = rank(e)?;
                let beside: Vec<&PhasePlan> = phases
                    .iter()
                    .filter(|p: &&PhasePlan| rank(&p.phase).is_some_and(|r| r >= from))
                    .collect();
                if beside.iter().any(|p| restarts_or_reloads(&p.nodes)) {
                    return None;
                }
                beside.first().map(|p| p.phase.clone())
            });
        let strategy = work::resolve(row.strategy, &works);
        let lb_reload = match row.strategy {
            Strategy::DrainFromLb => work::lb_reloads(rendered, &works),
            _ => Vec::new(),
        };
        let batches = if strategy == Strategy::DrainNodes {
            work::batches(rendered, row.serial, &works, opts.max_unavailable)
        } else {
            Vec::new()
        };
        phases.push(PhasePlan {
            phase: row.name.clone(),
            strategy,
            nodes: works,
            api: None,
            vip: (row.gate == Some(PhaseGate::Vip))
                .then(|| rendered.vip.clone())
                .flatten(),
            with: early,
            batches,
            ops: Vec::new(),
            lb_reload,
        });
    }
    let versions = skew::check(
        rendered,
        facts,
        &decided,
        &selected,
        opts.allow_downgrade,
        opts.refuse_skew,
    )?;
    let healthy_before = healthy_before(rendered, facts, &decided);
    let cluster_gates = cluster_gates(rendered, &phases, &selected);
    // With every phase, each node's record is brought up to date; a plan
    // of some phases records only on the nodes it changes.
    let works = |n: &str| phases.iter().any(|p| p.nodes.iter().any(|w| w.node == n));
    let written: Vec<(&str, Option<&[u8]>, &Manifest)> = records
        .iter()
        .filter(|(n, _)| only.is_empty() || works(n))
        .filter_map(|(n, old)| Some((*n, *old, manifests.get(*n)?)))
        .collect();
    for (n, old, new) in &written {
        let Some(change) = manifest_change(*old, new) else {
            continue;
        };
        if let Some(np) = nodes.iter_mut().find(|p| p.node == *n) {
            if np.is_empty() {
                summary.nodes_changed += 1;
            }
            match change.action {
                FileAction::Create => summary.create += 1,
                _ => summary.update += 1,
            }
            np.changes.push(change);
        }
    }
    if let Some(p) = manifest::manifest_phase(&written) {
        phases.insert(0, p);
    }
    // Kept in the state directory: the records the nodes hold after this
    // plan.
    let kept: Vec<String> = records
        .iter()
        .filter(|(n, old)| old.is_some() || written.iter().any(|w| w.0 == *n))
        .map(|(n, _)| n.to_string())
        .collect();
    manifests.retain(|n, _| kept.contains(n));
    Ok(Plan {
        cluster: cluster.to_string(),
        offline: matches!(facts, Facts::Offline),
        nodes,
        phases,
        cluster_gates,
        versions,
        healthy_before,
        summary,
        manifests,
        removals: Vec::new(),
        sources: sources(rendered, facts),
    })
}

/// The record's line in a node's plan, when it changes.
fn manifest_change(old: Option<&[u8]>, new: &Manifest) -> Option<FileChange> {
    let bytes = new.to_bytes();
    let action = match old {
        Some(o) if o == bytes.as_slice() => return None,
        Some(_) => FileAction::Update,
        None => FileAction::Create,
    };
    Some(FileChange {
        path: MANIFEST_PATH.to_string(),
        action,
        mode: octal(0o600),
        old_mode: None,
        secret: false,
        diff: old.and_then(|o| unified_diff(MANIFEST_PATH, o, &bytes)),
        summary: Vec::new(),
    })
}

/// When the plan replaces the binary of a running unit (an upgrade): the
/// gates of every running or enabled unit of the `healthy_before_upgrade`
/// phases, and their VIP gate.
fn healthy_before(
    rendered: &Rendered,
    facts: &Facts,
    decided: &[work::Decided<'_>],
) -> Option<HealthyBefore> {
    let Facts::Gathered(map) = facts else {
        return None;
    };
    let upgrade = decided.iter().any(|d| {
        d.puts
            .iter()
            .any(|f| f.from_file.is_some() && f.restarts.iter().any(|u| d.restart.contains(u)))
    });
    if !upgrade {
        return None;
    }
    let rows: Vec<&kubeforge_render::PhaseRow> = rendered
        .phases
        .iter()
        .filter(|p| p.healthy_before_upgrade)
        .collect();
    let mut gates = Vec::new();
    for tree in &rendered.nodes {
        let Some(f) = map.get(&tree.name) else {
            continue;
        };
        // Running, or enabled and stopped (a failed unit): not a unit
        // that was never started (a new node).
        for u in &tree.units {
            let installed = f.units.get(&u.name).is_some_and(|s| s.active || s.enabled);
            if installed && rows.iter().any(|p| p.name == u.phase) {
                work::gates_of(rendered, tree, &u.name, &mut gates);
            }
        }
    }
    let vip = rows
        .iter()
        .any(|p| p.gate == Some(PhaseGate::Vip))
        .then(|| rendered.vip.clone())
        .flatten();
    Some(HealthyBefore { gates, vip })
}

fn add_to_summary(summary: &mut Summary, p: &NodePlan) {
    summary.nodes += 1;
    if !p.is_empty() {
        summary.nodes_changed += 1;
    }
    for c in &p.changes {
        match c.action {
            FileAction::Create => summary.create += 1,
            FileAction::Update | FileAction::Chmod => summary.update += 1,
        }
    }
    summary.unchanged += p.unchanged;
    summary.steps += p.steps.len();
    summary.start += p.start.len();
    summary.restart += p.restart.len();
    summary.reload += p.reload.len();
    summary.api_apply += p.api.len();
    summary.csr_approve += p.approve.len();
    summary.api_unchanged += p.api_unchanged;
}

/// The cluster gate runs after the last phase when a selected phase
/// carries it and the plan applies API objects or starts or restarts a
/// unit that registers a node.
fn cluster_gates(
    rendered: &Rendered,
    phases: &[PhasePlan],
    selected: &dyn Fn(&str) -> bool,
) -> Option<ClusterGates> {
    let phase = rendered
        .phases
        .iter()
        .find(|p| p.gate == Some(PhaseGate::Cluster) && selected(&p.name))?;
    let via = rendered.addon_node.clone()?;
    let objects = phases
        .iter()
        .filter_map(|p| p.api.as_ref())
        .any(|a| !a.objects.is_empty());
    let registers = phases.iter().flat_map(|p| &p.nodes).any(|w| {
        let tree = rendered.nodes.iter().find(|t| t.name == w.node);
        w.start
            .iter()
            .chain(&w.restart)
            .any(|u| tree.is_some_and(|t| t.units.iter().any(|x| &x.name == u && x.registers)))
    });
    if !(objects || registers) {
        return None;
    }
    let kubelets = rendered.kubelet_nodes();
    Some(ClusterGates {
        phase: phase.name.clone(),
        via,
        port: rendered.api_port,
        nodes: kubelets.iter().map(|(n, _)| n.to_string()).collect(),
        serving_certificates: if rendered.serving_csrs {
            kubelets.iter().map(|(n, a)| (n.to_string(), *a)).collect()
        } else {
            Vec::new()
        },
        deployments: work::deployments(rendered),
        exists: work::must_exist(),
    })
}
