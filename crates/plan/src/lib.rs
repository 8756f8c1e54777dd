//! Planning: the files each node must hold, compared with the facts
//! gathered from it, give an exact per-node list of changes: files to
//! create or update (with a diff for text files that hold no secret),
//! whether systemd must reload its units, and which units to start,
//! restart or reload. Pure: facts come in as data.

use kubeforge_render::{Addon, NodeTree, Rendered};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub cluster: String,
    pub offline: bool,
    pub nodes: Vec<NodePlan>,
    pub summary: Summary,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.nodes.iter().all(NodePlan::is_empty)
    }
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

fn plan_node(tree: &NodeTree, facts: Option<&NodeFacts>, addons: &[Addon]) -> NodePlan {
    let empty = NodeFacts::default();
    let facts = facts.unwrap_or(&empty);
    let mut changes = Vec::new();
    let mut unchanged = 0;
    let mut restart: Vec<String> = Vec::new();
    let mut reload: Vec<String> = Vec::new();
    let mut daemon_reload = false;
    for f in tree.files.values() {
        let change = match facts.files.get(&f.path) {
            None => Some(FileChange {
                path: f.path.clone(),
                action: FileAction::Create,
                mode: octal(f.mode),
                old_mode: None,
                secret: f.secret,
                diff: None,
            }),
            Some(remote) if remote.sha256 != f.sha256 => Some(FileChange {
                path: f.path.clone(),
                action: FileAction::Update,
                mode: octal(f.mode),
                old_mode: (remote.mode != f.mode).then(|| octal(remote.mode)),
                secret: f.secret,
                diff: if f.secret {
                    None
                } else {
                    remote
                        .content
                        .as_deref()
                        .and_then(|old| unified_diff(&f.path, old, &f.content))
                },
            }),
            Some(remote) if remote.mode != f.mode || remote.owner != f.owner => Some(FileChange {
                path: f.path.clone(),
                action: FileAction::Chmod,
                mode: octal(f.mode),
                old_mode: Some(octal(remote.mode)),
                secret: f.secret,
                diff: None,
            }),
            Some(_) => None,
        };
        match change {
            None => unchanged += 1,
            Some(c) => {
                if c.action != FileAction::Chmod {
                    if f.path.starts_with("/etc/systemd/system/") {
                        daemon_reload = true;
                    }
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
        }
    }
    let mut start = Vec::new();
    for unit in &tree.units {
        let state = facts.units.get(&unit.name).copied().unwrap_or_default();
        if !state.active || !state.enabled {
            start.push(unit.name.clone());
        }
    }
    // Only units this node runs (a file may name units of other roles).
    let runs = |u: &String| tree.units.iter().any(|x| &x.name == u);
    restart.retain(|u| runs(u));
    reload.retain(|u| runs(u));
    // A unit that is started anew needs no restart or reload.
    restart.retain(|u| !start.contains(u));
    reload.retain(|u| !start.contains(u) && !restart.contains(u));
    // Keep the units' own order (the apply phases) in every list.
    let order = |list: &mut Vec<String>| {
        list.sort_by_key(|u| tree.units.iter().position(|x| &x.name == u));
    };
    order(&mut restart);
    order(&mut reload);
    let steps = tree
        .steps
        .iter()
        .filter(|s| !facts.steps_done.contains(&s.name))
        .map(|s| s.name.clone())
        .collect();
    let (api, api_unchanged) = plan_api(addons, facts.api.as_ref());
    let (approve, refused): (Vec<PendingCsr>, Vec<PendingCsr>) = facts
        .csrs
        .iter()
        .cloned()
        .partition(|c| c.refused.is_empty());
    NodePlan {
        node: tree.name.clone(),
        address: tree.address.clone(),
        steps,
        changes,
        unchanged,
        daemon_reload,
        start,
        restart,
        reload,
        api,
        api_unchanged,
        approve,
        refused,
    }
}

/// Compares every node's rendered files with its facts.
pub fn plan(cluster: &str, rendered: &Rendered, facts: &Facts) -> Plan {
    let mut nodes = Vec::new();
    let mut summary = Summary::default();
    for tree in &rendered.nodes {
        let node_facts = match facts {
            Facts::Offline => None,
            Facts::Gathered(map) => map.get(&tree.name),
        };
        let addons: &[Addon] = if rendered.addon_node.as_ref() == Some(&tree.name) {
            &rendered.addons
        } else {
            &[]
        };
        let p = plan_node(tree, node_facts, addons);
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
        nodes.push(p);
    }
    Plan {
        cluster: cluster.to_string(),
        offline: matches!(facts, Facts::Offline),
        nodes,
        summary,
    }
}

/// The plan as text for a terminal or a log; never contains key material.
pub fn to_text(plan: &Plan) -> String {
    let mut s = String::new();
    if plan.offline {
        let _ = writeln!(
            s,
            "Offline plan for cluster \"{}\": every node is assumed bare.\n",
            plan.cluster
        );
    }
    for n in &plan.nodes {
        for c in &n.refused {
            let _ = writeln!(
                s,
                "note: certificate signing request {} is not approved: {}",
                c.name, c.refused
            );
        }
        if n.is_empty() {
            let _ = writeln!(s, "{} ({}): no changes", n.node, n.address);
            continue;
        }
        let _ = writeln!(s, "{} ({}):", n.node, n.address);
        for step in &n.steps {
            let _ = writeln!(s, "  run: {step}");
        }
        for c in &n.changes {
            let sign = match c.action {
                FileAction::Create => '+',
                FileAction::Update => '~',
                FileAction::Chmod => 'm',
            };
            let mut note = c.mode.clone();
            if let Some(old) = &c.old_mode {
                note = format!("{old} -> {note}");
            }
            if c.secret {
                note.push_str(", secret");
            }
            let _ = writeln!(s, "  {sign} {} ({note})", c.path);
            if let Some(diff) = &c.diff {
                for line in diff.lines() {
                    let _ = writeln!(s, "      {line}");
                }
            }
        }
        if n.daemon_reload {
            let _ = writeln!(s, "  systemctl daemon-reload");
        }
        if !n.start.is_empty() {
            let _ = writeln!(s, "  enable and start: {}", n.start.join(", "));
        }
        if !n.restart.is_empty() {
            let _ = writeln!(s, "  restart: {}", n.restart.join(", "));
        }
        if !n.reload.is_empty() {
            let _ = writeln!(s, "  reload: {}", n.reload.join(", "));
        }
        for c in &n.approve {
            let _ = writeln!(
                s,
                "  api approve: certificate signing request {} (serving certificate of {})",
                c.name,
                c.node.as_deref().unwrap_or("?")
            );
        }
        for c in &n.api {
            let what = match c.action {
                ApiAction::Create => "create",
                ApiAction::Update => "update",
                ApiAction::Apply => "apply",
            };
            let _ = writeln!(s, "  api {what}: {}", c.object);
            if let Some(diff) = &c.diff {
                for line in diff.lines() {
                    let _ = writeln!(s, "      {line}");
                }
            }
        }
        let _ = writeln!(s);
    }
    let m = &plan.summary;
    if plan.is_empty() {
        let _ = writeln!(
            s,
            "No changes: {} nodes, {} files and {} API objects up to date.",
            m.nodes, m.unchanged, m.api_unchanged
        );
    } else {
        let _ = writeln!(
            s,
            "Plan: {} of {} nodes change; {} steps to run; {} files to create, {} to update, {} unchanged; {} units to start, {} to restart, {} to reload; {} API objects to apply, {} unchanged.",
            m.nodes_changed, m.nodes, m.steps, m.create, m.update, m.unchanged, m.start, m.restart, m.reload, m.api_apply, m.api_unchanged
        );
        if m.csr_approve > 0 {
            s.pop();
            let _ = writeln!(
                s,
                " {} serving certificate requests to approve.",
                m.csr_approve
            );
        }
    }
    s
}
