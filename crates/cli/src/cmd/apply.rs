//! `kubeforge apply`: the nodes made to match the inventory, exactly as
//! the plan says, phase by phase behind health gates.

use crate::args::{InventoryArgs, NodeArgs, Output, PkiArgs, PruneArgs};
use crate::common::{init_log, load, prepare_nodes, prepare_while, reach, runtime, Term};
use crate::online;
use anyhow::Result;
use kubeforge_apply::{ApplyError, Outcome, Request};
use std::time::{Duration, Instant};

/// The apply's time limits, in seconds.
pub(crate) struct Limits {
    pub gate_timeout: u64,
    pub max_clock_skew: u64,
    pub drain_timeout: u64,
}

pub(crate) fn run(
    inv: &InventoryArgs,
    pki: &PkiArgs,
    nodes: &NodeArgs,
    limits: Limits,
    prune: &PruneArgs,
    output: Output,
    term: &mut Term,
) -> Result<()> {
    let (loaded, state) = load(inv, term)?;
    let cluster = &loaded.cluster;
    init_log(&state)?;
    let gone = crate::known::gone(&state, cluster)?;
    if !gone.is_empty() && !prune.prune {
        let names: Vec<&str> = gone.iter().map(|k| k.manifest.node.as_str()).collect();
        let (them, have) = if names.len() == 1 {
            ("it", "has a record")
        } else {
            ("them", "have records")
        };
        anyhow::bail!(
            "{} {} {have} in {} (kubeforge placed files there) but the inventory no longer names {them}; nothing was changed\n  help: `kubeforge plan` shows what removing {them} does; `kubeforge apply --prune` removes {them} from the cluster, or name {them} in the inventory again",
            if names.len() == 1 { "node" } else { "nodes" },
            names.join(", "),
            state.join("nodes").display(),
        );
    }
    let records: Vec<kubeforge_plan::Manifest> = gone.iter().map(|k| k.manifest.clone()).collect();
    let prune_opts = prune.options();
    // A removal refused (an --unreachable node not being removed, quorum
    // rules) is refused before any node is contacted: with nodes to
    // remove, the files are rendered first. Otherwise they are rendered
    // while the connections open.
    let early = if records.is_empty() {
        None
    } else {
        let prepared = prepare_nodes(&state, cluster, pki, nodes)?;
        crate::known::check_removals(&prepared.rendered, &records, &prune_opts)?;
        Some(prepared)
    };
    // The timing line's first entry.
    let first = if early.is_none() {
        "connect and render"
    } else {
        "connect"
    };
    // Nodes to remove that cannot be reached are never contacted.
    let reachable: Vec<kubeforge_plan::Known> = gone
        .iter()
        .filter(|k| !prune_opts.is_unreachable(&k.manifest.node))
        .cloned()
        .collect();
    let opts = kubeforge_apply::Options {
        concurrency: nodes.reach.concurrency,
        gate_timeout: Duration::from_secs(limits.gate_timeout),
        max_clock_skew: Duration::from_secs(limits.max_clock_skew),
        drain_timeout: Duration::from_secs(limits.drain_timeout),
        wire_cache: Some(crate::common::wire_cache(&state)),
        ..Default::default()
    };
    let plan_opts = nodes.plan_options();
    let owner = crate::common::lock_owner("apply", &cluster.name);
    let started = Instant::now();
    let mut connect = Duration::ZERO;
    let outcome = runtime()?.block_on(kubeforge_transport::closing_masters(async {
        let t = Instant::now();
        let reach = reach(nodes);
        let connecting = online::connect_all_with(cluster, &reachable, &state, &reach);
        let (prepared, transports) =
            prepare_while(early, &state, cluster, pki, nodes, connecting).await?;
        connect = t.elapsed();
        let req = Request {
            cluster,
            rendered: &prepared.rendered,
            plan: &plan_opts,
            transports: &transports,
            opts: &opts,
            owner: &owner,
            gone: &records,
            prune: prune_opts.clone(),
        };
        // The state directory first: the nodes never hold a certificate
        // the control machine does not have.
        let mut persist = |plan: &kubeforge_plan::Plan| {
            prepared
                .persist(&state)
                .map_err(|e| ApplyError::Other(e.to_string()))?;
            crate::known::save(&state, cluster, plan)
                .map_err(|e| ApplyError::Other(format!("{e:#}")))
        };
        let bars = online::Bars::new();
        kubeforge_apply::apply(&req, &mut persist, &bars)
            .await
            .map_err(online::explain)
    }))??;
    // The records as the nodes now hold them; removed nodes forgotten.
    crate::known::save(&state, cluster, &outcome.plan)?;
    for r in &outcome.plan.removals {
        crate::known::forget(&state, &r.node)?;
    }
    let secs = started.elapsed().as_secs_f64();
    let mut timings = vec![(first.to_string(), connect)];
    timings.extend(outcome.timings.iter().cloned());
    if let Some(a) = &outcome.applied {
        timings.extend(a.timings.iter().cloned());
    }
    if output == Output::Json {
        return term.line(serde_json::to_string_pretty(&json_result(
            &outcome, &timings, secs,
        ))?);
    }
    let plan = &outcome.plan;
    let Some(a) = &outcome.applied else {
        term.line(format!(
            "No changes: {} nodes, {} files and {} API objects up to date. ({secs:.1} s)",
            plan.summary.nodes, plan.summary.unchanged, plan.summary.api_unchanged,
        ))?;
        return term.line(timing_line(&timings, &outcome));
    };
    term.raw(kubeforge_plan::to_text(plan))?;
    for w in &a.warnings {
        term.warn(format!("warning: {w}"));
    }
    let approved = if a.csrs_approved > 0 {
        format!(
            ", {} serving certificate requests approved",
            a.csrs_approved
        )
    } else {
        String::new()
    };
    term.line(format!(
        "Applied: {} steps run, {} files written, {} units started, {} restarted, {} reloaded, {} API objects applied{approved} in {secs:.1} s.",
        a.steps_run,
        a.files_written,
        a.started.len(),
        a.restarted.len(),
        a.reloaded.len(),
        a.api_applied,
    ))?;
    term.line(timing_line(&timings, &outcome))
}

/// "Timings: connect and render 0.3 s, lock 0.1 s, facts 0.6 s (212 of 231 sums
/// cached), ..."
fn timing_line(timings: &[(String, Duration)], outcome: &Outcome) -> String {
    let parts: Vec<String> = timings
        .iter()
        .map(|(what, d)| {
            let mut p = format!("{what} {:.1} s", d.as_secs_f64());
            if what == "facts" {
                p.push_str(&format!(
                    " ({} of {} sums cached)",
                    outcome.files_cached, outcome.files_found
                ));
            }
            p
        })
        .collect();
    format!("Timings: {}", parts.join(", "))
}

/// The result as JSON: the plan, what was done, the timings.
fn json_result(outcome: &Outcome, timings: &[(String, Duration)], secs: f64) -> serde_json::Value {
    let applied = outcome.applied.as_ref().map(|a| {
        serde_json::json!({
            "steps_run": a.steps_run,
            "files_written": a.files_written,
            "started": a.started,
            "restarted": a.restarted,
            "reloaded": a.reloaded,
            "api_applied": a.api_applied,
            "csrs_approved": a.csrs_approved,
            "warnings": a.warnings,
        })
    });
    serde_json::json!({
        "changed": outcome.applied.is_some(),
        "plan": outcome.plan,
        "applied": applied,
        "timings": timings
            .iter()
            .map(|(what, d)| serde_json::json!({"step": what, "seconds": d.as_secs_f64()}))
            .collect::<Vec<_>>(),
        "files_found": outcome.files_found,
        "files_cached": outcome.files_cached,
        "seconds": secs,
    })
}
