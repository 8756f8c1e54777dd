//! Draining a node through the API, as `kubectl drain` does it: cordon
//! (the scheduler places nothing new there), evict every pod that runs
//! there through the Eviction API, which respects PodDisruptionBudgets,
//! wait until they are gone, and uncordon when the node is back. Pods of
//! DaemonSets (they would come back at once) and static (mirror) pods stay.
//!
//! An eviction a PodDisruptionBudget refuses (HTTP 429) is tried again
//! until the timeout; then the error names the pod and the budget. Used by
//! every operation that takes a node out of service (removing a node,
//! resetting a worker, a rolling upgrade); the API is reached through a
//! control-plane node ([`Api`]).

use crate::api::{Api, Request, Response};
use crate::ApplyError;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The field manager of cordon and uncordon (a server-side apply of the
/// Node's `spec.unschedulable`).
pub const FIELD_MANAGER: &str = "kubeforge-drain";

/// How long a drain may take, and how often it looks again.
#[derive(Debug, Clone, Copy)]
pub struct DrainOptions {
    /// From the first eviction until every pod is gone.
    pub timeout: Duration,
    pub poll_interval: Duration,
}

/// What a drain did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drained {
    /// The node was not registered with the API: nothing to drain.
    pub absent: bool,
    /// `namespace/name` of every pod evicted.
    pub evicted: Vec<String>,
    /// DaemonSet and static pods, left where they are.
    pub left: Vec<String>,
    /// Pods no controller recreates: evicted, and gone for good.
    pub warnings: Vec<String>,
}

/// A pod on the node, as a drain sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pod {
    pub namespace: String,
    pub name: String,
    /// Why it stays (a DaemonSet's or a static pod), if it does.
    pub stays: Option<&'static str>,
    /// No controller recreates it elsewhere.
    pub unmanaged: bool,
    /// Already being deleted: waited for, not evicted again.
    pub terminating: bool,
}

impl Pod {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The pods of a PodList, each judged.
pub(crate) fn pods_of(list: &Value) -> Vec<Pod> {
    let items = list
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    items
        .iter()
        .map(|p| {
            let text = |ptr: &str| {
                p.pointer(ptr)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let mirror = p
                .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
                .is_some();
            let owners = p
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let controller = owners
                .iter()
                .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true));
            let kind = controller
                .and_then(|o| o.get("kind"))
                .and_then(Value::as_str);
            let stays = if mirror {
                Some("a static pod")
            } else if kind == Some("DaemonSet") {
                Some("a DaemonSet's pod")
            } else {
                None
            };
            Pod {
                namespace: text("/metadata/namespace"),
                name: text("/metadata/name"),
                stays,
                unmanaged: controller.is_none() && !mirror,
                terminating: p.pointer("/metadata/deletionTimestamp").is_some(),
            }
        })
        .collect()
}

/// The PodDisruptionBudget a refused eviction (429) names, from its
/// causes ("The disruption budget web needs 2 healthy pods and has 2
/// currently"), and the API's words.
pub(crate) fn refused_by(answer: &Response) -> (Option<String>, String) {
    let v = answer.json().unwrap_or(Value::Null);
    let causes = v
        .pointer("/details/causes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for c in &causes {
        let message = c.get("message").and_then(Value::as_str).unwrap_or_default();
        if let Some(rest) = message.strip_prefix("The disruption budget ") {
            let name = rest.split_whitespace().next().map(str::to_string);
            return (name, message.to_string());
        }
    }
    let message = v
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| answer.body.trim().to_string());
    (None, message)
}

fn node_path(node: &str) -> String {
    format!("/api/v1/nodes/{node}")
}

fn unschedulable(node: &str, on: bool) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node},
        "spec": {"unschedulable": on},
    })
    .to_string()
}

async fn one(api: &Api<'_>, what: &str, req: Request) -> Result<Response, ApplyError> {
    api.send(what, &[req])
        .await?
        .pop()
        .ok_or_else(|| ApplyError::Other(format!("{what}: no answer")))
}

fn failed(api: &Api<'_>, what: &str, r: &Response) -> ApplyError {
    ApplyError::Other(format!("{}: {what}: {}", api.t.node(), r.message()))
}

/// Whether `node` is registered with the API.
pub async fn registered(api: &Api<'_>, node: &str) -> Result<bool, ApplyError> {
    let r = api.get("drain: read the node", &node_path(node)).await?;
    match r.code {
        404 => Ok(false),
        _ if r.ok() => Ok(true),
        _ => Err(failed(api, &format!("reading node {node}"), &r)),
    }
}

/// Marks `node` unschedulable (`true`) or schedulable again.
async fn set_unschedulable(api: &Api<'_>, node: &str, on: bool) -> Result<(), ApplyError> {
    let what = if on { "drain: cordon" } else { "uncordon" };
    let r = one(
        api,
        what,
        Request {
            method: "PATCH",
            path: format!(
                "{}?fieldManager={FIELD_MANAGER}&force=true",
                node_path(node)
            ),
            body: Some(unschedulable(node, on)),
        },
    )
    .await?;
    if r.ok() {
        Ok(())
    } else {
        Err(failed(api, &format!("{what} node {node}"), &r))
    }
}

/// Cordons `node`; false when it is not registered (nothing done: an apply
/// of a Node that does not exist would create one).
pub async fn cordon(api: &Api<'_>, node: &str) -> Result<bool, ApplyError> {
    if !registered(api, node).await? {
        return Ok(false);
    }
    set_unschedulable(api, node, true).await?;
    Ok(true)
}

/// Makes `node` schedulable again (when it is registered).
pub async fn uncordon(api: &Api<'_>, node: &str) -> Result<(), ApplyError> {
    if registered(api, node).await? {
        set_unschedulable(api, node, false).await?;
    }
    Ok(())
}

/// The pods on `node`, judged.
async fn pods_on(api: &Api<'_>, node: &str) -> Result<Vec<Pod>, ApplyError> {
    let r = api
        .get(
            "drain: list the node's pods",
            &format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}"),
        )
        .await?;
    if !r.ok() {
        return Err(failed(api, &format!("listing the pods on {node}"), &r));
    }
    Ok(pods_of(&r.json().unwrap_or(Value::Null)))
}

fn eviction(p: &Pod) -> Request {
    Request {
        method: "POST",
        path: format!(
            "/api/v1/namespaces/{}/pods/{}/eviction",
            p.namespace, p.name
        ),
        body: Some(
            json!({
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": p.name, "namespace": p.namespace},
            })
            .to_string(),
        ),
    }
}

/// Cordons `node`, evicts its pods (all at once; those a
/// PodDisruptionBudget holds again until `opts.timeout`), and waits until
/// they are gone. A node the API does not know is left alone.
pub async fn drain(api: &Api<'_>, node: &str, opts: &DrainOptions) -> Result<Drained, ApplyError> {
    let mut done = Drained::default();
    if !cordon(api, node).await? {
        done.absent = true;
        return Ok(done);
    }
    let started = Instant::now();
    let over = |s: &Instant| s.elapsed() >= opts.timeout;
    // Pod -> the last refusal (budget, API's words), until it is evicted.
    let mut held: Vec<(String, Option<String>, String)> = Vec::new();
    loop {
        let pods = pods_on(api, node).await?;
        let mut going = Vec::new();
        let mut to_evict = Vec::new();
        for p in &pods {
            if let Some(why) = p.stays {
                let id = format!("{} ({why})", p.id());
                if !done.left.contains(&id) {
                    done.left.push(id);
                }
            } else if p.terminating || done.evicted.contains(&p.id()) {
                going.push(p.id());
            } else {
                to_evict.push(p.clone());
            }
        }
        if going.is_empty() && to_evict.is_empty() {
            return Ok(done);
        }
        held.clear();
        if !to_evict.is_empty() {
            let reqs: Vec<Request> = to_evict.iter().map(eviction).collect();
            let answers = api.send("drain: evict pods", &reqs).await?;
            for (p, r) in to_evict.iter().zip(&answers) {
                match r.code {
                    _ if r.ok() || r.code == 404 => {
                        done.evicted.push(p.id());
                        if p.unmanaged {
                            done.warnings.push(format!(
                                "pod {} on {node} belongs to no controller: evicted, nothing recreates it",
                                p.id()
                            ));
                        }
                    }
                    429 => {
                        let (budget, words) = refused_by(r);
                        held.push((p.id(), budget.map(|b| format!("{}/{b}", p.namespace)), words));
                    }
                    _ => {
                        return Err(ApplyError::Other(format!(
                            "drain of {node}: the eviction of pod {} was refused: {}\n  help: see `kubectl describe pod -n {} {}`; run the command again once it can be evicted",
                            p.id(),
                            r.message(),
                            p.namespace,
                            p.name
                        )))
                    }
                }
            }
        }
        if over(&started) {
            return Err(timed_out(node, opts.timeout, &held, &going));
        }
        tokio::time::sleep(opts.poll_interval).await;
    }
}

/// The error of a drain that did not finish in time.
fn timed_out(
    node: &str,
    timeout: Duration,
    held: &[(String, Option<String>, String)],
    going: &[String],
) -> ApplyError {
    let mut lines = Vec::new();
    for (pod, budget, words) in held {
        lines.push(match budget {
            Some(b) => format!(
                "pod {pod} could not be evicted: its PodDisruptionBudget {b} allows no disruption now ({words})"
            ),
            None => format!("pod {pod} could not be evicted: {words}"),
        });
    }
    for pod in going {
        lines.push(format!("pod {pod} was evicted but has not terminated yet"));
    }
    ApplyError::Other(format!(
        "drain of {node} did not finish within {} s:\n  {}\n  help: let the budget allow it (more replicas elsewhere, or a relaxed PodDisruptionBudget), or wait for the pods to end, then run the command again (--drain-timeout gives it longer); node {node} stays cordoned",
        timeout.as_secs(),
        lines.join("\n  ")
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::api::Credentials;
    use kubeforge_transport::recording::{ok, Recorder};

    fn answer(code: u16, body: &str) -> String {
        use base64::Engine as _;
        format!(
            "{code} {}\n",
            base64::engine::general_purpose::STANDARD.encode(body)
        )
    }

    #[test]
    fn which_pods_go_and_which_stay() {
        let list = json!({"items": [
            {"metadata": {"namespace": "default", "name": "web-1",
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web", "controller": true}]}},
            {"metadata": {"namespace": "kube-system", "name": "proxy-x",
                "ownerReferences": [{"kind": "DaemonSet", "name": "proxy", "controller": true}]}},
            {"metadata": {"namespace": "kube-system", "name": "etcd-cp1",
                "annotations": {"kubernetes.io/config.mirror": "abc"}}},
            {"metadata": {"namespace": "default", "name": "lonely"}},
            {"metadata": {"namespace": "default", "name": "leaving", "deletionTimestamp": "2026-01-01T00:00:00Z",
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web", "controller": true}]}},
        ]});
        let pods = pods_of(&list);
        let view: Vec<(String, Option<&str>, bool, bool)> = pods
            .iter()
            .map(|p| (p.id(), p.stays, p.unmanaged, p.terminating))
            .collect();
        assert_eq!(
            view,
            [
                ("default/web-1".to_string(), None, false, false),
                (
                    "kube-system/proxy-x".to_string(),
                    Some("a DaemonSet's pod"),
                    false,
                    false
                ),
                (
                    "kube-system/etcd-cp1".to_string(),
                    Some("a static pod"),
                    false,
                    false
                ),
                ("default/lonely".to_string(), None, true, false),
                ("default/leaving".to_string(), None, false, true),
            ]
        );
    }

    #[test]
    fn the_budget_a_refusal_names() {
        let r = Response {
            code: 429,
            body: json!({"kind": "Status", "message": "Cannot evict pod as it would violate the pod's disruption budget.",
                "details": {"causes": [{"reason": "DisruptionBudget",
                    "message": "The disruption budget web-pdb needs 1 healthy pods and has 1 currently"}]}})
            .to_string(),
        };
        assert_eq!(
            refused_by(&r),
            (
                Some("web-pdb".to_string()),
                "The disruption budget web-pdb needs 1 healthy pods and has 1 currently"
                    .to_string()
            )
        );
        let bare = Response {
            code: 429,
            body: json!({"message": "Too many requests"}).to_string(),
        };
        assert_eq!(refused_by(&bare), (None, "Too many requests".to_string()));
    }

    fn api_of(
        rec: &Recorder,
    ) -> (
        std::sync::Arc<dyn kubeforge_transport::Transport>,
        Credentials,
    ) {
        (
            rec.node("cp1"),
            Credentials::new("Y2VydA==".into(), "a2V5".into()),
        )
    }

    const WEB: &str = r#"{"items":[{"metadata":{"namespace":"default","name":"web-1","ownerReferences":[{"kind":"ReplicaSet","name":"web","controller":true}]}}]}"#;

    #[tokio::test]
    async fn a_budget_that_never_allows_it_ends_in_an_error_naming_pod_and_budget() {
        let rec = Recorder::new();
        rec.answer(None, "drain: read the node", vec![ok(&answer(200, "{}"))]);
        rec.answer(None, "drain: cordon", vec![ok(&answer(200, "{}"))]);
        rec.answer(None, "drain: list", vec![ok(&answer(200, WEB))]);
        rec.answer(
            None,
            "drain: evict",
            vec![ok(&answer(
                429,
                r#"{"message":"Cannot evict pod","details":{"causes":[{"reason":"DisruptionBudget","message":"The disruption budget web-pdb needs 1 healthy pods and has 1 currently"}]}}"#,
            ))],
        );
        let (t, creds) = api_of(&rec);
        let api = Api {
            t: t.as_ref(),
            creds: &creds,
            port: 6443,
        };
        let opts = DrainOptions {
            timeout: Duration::from_millis(30),
            poll_interval: Duration::from_millis(5),
        };
        let err = drain(&api, "w1", &opts).await.unwrap_err().to_string();
        assert!(
            err.contains("pod default/web-1 could not be evicted"),
            "{err}"
        );
        assert!(
            err.contains("PodDisruptionBudget default/web-pdb allows no disruption"),
            "{err}"
        );
        assert!(err.contains("node w1 stays cordoned"), "{err}");
        let lines = rec.lines();
        // Cordoned before the first eviction; tried more than once.
        let cordon = lines.iter().position(|l| l.contains("cordon")).unwrap();
        let evict = lines.iter().position(|l| l.contains("evict")).unwrap();
        assert!(cordon < evict, "{lines:?}");
        assert!(lines.iter().filter(|l| l.contains("evict")).count() > 1);
    }

    #[tokio::test]
    async fn evicted_pods_are_waited_for_and_daemonsets_stay() {
        let rec = Recorder::new();
        rec.answer(None, "drain: read the node", vec![ok(&answer(200, "{}"))]);
        rec.answer(None, "drain: cordon", vec![ok(&answer(200, "{}"))]);
        let ds = r#"{"items":[{"metadata":{"namespace":"kube-system","name":"ds-1","ownerReferences":[{"kind":"DaemonSet","name":"ds","controller":true}]}}]}"#;
        // Listed with the pod, again while it terminates, then without it.
        let with_web = r#"{"items":[{"metadata":{"namespace":"default","name":"web-1","ownerReferences":[{"kind":"ReplicaSet","name":"web","controller":true}]}},{"metadata":{"namespace":"kube-system","name":"ds-1","ownerReferences":[{"kind":"DaemonSet","name":"ds","controller":true}]}}]}"#;
        rec.answer(
            None,
            "drain: list",
            vec![
                ok(&answer(200, with_web)),
                ok(&answer(200, with_web)),
                ok(&answer(200, ds)),
            ],
        );
        rec.answer(None, "drain: evict", vec![ok(&answer(201, "{}"))]);
        let (t, creds) = api_of(&rec);
        let api = Api {
            t: t.as_ref(),
            creds: &creds,
            port: 6443,
        };
        let opts = DrainOptions {
            timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(1),
        };
        let done = drain(&api, "w1", &opts).await.unwrap();
        assert_eq!(done.evicted, ["default/web-1"]);
        assert_eq!(done.left, ["kube-system/ds-1 (a DaemonSet's pod)"]);
        assert_eq!(
            rec.lines()
                .iter()
                .filter(|l| l.contains("drain: evict"))
                .count(),
            1,
            "an evicted pod is not evicted again"
        );
    }

    #[tokio::test]
    async fn a_node_the_api_does_not_know_is_left_alone() {
        let rec = Recorder::new();
        rec.answer(
            None,
            "drain: read the node",
            vec![ok(&answer(404, r#"{"message":"not found"}"#))],
        );
        let (t, creds) = api_of(&rec);
        let api = Api {
            t: t.as_ref(),
            creds: &creds,
            port: 6443,
        };
        let opts = DrainOptions {
            timeout: Duration::from_secs(1),
            poll_interval: Duration::from_millis(1),
        };
        let done = drain(&api, "w9", &opts).await.unwrap();
        assert!(done.absent);
        assert!(!rec.lines().iter().any(|l| l.contains("cordon")));
    }
}
