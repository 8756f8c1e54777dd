//! `kubeforge reset`: take nodes down from their records in the state
//! directory: kubeforge's units stopped and disabled, its files and
//! binaries removed, and (unless --keep-data) the data of etcd, the
//! kubelet, containerd and kubeforge itself. The plan is shown; only
//! `--yes` acts.

use crate::args::{InventoryArgs, ReachArgs};
use crate::common::{init_log, load, runtime, Term};
use crate::online;
use anyhow::{bail, Result};
use kubeforge_plan::{Known, Manifest};

pub(crate) fn run(
    inv: &InventoryArgs,
    reach: &ReachArgs,
    only: &[String],
    keep_data: bool,
    yes: bool,
    term: &mut Term,
) -> Result<()> {
    let (loaded, state) = load(inv, term)?;
    let cluster = &loaded.cluster;
    let known = crate::known::load(&state)?;
    for n in only {
        if !known.iter().any(|k| &k.manifest.node == n) {
            bail!(
                "node {n} has no record in {}: kubeforge placed nothing there that it knows of\n  help: the records are written by `kubeforge apply`",
                state.join("nodes").display()
            );
        }
    }
    let chosen: Vec<Known> = known
        .into_iter()
        .filter(|k| only.is_empty() || only.contains(&k.manifest.node))
        .collect();
    if chosen.is_empty() {
        bail!(
            "no node has a record in {}: nothing to reset",
            state.join("nodes").display()
        );
    }
    let records: Vec<&Manifest> = chosen.iter().map(|k| &k.manifest).collect();
    let plan = kubeforge_plan::remove::reset(&cluster.name, &records, keep_data);
    let names: Vec<&str> = records.iter().map(|m| m.node.as_str()).collect();
    term.raw(kubeforge_plan::work_to_text(
        &format!(
            "Reset of {} of cluster \"{}\" (from their records in {}{}):",
            names.join(", "),
            cluster.name,
            state.join("nodes").display(),
            if keep_data { "; the data stays" } else { "" }
        ),
        &plan,
    ))?;
    if !yes {
        return term.line("\nNothing done: run again with --yes to reset.");
    }
    init_log(&state)?;
    let opts = kubeforge_apply::Options {
        concurrency: reach.concurrency,
        ..Default::default()
    };
    let owner = crate::common::lock_owner("reset", &cluster.name);
    let started = std::time::Instant::now();
    let applied = runtime()?.block_on(kubeforge_transport::closing_masters(async {
        let t = online::connect_known(&chosen, &state, &reach.reach()).await?;
        let bars = crate::progress::Bars::new();
        kubeforge_apply::remove::reset(&plan, &t, &opts, &owner, &bars)
            .await
            .map_err(online::explain)
    }))??;
    for n in &names {
        crate::known::forget(&state, n)?;
    }
    term.line(format!(
        "\nReset: {} in {:.1} s ({} steps run). A node still in the inventory is installed again by the next apply.",
        names.join(", "),
        started.elapsed().as_secs_f64(),
        applied.steps_run,
    ))
}
