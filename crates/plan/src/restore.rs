//! The plan of an etcd restore: every apiserver and controller stopped,
//! every etcd member stopped, its data directory moved aside (never
//! deleted), the snapshot restored on every member with the inventory's
//! member list and a new cluster token, etcd started on every member at
//! once behind its gate, the apiservers started one at a time behind
//! theirs (and the VIP's), the controllers started, the kubelets and
//! kube-proxies restarted (no component keeps a cache of the state before), and the
//! cluster gate last. Executed by the same engine as every apply.

use crate::work::{ClusterGates, Content, GateRun, NodeWork, PhasePlan, Put, StepWork};
use crate::{Plan, PlanError, Summary};
use kubeforge_render::{NodeTree, Rendered, Stage, Strategy};
use std::path::PathBuf;

/// A snapshot file on the control machine, checked against its sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub file: PathBuf,
    pub sha256: String,
}

/// Where the snapshot waits on each member.
pub const SNAPSHOT_DIR: &str = "/var/lib/kubeforge/restore";

/// Restarted on every node after the control plane is back.
const NODE_AGENTS: &[&str] = &["kubelet", "kube-proxy"];
const AGENTS_PHASE: &str = "restart the node agents";

/// What a restore needs besides the rendered cluster.
#[derive(Debug, Clone)]
pub struct Restore<'a> {
    pub snapshot: &'a Snapshot,
    /// The new cluster token.
    pub token: &'a str,
    /// Names the moved-aside data directories (`<data>.before-restore-<stamp>`).
    pub stamp: &'a str,
}

fn runs<'a>(rendered: &'a Rendered, unit: &'a str) -> impl Iterator<Item = &'a NodeTree> {
    rendered
        .nodes
        .iter()
        .filter(move |t| t.units.iter().any(|u| u.name == unit))
}

fn gates(tree: &NodeTree, unit: &str, rendered: &Rendered) -> Vec<GateRun> {
    let mut out = Vec::new();
    crate::work::gates_of(rendered, tree, unit, &mut out);
    out
}

fn phase(name: &str, strategy: Strategy, nodes: Vec<NodeWork>) -> PhasePlan {
    PhasePlan {
        phase: name.to_string(),
        strategy,
        nodes,
        api: None,
        vip: None,
        with: None,
        lb_reload: Vec::new(),
        batches: Vec::new(),
        ops: Vec::new(),
    }
}

/// Single-quoted for sh (the values are validated names, addresses and
/// paths; a quote is escaped all the same).
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The plan of restoring `r.snapshot` into every etcd member.
pub fn etcd_restore(
    cluster: &str,
    rendered: &Rendered,
    r: &Restore<'_>,
) -> Result<Plan, PlanError> {
    let etcd = rendered.etcd.as_ref().ok_or(PlanError::NoEtcd)?;
    let snap_path = format!("{SNAPSHOT_DIR}/{}.db", r.snapshot.sha256);
    let control: &[&str] = &[
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ];
    let mut phases = Vec::new();

    // 1. Nothing talks to etcd any more.
    let stop_control: Vec<NodeWork> = rendered
        .nodes
        .iter()
        .filter_map(|t| {
            let mut w = NodeWork::new(&t.name);
            w.stop = control
                .iter()
                .filter(|u| t.units.iter().any(|x| &x.name == *u))
                .map(|u| u.to_string())
                .collect();
            (!w.stop.is_empty()).then_some(w)
        })
        .collect();
    phases.push(phase(
        "stop the control plane",
        Strategy::Parallel,
        stop_control,
    ));

    // 2. Every member stops; 3. each restores the snapshot.
    let members: Vec<&NodeTree> = runs(rendered, "etcd").collect();
    let stop_etcd = members
        .iter()
        .map(|t| {
            let mut w = NodeWork::new(&t.name);
            w.stop = vec!["etcd".into()];
            w
        })
        .collect();
    phases.push(phase("stop etcd", Strategy::Parallel, stop_etcd));
    let mut restore = Vec::new();
    for t in &members {
        let member = etcd
            .members
            .iter()
            .find(|m| m.name == t.name)
            .ok_or(PlanError::NoEtcd)?;
        let mut w = NodeWork::new(&t.name);
        w.puts.push(Put {
            path: snap_path.clone(),
            mode: 0o600,
            owner: "root:root".into(),
            sha256: r.snapshot.sha256.clone(),
            secret: true,
            content: Content::File(r.snapshot.file.clone()),
        });
        let data = &etcd.data_dir;
        let script = format!(
            r#"set -eu
snap={snap}; data={data}
[ -f "$snap" ] || {{ echo "the snapshot $snap is not on this node" >&2; exit 1; }}
# The old data stays, moved aside.
if [ -e "$data" ]; then mv -- "$data" "$data.before-restore-{stamp}"; fi
tool=
for t in {bin}/etcdutl etcdutl {bin}/etcdctl etcdctl; do
  if command -v "$t" >/dev/null 2>&1; then tool=$t; break; fi
done
[ -n "$tool" ] || {{ echo "neither etcdutl nor etcdctl is on this node: add etcdutl to the bundle" >&2; exit 1; }}
# Revisions move past every one a client has seen, and those before are
# compacted: watchers list again instead of trusting their cache.
bump=
if "$tool" snapshot restore --help 2>&1 | grep -q -- --bump-revision; then
  bump="--bump-revision 1000000000 --mark-compacted"
fi
# shellcheck disable=SC2086
ETCDCTL_API=3 "$tool" snapshot restore "$snap" --name {name} --initial-cluster {cluster} \
  --initial-cluster-token {token} --initial-advertise-peer-urls {peer} --data-dir "$data" $bump >/dev/null
chmod 0700 "$data"
rm -f -- "$snap"
"#,
            snap = q(&snap_path),
            data = q(data),
            stamp = r.stamp,
            bin = q(&etcd.bin_dir),
            name = q(&member.name),
            cluster = q(&etcd.initial_cluster()),
            token = q(r.token),
            peer = q(&format!("https://{}:2380", member.address)),
        );
        w.steps.push(StepWork {
            name: "restore the snapshot into etcd's data directory".into(),
            stage: Stage::AfterFiles,
            script,
        });
        restore.push(w);
    }
    phases.push(phase("restore etcd", Strategy::Parallel, restore));

    // 4. Every member at once (they wait for each other), then the gate.
    let start_etcd = members
        .iter()
        .map(|t| {
            let mut w = NodeWork::new(&t.name);
            w.start = vec!["etcd".into()];
            w.gates = gates(t, "etcd", rendered);
            w
        })
        .collect();
    phases.push(phase("start etcd", Strategy::Together, start_etcd));

    // 5. The apiservers one at a time, then the VIP.
    let start_api = runs(rendered, "kube-apiserver")
        .map(|t| {
            let mut w = NodeWork::new(&t.name);
            w.start = vec!["kube-apiserver".into()];
            w.gates = gates(t, "kube-apiserver", rendered);
            w
        })
        .collect();
    let mut api = phase("start the apiservers", Strategy::OneAtATime, start_api);
    api.vip = rendered.vip.clone();
    phases.push(api);

    // 6. The controllers; 7. the node agents, so that no cache of the
    //    state before the restore lives on.
    let start_controllers = rendered
        .nodes
        .iter()
        .filter_map(|t| {
            let mut w = NodeWork::new(&t.name);
            for u in &control[1..] {
                if t.units.iter().any(|x| x.name == *u) {
                    w.start.push(u.to_string());
                    w.gates.extend(gates(t, u, rendered));
                }
            }
            (!w.start.is_empty()).then_some(w)
        })
        .collect();
    phases.push(phase(
        "start the controllers",
        Strategy::Parallel,
        start_controllers,
    ));
    let agents = runs(rendered, "kubelet")
        .map(|t| {
            let mut w = NodeWork::new(&t.name);
            for u in NODE_AGENTS {
                if t.units.iter().any(|x| x.name == *u) {
                    w.restart.push(u.to_string());
                    w.gates.extend(gates(t, u, rendered));
                }
            }
            w
        })
        .collect();
    phases.push(phase(AGENTS_PHASE, Strategy::Parallel, agents));
    phases.retain(|p| !p.nodes.is_empty());

    let kubelet_nodes = rendered.kubelet_nodes();
    let cluster_gates = rendered.addon_node.clone().map(|via| ClusterGates {
        phase: AGENTS_PHASE.into(),
        via,
        port: rendered.api_port,
        nodes: kubelet_nodes.iter().map(|(n, _)| n.to_string()).collect(),
        serving_certificates: Vec::new(),
        deployments: Vec::new(),
        exists: crate::work::must_exist(),
    });
    Ok(Plan {
        cluster: cluster.to_string(),
        offline: false,
        nodes: Vec::new(),
        phases,
        cluster_gates,
        versions: Vec::new(),
        healthy_before: None,
        summary: Summary::default(),
        manifests: Default::default(),
        removals: Vec::new(),
        sources: Default::default(),
    })
}
