//! `kubeforge apply`: the nodes made to match the inventory, exactly as
//! the plan says, phase by phase behind health gates.

use crate::args::{InventoryArgs, NodeArgs, PkiArgs};
use crate::common::{init_log, load, prepare, reach, runtime, with_bundle, Term};
use crate::online;
use anyhow::Result;
use kubeforge_apply::{ApplyError, Request};
use std::time::{Duration, Instant};

pub(crate) fn run(
    inv: &InventoryArgs,
    pki: &PkiArgs,
    nodes: &NodeArgs,
    gate_timeout: u64,
    max_clock_skew: u64,
    term: &mut Term,
) -> Result<()> {
    let (loaded, state) = load(inv, term)?;
    let cluster = &loaded.cluster;
    let mut prepared = prepare(&state, cluster, pki.new_ca.clone())?;
    with_bundle(&mut prepared, cluster, nodes)?;
    init_log(&state)?;
    let opts = kubeforge_apply::Options {
        concurrency: nodes.concurrency,
        gate_timeout: Duration::from_secs(gate_timeout),
        max_clock_skew: Duration::from_secs(max_clock_skew),
        ..Default::default()
    };
    let owner = format!(
        "kubeforge apply of cluster {} from {} (pid {})",
        cluster.name,
        std::env::var("HOSTNAME").unwrap_or_else(|_| "the control machine".into()),
        std::process::id()
    );
    let started = Instant::now();
    let outcome = runtime()?.block_on(kubeforge_transport::closing_masters(async {
        let transports = online::connect_all(cluster, &state, &reach(nodes)).await?;
        let req = Request {
            cluster,
            rendered: &prepared.rendered,
            phases: &nodes.phases,
            transports: &transports,
            opts: &opts,
            owner: &owner,
        };
        // The state directory first: the nodes never hold a certificate
        // the control machine does not have.
        let mut persist = || {
            prepared
                .persist(&state)
                .map_err(|e| ApplyError::Other(e.to_string()))
        };
        let bars = online::Bars::new();
        kubeforge_apply::apply(&req, &mut persist, &bars)
            .await
            .map_err(online::explain)
    }))??;
    let secs = started.elapsed().as_secs_f64();
    let plan = &outcome.plan;
    let Some(a) = &outcome.applied else {
        return term.line(format!(
            "No changes: {} nodes, {} files and {} API objects up to date. ({secs:.1} s)",
            plan.summary.nodes, plan.summary.unchanged, plan.summary.api_unchanged,
        ));
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
    ))
}
