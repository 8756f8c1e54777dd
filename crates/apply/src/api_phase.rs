//! The work that goes through the API: the addon objects of an `api`
//! phase, the approval of kubelet serving certificate requests, and the
//! cluster gate after the last phase (nodes Ready, serving certificates
//! issued, addon Deployments available).

use crate::api::{Api, Credentials};
use crate::cluster::{judge_serving_csr, nodes_not_ready, rollout, Csr, Rollout};
use crate::execute::{Applied, Run};
use crate::gates::{self, Probe};
use crate::ApplyError;
use kubeforge_plan::{ApiWork, ClusterGates, Deployment, MustExist};
use kubeforge_render::KUBELET_SERVING_CERT;
use kubeforge_transport::Script;
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::net::Ipv4Addr;

impl Run<'_> {
    fn creds(&self) -> Result<&Credentials, ApplyError> {
        self.creds.ok_or_else(|| {
            ApplyError::Other("the plan has API work, but no credentials were given".into())
        })
    }

    pub(crate) fn api<'s>(&'s self, via: &str, port: u16) -> Result<Api<'s>, ApplyError> {
        Ok(Api {
            t: self.t(via)?,
            creds: self.creds()?,
            port,
        })
    }

    /// Applies the addon objects the plan lists, in order, once the API
    /// answers on `via`, then approves the serving certificate requests it
    /// lists that are still pending and still judged the node's own.
    pub(crate) async fn api_phase(&self, phase: &str, w: &ApiWork) -> Result<Applied, ApplyError> {
        let mut done = Applied::default();
        let api = self.api(&w.via, w.port)?;
        if let Some(gate) = &w.ready {
            self.step(phase, &w.via, format!("waiting for {}", gate.name));
            gates::wait(api.t, gate, self.opts).await?;
        }
        for o in &w.objects {
            self.step(phase, &w.via, format!("apply {}", o.object));
            api.apply(o).await?;
            done.api_applied += 1;
        }
        if w.approve.is_empty() {
            return Ok(done);
        }
        let nodes = approvable(&w.kubelets);
        let all = api.csrs().await?;
        for a in &w.approve {
            let found = all.iter().find(|c| {
                c.pointer("/metadata/name").and_then(Value::as_str) == Some(a.name.as_str())
            });
            let Some(csr) = found else {
                self.step(
                    phase,
                    &w.via,
                    format!("{} is gone; nothing to approve", a.name),
                );
                continue;
            };
            match judge_serving_csr(csr, &nodes) {
                Csr::Approve { name, node } => {
                    self.approve(phase, &api, csr, &name, &node).await?;
                    done.csrs_approved += 1;
                }
                _ => self.step(
                    phase,
                    &w.via,
                    format!("{} is no longer pending; left alone", a.name),
                ),
            }
        }
        Ok(done)
    }

    /// Approves a serving certificate request judged to be `node`'s own.
    async fn approve(
        &self,
        phase: &str,
        api: &Api<'_>,
        csr: &Value,
        name: &str,
        node: &str,
    ) -> Result<(), ApplyError> {
        self.step(
            phase,
            api.t.node(),
            format!("approve {name} (serving certificate of {node})"),
        );
        api.approve_csr(
            csr,
            &format!("kubeforge: the names are those of node {node} in the inventory"),
        )
        .await
    }

    /// Every kubelet node Ready in the API; with bootstrap-token joins
    /// every kubelet holding its serving certificate (approving the
    /// requests that name exactly their node); every addon Deployment
    /// available (a warning when its image cannot be pulled).
    pub(crate) async fn cluster_gates(&self, g: &ClusterGates) -> Result<Applied, ApplyError> {
        let mut done = Applied::default();
        let api = self.api(&g.via, g.port)?;
        self.nodes_ready(&g.phase, &api, &g.nodes).await?;
        for o in &g.exists {
            self.exists(&g.phase, &api, o).await?;
        }
        if !g.serving_certificates.is_empty() {
            self.serving_certificates(&g.phase, &api, &g.serving_certificates, &mut done)
                .await?;
        }
        for d in &g.deployments {
            if let Some(w) = self.deployment_available(&g.phase, &api, d).await? {
                done.warnings.push(w);
            }
        }
        Ok(done)
    }

    async fn nodes_ready(
        &self,
        phase: &str,
        api: &Api<'_>,
        want: &[String],
    ) -> Result<(), ApplyError> {
        if want.is_empty() {
            return Ok(());
        }
        let via = api.t.node();
        self.step(
            phase,
            via,
            format!("waiting for {} nodes to be Ready in the API", want.len()),
        );
        let want: &[&str] = &want.iter().map(String::as_str).collect::<Vec<_>>();
        let probe = || async move {
            let bad = match api.get("list the nodes", "/api/v1/nodes").await {
                Ok(r) if r.ok() => nodes_not_ready(&r.json().unwrap_or_default(), want),
                Ok(r) => vec![(via.to_string(), r.message())],
                // The transport's message already names the node.
                Err(e) => {
                    let text = e.to_string();
                    let why = text.strip_prefix(&format!("{via}: ")).unwrap_or(&text);
                    vec![(via.to_string(), why.to_string())]
                }
            };
            if bad.is_empty() {
                Probe::Pass(())
            } else {
                Probe::Wait(bad)
            }
        };
        let Err(bad) = gates::poll(self.opts, probe).await else {
            return Ok(());
        };
        let first = bad.first().map(|(n, _)| n.clone()).unwrap_or_default();
        let detail = bad
            .iter()
            .map(|(n, why)| format!("{n}: {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        let t = self.t(&first).unwrap_or(api.t);
        let secs = self.opts.gate_timeout.as_secs();
        Err(gates::failure(t, "node Ready in the API", "kubelet", secs, detail).await)
    }

    /// Kubelets that joined with a bootstrap token ask for their serving
    /// certificate through a CSR: approves those whose names are exactly
    /// their node's (see [`judge_serving_csr`]) until every kubelet node
    /// holds one. A request kubeforge refuses is reported, never approved.
    async fn serving_certificates(
        &self,
        phase: &str,
        api: &Api<'_>,
        nodes: &[(String, Ipv4Addr)],
        done: &mut Applied,
    ) -> Result<(), ApplyError> {
        let judged = approvable(nodes);
        self.step(
            phase,
            api.t.node(),
            "approving the kubelets' serving certificate requests".to_string(),
        );
        let refused: &RefCell<Vec<String>> = &RefCell::new(Vec::new());
        let approved: &Cell<usize> = &Cell::new(0);
        let failed: &RefCell<Option<ApplyError>> = &RefCell::new(None);
        let judged = &judged;
        let probe = || async move {
            let csrs = match api.csrs().await {
                Ok(c) => c,
                Err(e) => return Probe::Wait(e.to_string()),
            };
            for csr in &csrs {
                match judge_serving_csr(csr, judged) {
                    Csr::Skip => {}
                    Csr::Approve { name, node } => {
                        match self.approve(phase, api, csr, &name, &node).await {
                            Ok(()) => approved.set(approved.get() + 1),
                            Err(e) => {
                                failed.replace(Some(e));
                                return Probe::Pass(());
                            }
                        }
                    }
                    Csr::Refuse { name, why } => {
                        let line =
                            format!("certificate signing request {name} not approved: {why}");
                        let mut refused = refused.borrow_mut();
                        if !refused.contains(&line) {
                            refused.push(line);
                        }
                    }
                }
            }
            let mut missing = Vec::new();
            for (name, _) in judged {
                let held = match self.t(name) {
                    Ok(t) => t
                        .run(
                            Script::new(
                                "look for the kubelet's serving certificate",
                                "[ -s \"$1\" ]",
                            )
                            .args([KUBELET_SERVING_CERT]),
                        )
                        .await
                        .is_ok_and(|o| o.success()),
                    Err(_) => false,
                };
                if !held {
                    missing.push(name.to_string());
                }
            }
            if missing.is_empty() {
                Probe::Pass(())
            } else {
                Probe::Wait(missing.join(", "))
            }
        };
        let result = gates::poll(self.opts, probe).await;
        done.csrs_approved += approved.get();
        if let Some(e) = failed.take() {
            return Err(e);
        }
        let refused = refused.take();
        match result {
            Ok(()) => {
                done.warnings.extend(refused);
                Ok(())
            }
            Err(missing) => {
                let first = missing.split(", ").next().unwrap_or_default().to_string();
                let mut detail = format!("no serving certificate on {missing}");
                for r in &refused {
                    detail.push_str("; ");
                    detail.push_str(r);
                }
                let t = self.t(&first).unwrap_or(api.t);
                let secs = self.opts.gate_timeout.as_secs();
                Err(gates::failure(
                    t,
                    "kubelet serving certificate issued",
                    "kubelet",
                    secs,
                    detail,
                )
                .await)
            }
        }
    }

    /// An addon Deployment has an available replica. When its image cannot
    /// be pulled the cluster still works: that is a warning, not a failure.
    /// An object a controller creates (see [`MustExist`]) exists.
    async fn exists(&self, phase: &str, api: &Api<'_>, o: &MustExist) -> Result<(), ApplyError> {
        self.step(
            phase,
            api.t.node(),
            format!("waiting for {} to exist", o.what),
        );
        let probe = || async move {
            match api.get("read an object that must exist", &o.path).await {
                Ok(r) if r.ok() => Probe::Pass(()),
                Ok(r) => Probe::Wait(r.message()),
                Err(e) => Probe::Wait(e.to_string()),
            }
        };
        let Err(why) = gates::poll(self.opts, probe).await else {
            return Ok(());
        };
        let secs = self.opts.gate_timeout.as_secs();
        let gate = format!("{} exists", o.what);
        Err(gates::failure(api.t, &gate, "kube-controller-manager", secs, why).await)
    }

    async fn deployment_available(
        &self,
        phase: &str,
        api: &Api<'_>,
        d: &Deployment,
    ) -> Result<Option<String>, ApplyError> {
        self.step(
            phase,
            api.t.node(),
            format!("waiting for {} to be available", d.object),
        );
        let probe = || async move {
            let state = match (
                api.get("read a deployment", &d.path).await,
                api.get("list its pods", &d.pods).await,
            ) {
                (Ok(dep), Ok(p)) if dep.ok() && p.ok() => rollout(
                    &dep.json().unwrap_or_default(),
                    &p.json().unwrap_or_default(),
                ),
                (Ok(dep), _) if !dep.ok() => Rollout::Waiting(dep.message()),
                (_, Ok(p)) if !p.ok() => Rollout::Waiting(p.message()),
                (Err(e), _) | (_, Err(e)) => Rollout::Waiting(e.to_string()),
                _ => Rollout::Waiting(String::new()),
            };
            match state {
                Rollout::Available => Probe::Pass(None),
                Rollout::ImagePull(node, image, message) => Probe::Pass(Some(format!(
                    "{} is not available: node {node} cannot pull {image} ({message})\n  help: set image_registry or registry_mirrors in the inventory to a registry the nodes reach, or put the image in the bundle",
                    d.object
                ))),
                Rollout::Waiting(why) => Probe::Wait(why),
            }
        };
        match gates::poll(self.opts, probe).await {
            Ok(w) => Ok(w),
            Err(why) => {
                let secs = self.opts.gate_timeout.as_secs();
                let gate = format!("{} available", d.object);
                Err(gates::failure(api.t, &gate, "kube-controller-manager", secs, why).await)
            }
        }
    }
}

/// The kubelet nodes as the CSR judge takes them.
fn approvable(nodes: &[(String, Ipv4Addr)]) -> Vec<(&str, Ipv4Addr)> {
    nodes.iter().map(|(n, a)| (n.as_str(), *a)).collect()
}
