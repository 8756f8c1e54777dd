//! The executable part of a plan: the changes of every node grouped into
//! the table's phases, in order, each with how its nodes are walked, the
//! gates that must pass, and the load-balancer edits around a rolling
//! restart. Apply executes it as it is; nothing is looked up again.

use crate::{ApiChange, PendingCsr};
use kubeforge_render::{Gate, GateScope, NodeTree, Rendered, Stage, Strategy, Vip};
use serde::{Serialize, Serializer};
use std::path::PathBuf;

fn octal<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{mode:04o}"))
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Bytes(Vec<u8>),
    /// A local file (a bundle's binary or image archive), read when it is
    /// sent.
    File(PathBuf),
}

/// A file to write (atomically) on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Put {
    pub path: String,
    #[serde(serialize_with = "octal")]
    pub mode: u32,
    pub owner: String,
    pub sha256: String,
    /// Holds secrets: it travels only over the control machine's
    /// connection to the node, never from node to node.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
    #[serde(skip)]
    pub content: Content,
}

/// A file whose content is right but whose mode or owner is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chmod {
    pub path: String,
    #[serde(serialize_with = "octal")]
    pub mode: u32,
    pub owner: String,
}

/// A preparation step to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepWork {
    pub name: String,
    pub stage: Stage,
    #[serde(skip)]
    pub script: String,
}

/// A gate to pass on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateRun {
    pub node: String,
    pub gate: Gate,
}

/// A load-balancer node's `drain` file, written with a node taken out
/// before that node restarts and written back after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LbEdit {
    /// The LB node.
    pub node: String,
    pub path: String,
    #[serde(serialize_with = "octal")]
    pub mode: u32,
    pub owner: String,
    /// Units reloaded after each write (nginx).
    pub reload: Vec<String>,
    #[serde(skip)]
    pub drained: Vec<u8>,
    #[serde(skip)]
    pub restored: Vec<u8>,
}

/// What one node does in one phase, in this order: units stopped, steps
/// that run before the files, files, modes, steps that run after the
/// files, `daemon-reload`, units started, restarted and reloaded, steps
/// that run after the units; then its gates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeWork {
    pub node: String,
    /// Units to stop first (operations such as a restore).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepWork>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub puts: Vec<Put>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chmods: Vec<Chmod>,
    pub daemon_reload: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub start: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restart: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reload: Vec<String>,
    /// After its units started or restarted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateRun>,
    /// Around its restarts (strategy drain-from-lb).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drain: Vec<LbEdit>,
    /// Around its work (strategy drain-nodes): cordoned and drained
    /// before, Ready in the API and uncordoned after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cordon: Option<Cordon>,
}

/// A node taken out of scheduling around its work: cordoned and its pods
/// evicted before (PodDisruptionBudgets respected), then, after its units
/// and gates, Ready in the API and uncordoned. The API is reached through
/// `via`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cordon {
    pub via: String,
    /// The API server's port on `via`.
    pub port: u16,
    /// Its kubelet restarts: Ready only counts from a status the restarted
    /// kubelet reported (its Ready condition's heartbeat not older than
    /// the restart, by the node's clock).
    pub fresh_status: bool,
}

impl NodeWork {
    pub fn new(node: &str) -> NodeWork {
        NodeWork {
            node: node.to_string(),
            stop: Vec::new(),
            steps: Vec::new(),
            puts: Vec::new(),
            chmods: Vec::new(),
            daemon_reload: false,
            start: Vec::new(),
            restart: Vec::new(),
            reload: Vec::new(),
            gates: Vec::new(),
            drain: Vec::new(),
            cordon: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.stop.is_empty()
            && self.steps.is_empty()
            && self.puts.is_empty()
            && self.chmods.is_empty()
            && !self.daemon_reload
            && self.start.is_empty()
            && self.restart.is_empty()
            && self.reload.is_empty()
    }

    /// How much there is to do, roughly: one for each file, step and
    /// unit touched, and a unit's gate. A node's order among others whose
    /// work runs side by side (the most first).
    pub fn size(&self) -> usize {
        self.stop.len()
            + self.steps.len()
            + self.puts.len()
            + self.chmods.len()
            + self.start.len()
            + self.restart.len()
            + self.reload.len()
            + self.gates.len()
    }
}

/// An addon object to apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiApply {
    /// `Kind namespace/name`.
    pub object: String,
    pub path: String,
    #[serde(skip)]
    pub body: String,
}

/// The work of an `api` phase, through one control-plane node's API
/// server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiWork {
    pub via: String,
    /// The API server's port on `via`.
    pub port: u16,
    /// Must pass on `via` before anything is sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<Gate>,
    pub objects: Vec<ApiApply>,
    pub approve: Vec<PendingCsr>,
    /// The kubelet nodes (name, address) the approvals are judged against
    /// again before they are made.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kubelets: Vec<(String, std::net::Ipv4Addr)>,
}

/// One phase of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhasePlan {
    pub phase: String,
    /// How this plan walks the phase's nodes (`together` only when a unit
    /// starts for the first time; otherwise one at a time).
    pub strategy: Strategy,
    pub nodes: Vec<NodeWork>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiWork>,
    /// The VIP gate, after the phase's nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip: Option<Vip>,
    /// The earlier phase this one runs beside (its units only start):
    /// from that phase on, the two run at the same time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub with: Option<String>,
    /// Strategy drain-nodes: the nodes in the groups they are worked on,
    /// in order; the nodes of a group at the same time, the next group
    /// once every node of the one before is done.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub batches: Vec<Vec<String>>,
    /// Done through the cluster's APIs first, in order, before the
    /// phase's nodes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<ClusterOp>,
    /// Strategy drain-from-lb, when a unit starts for the first time:
    /// after the phase's nodes passed their gates, the load balancers in
    /// front of them reload, so that they forget the connections refused
    /// while the units were starting (nginx takes a server out for
    /// `fail_timeout` after them, and each of its workers on its own).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lb_reload: Vec<LbReload>,
}

/// A load-balancer node and what it reloads ([`PhasePlan::lb_reload`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LbReload {
    pub node: String,
    /// Units reloaded if they run (nginx); one not running yet starts
    /// with nothing to forget.
    pub units: Vec<String>,
}

/// The etcd CA and a client certificate and key, as the etcd nodes hold
/// them (their paths there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EtcdTls {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// Work on the cluster as a whole, through the Kubernetes API (on a
/// control-plane node) or etcd's (on a member).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum ClusterOp {
    /// Cordon `node`, evict its pods (PodDisruptionBudgets respected),
    /// wait until they are gone, through `via`'s API server.
    Drain {
        node: String,
        via: String,
        port: u16,
        timeout_secs: u64,
    },
    /// Cordon `node` alone (no evictions: its kubelet cannot be reached
    /// to confirm them), through `via`'s API server.
    Cordon {
        node: String,
        via: String,
        port: u16,
    },
    /// Delete the Node object of `node`.
    DeleteNode {
        node: String,
        via: String,
        port: u16,
    },
    /// Add `member` (not started yet) to the running etcd cluster through
    /// the first healthy member of `via`, once every member is healthy and
    /// the cluster keeps its quorum with the new one not yet started; then
    /// `member`'s etcd is told to join an existing cluster
    /// (ETCD_INITIAL_CLUSTER_STATE=existing, until the node reboots).
    EtcdAdd {
        member: String,
        peer_url: String,
        via: Vec<String>,
        tls: EtcdTls,
    },
    /// Remove `member` from the etcd cluster through the first healthy
    /// member of `via`, once the others keep the quorum without it.
    EtcdRemove {
        member: String,
        peer_url: String,
        via: Vec<String>,
        tls: EtcdTls,
    },
}

impl ClusterOp {
    /// One line for plans and progress.
    pub fn describe(&self) -> String {
        match self {
            ClusterOp::Drain {
                node,
                via,
                timeout_secs,
                ..
            } => format!(
                "drain {node}: cordon, evict its pods (PodDisruptionBudgets respected), wait until they are gone, at most {timeout_secs} s (through {via}'s API)"
            ),
            ClusterOp::Cordon { node, via, .. } => format!(
                "cordon {node}, no evictions: it is unreachable (through {via}'s API)"
            ),
            ClusterOp::DeleteNode { node, via, .. } => {
                format!("delete Node {node} from the API (through {via})")
            }
            ClusterOp::EtcdAdd {
                member, peer_url, via, ..
            } => format!(
                "etcd member add {member} ({peer_url}) through a healthy member ({}), once every member is healthy; then it starts joining the running cluster",
                via.join(" or ")
            ),
            ClusterOp::EtcdRemove { member, via, .. } => format!(
                "etcd member remove {member} through a healthy member ({}), once the others keep the quorum without it",
                via.join(" or ")
            ),
        }
    }
}

/// An addon Deployment that must become available.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deployment {
    pub object: String,
    pub path: String,
    /// Its pods, as an API path with a label selector.
    pub pods: String,
}

/// The cluster gate, after the last phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterGates {
    /// The phase that carries it (for progress).
    pub phase: String,
    /// The control-plane node the API is read through.
    pub via: String,
    /// The API server's port on `via`.
    pub port: u16,
    /// Every kubelet node, which must be Ready in the API.
    pub nodes: Vec<String>,
    /// Kubelets ask for serving certificates that kubeforge approves
    /// (name, address of each kubelet node).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub serving_certificates: Vec<(String, std::net::Ipv4Addr)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<Deployment>,
    /// Objects the controllers create that must exist before workloads can
    /// run (a pod is refused while its namespace has no `default`
    /// ServiceAccount).
    pub exists: Vec<MustExist>,
}

/// An API object the cluster gate waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MustExist {
    /// For messages: `ServiceAccount default/default`.
    pub what: String,
    /// Its API path.
    pub path: String,
}

/// The objects every cluster gate waits for.
pub fn must_exist() -> Vec<MustExist> {
    vec![MustExist {
        what: "ServiceAccount default/default".into(),
        path: "/api/v1/namespaces/default/serviceaccounts/default".into(),
    }]
}

/// What the planner decided for one node, before it is split into phases.
pub(crate) struct Decided<'a> {
    pub tree: &'a NodeTree,
    /// Files to write or chmod, with the rendered file.
    pub puts: Vec<&'a kubeforge_render::RenderedFile>,
    pub chmods: Vec<&'a kubeforge_render::RenderedFile>,
    pub steps: Vec<&'a kubeforge_render::Step>,
    pub start: Vec<String>,
    pub restart: Vec<String>,
    pub reload: Vec<String>,
}

fn unit_phase<'t>(tree: &'t NodeTree, unit: &str) -> Option<&'t str> {
    tree.units
        .iter()
        .find(|u| u.name == unit)
        .map(|u| u.phase.as_str())
}

/// The gates after `unit` started or restarted on `node`: its own, or
/// with scope `all`, that of every node that runs it.
pub(crate) fn gates_of(rendered: &Rendered, node: &NodeTree, unit: &str, out: &mut Vec<GateRun>) {
    let Some(gate) = node
        .units
        .iter()
        .find(|u| u.name == unit)
        .and_then(|u| u.gate.as_ref())
    else {
        return;
    };
    let mut push = |node: &str, gate: &Gate| {
        let run = GateRun {
            node: node.to_string(),
            gate: gate.clone(),
        };
        if !out.contains(&run) {
            out.push(run);
        }
    };
    match gate.scope {
        GateScope::Node => push(&node.name, gate),
        GateScope::All => {
            for tree in &rendered.nodes {
                if let Some(g) = tree
                    .units
                    .iter()
                    .find(|u| u.name == unit)
                    .and_then(|u| u.gate.as_ref())
                {
                    push(&tree.name, g);
                }
            }
        }
    }
}

/// A node's work in `phase`.
pub(crate) fn node_work(
    rendered: &Rendered,
    facts: &crate::Facts,
    d: &Decided<'_>,
    phase: &str,
    strategy: Strategy,
) -> NodeWork {
    let tree = d.tree;
    let mut w = NodeWork::new(&tree.name);
    w.steps = d
        .steps
        .iter()
        .filter(|s| s.phase == phase)
        .map(|s| StepWork {
            name: s.name.clone(),
            stage: s.stage,
            script: s.run.clone(),
        })
        .collect();
    for f in d.puts.iter().filter(|f| f.phase == phase) {
        w.puts.push(Put {
            path: f.path.clone(),
            mode: f.mode,
            owner: f.owner.clone(),
            sha256: f.sha256.clone(),
            secret: f.secret,
            content: match &f.from_file {
                Some(p) => Content::File(p.clone()),
                None => Content::Bytes(f.content.clone()),
            },
        });
    }
    w.chmods = d
        .chmods
        .iter()
        .filter(|f| f.phase == phase)
        .map(|f| Chmod {
            path: f.path.clone(),
            mode: f.mode,
            owner: f.owner.clone(),
        })
        .collect();
    w.daemon_reload = w.puts.iter().any(|p| crate::is_unit_file(&p.path));
    let here = |u: &&String| unit_phase(tree, u) == Some(phase);
    w.start = d.start.iter().filter(here).cloned().collect();
    w.restart = d.restart.iter().filter(here).cloned().collect();
    w.reload = d.reload.iter().filter(here).cloned().collect();
    for u in w.start.iter().chain(&w.restart) {
        gates_of(rendered, tree, u, &mut w.gates);
    }
    if strategy == Strategy::DrainFromLb && !w.restart.is_empty() {
        w.drain = lb_edits(rendered, facts, &tree.name);
    }
    if strategy == Strategy::DrainNodes {
        // The binaries this phase replaces: what an upgrade restarts.
        let replaced: Vec<&String> = d
            .puts
            .iter()
            .filter(|f| f.phase == phase && f.is_binary())
            .flat_map(|f| &f.restarts)
            .collect();
        w.cordon = cordon(rendered, tree, &w.restart, &replaced);
    }
    w
}

/// A node where a `drain` unit restarts on a new binary (an upgrade) is
/// cordoned and drained around its work (through the addon node's API).
/// A restart for new configuration or certificates leaves the pods where
/// they are: the kubelet and containerd restart without stopping them.
fn cordon(
    rendered: &Rendered,
    tree: &NodeTree,
    restart: &[String],
    replaced: &[&String],
) -> Option<Cordon> {
    let unit = |name: &String| tree.units.iter().find(|u| &u.name == name);
    if !restart
        .iter()
        .filter_map(unit)
        .any(|u| u.drain && replaced.contains(&&u.name))
    {
        return None;
    }
    Some(Cordon {
        via: rendered.addon_node.clone()?,
        port: rendered.api_port,
        fresh_status: restart.iter().filter_map(unit).any(|u| u.registers),
    })
}

/// The groups of a drain-nodes phase: the nodes where nothing restarts
/// all together first; then the nodes `serial` selects, one at a time;
/// then the others, `max_unavailable` at a time. Nodes keep the table's
/// (inventory) order within each part.
pub(crate) fn batches(
    rendered: &Rendered,
    serial: Option<kubeforge_inventory::Selector>,
    nodes: &[NodeWork],
    max_unavailable: usize,
) -> Vec<Vec<String>> {
    let roles = |n: &str| {
        rendered
            .nodes
            .iter()
            .find(|t| t.name == n)
            .map(|t| t.roles.as_slice())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    let quiet: Vec<String> = nodes
        .iter()
        .filter(|w| w.restart.is_empty())
        .map(|w| w.node.clone())
        .collect();
    if !quiet.is_empty() {
        out.push(quiet);
    }
    let rolling: Vec<&NodeWork> = nodes.iter().filter(|w| !w.restart.is_empty()).collect();
    let one_by_one = |w: &&&NodeWork| serial.is_some_and(|s| s.matches_roles(roles(&w.node)));
    for w in rolling.iter().filter(one_by_one) {
        out.push(vec![w.node.clone()]);
    }
    let rest: Vec<String> = rolling
        .iter()
        .filter(|w| !one_by_one(w))
        .map(|w| w.node.clone())
        .collect();
    for chunk in rest.chunks(max_unavailable.max(1)) {
        out.push(chunk.to_vec());
    }
    out
}

/// The load balancers in front of the nodes of a drain-from-lb phase
/// whose units start for the first time ([`PhasePlan::lb_reload`]).
pub(crate) fn lb_reloads(rendered: &Rendered, nodes: &[NodeWork]) -> Vec<LbReload> {
    let mut out: Vec<LbReload> = Vec::new();
    let new = nodes.iter().filter(|w| !w.start.is_empty());
    for d in new.flat_map(|w| rendered.drains.get(&w.node).into_iter().flatten()) {
        match out.iter_mut().find(|r| r.node == d.lb) {
            Some(r) => {
                for u in &d.file.reloads {
                    if !r.units.contains(u) {
                        r.units.push(u.clone());
                    }
                }
            }
            None => out.push(LbReload {
                node: d.lb.clone(),
                units: d.file.reloads.clone(),
            }),
        }
    }
    out
}

/// The edits that take `node` out of every load balancer whose units run
/// (a stopped nginx needs no draining; it gets the rendered file later).
fn lb_edits(rendered: &Rendered, facts: &crate::Facts, node: &str) -> Vec<LbEdit> {
    let Some(drains) = rendered.drains.get(node) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for d in drains {
        let Some(lb) = rendered.nodes.iter().find(|t| t.name == d.lb) else {
            continue;
        };
        let Some(normal) = lb.files.get(&d.file.path) else {
            continue;
        };
        let running = match facts {
            crate::Facts::Offline => false,
            crate::Facts::Gathered(map) => map.get(&d.lb).is_some_and(|f| {
                d.file
                    .reloads
                    .iter()
                    .all(|u| f.units.get(u).is_some_and(|s| s.active))
            }),
        };
        if !running {
            continue;
        }
        out.push(LbEdit {
            node: d.lb.clone(),
            path: d.file.path.clone(),
            mode: d.file.mode,
            owner: d.file.owner.clone(),
            reload: d.file.reloads.clone(),
            drained: d.file.content.clone(),
            restored: normal.content.clone(),
        });
    }
    out
}

/// The strategy a phase runs with in this plan: `together` only when one
/// of its units starts for the first time (else one at a time); with
/// `drain-from-lb` or `drain-nodes`, when nothing restarts (a first
/// start), every node at once.
pub(crate) fn resolve(strategy: Strategy, nodes: &[NodeWork]) -> Strategy {
    match strategy {
        Strategy::Together if !nodes.iter().any(|w| !w.start.is_empty()) => Strategy::OneAtATime,
        Strategy::DrainFromLb if nodes.iter().all(|w| w.restart.is_empty()) => Strategy::Parallel,
        // Node by node only for an upgrade (a node to cordon); new
        // configuration or certificates restart every node's agents at
        // once, as a first start does.
        Strategy::DrainNodes if nodes.iter().all(|w| w.cordon.is_none()) => Strategy::Parallel,
        s => s,
    }
}

/// The api phase's work through the addon node, from its plan.
pub(crate) fn api_work(
    rendered: &Rendered,
    wait_for: Option<&str>,
    changes: &[ApiChange],
    approve: &[PendingCsr],
) -> Option<ApiWork> {
    let via = rendered.addon_node.clone()?;
    if changes.is_empty() && approve.is_empty() {
        return None;
    }
    let objects: Vec<&kubeforge_render::ApiObject> =
        rendered.addons.iter().flat_map(|a| &a.objects).collect();
    let ready = rendered
        .nodes
        .iter()
        .find(|t| t.name == via)
        .and_then(|t| t.units.iter().find(|u| Some(u.name.as_str()) == wait_for))
        .and_then(|u| u.gate.clone());
    Some(ApiWork {
        port: rendered.api_port,
        ready,
        objects: changes
            .iter()
            .filter_map(|c| {
                let o = objects.iter().find(|o| o.path == c.path)?;
                Some(ApiApply {
                    object: c.object.clone(),
                    path: o.path.clone(),
                    body: o.body.clone(),
                })
            })
            .collect(),
        approve: approve.to_vec(),
        kubelets: if approve.is_empty() {
            Vec::new()
        } else {
            rendered
                .kubelet_nodes()
                .into_iter()
                .map(|(n, a)| (n.to_string(), a))
                .collect()
        },
        via,
    })
}

/// The addon Deployments, each with the API path of its pods.
pub(crate) fn deployments(rendered: &Rendered) -> Vec<Deployment> {
    rendered
        .addons
        .iter()
        .flat_map(|a| &a.objects)
        .filter(|o| o.kind == "Deployment")
        .map(|o| {
            let body: serde_json::Value = serde_json::from_str(&o.body).unwrap_or_default();
            let selector = body
                .pointer("/spec/selector/matchLabels")
                .and_then(serde_json::Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}%3D{}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let ns = o.namespace.clone().unwrap_or_default();
            Deployment {
                object: o.display(),
                path: o.path.clone(),
                pods: format!("/api/v1/namespaces/{ns}/pods?labelSelector={selector}"),
            }
        })
        .collect()
}
