//! Executes exactly a plan: its phases in order, each walking its nodes
//! the way its strategy says, on each node only the work the plan lists,
//! each change behind the gates the plan names; the cluster gate last.
//! Nothing here looks at the table or the inventory again.

use crate::api::{Api, Credentials};
use crate::distribute::Staged;
use crate::{cluster, drain, gates};
use crate::{fan_out, transport, ApplyError, Event, EventKind, Options, Progress, Transports};
use kubeforge_plan::{
    Content, Cordon, GateRun, HealthyBefore, LbEdit, LbReload, NodeWork, PhasePlan, Plan,
};
use kubeforge_render::{Stage, Strategy, Vip};
use kubeforge_transport::blobs;
use kubeforge_transport::gather::CACHE;
use kubeforge_transport::{ops, Script, Transport};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long the health an upgrade starts from may take to show.
const HEALTHY_BEFORE: Duration = Duration::from_secs(10);

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub steps_run: usize,
    pub files_written: usize,
    /// (node, unit) in the order they were stopped, started, restarted or
    /// reloaded.
    pub stopped: Vec<(String, String)>,
    pub started: Vec<(String, String)>,
    pub restarted: Vec<(String, String)>,
    pub reloaded: Vec<(String, String)>,
    /// Addon objects applied to the API.
    pub api_applied: usize,
    /// Kubelet serving certificate requests approved.
    pub csrs_approved: usize,
    /// Nodes cordoned and drained (and uncordoned again), in order.
    pub drained: Vec<String>,
    /// Pods evicted from them.
    pub evicted: usize,
    /// What passed with a warning (cluster gates, a load balancer not
    /// reloaded).
    pub warnings: Vec<String>,
    /// How long each phase took (and the cluster gate), in order.
    pub timings: Vec<(String, Duration)>,
}

impl Applied {
    pub(crate) fn merge(&mut self, from: Applied) {
        self.steps_run += from.steps_run;
        self.files_written += from.files_written;
        self.stopped.extend(from.stopped);
        self.started.extend(from.started);
        self.restarted.extend(from.restarted);
        self.reloaded.extend(from.reloaded);
        self.api_applied += from.api_applied;
        self.csrs_approved += from.csrs_approved;
        self.drained.extend(from.drained);
        self.evicted += from.evicted;
        self.warnings.extend(from.warnings);
        self.timings.extend(from.timings);
    }
}

/// One execution of a plan.
pub(crate) struct Run<'a> {
    pub transports: &'a Transports,
    pub opts: &'a Options,
    pub progress: &'a dyn Progress,
    pub creds: Option<&'a Credentials>,
    /// Every node's address (node-to-node transfers).
    pub addresses: BTreeMap<String, String>,
    /// The binaries put into the nodes' blob stores so far.
    pub staged: tokio::sync::Mutex<Staged>,
    /// Each phase's binaries, sent ahead ([`Run::distribute`]).
    pub sent: Sent,
    /// The bundle's files the nodes hold in place ([`Plan::sources`]).
    pub sources: &'a BTreeMap<String, Vec<(String, String)>>,
}

/// The outcome of sending each phase's binaries ahead, by phase; a phase
/// takes its own before its node work.
#[derive(Default)]
pub(crate) struct Sent {
    done: std::sync::Mutex<BTreeMap<String, Option<ApplyError>>>,
    notify: tokio::sync::Notify,
    /// Set when a phase failed: nothing more is sent.
    pub(crate) stop: std::sync::atomic::AtomicBool,
}

impl Sent {
    pub(crate) fn finish(&self, phase: &str, outcome: Result<(), ApplyError>) {
        if let Ok(mut d) = self.done.lock() {
            d.insert(phase.to_string(), outcome.err());
        }
        self.notify.notify_waiters();
    }

    /// A blob arrived somewhere: the nodes waiting for theirs look again.
    pub(crate) fn arrived(&self) {
        self.notify.notify_waiters();
    }

    /// Waits until `phase`'s binaries are in place (or their sending
    /// failed: that error).
    async fn wait(&self, phase: &str) -> Result<(), ApplyError> {
        self.wait_until(phase, || async { false }).await
    }

    /// Waits until `phase`'s binaries are in place, or `ready` says the
    /// ones a caller needs are; an error when their sending failed (the
    /// error itself to the first caller that sees it).
    async fn wait_until<F, R>(&self, phase: &str, ready: F) -> Result<(), ApplyError>
    where
        F: Fn() -> R,
        R: std::future::Future<Output = bool>,
    {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Ok(mut d) = self.done.lock() {
                if let Some(outcome) = d.get_mut(phase) {
                    return match outcome.take() {
                        Some(e) => {
                            *outcome = Some(ApplyError::Other(format!(
                                "the binaries of phase {phase} were not all sent (the error above)"
                            )));
                            Err(e)
                        }
                        None => Ok(()),
                    };
                }
            }
            if ready().await {
                return Ok(());
            }
            notified.await;
        }
    }
}

impl Run<'_> {
    pub(crate) fn t(&self, node: &str) -> Result<&dyn Transport, ApplyError> {
        transport(self.transports, node)
    }

    pub(crate) fn address(&self, node: &str) -> Result<String, ApplyError> {
        self.addresses
            .get(node)
            .cloned()
            .ok_or_else(|| ApplyError::Other(format!("no address for node {node}")))
    }

    pub(crate) fn event(&self, phase: &str, node: Option<&str>, kind: EventKind, message: String) {
        if kind == EventKind::Step {
            tracing::info!(node, phase, "{message}");
        }
        self.progress.event(Event {
            node: node.map(str::to_string),
            phase: phase.to_string(),
            kind,
            message,
        });
    }

    pub(crate) fn step(&self, phase: &str, node: &str, message: String) {
        self.event(phase, Some(node), EventKind::Step, message);
    }

    /// A node's work in a phase, in the order [`NodeWork`] documents.
    /// `no_block`: units are started without waiting for them (members of
    /// a new cluster that wait for each other).
    async fn node_work(
        &self,
        phase: &str,
        w: &NodeWork,
        no_block: bool,
    ) -> Result<Applied, ApplyError> {
        let t = self.t(&w.node)?;
        let mut done = Applied::default();
        for u in &w.stop {
            self.step(phase, &w.node, format!("stop {u}"));
            ops::systemctl(t, &["stop", u]).await?;
            done.stopped.push((w.node.clone(), u.clone()));
        }
        // The steps before the files, every file (the binaries from the
        // node's blob store, sent ahead; the rest with the request), the
        // modes and owners to correct and the steps after the files: one
        // round trip.
        let before = self.stage_parts(phase, w, Stage::BeforeFiles);
        done.steps_run += before.len();
        let mut batch = Vec::with_capacity(w.puts.len());
        for p in &w.puts {
            self.step(phase, &w.node, format!("write {}", p.path));
            let (staged, checked) = {
                let s = self.staged.lock().await;
                (s.has(&w.node, &p.sha256), s.checked(&w.node, &p.sha256))
            };
            let source = match &p.content {
                Content::File(path) if staged => {
                    let size = tokio::fs::metadata(path)
                        .await
                        .map(|m| m.len())
                        .unwrap_or(0);
                    ops::Source::Blob {
                        sha256: p.sha256.clone(),
                        size,
                        checked,
                    }
                }
                Content::Bytes(b) => ops::Source::Bytes(b.clone()),
                Content::File(path) => {
                    ops::Source::Bytes(tokio::fs::read(path).await.map_err(|e| {
                        ApplyError::Other(format!(
                            "reading {} for {} on {}: {e}",
                            path.display(),
                            p.path,
                            w.node
                        ))
                    })?)
                }
            };
            batch.push(ops::PutFile {
                path: p.path.clone(),
                mode: p.mode,
                owner: p.owner.clone(),
                source,
            });
        }
        let mut parts = before;
        let mut stdin = Vec::new();
        if let Some((part, input)) = ops::put_all_part(&batch, blobs::STORE, Some(CACHE)) {
            parts.push(part);
            stdin = input;
        }
        for c in &w.chmods {
            self.step(phase, &w.node, format!("chmod {:04o} {}", c.mode, c.path));
            parts.push(ops::Part::chmod(&c.path, c.mode, &c.owner));
        }
        let after = self.stage_parts(phase, w, Stage::AfterFiles);
        done.steps_run += after.len();
        parts.extend(after);
        ops::run_parts(t, parts, stdin).await?;
        done.files_written += batch.len();
        // Reloaded when a unit file changed, enabled in one call and
        // started one by one in the units' order: one round trip.
        if w.daemon_reload {
            self.step(phase, &w.node, "systemctl daemon-reload".into());
        }
        for u in &w.start {
            self.step(phase, &w.node, format!("enable and start {u}"));
        }
        match ops::reload_and_start(t, w.daemon_reload, &w.start, no_block).await {
            Ok(()) => {}
            Err(ops::StartError::Unit { unit, detail }) if !no_block => {
                let what = format!("systemctl start {unit}");
                let detail = format!("{}: `{what}` failed: {detail}", w.node);
                return Err(gates::failure(t, &what, &unit, 0, detail).await);
            }
            Err(ops::StartError::Unit { unit, detail }) => {
                return Err(ApplyError::Other(format!(
                    "{}: `systemctl start --no-block {unit}` failed: {detail}",
                    w.node
                )))
            }
            Err(ops::StartError::Transport(e)) => return Err(e.into()),
        }
        done.started
            .extend(w.start.iter().map(|u| (w.node.clone(), u.clone())));
        for u in &w.restart {
            self.step(phase, &w.node, format!("restart {u}"));
            ops::systemctl(t, &["restart", u]).await?;
            done.restarted.push((w.node.clone(), u.clone()));
        }
        for u in &w.reload {
            self.step(phase, &w.node, format!("reload {u}"));
            ops::systemctl(t, &["reload", u]).await?;
            done.reloaded.push((w.node.clone(), u.clone()));
        }
        // Steps that need the phase's units running (importing the
        // bundle's images into containerd).
        done.steps_run += self.steps(phase, w, Stage::AfterUnits).await?;
        Ok(done)
    }

    /// The node's steps of one stage, in order, as parts of a round trip
    /// (a step may take a while: importing large image archives, restoring
    /// a snapshot).
    fn stage_parts(&self, phase: &str, w: &NodeWork, stage: Stage) -> Vec<ops::Part> {
        w.steps
            .iter()
            .filter(|s| s.stage == stage)
            .map(|s| {
                self.step(phase, &w.node, format!("run: {}", s.name));
                ops::Part::step(&s.name, &s.script)
            })
            .collect()
    }

    /// The node's steps of one stage, in order, in one round trip.
    async fn steps(&self, phase: &str, w: &NodeWork, stage: Stage) -> Result<usize, ApplyError> {
        let t = self.t(&w.node)?;
        let parts = self.stage_parts(phase, w, stage);
        let n = parts.len();
        ops::run_parts(t, parts, Vec::new()).await?;
        Ok(n)
    }

    /// Every gate, each on its node, at the same time (bounded).
    async fn gates(&self, phase: &str, gates: &[GateRun]) -> Result<(), ApplyError> {
        fan_out(
            gates.iter().collect(),
            self.opts.concurrency,
            |g| async move {
                self.step(phase, &g.node, format!("waiting for {}", g.gate.name));
                gates::wait(self.t(&g.node)?, &g.gate, self.opts).await
            },
        )
        .await
        .map(|_| ())
    }

    /// Whether every binary the node's work installs is in its store.
    async fn node_staged(&self, w: &NodeWork) -> bool {
        let staged = self.staged.lock().await;
        w.puts
            .iter()
            .all(|p| crate::distribute::sent_ahead(p).is_none() || staged.has(&w.node, &p.sha256))
    }

    /// A node's work, then its gates.
    async fn node_gated(&self, phase: &str, w: &NodeWork) -> Result<Applied, ApplyError> {
        let done = self.node_work(phase, w, false).await?;
        self.gates(phase, &w.gates).await?;
        Ok(done)
    }

    /// A node of a drain-nodes phase: with a cordon, cordoned and drained
    /// first, then its work and gates, then Ready in the API (by a status
    /// its restarted kubelet reported) and uncordoned.
    async fn node_drained(&self, phase: &str, w: &NodeWork) -> Result<Applied, ApplyError> {
        let Some(c) = &w.cordon else {
            return self.node_gated(phase, w).await;
        };
        let creds = self
            .creds
            .ok_or_else(|| ApplyError::Other(format!("draining {}: no API credentials", w.node)))?;
        let api = Api {
            t: self.t(&c.via)?,
            creds,
            port: c.port,
        };
        self.step(
            phase,
            &w.node,
            format!("cordon {} and evict its pods", w.node),
        );
        let opts = drain::DrainOptions {
            timeout: self.opts.drain_timeout,
            poll_interval: self.opts.poll_interval,
        };
        let drained = drain::drain(&api, &w.node, &opts).await?;
        let mut done = Applied {
            warnings: drained.warnings.clone(),
            evicted: drained.evicted.len(),
            ..Applied::default()
        };
        let since = if c.fresh_status && !drained.absent {
            Some(self.clock(&w.node).await?)
        } else {
            None
        };
        done.merge(self.node_gated(phase, w).await?);
        if !drained.absent {
            self.ready(phase, &api, &w.node, c, since).await?;
            self.step(phase, &w.node, format!("uncordon {}", w.node));
            drain::uncordon(&api, &w.node).await?;
            done.drained.push(w.node.clone());
        }
        Ok(done)
    }

    /// The node's clock, in seconds since the epoch.
    async fn clock(&self, node: &str) -> Result<i64, ApplyError> {
        let out = self
            .t(node)?
            .run_ok(Script::new("read the node's clock", "date +%s"))
            .await?;
        out.stdout_str().trim().parse().map_err(|_| {
            ApplyError::Other(format!(
                "{node}: the clock reads {:?}, not seconds",
                out.stdout_str().trim()
            ))
        })
    }

    /// Waits until `node` is Ready in the API (with `since`, by a status
    /// reported at or after it).
    async fn ready(
        &self,
        phase: &str,
        api: &Api<'_>,
        node: &str,
        c: &Cordon,
        since: Option<i64>,
    ) -> Result<(), ApplyError> {
        self.step(
            phase,
            node,
            format!(
                "waiting for {node} to be Ready in the API (through {})",
                c.via
            ),
        );
        let path = format!("/api/v1/nodes/{node}");
        let probe = || async {
            match api.get("read the node's Ready condition", &path).await {
                Ok(r) if r.ok() => match r.json() {
                    Some(v) => match cluster::node_ready_since(&v, since) {
                        Ok(()) => gates::Probe::Pass(()),
                        Err(why) => gates::Probe::Wait(why),
                    },
                    None => gates::Probe::Wait(r.message()),
                },
                Ok(r) => gates::Probe::Wait(r.message()),
                Err(e) => gates::Probe::Wait(e.to_string()),
            }
        };
        match gates::poll(self.opts, probe).await {
            Ok(()) => Ok(()),
            Err(why) => {
                let gate = format!("node {node} Ready in the API after its restart");
                let secs = self.opts.gate_timeout.as_secs();
                Err(gates::failure(self.t(node)?, &gate, "kubelet", secs, why).await)
            }
        }
    }

    /// Before an upgrade: every gate the plan names passes now (each tried
    /// for a few seconds), and the VIP gate; else the upgrade is refused
    /// with every problem found.
    async fn healthy_before(&self, h: &HealthyBefore) -> Result<(), ApplyError> {
        const PHASE: &str = "health before the upgrade";
        self.event(
            PHASE,
            None,
            EventKind::PhaseStarted,
            format!("{} gates", h.gates.len()),
        );
        let opts = Options {
            gate_timeout: self.opts.gate_timeout.min(HEALTHY_BEFORE),
            ..self.opts.clone()
        };
        let problem = |e: ApplyError| match e {
            ApplyError::Gate(g) => format!("{}: {} does not pass: {}", g.node, g.gate, g.detail),
            e => e.to_string(),
        };
        let results = crate::bounded(h.gates.iter().collect(), self.opts.concurrency, |g| {
            let opts = &opts;
            async move {
                self.step(PHASE, &g.node, format!("checking {}", g.gate.name));
                match self.t(&g.node) {
                    Ok(t) => gates::wait(t, &g.gate, opts).await,
                    Err(e) => Err(e),
                }
            }
        })
        .await;
        let mut problems: Vec<String> = results
            .into_iter()
            .filter_map(|r| r.err().map(problem))
            .collect();
        if let Some(vip) = &h.vip {
            if let Err(e) = self.vip_gate_with(PHASE, vip, &opts).await {
                problems.push(problem(e));
            }
        }
        if !problems.is_empty() {
            return Err(ApplyError::Unhealthy(problems));
        }
        self.event(PHASE, None, EventKind::PhaseDone, String::new());
        Ok(())
    }

    /// Writes each LB node's drain file (drained, or as rendered again)
    /// and reloads what applies it, then lets the LB settle.
    async fn lb(
        &self,
        phase: &str,
        node: &str,
        edits: &[LbEdit],
        drained: bool,
    ) -> Result<(), ApplyError> {
        for e in edits {
            let t = self.t(&e.node)?;
            self.step(
                phase,
                &e.node,
                if drained {
                    format!("take {node} out of the load balancer")
                } else {
                    format!("put {node} back into the load balancer")
                },
            );
            let content = if drained { &e.drained } else { &e.restored };
            ops::put_cached(t, &e.path, content.clone(), e.mode, &e.owner, Some(CACHE)).await?;
            for u in &e.reload {
                ops::systemctl(t, &["reload", u]).await?;
            }
        }
        if !edits.is_empty() {
            tokio::time::sleep(self.opts.lb_settle).await;
        }
        Ok(())
    }

    /// An LB node reloads (if it runs) so that it forgets the connections
    /// refused while the servers behind it were starting. One that cannot
    /// is a warning: it takes them back by itself after `fail_timeout`.
    async fn lb_reload(&self, phase: &str, r: &LbReload) -> Applied {
        let mut done = Applied::default();
        for u in &r.units {
            self.step(phase, &r.node, format!("reload {u}: the new servers join"));
            let reloaded = match self.t(&r.node) {
                Ok(t) => ops::systemctl(t, &["try-reload-or-restart", u])
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match reloaded {
                Ok(_) => done.reloaded.push((r.node.clone(), u.clone())),
                Err(e) => done.warnings.push(format!(
                    "{}: {u} not reloaded after the new servers started ({e}); it sends them requests again once its fail_timeout is over",
                    r.node
                )),
            }
        }
        done
    }

    /// Exactly one LB node holds the VIP, then the API answers through it.
    async fn vip_gate(&self, phase: &str, vip: &Vip) -> Result<(), ApplyError> {
        self.vip_gate_with(phase, vip, self.opts).await
    }

    async fn vip_gate_with(
        &self,
        phase: &str,
        vip: &Vip,
        opts: &Options,
    ) -> Result<(), ApplyError> {
        let Some(first) = vip.holders.first() else {
            return Ok(());
        };
        self.step(
            phase,
            first,
            format!("waiting for exactly one LB node to hold {}", vip.address),
        );
        let probe = || async {
            let mut holders = Vec::new();
            let mut errors = Vec::new();
            for n in &vip.holders {
                let answer = match self.t(n) {
                    Ok(t) => t
                        .run(
                            Script::new("check the VIP", gates::HOLDS_ADDRESS)
                                .args([vip.address.clone()]),
                        )
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match answer {
                    Ok(o) if o.stdout_str().trim() == "yes" => holders.push(n.as_str()),
                    Ok(_) => {}
                    Err(e) => errors.push(e),
                }
            }
            if holders.len() == 1 && errors.is_empty() {
                gates::Probe::Pass(())
            } else {
                gates::Probe::Wait(format!(
                    "held by [{}] {}",
                    holders.join(", "),
                    errors.join("; ")
                ))
            }
        };
        if let Err(why) = gates::poll(opts, probe).await {
            let gate = format!("the VIP {} held by exactly one LB node", vip.address);
            let secs = opts.gate_timeout.as_secs();
            let mut f = gates::failure(self.t(first)?, &gate, "keepalived", secs, why).await;
            if let ApplyError::Gate(g) = &mut f {
                g.node = vip.holders.join(", ");
            }
            return Err(f);
        }
        if let Some((node, gate)) = &vip.ready {
            self.step(phase, node, format!("waiting for {}", gate.name));
            gates::wait(self.t(node)?, gate, opts).await?;
        }
        Ok(())
    }

    /// One phase, walked the way its strategy says.
    async fn phase(&self, p: &PhasePlan) -> Result<Applied, ApplyError> {
        let phase = p.phase.as_str();
        let mut done = Applied::default();
        for op in &p.ops {
            done.merge(self.op(phase, op).await?);
        }
        // The nodes of a parallel phase each wait for their own binaries
        // only (below). Those of a drain-nodes phase wait for them all: on
        // a new cluster the control-plane nodes' kubelets, started sooner,
        // would take the CPU from the apiservers starting beside them.
        if p.strategy != Strategy::Parallel {
            self.sent.wait(phase).await?;
        }
        match p.strategy {
            Strategy::Api => {
                if let Some(api) = &p.api {
                    done.merge(self.api_phase(phase, api).await?);
                }
            }
            // Each node starts once its own binaries are in its store,
            // while the later nodes' are still on their way. The nodes with
            // the most to do go first: a node added to a large cluster
            // does not wait behind the others' small edits (hosts, routes).
            Strategy::Parallel => {
                let mut nodes: Vec<&NodeWork> = p.nodes.iter().collect();
                nodes.sort_by_key(|w| std::cmp::Reverse(w.size()));
                let all = fan_out(nodes, self.opts.concurrency, |w| async move {
                    self.sent.wait_until(phase, || self.node_staged(w)).await?;
                    self.node_gated(phase, w).await
                })
                .await?;
                for a in all {
                    done.merge(a);
                }
            }
            Strategy::OneAtATime => {
                for w in &p.nodes {
                    done.merge(self.node_gated(phase, w).await?);
                }
            }
            Strategy::Together => {
                let all = fan_out(p.nodes.iter().collect(), self.opts.concurrency, |w| {
                    self.node_work(phase, w, true)
                })
                .await?;
                for a in all {
                    done.merge(a);
                }
                let mut gates: Vec<GateRun> = Vec::new();
                for g in p.nodes.iter().flat_map(|w| &w.gates) {
                    if !gates.contains(g) {
                        gates.push(g.clone());
                    }
                }
                self.gates(phase, &gates).await?;
            }
            Strategy::DrainNodes => {
                let all: Vec<&str> = p.nodes.iter().map(|w| w.node.as_str()).collect();
                let batches: Vec<Vec<&str>> = if p.batches.is_empty() {
                    vec![all]
                } else {
                    p.batches
                        .iter()
                        .map(|b| b.iter().map(String::as_str).collect())
                        .collect()
                };
                for batch in batches {
                    let works: Vec<&NodeWork> = batch
                        .iter()
                        .filter_map(|n| p.nodes.iter().find(|w| w.node == *n))
                        .collect();
                    let all = fan_out(works, self.opts.concurrency, |w| {
                        self.node_drained(phase, w)
                    })
                    .await?;
                    for a in all {
                        done.merge(a);
                    }
                }
            }
            Strategy::DrainFromLb => {
                for w in &p.nodes {
                    self.lb(phase, &w.node, &w.drain, true).await?;
                    done.merge(self.node_gated(phase, w).await?);
                    self.lb(phase, &w.node, &w.drain, false).await?;
                }
            }
        }
        for r in &p.lb_reload {
            done.merge(self.lb_reload(phase, r).await);
        }
        if let Some(vip) = &p.vip {
            self.vip_gate(phase, vip).await?;
        }
        Ok(done)
    }
}

/// Which phases each phase waits for: every phase before it, except that
/// a phase running beside an earlier one (`with`) waits only for the
/// phases before that one.
fn waits_for(phases: &[PhasePlan]) -> Vec<Vec<usize>> {
    phases
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let upto = p
                .with
                .as_ref()
                .and_then(|w| phases[..i].iter().position(|x| &x.phase == w))
                .unwrap_or(i);
            (0..upto).collect()
        })
        .collect()
}

impl Run<'_> {
    /// One phase with its progress events and its time.
    async fn timed_phase(&self, p: &PhasePlan) -> Result<Applied, ApplyError> {
        let what = match &p.api {
            Some(api) => format!("{} objects", api.objects.len()),
            None if p.nodes.is_empty() => format!("{} operations", p.ops.len()),
            None => format!("{} nodes", p.nodes.len()),
        };
        self.event(&p.phase, None, EventKind::PhaseStarted, what);
        let started = Instant::now();
        let mut done = self.phase(p).await?;
        done.timings.push((p.phase.clone(), started.elapsed()));
        self.event(&p.phase, None, EventKind::PhaseDone, String::new());
        Ok(done)
    }

    /// The phases, with their binaries sent ahead ([`Run::distribute`]).
    async fn phases(&self, phases: &[PhasePlan]) -> Result<Applied, ApplyError> {
        let (_, applied) = tokio::join!(self.distribute(phases), self.run_phases(phases));
        applied
    }

    /// The phases, each started once every phase it waits for is done. On
    /// a failure no further phase starts; those running finish, then the
    /// first failure is returned.
    async fn run_phases(&self, phases: &[PhasePlan]) -> Result<Applied, ApplyError> {
        use futures::stream::{FuturesUnordered, StreamExt};
        let waits = waits_for(phases);
        let mut started = vec![false; phases.len()];
        let mut finished = vec![false; phases.len()];
        let mut running = FuturesUnordered::new();
        let mut applied = Applied::default();
        let mut failure: Option<ApplyError> = None;
        loop {
            if failure.is_none() {
                for (i, p) in phases.iter().enumerate() {
                    if !started[i] && waits[i].iter().all(|&w| finished[w]) {
                        started[i] = true;
                        running.push(async move { (i, self.timed_phase(p).await) });
                    }
                }
            }
            let Some((i, result)) = running.next().await else {
                break;
            };
            finished[i] = true;
            match result {
                Ok(done) => applied.merge(done),
                Err(e) => {
                    self.sent
                        .stop
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    if failure.is_none() {
                        failure = Some(e);
                    }
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(applied),
        }
    }
}

/// Executes `plan` (made from facts just gathered) on the nodes. `creds`
/// are the break-glass credentials the API work and the cluster gate use
/// (needed only when the plan has such work).
pub async fn execute(
    plan: &Plan,
    creds: Option<&Credentials>,
    transports: &Transports,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Applied, ApplyError> {
    let run = Run {
        transports,
        opts,
        progress,
        creds,
        addresses: plan
            .nodes
            .iter()
            .map(|n| (n.node.clone(), n.address.clone()))
            .collect(),
        staged: Default::default(),
        sent: Sent::default(),
        sources: &plan.sources,
    };
    if let Some(h) = &plan.healthy_before {
        run.healthy_before(h).await?;
    }
    let phases = run.phases(&plan.phases).await;
    // After a successful run the blob stores are emptied; after a failure
    // what they hold is reused by the next apply, which empties them.
    if phases.is_ok() {
        let staged = std::mem::take(&mut *run.staged.lock().await);
        run.clear_blobs(staged).await;
    }
    let mut applied = phases?;
    if let Some(g) = &plan.cluster_gates {
        let phase = g.phase.as_str();
        run.event(phase, None, EventKind::PhaseStarted, "cluster gates".into());
        let started = Instant::now();
        applied.merge(run.cluster_gates(g).await?);
        applied
            .timings
            .push(("cluster gate".to_string(), started.elapsed()));
        run.event(phase, None, EventKind::PhaseDone, String::new());
    }
    Ok(applied)
}
