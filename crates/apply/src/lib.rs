//! Apply: lock the nodes, gather facts read-only, check the hosts, plan,
//! and execute exactly that plan, phase by phase, each change behind a
//! health gate ([`apply`]).
//!
//! Every effect goes through [`kubeforge_transport::Transport`]. Nothing
//! here prints: progress is reported through [`Progress`].

mod api;
mod api_phase;
mod bootstrap;
pub mod certs;
mod cluster;
mod distribute;
pub mod drain;
pub mod etcd;
mod execute;
mod facts;
mod gates;
mod preflight;
pub mod remove;
pub mod status;

pub use api::{Api, Credentials, Request as ApiRequest, Response as ApiResponse};
pub use distribute::{prune_wire_cache, seed_wire_cache};
pub use execute::{execute, Applied};
pub use facts::{gather, Gathered};
pub use preflight::{preflight, warnings as preflight_warnings};

use kubeforge_plan::{Facts, Plan};
use kubeforge_render::Rendered;
use kubeforge_transport::{ops, Held, Transport, TransportError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The transports of the nodes, by node name.
pub type Transports = BTreeMap<String, Arc<dyn Transport>>;

#[derive(Debug, Clone)]
pub struct Options {
    /// Nodes worked on at the same time.
    pub concurrency: usize,
    /// How long a health gate waits before it fails.
    pub gate_timeout: Duration,
    /// How long a gate waits between two probes.
    pub poll_interval: Duration,
    /// How long to wait after reloading a load balancer before relying on
    /// its new configuration (nginx starts new workers right after the
    /// signal).
    pub lb_settle: Duration,
    /// The largest clock difference allowed between a node and this machine.
    pub max_clock_skew: Duration,
    /// How long draining a node may take (evictions a
    /// PodDisruptionBudget refuses are tried again until then).
    pub drain_timeout: Duration,
    /// Where binaries compressed for the wire are kept between runs (see
    /// [`prune_wire_cache`]); without one they are compressed
    /// again by every run that sends them.
    pub wire_cache: Option<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            concurrency: 32,
            gate_timeout: Duration::from_secs(120),
            poll_interval: Duration::from_millis(500),
            lb_settle: Duration::from_millis(800),
            max_clock_skew: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(300),
            wire_cache: None,
        }
    }
}

/// What happens, as it happens. The CLI turns these into progress bars or
/// log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub node: Option<String>,
    pub phase: String,
    pub kind: EventKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    PhaseStarted,
    Step,
    PhaseDone,
    /// A problem that does not stop the apply.
    Warning,
}

pub trait Progress: Send + Sync {
    fn event(&self, event: Event);
}

/// Progress that goes nowhere.
pub struct Quiet;

impl Progress for Quiet {
    fn event(&self, _: Event) {}
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Plan(#[from] kubeforge_plan::PlanError),
    #[error("pre-flight checks failed; nothing was changed:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Preflight(Vec<String>),
    #[error("{0}")]
    Gate(Box<GateFailure>),
    #[error("refused, nothing was changed: an upgrade starts from a healthy control plane (rule), and it is not:\n{}\n  help: bring it back first (`kubeforge status` shows what is wrong; an apply that changes no binary restarts what stopped), then run the upgrade again", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Unhealthy(Vec<String>),
    #[error("{0}")]
    Other(String),
}

/// A health gate that did not pass, with the unit's last journal lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateFailure {
    pub node: String,
    pub gate: String,
    pub unit: String,
    pub secs: u64,
    pub detail: String,
    pub journal: String,
}

impl std::fmt::Display for GateFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} did not pass within {} s: {}\n--- last journal lines of {} on {} ---\n{}",
            self.node, self.gate, self.secs, self.detail, self.unit, self.node, self.journal
        )
    }
}

/// Runs `f` for every item with at most `limit` at a time, started in the
/// items' order; returns the results in the items' order. An item that
/// ends starts the next one whether or not those before it have ended: a
/// slow node holds one place, not the whole window.
pub(crate) async fn bounded<T, R, F, Fut>(items: Vec<T>, limit: usize, f: F) -> Vec<R>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = R>,
{
    use futures::StreamExt;
    let f = &f;
    let mut done: Vec<(usize, R)> = futures::stream::iter(items.into_iter().enumerate())
        .map(|(i, item)| async move { (i, f(item).await) })
        .buffer_unordered(limit.max(1))
        .collect()
        .await;
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// [`bounded`] for fallible work: every item runs to its end, then the
/// first error (in the items' order) is returned, else every result.
pub(crate) async fn fan_out<T, R, F, Fut>(
    items: Vec<T>,
    limit: usize,
    f: F,
) -> Result<Vec<R>, ApplyError>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<R, ApplyError>>,
{
    bounded(items, limit, f).await.into_iter().collect()
}

/// The transport of a node.
pub(crate) fn transport<'a>(
    transports: &'a Transports,
    node: &str,
) -> Result<&'a dyn Transport, ApplyError> {
    transports
        .get(node)
        .map(|t| t.as_ref())
        .ok_or_else(|| ApplyError::Other(format!("no connection to node {node}")))
}

/// What [`apply`] works on.
pub struct Request<'a> {
    pub cluster: &'a kubeforge_inventory::Cluster,
    pub rendered: &'a Rendered,
    /// How the plan is made: the phases to run (all when empty), the
    /// batches of drained nodes, downgrades.
    pub plan: &'a kubeforge_plan::Options,
    pub transports: &'a Transports,
    pub opts: &'a Options,
    /// Who holds the nodes' apply lock, as another apply reports it.
    pub owner: &'a str,
    /// Records of the nodes to take out of the cluster (their transports
    /// are in `transports`), and how ([`kubeforge_plan::remove`]).
    pub gone: &'a [kubeforge_plan::Manifest],
    pub prune: kubeforge_plan::remove::PruneOptions,
}

/// What an [`apply`] found and did.
#[derive(Debug)]
pub struct Outcome {
    pub plan: Plan,
    /// `None` when the plan was empty: nothing was touched.
    pub applied: Option<Applied>,
    /// How long each step of the workflow took: the locks, the facts (and
    /// how many sums came from the nodes' caches), pre-flight and plan; the
    /// phases are in `applied`.
    pub timings: Vec<(String, Duration)>,
    /// Files found on the nodes, and how many of their sums came from the
    /// nodes' caches instead of being read.
    pub files_found: usize,
    pub files_cached: usize,
}

/// The whole apply: lock every node, gather facts, run the pre-flight
/// checks, plan, persist the control machine's state (`persist`, before
/// any node holds something the control machine does not; it sees the
/// plan first and may refuse it), execute the plan, and release the
/// locks (also when a step fails).
pub async fn apply(
    req: &Request<'_>,
    persist: &mut dyn FnMut(&Plan) -> Result<(), ApplyError>,
    progress: &dyn Progress,
) -> Result<Outcome, ApplyError> {
    let started = Instant::now();
    let locks = lock_all(req.transports, req.owner).await?;
    let lock_time = started.elapsed();
    let result = locked(req, persist, progress).await.map(|mut o| {
        o.timings.insert(0, ("lock".to_string(), lock_time));
        o
    });
    for l in locks {
        l.release().await;
    }
    result
}

async fn locked(
    req: &Request<'_>,
    persist: &mut dyn FnMut(&Plan) -> Result<(), ApplyError>,
    progress: &dyn Progress,
) -> Result<Outcome, ApplyError> {
    let mut timings = Vec::new();
    let started = Instant::now();
    let gathered = gather(req.transports, req.rendered, req.opts.concurrency, true).await?;
    timings.push(("facts".to_string(), started.elapsed()));
    let started = Instant::now();
    let facts = &gathered.facts;
    preflight(req.rendered, &gathered.hosts, facts, req.opts)?;
    for w in preflight_warnings(&gathered.hosts) {
        progress.event(Event {
            node: None,
            phase: "pre-flight".into(),
            kind: EventKind::Warning,
            message: w,
        });
    }
    let mut plan = kubeforge_plan::plan_with(&req.cluster.name, req.rendered, facts, req.plan)?;
    with_removals(&mut plan, req.rendered, req.gone, &req.prune)?;
    with_joins(&mut plan, req.rendered, facts, &req.prune)?;
    remove::precheck(&plan, req.transports).await?;
    timings.push(("pre-flight and plan".to_string(), started.elapsed()));
    let outcome = |plan, applied, timings| Outcome {
        plan,
        applied,
        timings,
        files_found: gathered.files,
        files_cached: gathered.cached,
    };
    if plan.is_empty() {
        return Ok(outcome(plan, None, timings));
    }
    persist(&plan)?;
    let cordons = plan
        .phases
        .iter()
        .flat_map(|p| &p.nodes)
        .any(|w| w.cordon.is_some());
    let creds = if plan.cluster_gates.is_some()
        || cordons
        || plan
            .phases
            .iter()
            .any(|p| p.api.is_some() || !p.ops.is_empty())
    {
        Some(Credentials::from_rendered(req.rendered)?)
    } else {
        None
    };
    let applied = execute(&plan, creds.as_ref(), req.transports, req.opts, progress).await?;
    Ok(outcome(plan, Some(applied), timings))
}

/// Takes the apply lock on every node at the same time; when one is held
/// elsewhere (or cannot be taken), releases those taken and fails.
pub(crate) async fn lock_all(
    transports: &Transports,
    owner: &str,
) -> Result<Vec<Box<dyn Held>>, ApplyError> {
    let tries = bounded(
        transports.iter().collect(),
        transports.len(),
        |(name, t)| async move { (name, t.lock(ops::LOCK_PATH, owner).await) },
    )
    .await;
    let mut locks = Vec::new();
    let mut refused = Vec::new();
    for (name, r) in tries {
        match r {
            Ok(l) => locks.push(l),
            Err(e) => refused.push(format!("{e}\n  (while locking {name})")),
        }
    }
    if refused.is_empty() {
        return Ok(locks);
    }
    for l in locks {
        l.release().await;
    }
    Err(ApplyError::Other(format!(
        "{}\nnothing was changed",
        refused.join("\n")
    )))
}

/// Adds the removal of the nodes `gone` to `plan` (refused, with every
/// reason, before anything is touched).
pub fn with_removals(
    plan: &mut Plan,
    rendered: &Rendered,
    gone: &[kubeforge_plan::Manifest],
    opts: &kubeforge_plan::remove::PruneOptions,
) -> Result<(), ApplyError> {
    let gone: Vec<&kubeforge_plan::Manifest> = gone.iter().collect();
    kubeforge_plan::remove::prune(plan, rendered, &gone, opts).map_err(|refused| {
        ApplyError::Other(
            refused
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })
}

/// New etcd members join the running cluster one at a time
/// ([`kubeforge_plan::remove::etcd_joins`]; refused before anything is
/// touched).
pub fn with_joins(
    plan: &mut Plan,
    rendered: &Rendered,
    facts: &Facts,
    opts: &kubeforge_plan::remove::PruneOptions,
) -> Result<(), ApplyError> {
    kubeforge_plan::remove::etcd_joins(plan, rendered, facts, opts).map_err(|refused| {
        ApplyError::Other(
            refused
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })
}

/// Plans against facts gathered read-only from the nodes (the `plan`
/// command; apply does the same under its locks), with the removal of the
/// nodes `gone`.
pub async fn plan_online(
    cluster: &kubeforge_inventory::Cluster,
    rendered: &Rendered,
    opts: &kubeforge_plan::Options,
    transports: &Transports,
    concurrency: usize,
    gone: &[kubeforge_plan::Manifest],
    prune: &kubeforge_plan::remove::PruneOptions,
) -> Result<Plan, ApplyError> {
    let gathered = gather(transports, rendered, concurrency, false).await?;
    let mut plan = kubeforge_plan::plan_with(&cluster.name, rendered, &gathered.facts, opts)?;
    with_removals(&mut plan, rendered, gone, prune)?;
    with_joins(&mut plan, rendered, &gathered.facts, prune)?;
    Ok(plan)
}

/// Plans as if every node were bare (no node contacted).
pub fn plan_offline(
    cluster: &kubeforge_inventory::Cluster,
    rendered: &Rendered,
    opts: &kubeforge_plan::Options,
) -> Result<Plan, ApplyError> {
    Ok(kubeforge_plan::plan_with(
        &cluster.name,
        rendered,
        &Facts::Offline,
        opts,
    )?)
}

#[cfg(test)]
mod tests {
    use super::bounded;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The first item waits until the other four have ended; with two at a
    /// time, they can only end if each one that ends starts the next.
    #[tokio::test]
    async fn a_slow_item_holds_one_place_and_results_keep_their_order() {
        let ended = AtomicUsize::new(0);
        let ended = &ended;
        let run = bounded((0..5).collect(), 2, |i: usize| async move {
            if i == 0 {
                while ended.load(Ordering::SeqCst) < 4 {
                    tokio::task::yield_now().await;
                }
            } else {
                ended.fetch_add(1, Ordering::SeqCst);
            }
            i * 10
        });
        let out = tokio::time::timeout(std::time::Duration::from_secs(10), run)
            .await
            .expect("the window moved past the slow item");
        assert_eq!(out, vec![0, 10, 20, 30, 40]);
    }
}
