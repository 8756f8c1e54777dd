//! `kubeforge plan`: what an apply would change, node by node and phase by
//! phase (facts gathered read-only over SSH, or none with --offline).

use crate::args::{InventoryArgs, NodeArgs, Output, PkiArgs, PruneArgs};
use crate::common::{load, pki_line, prepare_nodes, prepare_while, reach, runtime, Term};
use crate::online;
use anyhow::Result;

pub(crate) fn run(
    inv: &InventoryArgs,
    pki: &PkiArgs,
    nodes: &NodeArgs,
    offline: bool,
    prune: &PruneArgs,
    output: Output,
    term: &mut Term,
) -> Result<()> {
    let (loaded, state) = load(inv, term)?;
    let cluster = &loaded.cluster;
    let opts = nodes.plan_options();
    // Nodes the state directory knows but the inventory no longer names:
    // what removing them would do is shown with or without --prune.
    let gone = crate::known::gone(&state, cluster)?;
    let records: Vec<kubeforge_plan::Manifest> = gone.iter().map(|k| k.manifest.clone()).collect();
    // With nodes to remove (whose removal is checked against the files
    // before any node is contacted) or offline, the files are rendered
    // first; otherwise while the connections open.
    let early = if offline || !records.is_empty() {
        let prepared = prepare_nodes(&state, cluster, pki, nodes)?;
        crate::known::check_removals(&prepared.rendered, &records, &prune.options())?;
        Some(prepared)
    } else {
        None
    };
    let (plan, prepared) = match early {
        Some(prepared) if offline => {
            let rendered = &prepared.rendered;
            let mut plan = kubeforge_apply::plan_offline(cluster, rendered, &opts)?;
            kubeforge_apply::with_removals(&mut plan, rendered, &records, &prune.options())?;
            (plan, prepared)
        }
        early => runtime()?.block_on(kubeforge_transport::closing_masters(async {
            let reach = reach(nodes);
            let connecting = online::connect_all(cluster, &state, &reach);
            let (prepared, t) =
                prepare_while(early, &state, cluster, pki, nodes, connecting).await?;
            let plan = kubeforge_apply::plan_online(
                cluster,
                &prepared.rendered,
                &opts,
                &t,
                nodes.reach.concurrency,
                &records,
                &prune.options(),
            )
            .await;
            Ok::<_, anyhow::Error>((plan?, prepared))
        }))??,
    };
    let events = &prepared.reconciled.events;
    match output {
        Output::Json => {
            let doc = serde_json::json!({
                "plan": plan,
                "pki": events,
                "warnings": loaded.warnings,
            });
            term.line(serde_json::to_string_pretty(&doc)?)?;
        }
        Output::Text => {
            let lines: Vec<String> = events.iter().filter_map(|e| pki_line(e, false)).collect();
            if !lines.is_empty() {
                term.line(format!("PKI ({}):", state.display()))?;
                for l in lines {
                    term.line(l)?;
                }
                term.line("")?;
            }
            term.raw(kubeforge_plan::to_text(&plan))?;
            if !plan.removals.is_empty() && !prune.prune {
                term.line("`kubeforge apply` refuses to run until these nodes are removed with --prune (or named in the inventory again).")?;
            }
        }
    }
    Ok(())
}
