//! The plan as text, for a terminal or a log.

use crate::{ApiAction, FileAction, Plan};
use kubeforge_render::Strategy;
use std::fmt::Write as _;

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
            for line in &c.summary {
                let _ = writeln!(s, "      {line}");
            }
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
    for r in &plan.removals {
        let _ = writeln!(
            s,
            "{} ({}): remove from the cluster ({}): {}",
            r.node,
            r.address,
            r.roles.join(", "),
            r.why
        );
        if r.unreachable {
            let removed = match (r.kubelet, r.etcd_member) {
                (true, true) => {
                    "not drained, not torn down; its Node object and etcd member are removed"
                }
                (true, false) => "not drained, not torn down; its Node object is removed",
                (false, true) => "not torn down; its etcd member is removed",
                (false, false) => "not torn down; only the other nodes change",
            };
            let _ = writeln!(s, "  unreachable: {removed}");
            if r.kubelet {
                let _ = writeln!(
                    s,
                    "  cordon, then delete its Node object (the cluster garbage-collects its pods)"
                );
            }
            if r.etcd_member {
                let _ = writeln!(s, "  etcd member remove, through a healthy member");
            }
            let _ = writeln!(
                s,
                "  left on it as they are: {} units ({}), {} files and {} binaries kubeforge placed there\n",
                r.units.len(),
                r.units.join(", "),
                r.files,
                r.binaries
            );
            continue;
        }
        if r.kubelet {
            let _ = writeln!(s, "  drain, then delete its Node object");
        }
        if r.etcd_member {
            let _ = writeln!(s, "  etcd member remove, before it stops");
        }
        let _ = writeln!(s, "  stop and disable: {}", r.units.join(", "));
        let _ = writeln!(
            s,
            "  - {} files and {} binaries kubeforge placed there\n",
            r.files, r.binaries
        );
    }
    rollout(plan, &mut s);
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
        if m.remove > 0 {
            s.pop();
            let _ = writeln!(
                s,
                " {} {} to remove.",
                m.remove,
                if m.remove == 1 { "node" } else { "nodes" }
            );
        }
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

/// A drain-nodes phase: its batches in order, and which nodes are
/// cordoned and drained around their restarts.
fn drain_nodes(p: &crate::PhasePlan) -> String {
    let batches: Vec<String> = p
        .batches
        .iter()
        .map(|b| format!("[{}]", b.join(", ")))
        .collect();
    let restarting: Vec<&crate::NodeWork> =
        p.nodes.iter().filter(|w| !w.restart.is_empty()).collect();
    let cordoned: Vec<&str> = restarting
        .iter()
        .filter(|w| w.cordon.is_some())
        .map(|w| w.node.as_str())
        .collect();
    let drain = if cordoned.is_empty() {
        "each batch gated before the next".to_string()
    } else if cordoned.len() == restarting.len() {
        "each node where a unit restarts cordoned and drained first, uncordoned once Ready in the API again".to_string()
    } else {
        format!(
            "cordoned and drained first, uncordoned once Ready in the API again: {}",
            cordoned.join(", ")
        )
    };
    format!(
        "in {} batches, one after the other: {}; {drain}",
        batches.len(),
        batches.join(" ")
    )
}

/// The components whose version changes (or whose binary is replaced),
/// one line per component and change with its nodes.
fn versions(plan: &Plan, s: &mut String) {
    if plan.versions.is_empty() {
        return;
    }
    let mut lines: Vec<(String, Vec<&str>)> = Vec::new();
    for c in &plan.versions {
        let what = match c.from.as_deref() {
            Some(from) if from == c.to => {
                format!("{} {} (binary replaced, same version)", c.unit, c.to)
            }
            Some(from) => format!("{} {from} -> {}", c.unit, c.to),
            None => format!("{} -> {} (not running now)", c.unit, c.to),
        };
        match lines.iter_mut().find(|(w, _)| *w == what) {
            Some((_, nodes)) => nodes.push(&c.node),
            None => lines.push((what, vec![&c.node])),
        }
    }
    let _ = writeln!(s, "Versions:");
    for (what, nodes) in lines {
        let _ = writeln!(s, "  {what}: {}", nodes.join(", "));
    }
    if plan.healthy_before.is_some() {
        let _ = writeln!(
            s,
            "  first the control plane must be healthy (every running unit's gate, the VIP), else nothing is touched"
        );
    }
    let _ = writeln!(s);
}

/// How apply walks the phases: one line per phase with work, in order.
fn rollout(plan: &Plan, s: &mut String) {
    versions(plan, s);
    if plan.phases.is_empty() {
        return;
    }
    let _ = writeln!(s, "Rollout:");
    for p in &plan.phases {
        let nodes: Vec<&str> = p.nodes.iter().map(|w| w.node.as_str()).collect();
        let drained = p.nodes.iter().any(|w| !w.drain.is_empty());
        let how = match (p.strategy, &p.api) {
            (Strategy::Api, Some(a)) => format!(
                "(through {}): {} objects to apply, {} requests to approve",
                a.via,
                a.objects.len(),
                a.approve.len()
            ),
            (Strategy::Api, None) => String::new(),
            (Strategy::Parallel, _) => format!("({}): at once", nodes.join(", ")),
            (Strategy::Together, _) => {
                format!("({}): started together, then gated", nodes.join(", "))
            }
            (Strategy::DrainFromLb, _) if drained => format!(
                "({}): one at a time, each out of the load balancer while it restarts",
                nodes.join(", ")
            ),
            (Strategy::OneAtATime, _) if p.nodes.iter().all(|w| w.gates.is_empty()) => {
                format!("({}): one at a time", nodes.join(", "))
            }
            (Strategy::OneAtATime | Strategy::DrainFromLb, _) => {
                format!("({}): one at a time, gated in between", nodes.join(", "))
            }
            (Strategy::DrainNodes, _) => drain_nodes(p),
        };
        let reload = if p.lb_reload.is_empty() {
            String::new()
        } else {
            let lbs: Vec<&str> = p.lb_reload.iter().map(|r| r.node.as_str()).collect();
            format!(
                "; then the load balancers reload, forgetting what was refused while starting ({})",
                lbs.join(", ")
            )
        };
        let vip = if p.vip.is_some() {
            "; then the VIP gate"
        } else {
            ""
        };
        let with = match &p.with {
            Some(w) => format!(" (beside {w} and what follows it)"),
            None => String::new(),
        };
        if p.nodes.is_empty() && p.api.is_none() {
            let _ = writeln!(s, "  {}:", p.phase);
        } else {
            let _ = writeln!(s, "  {} {how}{reload}{vip}{with}", p.phase);
        }
        for op in &p.ops {
            let _ = writeln!(s, "    {}", op.describe());
        }
    }
    if let Some(g) = &plan.cluster_gates {
        let mut what = vec![format!("{} nodes Ready in the API", g.nodes.len())];
        what.extend(g.exists.iter().map(|o| format!("{} exists", o.what)));
        let _ = writeln!(
            s,
            "  then the cluster gate through {}: {}",
            g.via,
            what.join(", ")
        );
    }
    let _ = writeln!(s);
}

/// An operation's plan (a restore, say) as text: each phase in order with
/// what each node does in it, then the gates.
pub fn work_to_text(title: &str, plan: &Plan) -> String {
    let mut s = format!("{title}\n");
    for (i, p) in plan.phases.iter().enumerate() {
        let _ = writeln!(s, "{}. {} ({})", i + 1, p.phase, p.strategy.as_str());
        for op in &p.ops {
            let _ = writeln!(s, "   {}", op.describe());
        }
        for w in &p.nodes {
            let mut parts: Vec<String> = Vec::new();
            if !w.stop.is_empty() {
                parts.push(format!("stop {}", w.stop.join(", ")));
            }
            for put in &w.puts {
                let secret = if put.secret { ", secret" } else { "" };
                parts.push(format!("write {} ({:04o}{secret})", put.path, put.mode));
            }
            for step in &w.steps {
                parts.push(format!("run: {}", step.name));
            }
            if !w.start.is_empty() {
                parts.push(format!("enable and start {}", w.start.join(", ")));
            }
            if !w.restart.is_empty() {
                parts.push(format!("restart {}", w.restart.join(", ")));
            }
            let mut gates: Vec<&str> = w.gates.iter().map(|g| g.gate.name.as_str()).collect();
            gates.dedup();
            if !gates.is_empty() {
                parts.push(format!("then wait for {}", gates.join("; ")));
            }
            let _ = writeln!(s, "   {}: {}", w.node, parts.join("; "));
        }
        if let Some(v) = &p.vip {
            let _ = writeln!(
                s,
                "   then exactly one of {} holds {} and the API answers through it",
                v.holders.join(", "),
                v.address
            );
        }
    }
    if let Some(g) = &plan.cluster_gates {
        let _ = writeln!(
            s,
            "then the cluster gate through {}: {} nodes Ready in the API",
            g.via,
            g.nodes.len()
        );
    }
    s
}
