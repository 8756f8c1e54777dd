//! What the cluster gates look for in the API's answers. Pure: the
//! answers come in as JSON.

use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr};

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

/// Whether a Node (its JSON) is Ready, by a status its kubelet reported
/// at or after `since` (seconds since the epoch, by the node's clock) when
/// given; else why not.
pub(crate) fn node_ready_since(node: &Value, since: Option<i64>) -> Result<(), String> {
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| {
            c.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        })
        .ok_or_else(|| "no Ready condition yet".to_string())?;
    let field = |k: &str| ready.get(k).and_then(Value::as_str).unwrap_or_default();
    if field("status") != "True" {
        return Err(format!(
            "Ready={} ({}: {})",
            field("status"),
            field("reason"),
            field("message")
        ));
    }
    let Some(since) = since else {
        return Ok(());
    };
    let beat = field("lastHeartbeatTime");
    let at = time::OffsetDateTime::parse(beat, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            format!("Ready, but no status from the restarted kubelet yet (heartbeat {beat:?})")
        })?;
    if at.unix_timestamp() >= since {
        Ok(())
    } else {
        Err(format!(
            "Ready, but by a status from before the restart (heartbeat {beat})"
        ))
    }
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

/// What kubeforge does with a certificate signing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Csr {
    /// Not a pending kubelet serving request: none of kubeforge's business.
    Skip,
    /// A node of the inventory asks for a serving certificate with its own
    /// names only.
    Approve { name: String, node: String },
    /// A pending serving request kubeforge will not approve, and why.
    Refuse { name: String, why: String },
}

const SERVING_USAGES: [&str; 3] = ["digital signature", "key encipherment", "server auth"];

/// Judges a CertificateSigningRequest (JSON) against the kubelet nodes
/// (name, address): a kubelet serving request is approved when its user is
/// `system:node:NAME` of an inventory node, its subject is that node in
/// `system:nodes`, it asks for server usages only, and its names are the
/// node's name and address and nothing else.
pub(crate) fn judge_serving_csr(csr: &Value, nodes: &[(&str, Ipv4Addr)]) -> Csr {
    let text = |p: &str| csr.pointer(p).and_then(Value::as_str).unwrap_or_default();
    let name = text("/metadata/name").to_string();
    let pending = csr
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_none_or(|c| c.is_empty());
    if text("/spec/signerName") != "kubernetes.io/kubelet-serving" || !pending {
        return Csr::Skip;
    }
    let refuse = |why: String| Csr::Refuse {
        name: name.clone(),
        why,
    };
    let user = text("/spec/username");
    let Some((node, address)) = user
        .strip_prefix("system:node:")
        .and_then(|n| nodes.iter().find(|(name, _)| *name == n))
    else {
        return refuse(format!(
            "requested by {user:?}, not a node of the inventory"
        ));
    };
    let usages: Vec<&str> = csr
        .pointer("/spec/usages")
        .and_then(Value::as_array)
        .map(|u| u.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(u) = usages.iter().find(|u| !SERVING_USAGES.contains(u)) {
        return refuse(format!("asks for usage {u:?}"));
    }
    if !usages.contains(&"server auth") {
        return refuse("does not ask for server auth".into());
    }
    let pem = {
        use base64::Engine as _;
        match base64::engine::general_purpose::STANDARD.decode(text("/spec/request")) {
            Ok(b) => b,
            Err(e) => return refuse(format!("spec.request is not base64: {e}")),
        }
    };
    let der = match x509_parser::pem::parse_x509_pem(&pem) {
        Ok((_, p)) if p.label == "CERTIFICATE REQUEST" => p.contents,
        _ => return refuse("spec.request is not a PEM certificate request".into()),
    };
    use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension};
    let req = match x509_parser::certification_request::X509CertificationRequest::from_der(&der) {
        Ok((_, r)) => r,
        Err(e) => return refuse(format!("spec.request does not parse: {e}")),
    };
    if req.verify_signature().is_err() {
        return refuse("the request's signature does not verify".into());
    }
    let subject = &req.certification_request_info.subject;
    let cn: Vec<&str> = subject
        .iter_common_name()
        .filter_map(|a| a.as_str().ok())
        .collect();
    let org: Vec<&str> = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok())
        .collect();
    let want_cn = format!("system:node:{node}");
    if cn != [want_cn.as_str()] || org != ["system:nodes"] {
        return refuse(format!(
            "its subject is CN={cn:?} O={org:?}, not CN={want_cn} O=system:nodes"
        ));
    }
    let mut names = 0;
    for ext in req.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for g in &san.general_names {
                names += 1;
                match g {
                    GeneralName::DNSName(d) if d == node => {}
                    GeneralName::IPAddress(ip) => {
                        let ip = match ip.len() {
                            4 => <[u8; 4]>::try_from(*ip).map(IpAddr::from).ok(),
                            16 => <[u8; 16]>::try_from(*ip).map(IpAddr::from).ok(),
                            _ => None,
                        };
                        if ip != Some(IpAddr::V4(*address)) {
                            return refuse(format!(
                                "asks for IP {ip:?}, not node {node}'s address {address}"
                            ));
                        }
                    }
                    GeneralName::DNSName(d) => {
                        return refuse(format!("asks for the name DNS:{d}, not node {node}'s"))
                    }
                    other => {
                        return refuse(format!("asks for the name {other}, not node {node}'s"))
                    }
                }
            }
        }
    }
    if names == 0 {
        return refuse("asks for no subject alternative names".into());
    }
    Csr::Approve {
        name,
        node: node.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ready_counts_only_from_a_status_after_the_restart() {
        let node = |status: &str, beat: &str| {
            serde_json::json!({"status": {"conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": status, "reason": "KubeletReady", "message": "m",
                 "lastHeartbeatTime": beat},
            ]}})
        };
        // 2026-01-05T10:00:00Z
        let at = 1_767_607_200;
        assert_eq!(
            node_ready_since(&node("True", "2026-01-05T10:00:00Z"), None),
            Ok(())
        );
        assert_eq!(
            node_ready_since(&node("True", "2026-01-05T10:00:00Z"), Some(at)),
            Ok(())
        );
        assert_eq!(
            node_ready_since(&node("True", "2026-01-05T10:00:07Z"), Some(at)),
            Ok(())
        );
        let old = node_ready_since(&node("True", "2026-01-05T09:59:59Z"), Some(at));
        assert!(old.unwrap_err().contains("from before the restart"));
        let none = node_ready_since(&node("True", ""), Some(at));
        assert!(none
            .unwrap_err()
            .contains("no status from the restarted kubelet"));
        let down = node_ready_since(&node("Unknown", "2026-01-05T10:00:07Z"), Some(at));
        assert_eq!(down.unwrap_err(), "Ready=Unknown (KubeletReady: m)");
        let bare = node_ready_since(&serde_json::json!({"metadata": {}}), None);
        assert_eq!(bare.unwrap_err(), "no Ready condition yet");
    }

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

    fn csr(user: &str, cn: &str, dns: &[&str], ips: &[&str]) -> Value {
        use base64::Engine as _;
        let mut p =
            rcgen::CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>())
                .unwrap();
        for ip in ips {
            p.subject_alt_names
                .push(rcgen::SanType::IpAddress(ip.parse().unwrap()));
        }
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:nodes");
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = p.serialize_request(&key).unwrap().pem().unwrap();
        json!({
            "metadata": {"name": "csr-1"},
            "spec": {
                "signerName": "kubernetes.io/kubelet-serving",
                "username": user,
                "usages": ["digital signature", "server auth"],
                "request": base64::engine::general_purpose::STANDARD.encode(pem),
            },
            "status": {}
        })
    }

    #[test]
    fn serving_csrs_are_approved_only_for_their_own_node() {
        let nodes = [
            ("w1", Ipv4Addr::new(10, 77, 0, 21)),
            ("w2", Ipv4Addr::new(10, 77, 0, 22)),
        ];
        let ok = csr("system:node:w1", "system:node:w1", &["w1"], &["10.77.0.21"]);
        assert_eq!(
            judge_serving_csr(&ok, &nodes),
            Csr::Approve {
                name: "csr-1".into(),
                node: "w1".into()
            }
        );
        for (c, want) in [
            (
                csr(
                    "system:node:w1",
                    "system:node:w1",
                    &["w1", "evil.example"],
                    &[],
                ),
                "asks for the name",
            ),
            (
                csr("system:node:w1", "system:node:w1", &["w1"], &["10.77.0.22"]),
                "asks for IP",
            ),
            (
                csr("system:node:w3", "system:node:w3", &["w3"], &[]),
                "not a node of the inventory",
            ),
            (
                csr("system:node:w1", "system:node:w2", &["w1"], &[]),
                "its subject is",
            ),
            (
                csr("system:node:w1", "system:node:w1", &[], &[]),
                "asks for no subject alternative names",
            ),
        ] {
            match judge_serving_csr(&c, &nodes) {
                Csr::Refuse { why, .. } => assert!(why.contains(want), "{why}"),
                other => panic!("{want}: {other:?}"),
            }
        }
        let mut client = ok.clone();
        client["spec"]["signerName"] = "kubernetes.io/kube-apiserver-client-kubelet".into();
        assert_eq!(judge_serving_csr(&client, &nodes), Csr::Skip);
        let mut done = ok.clone();
        done["status"]["conditions"] = json!([{"type": "Approved", "status": "True"}]);
        assert_eq!(judge_serving_csr(&done, &nodes), Csr::Skip);
        let mut usage = ok;
        usage["spec"]["usages"] = json!(["client auth"]);
        assert!(matches!(
            judge_serving_csr(&usage, &nodes),
            Csr::Refuse { .. }
        ));
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
