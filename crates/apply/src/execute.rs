//! Executes exactly a plan: phase by phase (etcd, apiserver, controllers,
//! addons, lb, node), on each node only the files the plan lists and only
//! the units whose files changed, and in the API only the addon objects it
//! lists; each phase behind its health gates, the cluster gates last.

use crate::api::{Api, Credentials};
use crate::cluster::{judge_serving_csr, nodes_not_ready, rollout, Csr, Rollout};
use crate::gates::{self, Gate};
use crate::{bounded, ApplyError, Event, EventKind, Options, Progress, Transports};
use kubeforge_inventory::{Cluster, KubeletJoin, Role};
use kubeforge_plan::{FileAction, NodePlan, Plan};
use kubeforge_render::{ApiObject, NodeTree, Rendered, RenderedFile, ADDONS_PHASE};
use kubeforge_transport::{ops, Script, Transport};
use std::time::{Duration, Instant};

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub steps_run: usize,
    pub files_written: usize,
    /// (node, unit) in the order they were started, restarted or reloaded.
    pub started: Vec<(String, String)>,
    pub restarted: Vec<(String, String)>,
    pub reloaded: Vec<(String, String)>,
    /// Addon objects applied to the API.
    pub api_applied: usize,
    /// Kubelet serving certificate requests approved.
    pub csrs_approved: usize,
    /// What the cluster gates let pass with a warning.
    pub warnings: Vec<String>,
}

struct Work<'a> {
    node: &'a str,
    steps: Vec<&'a kubeforge_render::Step>,
    puts: Vec<&'a RenderedFile>,
    chmods: Vec<&'a RenderedFile>,
    daemon_reload: bool,
    start: Vec<String>,
    restart: Vec<String>,
    reload: Vec<String>,
}

impl Work<'_> {
    fn is_empty(&self) -> bool {
        self.steps.is_empty()
            && self.puts.is_empty()
            && self.chmods.is_empty()
            && self.start.is_empty()
            && self.restart.is_empty()
            && self.reload.is_empty()
    }
}

fn work_for<'a>(phase: &str, tree: &'a NodeTree, plan: &'a NodePlan) -> Work<'a> {
    let in_phase = |unit: &String| {
        tree.units
            .iter()
            .any(|u| &u.name == unit && u.phase == phase)
    };
    let mut puts = Vec::new();
    let mut chmods = Vec::new();
    for c in &plan.changes {
        let Some(f) = tree.files.get(&c.path) else {
            continue;
        };
        if f.phase != phase {
            continue;
        }
        match c.action {
            FileAction::Create | FileAction::Update => puts.push(f),
            FileAction::Chmod => chmods.push(f),
        }
    }
    let daemon_reload = puts
        .iter()
        .any(|f| f.path.starts_with("/etc/systemd/system/"));
    let steps = tree
        .steps
        .iter()
        .filter(|s| s.phase == phase && plan.steps.contains(&s.name))
        .collect();
    Work {
        node: &tree.name,
        steps,
        puts,
        chmods,
        daemon_reload,
        start: plan.start.iter().filter(|u| in_phase(u)).cloned().collect(),
        restart: plan
            .restart
            .iter()
            .filter(|u| in_phase(u))
            .cloned()
            .collect(),
        reload: plan
            .reload
            .iter()
            .filter(|u| in_phase(u))
            .cloned()
            .collect(),
    }
}

struct Run<'a> {
    cluster: &'a Cluster,
    transports: &'a Transports,
    opts: &'a Options,
    progress: &'a dyn Progress,
}

impl Run<'_> {
    fn t(&self, node: &str) -> Result<&dyn Transport, ApplyError> {
        self.transports
            .get(node)
            .map(|t| t.as_ref())
            .ok_or_else(|| ApplyError::Other(format!("no connection to node {node}")))
    }

    fn phase_event(&self, phase: &str, kind: EventKind, message: String) {
        self.progress.event(Event {
            node: None,
            phase: phase.to_string(),
            kind,
            message,
        });
    }

    fn step(&self, phase: &str, node: &str, message: String) {
        tracing::info!(node, phase, "{message}");
        self.progress.event(Event {
            node: Some(node.to_string()),
            phase: phase.to_string(),
            kind: EventKind::Step,
            message,
        });
    }

    /// Writes the node's files of this phase and acts on its units.
    async fn do_node(
        &self,
        phase: &str,
        w: &Work<'_>,
        no_block_start: bool,
    ) -> Result<Applied, ApplyError> {
        let t = self.t(w.node)?;
        let mut done = Applied::default();
        let before_files = |s: &&&kubeforge_render::Step| s.stage.is_before_files();
        for step in w.steps.iter().filter(before_files) {
            self.step(phase, w.node, format!("run: {}", step.name));
            t.run_ok(Script::new(&step.name, &step.run)).await?;
            done.steps_run += 1;
        }
        for f in &w.puts {
            let content = match &f.from_file {
                Some(p) => tokio::fs::read(p).await.map_err(|e| {
                    ApplyError::Other(format!("reading {} for {}: {e}", p.display(), w.node))
                })?,
                None => f.content.clone(),
            };
            self.step(phase, w.node, format!("write {}", f.path));
            ops::put(t, &f.path, content, f.mode, &f.owner).await?;
            done.files_written += 1;
        }
        for f in &w.chmods {
            self.step(phase, w.node, format!("chmod {:04o} {}", f.mode, f.path));
            t.run_ok(
                Script::new("chmod", r#"chown "$3" "$1" && chmod "$2" "$1""#).args([
                    f.path.clone(),
                    format!("{:04o}", f.mode),
                    f.owner.clone(),
                ]),
            )
            .await?;
        }
        if w.daemon_reload {
            self.step(phase, w.node, "systemctl daemon-reload".into());
            ops::systemctl(t, &["daemon-reload"]).await?;
        }
        for u in &w.start {
            self.step(phase, w.node, format!("enable and start {u}"));
            ops::systemctl(t, &["enable", u]).await?;
            if no_block_start {
                ops::systemctl(t, &["start", "--no-block", u]).await?;
            } else if let Err(e) = ops::systemctl(t, &["start", u]).await {
                return Err(ApplyError::Gate(Box::new(crate::GateFailure {
                    node: w.node.to_string(),
                    gate: format!("systemctl start {u}"),
                    unit: u.clone(),
                    secs: 0,
                    detail: e.to_string(),
                    journal: ops::journal(t, u, 20).await,
                })));
            }
            done.started.push((w.node.to_string(), u.clone()));
        }
        for u in &w.restart {
            self.step(phase, w.node, format!("restart {u}"));
            ops::systemctl(t, &["restart", u]).await?;
            done.restarted.push((w.node.to_string(), u.clone()));
        }
        for u in &w.reload {
            self.step(phase, w.node, format!("reload {u}"));
            ops::systemctl(t, &["reload", u]).await?;
            done.reloaded.push((w.node.to_string(), u.clone()));
        }
        // Steps that need the phase's units running (importing the
        // bundle's images into containerd); large archives take a while.
        for step in w.steps.iter().filter(|s| !before_files(s)) {
            self.step(phase, w.node, format!("run: {}", step.name));
            t.run_ok(Script::new(&step.name, &step.run).timeout(Duration::from_secs(600)))
                .await?;
            done.steps_run += 1;
        }
        Ok(done)
    }

    async fn gate(&self, phase: &str, node: &str, gate: Gate<'_>) -> Result<(), ApplyError> {
        self.step(phase, node, format!("waiting for {}", gate.name));
        gates::wait(self.t(node)?, &gate, self.opts.gate_timeout).await
    }

    fn readyz(&self, url: String) -> Gate<'static> {
        https_ok(url, "kube-apiserver")
    }

    /// The addon node's API, with the break-glass credentials.
    fn api<'r>(
        &'r self,
        rendered: &Rendered,
        node: &str,
        creds: &'r Credentials,
    ) -> Result<Api<'r>, ApplyError> {
        Ok(Api {
            t: self.t(node)?,
            creds,
            port: rendered.api_port,
        })
    }

    /// Applies the addon objects the plan lists through the addon node's
    /// API server (the control plane is up; nodes may still be missing).
    async fn apply_addons(
        &self,
        rendered: &Rendered,
        plan: &Plan,
        applied: &mut Applied,
    ) -> Result<(), ApplyError> {
        let phase = ADDONS_PHASE;
        let Some(node) = rendered.addon_node.as_deref() else {
            return Ok(());
        };
        let np = plan.nodes.iter().find(|p| p.node == node);
        let changes = np.map(|p| p.api.as_slice()).unwrap_or_default();
        let approvals = np.map(|p| p.approve.as_slice()).unwrap_or_default();
        if changes.is_empty() && approvals.is_empty() {
            return Ok(());
        }
        self.phase_event(
            phase,
            EventKind::PhaseStarted,
            format!("{} objects", changes.len()),
        );
        let creds = Credentials::from_rendered(rendered)?;
        let api = self.api(rendered, node, &creds)?;
        let objects: Vec<&ApiObject> = rendered.addons.iter().flat_map(|a| &a.objects).collect();
        let url = format!("https://127.0.0.1:{}/readyz", rendered.api_port);
        self.gate(phase, node, self.readyz(url)).await?;
        for c in changes {
            let Some(o) = objects.iter().find(|o| o.path == c.path) else {
                continue;
            };
            self.step(phase, node, format!("apply {}", o.display()));
            api.apply(&[o]).await?;
            applied.api_applied += 1;
        }
        if !approvals.is_empty() {
            let nodes = crate::facts::kubelet_nodes(rendered);
            let all = api.csrs().await?;
            for a in approvals {
                let found = all.iter().find(|c| {
                    c.pointer("/metadata/name")
                        .and_then(serde_json::Value::as_str)
                        == Some(a.name.as_str())
                });
                let Some(csr) = found else {
                    self.step(
                        phase,
                        node,
                        format!("{} is gone; nothing to approve", a.name),
                    );
                    continue;
                };
                match judge_serving_csr(csr, &nodes) {
                    Csr::Approve { name, node: of } => {
                        self.approve(&api, node, csr, &name, &of, applied).await?;
                    }
                    _ => self.step(
                        phase,
                        node,
                        format!("{} is no longer pending; left alone", a.name),
                    ),
                }
            }
        }
        self.phase_event(phase, EventKind::PhaseDone, String::new());
        Ok(())
    }

    /// After every phase, when addon objects were applied or a kubelet
    /// (re)started: with bootstrap tokens, the kubelets' serving
    /// certificate requests approved; every node Ready in the API; every
    /// addon Deployment available (a warning when its image cannot be
    /// pulled).
    async fn cluster_gates(
        &self,
        rendered: &Rendered,
        applied: &mut Applied,
    ) -> Result<(), ApplyError> {
        let Some(node) = rendered.addon_node.as_deref() else {
            return Ok(());
        };
        let kubelets = applied
            .started
            .iter()
            .chain(&applied.restarted)
            .any(|(_, u)| u == "kubelet");
        if applied.api_applied == 0 && !kubelets {
            return Ok(());
        }
        let phase = ADDONS_PHASE;
        self.phase_event(phase, EventKind::PhaseStarted, "cluster gates".to_string());
        let creds = Credentials::from_rendered(rendered)?;
        let api = self.api(rendered, node, &creds)?;
        self.nodes_ready(&api, node).await?;
        if self.cluster.kubelet_join == KubeletJoin::BootstrapToken {
            self.serving_certificates(&api, node, rendered, applied)
                .await?;
        }
        let objects: Vec<&ApiObject> = rendered.addons.iter().flat_map(|a| &a.objects).collect();
        for o in objects.iter().filter(|o| o.kind == "Deployment") {
            if let Some(w) = self.deployment_available(&api, node, o).await? {
                applied.warnings.push(w);
            }
        }
        self.phase_event(phase, EventKind::PhaseDone, String::new());
        Ok(())
    }

    /// Approves a serving certificate request kubeforge judged to be
    /// `node`'s own.
    async fn approve(
        &self,
        api: &Api<'_>,
        via: &str,
        csr: &serde_json::Value,
        name: &str,
        node: &str,
        applied: &mut Applied,
    ) -> Result<(), ApplyError> {
        self.step(
            ADDONS_PHASE,
            via,
            format!("approve {name} (serving certificate of {node})"),
        );
        api.approve_csr(
            csr,
            &format!("kubeforge: the names are those of node {node} in the inventory"),
        )
        .await?;
        applied.csrs_approved += 1;
        Ok(())
    }

    /// Kubelets that joined with a bootstrap token ask for their serving
    /// certificate through a CSR: approves those whose names are exactly
    /// their node's (see [`judge_serving_csr`]) until every kubelet node
    /// holds one. A request kubeforge refuses is reported, never approved.
    async fn serving_certificates(
        &self,
        api: &Api<'_>,
        via: &str,
        rendered: &Rendered,
        applied: &mut Applied,
    ) -> Result<(), ApplyError> {
        const SERVING: &str = "/var/lib/kubelet/pki/kubelet-server-current.pem";
        // The same nodes the plan judged the requests against.
        let nodes = crate::facts::kubelet_nodes(rendered);
        self.step(
            ADDONS_PHASE,
            via,
            "approving the kubelets' serving certificate requests".to_string(),
        );
        let start = Instant::now();
        let mut refused: Vec<String> = Vec::new();
        loop {
            for csr in &api.csrs().await? {
                match judge_serving_csr(csr, &nodes) {
                    Csr::Skip => {}
                    Csr::Approve { name, node } => {
                        self.approve(api, via, csr, &name, &node, applied).await?;
                    }
                    Csr::Refuse { name, why } => {
                        let line =
                            format!("certificate signing request {name} not approved: {why}");
                        if !refused.contains(&line) {
                            refused.push(line);
                        }
                    }
                }
            }
            let mut missing = Vec::new();
            for (name, _) in &nodes {
                let t = self.t(name)?;
                let o = t
                    .run(
                        Script::new(
                            "look for the kubelet's serving certificate",
                            "[ -s \"$1\" ]",
                        )
                        .args([SERVING]),
                    )
                    .await?;
                if !o.success() {
                    missing.push(name.to_string());
                }
            }
            if missing.is_empty() {
                applied.warnings.extend(refused);
                return Ok(());
            }
            if start.elapsed() >= self.opts.gate_timeout {
                let first = missing[0].clone();
                let mut detail = format!("no serving certificate on {}", missing.join(", "));
                for r in &refused {
                    detail.push_str("; ");
                    detail.push_str(r);
                }
                return Err(ApplyError::Gate(Box::new(crate::GateFailure {
                    node: first.clone(),
                    gate: "kubelet serving certificate issued".to_string(),
                    unit: "kubelet".to_string(),
                    secs: self.opts.gate_timeout.as_secs(),
                    detail,
                    journal: ops::journal(self.t(&first)?, "kubelet", 20).await,
                })));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Every node that runs a kubelet is Ready in the API.
    async fn nodes_ready(&self, api: &Api<'_>, via: &str) -> Result<(), ApplyError> {
        let want: Vec<&str> = self
            .cluster
            .nodes
            .iter()
            .filter(|n| n.runs_kubelet())
            .map(|n| n.name.as_str())
            .collect();
        if want.is_empty() {
            return Ok(());
        }
        self.step(
            ADDONS_PHASE,
            via,
            format!("waiting for {} nodes to be Ready in the API", want.len()),
        );
        let start = Instant::now();
        loop {
            let bad = match api.get("list the nodes", "/api/v1/nodes").await {
                Ok(r) if r.ok() => {
                    let bad = nodes_not_ready(&r.json().unwrap_or_default(), &want);
                    if bad.is_empty() {
                        return Ok(());
                    }
                    bad
                }
                Ok(r) => vec![(via.to_string(), r.message())],
                Err(e) => vec![(via.to_string(), e.to_string())],
            };
            if start.elapsed() >= self.opts.gate_timeout {
                let first = bad[0].0.clone();
                let journal = match self.t(&first) {
                    Ok(t) => ops::journal(t, "kubelet", 20).await,
                    Err(e) => e.to_string(),
                };
                let detail = bad
                    .iter()
                    .map(|(n, why)| format!("{n}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(ApplyError::Gate(Box::new(crate::GateFailure {
                    node: first,
                    gate: "node Ready in the API".to_string(),
                    unit: "kubelet".to_string(),
                    secs: self.opts.gate_timeout.as_secs(),
                    detail,
                    journal,
                })));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// An addon Deployment has an available replica. When its image cannot
    /// be pulled the cluster still works: that is a warning, not a failure.
    async fn deployment_available(
        &self,
        api: &Api<'_>,
        via: &str,
        o: &ApiObject,
    ) -> Result<Option<String>, ApplyError> {
        let body: serde_json::Value = serde_json::from_str(&o.body).unwrap_or_default();
        let selector = body
            .pointer("/spec/selector/matchLabels")
            .and_then(serde_json::Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}%3D{}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let ns = o.namespace.clone().unwrap_or_default();
        let pods = format!("/api/v1/namespaces/{ns}/pods?labelSelector={selector}");
        self.step(
            ADDONS_PHASE,
            via,
            format!("waiting for {} to be available", o.display()),
        );
        let start = Instant::now();
        loop {
            let state = match (
                api.get("read a deployment", &o.path).await,
                api.get("list its pods", &pods).await,
            ) {
                (Ok(d), Ok(p)) if d.ok() && p.ok() => {
                    rollout(&d.json().unwrap_or_default(), &p.json().unwrap_or_default())
                }
                (Ok(d), _) if !d.ok() => Rollout::Waiting(d.message()),
                (_, Ok(p)) if !p.ok() => Rollout::Waiting(p.message()),
                (Err(e), _) | (_, Err(e)) => Rollout::Waiting(e.to_string()),
                _ => Rollout::Waiting(String::new()),
            };
            match state {
                Rollout::Available => return Ok(None),
                Rollout::ImagePull(node, image, message) => {
                    return Ok(Some(format!(
                        "{} is not available: node {node} cannot pull {image} ({message})\n  help: set image_registry or registry_mirrors in the inventory to a registry the nodes reach, or put the image in the bundle",
                        o.display()
                    )))
                }
                Rollout::Waiting(why) if start.elapsed() >= self.opts.gate_timeout => {
                    return Err(ApplyError::Gate(Box::new(crate::GateFailure {
                        node: via.to_string(),
                        gate: format!("{} available", o.display()),
                        unit: "kube-controller-manager".to_string(),
                        secs: self.opts.gate_timeout.as_secs(),
                        detail: why,
                        journal: ops::journal(api.t, "kube-controller-manager", 20).await,
                    })))
                }
                Rollout::Waiting(_) => tokio::time::sleep(Duration::from_secs(2)).await,
            }
        }
    }

    async fn etcd_gates(&self, phase: &str) -> Result<(), ApplyError> {
        let members: Vec<&str> = self
            .cluster
            .nodes_with(Role::Etcd)
            .map(|n| n.name.as_str())
            .collect();
        let count = members.len().to_string();
        let results = bounded(members, self.opts.concurrency, |node| {
            let count = count.clone();
            async move {
                self.gate(
                    phase,
                    node,
                    Gate {
                        name: "etcd endpoint health and member list over TLS".into(),
                        unit: "etcd",
                        script: gates::ETCD_HEALTH,
                        args: vec![count],
                    },
                )
                .await
            }
        })
        .await;
        results.into_iter().collect()
    }

    /// Rewrites nginx.conf on every running LB node so that the apiserver
    /// of `node` gets no new connections (`None`: the rendered file again),
    /// and reloads nginx gracefully. Returns whether any LB was changed.
    async fn drain(
        &self,
        phase: &str,
        rendered: &Rendered,
        node: Option<&str>,
    ) -> Result<bool, ApplyError> {
        let target = node
            .and_then(|n| self.cluster.node(n))
            .map(|n| format!("server {}:{} ", n.address, self.cluster.apiserver_port));
        let mut changed = false;
        for lb in self.cluster.nodes_with(Role::Lb) {
            let Some(tree) = rendered.nodes.iter().find(|t| t.name == lb.name) else {
                continue;
            };
            let Some(conf) = tree.files.get(NGINX_CONF) else {
                continue;
            };
            let t = self.t(&lb.name)?;
            let state = ops::units(t, &["nginx".to_string()]).await?;
            if !state.get("nginx").is_some_and(|s| s.active) {
                continue;
            }
            let text = String::from_utf8_lossy(&conf.content);
            let content = match &target {
                Some(server) => drained_nginx_conf(&text, server),
                None => text.into_owned(),
            };
            self.step(
                phase,
                &lb.name,
                match node {
                    Some(n) => format!("take {n} out of the load balancer"),
                    None => "put every apiserver back into the load balancer".into(),
                },
            );
            ops::put(t, NGINX_CONF, content.into_bytes(), conf.mode, &conf.owner).await?;
            ops::systemctl(t, &["reload", "nginx"]).await?;
            changed = true;
        }
        if changed {
            // nginx starts its new workers right after the reload signal.
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        Ok(changed)
    }

    async fn vip_gate(&self, phase: &str) -> Result<(), ApplyError> {
        let Some(lb) = &self.cluster.loadbalancer else {
            return Ok(());
        };
        let vip = lb.vip.addr().to_string();
        let lbs: Vec<&str> = self
            .cluster
            .nodes_with(Role::Lb)
            .map(|n| n.name.as_str())
            .collect();
        let start = Instant::now();
        let first = lbs.first().copied().unwrap_or_default();
        self.step(
            phase,
            first,
            format!("waiting for exactly one LB node to hold {vip}"),
        );
        loop {
            let mut holders = Vec::new();
            let mut errors = Vec::new();
            for n in &lbs {
                let t = self.t(n)?;
                match t
                    .run(Script::new("check the VIP", gates::HOLDS_ADDRESS).args([vip.clone()]))
                    .await
                {
                    Ok(o) if o.stdout_str().trim() == "yes" => holders.push(*n),
                    Ok(_) => {}
                    Err(e) => errors.push(e.to_string()),
                }
            }
            if holders.len() == 1 && errors.is_empty() {
                break;
            }
            if start.elapsed() >= self.opts.gate_timeout {
                let t = self.t(first)?;
                return Err(ApplyError::Gate(Box::new(crate::GateFailure {
                    node: lbs.join(", "),
                    gate: format!("the VIP {vip} held by exactly one LB node"),
                    unit: "keepalived".into(),
                    secs: self.opts.gate_timeout.as_secs(),
                    detail: format!("held by [{}] {}", holders.join(", "), errors.join("; ")),
                    journal: ops::journal(t, "keepalived", 20).await,
                })));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // The API answers through the VIP (checked from a control-plane node,
        // which holds the cluster CA).
        if let Some(cp) = self.cluster.nodes_with(Role::ControlPlane).next() {
            self.gate(
                phase,
                &cp.name,
                self.readyz(format!("https://{vip}:{}/readyz", lb.port)),
            )
            .await?;
        }
        Ok(())
    }
}

const NGINX_CONF: &str = "/etc/nginx/nginx.conf";

/// `url` must answer "ok" over HTTPS verified with the cluster CA.
fn https_ok(url: String, unit: &'static str) -> Gate<'static> {
    Gate {
        name: format!("{url} to answer ok"),
        unit,
        script: gates::HTTPS_OK,
        args: vec![url, "/etc/kubernetes/pki/ca.crt".into()],
    }
}

/// The health gate of a node component after it started or restarted.
fn node_gate(unit: &str) -> Option<Gate<'static>> {
    let (name, unit, script, arg) = match unit {
        "containerd" => (
            "containerd and its CRI plugin to answer",
            "containerd",
            gates::CONTAINERD,
            "/run/containerd/containerd.sock",
        ),
        "kubelet" => (
            "the kubelet's /healthz to answer",
            "kubelet",
            gates::HTTP_OK,
            "http://127.0.0.1:10248/healthz",
        ),
        "kube-proxy" => (
            "kube-proxy's /healthz to answer",
            "kube-proxy",
            gates::HTTP_OK,
            "http://127.0.0.1:10256/healthz",
        ),
        _ => return None,
    };
    Some(Gate {
        name: name.into(),
        unit,
        script,
        args: vec![arg.into()],
    })
}

/// nginx.conf with the upstream line of one server marked `down`.
fn drained_nginx_conf(text: &str, server: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with(server) {
            if let Some(i) = line.find(';') {
                out.push_str(&line[..i]);
                out.push_str(" down");
                out.push_str(&line[i..]);
                continue;
            }
        }
        out.push_str(line);
    }
    out
}

fn merge(into: &mut Applied, from: Applied) {
    into.steps_run += from.steps_run;
    into.files_written += from.files_written;
    into.started.extend(from.started);
    into.restarted.extend(from.restarted);
    into.reloaded.extend(from.reloaded);
}

/// Executes `plan` (made from `rendered` and facts just gathered) on the
/// nodes. `phases` is the phase order from the renderer's table.
pub async fn execute(
    cluster: &Cluster,
    rendered: &Rendered,
    plan: &Plan,
    phases: &[String],
    transports: &Transports,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Applied, ApplyError> {
    let run = Run {
        cluster,
        transports,
        opts,
        progress,
    };
    let mut applied = Applied::default();
    for phase in phases {
        if !opts.phases.is_empty() && !opts.phases.contains(phase) {
            continue;
        }
        if phase == ADDONS_PHASE {
            run.apply_addons(rendered, plan, &mut applied).await?;
            continue;
        }
        let works: Vec<Work<'_>> = rendered
            .nodes
            .iter()
            .filter_map(|tree| {
                let np = plan.nodes.iter().find(|p| p.node == tree.name)?;
                let w = work_for(phase, tree, np);
                (!w.is_empty()).then_some(w)
            })
            .collect();
        if works.is_empty() {
            continue;
        }
        progress.event(Event {
            node: None,
            phase: phase.clone(),
            kind: EventKind::PhaseStarted,
            message: format!("{} nodes", works.len()),
        });
        let api_port = cluster.apiserver_port;
        match phase.as_str() {
            "etcd" => {
                let fresh = works.iter().any(|w| w.start.iter().any(|u| u == "etcd"));
                if fresh {
                    // Members of a new cluster must start together.
                    let results = bounded(works.iter().collect(), opts.concurrency, |w| {
                        run.do_node(phase, w, true)
                    })
                    .await;
                    for r in results {
                        merge(&mut applied, r?);
                    }
                    run.etcd_gates(phase).await?;
                } else {
                    // One member at a time, the cluster healthy in between.
                    for w in &works {
                        merge(&mut applied, run.do_node(phase, w, false).await?);
                        run.etcd_gates(phase).await?;
                    }
                }
            }
            "apiserver" => {
                // Rolling: each apiserver is taken out of the load balancers,
                // restarted, back to /readyz, and put back before the next.
                for w in &works {
                    let restarting = w.restart.iter().any(|u| u == "kube-apiserver");
                    let drained = if restarting {
                        run.drain(phase, rendered, Some(w.node)).await?
                    } else {
                        false
                    };
                    merge(&mut applied, run.do_node(phase, w, false).await?);
                    let acted = !w.start.is_empty() || !w.restart.is_empty();
                    if acted {
                        run.gate(
                            phase,
                            w.node,
                            run.readyz(format!("https://127.0.0.1:{api_port}/readyz")),
                        )
                        .await?;
                    }
                    if drained {
                        run.drain(phase, rendered, None).await?;
                    }
                }
            }
            "controllers" => {
                let results = bounded(works.iter().collect(), opts.concurrency, |w| {
                    let run = &run;
                    async move {
                        let done = run.do_node(phase, w, false).await?;
                        for u in w.start.iter().chain(&w.restart) {
                            let (port, unit) = match u.as_str() {
                                "kube-controller-manager" => (10257, "kube-controller-manager"),
                                "kube-scheduler" => (10259, "kube-scheduler"),
                                _ => continue,
                            };
                            let url = format!("https://127.0.0.1:{port}/healthz");
                            run.gate(phase, w.node, https_ok(url, unit)).await?;
                        }
                        Ok::<_, ApplyError>(done)
                    }
                })
                .await;
                for r in results {
                    merge(&mut applied, r?);
                }
            }
            "lb" => {
                let results = bounded(works.iter().collect(), opts.concurrency, |w| {
                    run.do_node(phase, w, false)
                })
                .await;
                for r in results {
                    merge(&mut applied, r?);
                }
                run.vip_gate(phase).await?;
            }
            _ => {
                let results = bounded(works.iter().collect(), opts.concurrency, |w| {
                    let run = &run;
                    async move {
                        let done = run.do_node(phase, w, false).await?;
                        for u in w.start.iter().chain(&w.restart) {
                            if let Some(g) = node_gate(u) {
                                run.gate(phase, w.node, g).await?;
                            }
                        }
                        Ok::<_, ApplyError>(done)
                    }
                })
                .await;
                for r in results {
                    merge(&mut applied, r?);
                }
            }
        }
        progress.event(Event {
            node: None,
            phase: phase.clone(),
            kind: EventKind::PhaseDone,
            message: String::new(),
        });
    }
    if opts.phases.is_empty() || opts.phases.iter().any(|p| p == ADDONS_PHASE) {
        run.cluster_gates(rendered, &mut applied).await?;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    #[test]
    fn drained_nginx_conf_marks_only_that_server_down() {
        let conf = "upstream x {\n        server 10.0.0.1:6443 max_fails=2 fail_timeout=10s; # cp1\n        server 10.0.0.11:6443 max_fails=2 fail_timeout=10s; # cp11\n}\n";
        let out = super::drained_nginx_conf(conf, "server 10.0.0.1:6443 ");
        assert_eq!(
            out,
            "upstream x {\n        server 10.0.0.1:6443 max_fails=2 fail_timeout=10s down; # cp1\n        server 10.0.0.11:6443 max_fails=2 fail_timeout=10s; # cp11\n}\n"
        );
    }
}
