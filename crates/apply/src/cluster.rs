//! What the cluster gates look for in the API's answers. Pure: the
//! answers come in as JSON.

use serde_json::Value;

/// Waiting reasons that mean an image cannot be pulled.
const PULL_FAILURES: &[&str] = &["ErrImagePull", "ImagePullBackOff", "InvalidImageName"];

/// The nodes of `want` that are not Ready in a NodeList, each with why.
pub(crate) fn nodes_not_ready(list: &Value, want: &[&str]) -> Vec<(String, String)> {
    let items = list
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for name in want {
        let node = items
            .iter()
            .find(|n| n.pointer("/metadata/name").and_then(Value::as_str) == Some(name));
        let Some(node) = node else {
            out.push((name.to_string(), "not registered with the API".to_string()));
            continue;
        };
        let ready = node
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|c| {
                c.iter()
                    .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
            });
        match ready {
            Some(c) if c.get("status").and_then(Value::as_str) == Some("True") => {}
            Some(c) => {
                let field = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default();
                out.push((
                    name.to_string(),
                    format!(
                        "Ready={} ({}: {})",
                        field("status"),
                        field("reason"),
                        field("message")
                    ),
                ));
            }
            None => out.push((name.to_string(), "no Ready condition yet".to_string())),
        }
    }
    out
}

/// Where a Deployment stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rollout {
    Available,
    /// Its image cannot be pulled: (node, image, message).
    ImagePull(String, String, String),
    Waiting(String),
}

/// A Deployment and the PodList of its pods.
pub(crate) fn rollout(deployment: &Value, pods: &Value) -> Rollout {
    let available = deployment
        .pointer("/status/availableReplicas")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if available > 0 {
        return Rollout::Available;
    }
    let items = pods
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut states = Vec::new();
    for pod in &items {
        let name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let node = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        let statuses = pod
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for cs in &statuses {
            let waiting = cs.pointer("/state/waiting");
            let reason = waiting
                .and_then(|w| w.get("reason"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            if PULL_FAILURES.contains(&reason) {
                let message = waiting
                    .and_then(|w| w.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or(reason);
                let image = cs.get("image").and_then(Value::as_str).unwrap_or("?");
                return Rollout::ImagePull(
                    node.to_string(),
                    image.to_string(),
                    message.to_string(),
                );
            }
            if !reason.is_empty() {
                states.push(format!("{name}: {reason}"));
            }
        }
        if statuses.is_empty() {
            let phase = pod
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("?");
            states.push(format!("{name}: {phase}"));
        }
    }
    if items.is_empty() {
        Rollout::Waiting("no pods yet".to_string())
    } else {
        Rollout::Waiting(states.join("; "))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ready_not_ready_and_missing_nodes() {
        let list = json!({"items": [
            {"metadata": {"name": "cp1"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
            {"metadata": {"name": "w1"}, "status": {"conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "cni plugin not initialized"}]}},
            {"metadata": {"name": "w2"}, "status": {}},
        ]});
        let got = nodes_not_ready(&list, &["cp1", "w1", "w2", "w3"]);
        assert_eq!(
            got,
            [
                (
                    "w1".to_string(),
                    "Ready=False (KubeletNotReady: cni plugin not initialized)".to_string()
                ),
                ("w2".to_string(), "no Ready condition yet".to_string()),
                ("w3".to_string(), "not registered with the API".to_string()),
            ]
        );
    }

    #[test]
    fn rollouts() {
        let none = json!({"items": []});
        assert_eq!(
            rollout(&json!({"status": {"availableReplicas": 1}}), &none),
            Rollout::Available
        );
        assert_eq!(
            rollout(&json!({}), &none),
            Rollout::Waiting("no pods yet".into())
        );
        let pulling = json!({"items": [{"metadata": {"name": "coredns-1"}, "spec": {"nodeName": "w1"},
            "status": {"containerStatuses": [{"image": "registry.k8s.io/coredns/coredns:v1.11.3",
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}}]});
        assert_eq!(
            rollout(&json!({}), &pulling),
            Rollout::ImagePull(
                "w1".into(),
                "registry.k8s.io/coredns/coredns:v1.11.3".into(),
                "Back-off pulling image".into()
            )
        );
        let pending =
            json!({"items": [{"metadata": {"name": "coredns-1"}, "status": {"phase": "Pending"}}]});
        assert_eq!(
            rollout(&json!({}), &pending),
            Rollout::Waiting("coredns-1: Pending".into())
        );
    }
}
