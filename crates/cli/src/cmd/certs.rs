//! `kubeforge certs`: every certificate of the state directory and of the
//! nodes, checked; `kubeforge certs renew`: leaves reissued and rolled
//! out, or a CA rotation's next step.

use crate::args::{CertsArgs, CertsCommand, InventoryArgs, Output, ReachArgs};
use crate::common::{init_log, load, pki_line, runtime, Term};
use crate::online;
use anyhow::{anyhow, bail, Result};
use kubeforge_apply::certs::NodeCerts;
use kubeforge_apply::{ApplyError, Request};
use kubeforge_inventory::Cluster;
use kubeforge_pki::rotation::{self, Rotation, Step};
use kubeforge_pki::{catalog, CaId, CertState, Listed};
use std::path::Path;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

pub(crate) fn run(args: CertsArgs, term: &mut Term) -> Result<()> {
    match args.op {
        Some(CertsCommand::Renew {
            inv,
            reach,
            names,
            all,
            new_ca,
            step,
            yes,
            gate_timeout,
        }) => {
            let what = match new_ca {
                Some(ca) => Renewal::Rotate {
                    ca,
                    step: step.and_then(Step::from_number),
                },
                None if all => Renewal::All,
                None if !names.is_empty() => Renewal::Names(names),
                None => bail!(
                    "name the certificates to renew, or --all, or --new-ca CA to rotate a CA\n  help: kubeforge certs -i INVENTORY lists them"
                ),
            };
            renew(&inv, &reach, &what, yes, gate_timeout, term)
        }
        None => {
            let inv = args.inv.ok_or_else(|| {
                anyhow!("the inventory is missing\n  help: kubeforge certs -i INVENTORY")
            })?;
            check(&inv, &args.reach, args.local, args.output, term)
        }
    }
}

/// Rows padded to their columns' widths, the last column as it is.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut width = vec![0usize; columns];
    for r in rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&width)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn rfc3339(t: Option<OffsetDateTime>) -> String {
    t.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_else(|| "-".into())
}

/// Days left, as kubeadm shows them, or `EXPIRED`.
fn residual(t: Option<OffsetDateTime>, now: OffsetDateTime) -> String {
    match t {
        None => "-".into(),
        Some(t) if t <= now => "EXPIRED".into(),
        Some(t) => format!("{}d", (t - now).whole_days()),
    }
}

fn ca_name(ca: Option<CaId>) -> String {
    ca.map_or("-".into(), |c| c.name().to_string())
}

/// What `kubeforge certs` found.
#[derive(serde::Serialize)]
struct Found {
    /// The state directory's certificates.
    state_dir: Vec<Listed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotation: Option<Rotation>,
    /// Each node's, unless --local.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    nodes: Vec<NodeCerts>,
}

fn check(
    inv: &InventoryArgs,
    reach: &ReachArgs,
    local: bool,
    output: Output,
    term: &mut Term,
) -> Result<()> {
    let (loaded, state) = load(inv, term)?;
    let cluster = &loaded.cluster;
    let now = OffsetDateTime::now_utc();
    let (stored, listed) = kubeforge_pki::list(&state, cluster, now)?;
    let mut found = Found {
        state_dir: listed,
        rotation: stored.rotation,
        nodes: Vec::new(),
    };
    if !local {
        // The rendered trees say which files are where; what they must
        // hold is the state directory's copy.
        let prepared = crate::common::prepare(&state, cluster, Vec::new())?;
        let reach = reach.reach();
        found.nodes = runtime()?.block_on(kubeforge_transport::closing_masters(async {
            let (transports, unreachable) = online::connect_each(cluster, &state, &reach).await?;
            Ok::<_, anyhow::Error>(
                kubeforge_apply::certs::nodes(
                    &prepared.rendered,
                    &transports,
                    &unreachable,
                    &stored,
                    cluster,
                    reach.concurrency,
                )
                .await,
            )
        }))??;
    }
    let unread: Vec<&NodeCerts> = found.nodes.iter().filter(|n| n.error.is_some()).collect();
    let failed = if unread.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "could not read the certificates of {}",
            unread
                .iter()
                .map(|n| n.node.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    };
    if output == Output::Json {
        term.line(serde_json::to_string_pretty(&found)?)?;
        return failed;
    }
    let mut rows = vec![["CERTIFICATE", "CA", "EXPIRES", "RESIDUAL", "CHECK"]
        .map(String::from)
        .to_vec()];
    for r in &found.state_dir {
        rows.push(vec![
            r.name.clone(),
            ca_name(r.ca),
            rfc3339(r.not_after),
            residual(r.not_after, now),
            r.check.to_string(),
        ]);
    }
    term.raw(table(&rows))?;
    if let Some(r) = &found.rotation {
        term.line(format!("\n{}", rotation_status(r, &inv.inventory)))?;
    }
    if !found.nodes.is_empty() {
        let mut rows = vec![[
            "NODE",
            "FILE",
            "CERTIFICATE",
            "SUBJECT",
            "CA",
            "EXPIRES",
            "RESIDUAL",
            "CHECK",
        ]
        .map(String::from)
        .to_vec()];
        for n in &found.nodes {
            if let Some(e) = &n.error {
                rows.push(vec![
                    n.node.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    format!("unreachable: {}", e.lines().next().unwrap_or_default()),
                ]);
            }
            for c in &n.certificates {
                rows.push(vec![
                    c.node.clone(),
                    c.path.clone(),
                    c.name.clone(),
                    if c.subject.is_empty() {
                        "-".into()
                    } else {
                        c.subject.clone()
                    },
                    ca_name(c.ca),
                    rfc3339(c.not_after),
                    residual(c.not_after, now),
                    c.check.to_string(),
                ]);
            }
        }
        term.line("")?;
        term.raw(table(&rows))?;
    }
    let attention = found
        .state_dir
        .iter()
        .map(|r| &r.check)
        .chain(
            found
                .nodes
                .iter()
                .flat_map(|n| &n.certificates)
                .map(|c| &c.check),
        )
        .filter(|c| **c != CertState::Ok)
        .count();
    if attention > 0 {
        term.line(format!(
            "\n{attention} certificates need attention: `kubeforge apply` reissues those expiring, expired or lacking names and puts the state directory's on the nodes; `kubeforge certs renew` renews before that."
        ))?;
    }
    failed
}

/// A line on the rotation under way and what comes next.
fn rotation_status(r: &Rotation, inventory: &Path) -> String {
    let next = |step: Step| {
        format!(
            "next: {step}: kubeforge certs renew -i {} --new-ca {}",
            inventory.display(),
            r.ca.name()
        )
    };
    match (r.done, r.step.next()) {
        (false, _) => format!(
            "Rotation of the {}: {} has not reached every node; {}",
            r.ca,
            r.step,
            next(r.step)
        ),
        (true, Some(s)) => format!(
            "Rotation of the {}: {} done on every node; {}",
            r.ca,
            r.step,
            next(s)
        ),
        (true, None) => format!("Rotation of the {}: done", r.ca),
    }
}

/// What `certs renew` does.
enum Renewal {
    All,
    Names(Vec<String>),
    Rotate { ca: CaId, step: Option<Step> },
}

/// The state directory stems of the named certificates: a catalog name
/// (every one of a per-node certificate) or NAME/NODE.
fn stems(cluster: &Cluster, names: &[String]) -> Result<Vec<String>> {
    let requests = catalog::requests(cluster);
    let mut out: Vec<String> = Vec::new();
    for name in names {
        let (id, node) = match name.split_once('/') {
            Some((id, node)) => (id, Some(node)),
            None => (name.as_str(), None),
        };
        let matching: Vec<String> = requests
            .iter()
            .filter(|r| r.spec.id == id && (node.is_none() || r.node.as_deref() == node))
            .map(catalog::LeafRequest::stem)
            .collect();
        if matching.is_empty() {
            let is_ca = CaId::ALL
                .iter()
                .any(|c| [c.name(), c.common_name(), c.file_stem()].contains(&id));
            if is_ca {
                bail!(
                    "{name} is a CA: a CA is never renewed in place\n  help: rotate it without downtime with kubeforge certs renew --new-ca {}",
                    CaId::ALL
                        .iter()
                        .find(|c| [c.name(), c.common_name(), c.file_stem()].contains(&id))
                        .map_or("kubernetes", |c| c.name())
                );
            }
            let mut ids: Vec<&str> = Vec::new();
            for r in &requests {
                if !ids.contains(&r.spec.id) {
                    ids.push(r.spec.id);
                }
            }
            let per_node: Vec<&str> = requests
                .iter()
                .filter(|r| r.node.is_some())
                .map(|r| r.spec.id)
                .collect();
            let known = requests.iter().any(|r| r.spec.id == id && node.is_some());
            let why = if known {
                format!(
                    "{id} has no certificate for node {}",
                    node.unwrap_or_default()
                )
            } else {
                format!("unknown certificate \"{name}\"")
            };
            bail!(
                "{why}\n  help: valid names: {}\n  (per-node ones also as NAME/NODE, e.g. {}/{})",
                ids.join(", "),
                per_node.first().copied().unwrap_or("etcd-server"),
                requests
                    .iter()
                    .find_map(|r| r.node.clone())
                    .unwrap_or_else(|| "NODE".into())
            );
        }
        for s in matching {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    Ok(out)
}

fn renew(
    inv: &InventoryArgs,
    reach: &ReachArgs,
    what: &Renewal,
    yes: bool,
    gate_timeout: u64,
    term: &mut Term,
) -> Result<()> {
    let (loaded, state) = load(inv, term)?;
    let cluster = &loaded.cluster;
    let mut opts = kubeforge_pki::Options::default();
    let (title, rotation) = match what {
        Renewal::All => {
            opts.renew = catalog::requests(cluster)
                .iter()
                .map(catalog::LeafRequest::stem)
                .collect();
            (
                format!(
                    "Renewal of every leaf certificate of cluster \"{}\" ({}):",
                    cluster.name,
                    opts.renew.len()
                ),
                None,
            )
        }
        Renewal::Names(names) => {
            opts.renew = stems(cluster, names)?;
            (
                format!(
                    "Renewal of {} of cluster \"{}\":",
                    names.join(", "),
                    cluster.name
                ),
                None,
            )
        }
        Renewal::Rotate { ca, step } => {
            let r = rotation::next_step(rotation::recorded(&state)?, *ca, *step)
                .map_err(|e| anyhow!("{e}"))?;
            opts.rotation = Some(r);
            (
                format!(
                    "Rotation of the {} of cluster \"{}\", {}: {}.",
                    ca,
                    cluster.name,
                    r.step,
                    r.step.what(*ca)
                ),
                Some(r),
            )
        }
    };
    let prepared = kubeforge_render::prepare(&state, cluster, &opts)?;
    term.line(&title)?;
    for e in &prepared.reconciled.events {
        if let Some(line) = pki_line(e, false) {
            term.line(line)?;
        }
    }
    term.line("")?;
    let rendered = &prepared.rendered;
    let beyond = |plan: &kubeforge_plan::Plan| -> Result<(), String> {
        if let Some(r) = rotation.filter(|r| r.step == Step::Drop && r.ca == CaId::Kubernetes) {
            let late = kubeforge_plan::renewal::kubelets_joining_again(plan, rendered);
            if !late.is_empty() {
                return Err(format!(
                    "the kubelets of {} still hold certificates of the old {}, which step 3 drops; nothing was changed\n  help: run step 2 again (kubeforge certs renew -i {} --new-ca {} --step 2 --yes): they join again with the new CA",
                    late.join(", "),
                    r.ca,
                    inv.inventory.display(),
                    r.ca.name()
                ));
            }
        }
        let extra = kubeforge_plan::renewal::beyond_certificates(plan, rendered);
        if extra.is_empty() {
            return Ok(());
        }
        Err(format!(
            "the nodes differ from the inventory in more than certificates; nothing was changed:\n  {}\n  help: run kubeforge apply first (kubeforge plan shows it all), then renew",
            extra.join("\n  ")
        ))
    };
    let reach = reach.reach();
    if !yes {
        let plan = runtime()?.block_on(kubeforge_transport::closing_masters(async {
            let t = online::connect_all(cluster, &state, &reach).await?;
            kubeforge_apply::plan_online(
                cluster,
                rendered,
                &kubeforge_plan::Options::default(),
                &t,
                reach.concurrency,
                &[],
                &kubeforge_plan::remove::PruneOptions::default(),
            )
            .await
            .map_err(online::explain)
        }))??;
        beyond(&plan).map_err(|e| anyhow!("{e}"))?;
        term.raw(kubeforge_plan::to_text(&plan))?;
        if let Some(r) = rotation {
            term.line(format!("\n{}", after_step_note(r, false)))?;
        }
        return term.line("\nNothing done (the state directory neither): run again with --yes.");
    }
    init_log(&state)?;
    let opts = kubeforge_apply::Options {
        concurrency: reach.concurrency,
        gate_timeout: Duration::from_secs(gate_timeout),
        ..Default::default()
    };
    let owner = crate::common::lock_owner("certs renew", &cluster.name);
    let started = Instant::now();
    let mut persisted = false;
    let outcome = {
        let persisted = &mut persisted;
        let term = &mut *term;
        let state = &state;
        let prepared = &prepared;
        runtime()?.block_on(kubeforge_transport::closing_masters(async {
            let transports = online::connect_all(cluster, state, &reach).await?;
            let plan_opts = kubeforge_plan::Options::default();
            let req = Request {
                cluster,
                rendered,
                plan: &plan_opts,
                transports: &transports,
                opts: &opts,
                owner: &owner,
                gone: &[],
                prune: kubeforge_plan::remove::PruneOptions::default(),
            };
            // The plan is shown, then the state directory written before
            // any node is touched.
            let mut persist = |plan: &kubeforge_plan::Plan| {
                beyond(plan).map_err(ApplyError::Other)?;
                term.raw(kubeforge_plan::to_text(plan))
                    .map_err(|e| ApplyError::Other(e.to_string()))?;
                prepared
                    .persist(state)
                    .map_err(|e| ApplyError::Other(e.to_string()))?;
                crate::known::save(state, cluster, plan)
                    .map_err(|e| ApplyError::Other(format!("{e:#}")))?;
                *persisted = true;
                Ok(())
            };
            let bars = online::Bars::new();
            kubeforge_apply::apply(&req, &mut persist, &bars)
                .await
                .map_err(online::explain)
        }))??
    };
    if !persisted {
        // Nothing on the nodes changes (a certificate of the control
        // machine only, or a step run again that had reached every node).
        term.raw(kubeforge_plan::to_text(&outcome.plan))?;
        prepared.persist(&state)?;
    }
    let secs = started.elapsed().as_secs_f64();
    let done = match &outcome.applied {
        Some(a) => format!(
            "{} files written, {} units restarted, {} steps run",
            a.files_written,
            a.restarted.len(),
            a.steps_run
        ),
        None => "nothing to change on the nodes".into(),
    };
    match rotation {
        Some(r) => {
            rotation::finish_step(&state, r)?;
            term.line(format!(
                "\n{} of the {} rotation done in {secs:.1} s: {done}.",
                r.step, r.ca
            ))?;
            term.line(after_step_note(r, true))
        }
        None => term.line(format!("\nRenewed in {secs:.1} s: {done}.")),
    }
}

/// What an admin does after a rotation's step (or before it, `done`
/// false).
fn after_step_note(r: Rotation, done: bool) -> String {
    let mut s = String::new();
    match r.step {
        Step::Trust => {
            if done {
                s.push_str("Next: step 2 of 3 reissues every certificate of the CA from the new one: kubeforge certs renew --new-ca ");
                s.push_str(r.ca.name());
                s.push('.');
            }
            if r.ca == CaId::Kubernetes {
                s.push_str(if done { "\n" } else { "" });
                s.push_str("Clients outside the cluster need the new CA before step 2, when the API servers start to present certificates of the new CA: a kubeconfig written now (kubeforge kubeconfig) trusts both.");
            }
        }
        Step::Reissue => {
            if done {
                s.push_str("Next: step 3 of 3 drops the old CA: kubeforge certs renew --new-ca ");
                s.push_str(r.ca.name());
                s.push('.');
            }
            if r.ca == CaId::Kubernetes {
                s.push_str(if done { "\n" } else { "" });
                s.push_str("A client certificate of the old CA (an old admin kubeconfig) is refused after step 3: write a new one (kubeforge kubeconfig).");
            }
        }
        Step::Drop => {
            if done {
                s.push_str("The rotation is complete.");
            }
        }
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ha() -> Cluster {
        let path =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../inventories/ha.toml");
        kubeforge_inventory::load(&path).unwrap().cluster
    }

    #[test]
    fn names_to_renew() {
        let c = ha();
        let s =
            |names: &[&str]| stems(&c, &names.iter().map(|n| n.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&["apiserver"]).unwrap(), ["apiserver"]);
        assert_eq!(
            s(&["etcd-server", "apiserver", "etcd-server/cp2"]).unwrap(),
            [
                "nodes/cp1/etcd-server",
                "nodes/cp2/etcd-server",
                "nodes/cp3/etcd-server",
                "apiserver"
            ]
        );
        assert_eq!(s(&["etcd-peer/cp3"]).unwrap(), ["nodes/cp3/etcd-peer"]);
        let e = s(&["apiservr"]).unwrap_err().to_string();
        assert!(e.contains("unknown certificate \"apiservr\""), "{e}");
        assert!(
            e.contains("valid names: apiserver, apiserver-kubelet-client"),
            "{e}"
        );
        assert!(e.contains("super-admin"), "{e}");
        let e = s(&["etcd-server/worker1"]).unwrap_err().to_string();
        assert!(
            e.contains("etcd-server has no certificate for node worker1"),
            "{e}"
        );
        for ca in ["kubernetes", "etcd-ca", "front-proxy-ca"] {
            let e = s(&[ca]).unwrap_err().to_string();
            assert!(e.contains("is a CA: a CA is never renewed in place"), "{e}");
            assert!(e.contains("--new-ca"), "{e}");
        }
    }

    #[test]
    fn rotation_lines() {
        let r = Rotation {
            ca: CaId::Kubernetes,
            step: Step::Trust,
            done: true,
        };
        let inv = Path::new("inv.toml");
        assert_eq!(
            rotation_status(&r, inv),
            "Rotation of the kubernetes CA: step 1 of 3 (trust the new CA beside the old one) done on every node; next: step 2 of 3 (reissue every certificate from the new CA): kubeforge certs renew -i inv.toml --new-ca kubernetes"
        );
        let r = Rotation {
            step: Step::Reissue,
            done: false,
            ..r
        };
        assert!(rotation_status(&r, inv).contains("has not reached every node; next: step 2 of 3"));
        assert!(after_step_note(r, false).contains("refused after step 3"));
    }

    #[test]
    fn tables_and_residual_time() {
        let rows = vec![
            vec!["A".to_string(), "long cell".into(), "x".into()],
            vec!["bb".to_string(), "c".into(), "".into()],
        ];
        assert_eq!(table(&rows), "A   long cell  x\nbb  c\n");
        let now = OffsetDateTime::now_utc();
        assert_eq!(
            residual(
                Some(now + time::Duration::days(30) + time::Duration::hours(1)),
                now
            ),
            "30d"
        );
        assert_eq!(
            residual(Some(now - time::Duration::days(1)), now),
            "EXPIRED"
        );
        assert_eq!(residual(None, now), "-");
    }
}
