//! Removing nodes: a node whose record ([`Manifest`]) is in the state
//! directory but that the inventory no longer names. Its removal is added
//! to the plan of the nodes that stay, as phases of the same engine:
//!
//! 1. `drain` (first): cordon it and evict its pods through a remaining
//!    control-plane node's API (PodDisruptionBudgets respected, at most
//!    the drain timeout);
//! 2. the plan of the remaining nodes (their /etc/hosts, pod routes, load
//!    balancer upstreams and API server flags lose it);
//! 3. `remove`: its etcd member removed through a healthy member (when it
//!    was one), then on the node: its units stopped and disabled, the
//!    files and binaries its record lists removed;
//! 4. `forget`: its Node object deleted from the API.
//!
//! A node named in [`PruneOptions::unreachable`] (dead: powered off, its
//! disk gone) is never contacted: it is cordoned instead of drained (its
//! kubelet would never confirm an eviction), its etcd member is removed
//! through a healthy member as any other, its teardown is skipped, and its
//! Node object is deleted (the cluster garbage-collects its pods).
//!
//! Refused before anything is touched: the last control-plane node, more
//! than one etcd member at a time, the last etcd member, an even member
//! count left without `force`, and an unreachable node that is not being
//! removed (named in the inventory, or without a record).

use crate::manifest::{Manifest, MANIFEST_PATH};
use crate::work::{ClusterOp, EtcdTls, NodeWork, PhasePlan, StepWork};
use crate::Plan;
use kubeforge_render::{Rendered, Stage, Strategy};
use serde::Serialize;

/// The phase that drains the nodes to remove, before any other.
pub const DRAIN_PHASE: &str = "drain";
/// The phase that removes their etcd members, units and files.
pub const REMOVE_PHASE: &str = "remove";
/// The phase that deletes their Node objects.
pub const FORGET_PHASE: &str = "forget";
/// The phase of `kubeforge reset`.
pub const RESET_PHASE: &str = "reset";

/// The etcd client certificate the operations use, as every member holds
/// it.
pub const ETCD_TLS: [&str; 3] = [
    "/etc/kubernetes/pki/etcd/ca.crt",
    "/etc/kubernetes/pki/etcd/healthcheck-client.crt",
    "/etc/kubernetes/pki/etcd/healthcheck-client.key",
];

/// How nodes are removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneOptions {
    /// At most this long for a drain, in seconds.
    pub drain_timeout_secs: u64,
    /// An even number of etcd members left is accepted.
    pub force: bool,
    /// Nodes being removed that cannot be reached (dead): never
    /// contacted, not drained, not torn down.
    pub unreachable: Vec<String>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            drain_timeout_secs: 300,
            force: false,
            unreachable: Vec::new(),
        }
    }
}

impl PruneOptions {
    /// Whether `node` is one of [`PruneOptions::unreachable`].
    pub fn is_unreachable(&self, node: &str) -> bool {
        self.unreachable.iter().any(|n| n == node)
    }
}

/// A node the plan removes, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Removal {
    pub node: String,
    pub address: String,
    pub roles: Vec<String>,
    pub why: String,
    /// Units stopped and disabled, in this order.
    pub units: Vec<String>,
    pub files: usize,
    pub binaries: usize,
    /// Its etcd member is removed first.
    pub etcd_member: bool,
    /// It is drained and its Node object deleted.
    pub kubelet: bool,
    /// It cannot be reached: cordoned instead of drained, not torn down
    /// (its units and files stay on it as they are).
    pub unreachable: bool,
}

/// Why a removal is refused (nothing touched).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}; nothing was changed\n  help: {help}")]
pub struct Refused {
    pub what: String,
    pub help: String,
}

/// The nodes of `known` (records from the state directory) that the
/// inventory no longer names, sorted by name.
pub fn candidates<'a>(rendered: &Rendered, known: &'a [Manifest]) -> Vec<&'a Manifest> {
    let mut out: Vec<&Manifest> = known
        .iter()
        .filter(|m| !rendered.nodes.iter().any(|t| t.name == m.node))
        .collect();
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

/// Every refusal of removing `gone` from the cluster `rendered` describes
/// (what stays).
pub fn check(rendered: &Rendered, gone: &[&Manifest], opts: &PruneOptions) -> Vec<Refused> {
    let mut out = Vec::new();
    for n in &opts.unreachable {
        if rendered.nodes.iter().any(|t| &t.name == n) {
            out.push(Refused {
                what: format!(
                    "--unreachable {n}: the inventory names {n}; only a node being removed can be left unreachable"
                ),
                help: format!(
                    "take {n} out of the inventory to remove it from the cluster, or leave out --unreachable {n}"
                ),
            });
        } else if !gone.iter().any(|m| &m.node == n) {
            out.push(Refused {
                what: format!(
                    "--unreachable {n}: the state directory has no record of {n} (nodes/{n}.json), so there is nothing of it to remove"
                ),
                help: "name only nodes that `kubeforge plan` lists as \"remove from the cluster\"".into(),
            });
        }
    }
    let has =
        |t: &kubeforge_render::NodeTree, role: &str| t.roles.iter().any(|r| r.as_str() == role);
    let cps = rendered
        .nodes
        .iter()
        .filter(|t| has(t, "control-plane"))
        .count();
    if cps == 0 && gone.iter().any(|m| m.has_role("control-plane")) {
        out.push(Refused {
            what: "removing the last control-plane node is refused".into(),
            help: "keep one control-plane node in the inventory; `kubeforge reset` takes a whole cluster down".into(),
        });
    }
    let members: Vec<&str> = gone
        .iter()
        .filter(|m| m.runs("etcd"))
        .map(|m| m.node.as_str())
        .collect();
    let left = rendered.nodes.iter().filter(|t| has(t, "etcd")).count();
    if members.len() > 1 {
        out.push(Refused {
            what: format!(
                "removing {} etcd members at once ({}) is refused: one member at a time keeps the quorum",
                members.len(),
                members.join(", ")
            ),
            help: format!(
                "take one of them out of the inventory, apply with --prune, then the next (keep {} in the inventory for now)",
                members[1..].join(", ")
            ),
        });
    } else if let Some(m) = members.first() {
        if left == 0 {
            out.push(Refused {
                what: format!("removing {m}, the last etcd member, is refused"),
                help: "keep one etcd member in the inventory".into(),
            });
        } else if left.is_multiple_of(2) && !opts.force && opts.is_unreachable(m) {
            out.push(Refused {
                what: format!(
                    "removing {m} leaves {left} etcd members, which tolerate no more failures than {}; {m} is unreachable, so its member is lost already: the cluster runs on {left} of its {} members now",
                    left - 1,
                    left + 1
                ),
                help: format!(
                    "pass --force to remove the lost member (the {left} left tolerate as many failures as the cluster does now), then add a member; or bring {m} back and remove it without --unreachable"
                ),
            });
        } else if left.is_multiple_of(2) && !opts.force {
            out.push(Refused {
                what: format!(
                    "removing {m} leaves {left} etcd members, which tolerate no more failures than {}",
                    left - 1
                ),
                help: "remove another etcd node after it, or add one, or pass --force to accept an even member count".into(),
            });
        }
    }
    out
}

/// Members that start for the first time (etcd never enabled on the node)
/// while other members run join the running cluster: one at a time, each added through a healthy member
/// first ([`ClusterOp::EtcdAdd`]), its etcd phase walked one node at a
/// time behind the member-count gate. Refused: more than one new member at
/// once, and an even member count without `force`.
pub fn etcd_joins(
    plan: &mut Plan,
    rendered: &Rendered,
    facts: &crate::Facts,
    opts: &PruneOptions,
) -> Result<(), Vec<Refused>> {
    let crate::Facts::Gathered(facts) = facts else {
        return Ok(());
    };
    let has =
        |t: &kubeforge_render::NodeTree, role: &str| t.roles.iter().any(|r| r.as_str() == role);
    let members: Vec<&kubeforge_render::NodeTree> =
        rendered.nodes.iter().filter(|t| has(t, "etcd")).collect();
    let running = |n: &str| {
        facts
            .get(n)
            .and_then(|f| f.units.get("etcd"))
            .is_some_and(|u| u.active)
    };
    if !members.iter().any(|t| running(&t.name)) {
        // A new cluster: its members start together.
        return Ok(());
    }
    let Some(phase) = plan.phases.iter_mut().find(|p| p.phase == "etcd") else {
        return Ok(());
    };
    // Never enabled there: a new member (a member that was stopped starts
    // again as it always did).
    let new = |n: &str| {
        !facts
            .get(n)
            .and_then(|f| f.units.get("etcd"))
            .is_some_and(|u| u.active || u.enabled)
    };
    let joining: Vec<&kubeforge_render::NodeTree> = members
        .iter()
        .copied()
        .filter(|t| {
            new(&t.name)
                && phase
                    .nodes
                    .iter()
                    .any(|w| w.node == t.name && w.start.iter().any(|u| u == "etcd"))
        })
        .collect();
    if joining.is_empty() {
        return Ok(());
    }
    let mut refused = Vec::new();
    let names: Vec<&str> = joining.iter().map(|t| t.name.as_str()).collect();
    if joining.len() > 1 {
        refused.push(Refused {
            what: format!(
                "adding {} etcd members at once to the running cluster ({}) is refused: one member at a time keeps the quorum",
                joining.len(),
                names.join(", ")
            ),
            help: "add one of them to the inventory, apply, then the next".into(),
        });
    } else if members.len().is_multiple_of(2) && !opts.force {
        refused.push(Refused {
            what: format!(
                "adding {} makes {} etcd members, which tolerate no more failures than {}",
                names[0],
                members.len(),
                members.len() - 1
            ),
            help: "add two members, one apply each, or pass --force to accept an even member count"
                .into(),
        });
    }
    if !refused.is_empty() {
        return Err(refused);
    }
    let via: Vec<String> = members
        .iter()
        .filter(|t| running(&t.name))
        .map(|t| t.name.clone())
        .collect();
    for t in joining {
        phase.ops.push(ClusterOp::EtcdAdd {
            member: t.name.clone(),
            peer_url: format!("https://{}:2380", t.address),
            via: via.clone(),
            tls: EtcdTls {
                ca: ETCD_TLS[0].into(),
                cert: ETCD_TLS[1].into(),
                key: ETCD_TLS[2].into(),
            },
        });
    }
    phase.strategy = Strategy::OneAtATime;
    Ok(())
}

/// What removing the node does, for the plan's text.
fn removal(m: &Manifest, why: &str) -> Removal {
    Removal {
        node: m.node.clone(),
        address: m.address.clone(),
        roles: m.roles.clone(),
        why: why.to_string(),
        units: stop_order(m),
        files: m.files.len(),
        binaries: m.binaries.len(),
        etcd_member: m.runs("etcd"),
        kubelet: m.runs("kubelet"),
        unreachable: false,
    }
}

/// Units in the reverse of their start order.
fn stop_order(m: &Manifest) -> Vec<String> {
    m.units.iter().rev().map(|u| u.name.clone()).collect()
}

/// Single quotes for a shell word.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The step that takes kubeforge's units and files off the node of `m`.
fn teardown_step(m: &Manifest) -> StepWork {
    StepWork {
        name: format!(
            "stop and disable {} units, remove {} files and {} binaries kubeforge placed",
            m.units.len(),
            m.files.len(),
            m.binaries.len()
        ),
        stage: Stage::BeforeFiles,
        script: teardown_script(m),
    }
}

/// The script that takes kubeforge's units and files off the node: each
/// unit stopped and disabled (in the reverse of its start order), the
/// files and binaries of the record removed, the record last.
pub fn teardown_script(m: &Manifest) -> String {
    let mut s = String::from("set -u\n");
    for u in stop_order(m) {
        if u == "containerd" {
            // Its containers outlive it (KillMode=process): stopped first.
            s.push_str(KILL_CONTAINERS);
        }
        let u = quote(&u);
        s.push_str(&format!(
            "systemctl stop {u} 2>/dev/null || true\nsystemctl disable {u} 2>/dev/null || true\n"
        ));
    }
    for f in m.files.iter().chain(&m.binaries) {
        s.push_str(&format!("rm -f -- {}\n", quote(f)));
    }

    s.push_str("systemctl daemon-reload\n");
    s.push_str(&format!("rm -f -- {}\n", quote(MANIFEST_PATH)));
    s
}

const ETCD_ASIDE: &str = r#"set -eu
if [ -d /var/lib/etcd ]; then mv /var/lib/etcd "/var/lib/etcd.removed-$(date -u +%Y%m%dT%H%M%SZ)"; fi
"#;

/// Every container containerd still runs, killed (with the node's own
/// `ctr`, when it has one).
const KILL_CONTAINERS: &str = r#"if command -v ctr >/dev/null 2>&1 && systemctl is-active -q containerd; then
  for t in $(ctr -n k8s.io tasks ls -q 2>/dev/null); do ctr -n k8s.io tasks kill -s KILL "$t" 2>/dev/null || true; done
fi
"#;

/// The data kubeforge's units keep: etcd's, the kubelet's and
/// containerd's directories (whatever is mounted below them unmounted
/// first), and kubeforge's own (its record, cache and blob store).
pub const DATA_DIRS: [&str; 4] = [
    "/var/lib/etcd",
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/var/lib/kubeforge",
];

/// Removes what [`DATA_DIRS`] hold (a directory that is itself a mount
/// point stays, empty).
pub fn data_script() -> String {
    let mut s = String::from("set -u\n");
    for d in DATA_DIRS {
        let d = quote(d);
        s.push_str(&format!(
            r#"if [ -d {d} ]; then
  awk -v d={d}/ 'index($2, d) == 1 {{ print $2 }}' /proc/mounts | sort -r | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  find {d} -mindepth 1 -maxdepth 1 -exec rm -rf -- {{}} + 2>/dev/null || true
  rmdir {d} 2>/dev/null || true
fi
"#
        ));
    }
    s
}

/// The plan of `kubeforge reset`: on each node of `records`, kubeforge's
/// units stopped and disabled and the files and binaries of its record
/// removed, then (unless `keep_data`) the data of [`DATA_DIRS`]. Nothing
/// asks the cluster first: the nodes are taken down as they are.
pub fn reset(cluster: &str, records: &[&Manifest], keep_data: bool) -> Plan {
    let mut nodes = Vec::new();
    let mut removals = Vec::new();
    for m in records {
        let mut r = removal(m, "asked to reset it");
        r.kubelet = false;
        r.etcd_member = false;
        removals.push(r);
        let mut w = NodeWork::new(&m.node);
        w.steps.push(teardown_step(m));
        if !keep_data {
            w.steps.push(StepWork {
                name: format!("remove the data in {}", DATA_DIRS.join(", ")),
                stage: Stage::BeforeFiles,
                script: data_script(),
            });
        }
        nodes.push(w);
    }
    let mut phase = phase(RESET_PHASE, nodes, Vec::new());
    phase.strategy = Strategy::Parallel;
    Plan {
        cluster: cluster.to_string(),
        offline: false,
        nodes: Vec::new(),
        phases: vec![phase],
        cluster_gates: None,
        versions: Vec::new(),
        healthy_before: None,
        summary: crate::Summary {
            remove: removals.len(),
            ..Default::default()
        },
        manifests: Default::default(),
        removals,
        sources: Default::default(),
    }
}

fn phase(name: &str, nodes: Vec<NodeWork>, ops: Vec<ClusterOp>) -> PhasePlan {
    PhasePlan {
        phase: name.to_string(),
        strategy: Strategy::OneAtATime,
        nodes,
        api: None,
        vip: None,
        with: None,
        lb_reload: Vec::new(),
        ops,
        batches: Vec::new(),
    }
}

/// Adds the removal of `gone` (records of nodes the inventory no longer
/// names) to `plan`, the plan of the nodes that stay; refused as
/// [`check`] says.
pub fn prune(
    plan: &mut Plan,
    rendered: &Rendered,
    gone: &[&Manifest],
    opts: &PruneOptions,
) -> Result<(), Vec<Refused>> {
    let refused = check(rendered, gone, opts);
    if !refused.is_empty() {
        return Err(refused);
    }
    if gone.is_empty() {
        return Ok(());
    }
    let has =
        |t: &kubeforge_render::NodeTree, role: &str| t.roles.iter().any(|r| r.as_str() == role);
    let via = rendered
        .addon_node
        .clone()
        .or_else(|| {
            rendered
                .nodes
                .iter()
                .find(|t| has(t, "control-plane"))
                .map(|t| t.name.clone())
        })
        .unwrap_or_default();
    let members: Vec<String> = rendered
        .nodes
        .iter()
        .filter(|t| has(t, "etcd"))
        .map(|t| t.name.clone())
        .collect();
    let tls = EtcdTls {
        ca: ETCD_TLS[0].into(),
        cert: ETCD_TLS[1].into(),
        key: ETCD_TLS[2].into(),
    };
    let why = "its record is in the state directory, but the inventory no longer names it";
    let mut drains = Vec::new();
    let mut removes = Vec::new();
    let mut teardown = Vec::new();
    let mut forget = Vec::new();
    for m in gone {
        let unreachable = opts.is_unreachable(&m.node);
        let mut r = removal(m, why);
        r.unreachable = unreachable;
        plan.removals.push(r);
        if m.runs("kubelet") {
            drains.push(if unreachable {
                ClusterOp::Cordon {
                    node: m.node.clone(),
                    via: via.clone(),
                    port: rendered.api_port,
                }
            } else {
                ClusterOp::Drain {
                    node: m.node.clone(),
                    via: via.clone(),
                    port: rendered.api_port,
                    timeout_secs: opts.drain_timeout_secs,
                }
            });
            forget.push(ClusterOp::DeleteNode {
                node: m.node.clone(),
                via: via.clone(),
                port: rendered.api_port,
            });
        }
        if m.runs("etcd") {
            removes.push(ClusterOp::EtcdRemove {
                member: m.node.clone(),
                peer_url: format!("https://{}:2380", m.address),
                via: members.clone(),
                tls: tls.clone(),
            });
        }
        if unreachable {
            // Nothing on the node itself: it is never contacted.
            continue;
        }
        let mut w = NodeWork::new(&m.node);
        w.steps.push(teardown_step(m));
        if m.runs("etcd") {
            // The data of a member no longer in the cluster is never
            // started again as it is (a node added back joins with an
            // empty data directory); kept aside.
            w.steps.push(StepWork {
                name: "move etcd's data directory aside (/var/lib/etcd.removed-TIME)".into(),
                stage: Stage::BeforeFiles,
                script: ETCD_ASIDE.into(),
            });
        }
        teardown.push(w);
    }
    if !drains.is_empty() {
        plan.phases
            .insert(0, phase(DRAIN_PHASE, Vec::new(), drains));
    }
    if !teardown.is_empty() || !removes.is_empty() {
        plan.phases.push(phase(REMOVE_PHASE, teardown, removes));
    }
    if !forget.is_empty() {
        plan.phases.push(phase(FORGET_PHASE, Vec::new(), forget));
    }
    plan.summary.remove = plan.removals.len();
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_teardown_quotes_every_path() {
        let m = Manifest {
            node: "w".into(),
            files: vec!["/etc/a b".into(), "/etc/it's".into()],
            binaries: vec!["/usr/local/bin/kubelet".into()],
            units: vec![
                crate::ManifestUnit {
                    name: "containerd".into(),
                    enabled: true,
                    packaged: false,
                },
                crate::ManifestUnit {
                    name: "kubelet".into(),
                    enabled: true,
                    packaged: false,
                },
            ],
            ..Default::default()
        };
        let s = teardown_script(&m);
        assert!(s.contains("rm -f -- '/etc/a b'\n"), "{s}");
        assert!(s.contains(r"rm -f -- '/etc/it'\''s'"), "{s}");
        let kubelet = s.find("stop 'kubelet'").unwrap();
        let containerd = s.find("stop 'containerd'").unwrap();
        assert!(kubelet < containerd, "stopped in reverse start order:\n{s}");
        assert!(s.ends_with(&format!("rm -f -- '{MANIFEST_PATH}'\n")));
        let kill = s.find("tasks kill").unwrap();
        assert!(
            kubelet < kill && kill < containerd,
            "containers go before containerd:\n{s}"
        );
    }

    #[test]
    fn a_reset_keeps_the_data_only_when_asked() {
        let m = Manifest {
            node: "w".into(),
            ..Default::default()
        };
        let p = reset("c", &[&m], false);
        let steps = &p.phases[0].nodes[0].steps;
        assert_eq!(steps.len(), 2);
        assert!(steps[1].script.contains("find '/var/lib/etcd' -mindepth 1"));
        let p = reset("c", &[&m], true);
        assert_eq!(p.phases[0].nodes[0].steps.len(), 1);
        assert_eq!(p.summary.remove, 1);
    }
}
