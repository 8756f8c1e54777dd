//! Addons: the API objects kubeforge applies once the control plane is up.
//! Every file the table places under [`ADDON_DIR`] on the control-plane
//! nodes is a manifest; it is split here into its objects, each with the URL
//! a server-side apply uses. Pure: nothing here talks to the API.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Manifests placed here on the control-plane nodes are applied to the API.
pub const ADDON_DIR: &str = "/etc/kubernetes/addons/";

/// Where the API serves each kind kubeforge's manifests use:
/// (apiVersion, kind, resource, namespaced).
const KINDS: &[(&str, &str, &str, bool)] = &[
    ("v1", "Namespace", "namespaces", false),
    ("v1", "ServiceAccount", "serviceaccounts", true),
    ("v1", "ConfigMap", "configmaps", true),
    ("v1", "Secret", "secrets", true),
    ("v1", "Service", "services", true),
    (
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
        "clusterroles",
        false,
    ),
    (
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
    ),
    ("rbac.authorization.k8s.io/v1", "Role", "roles", true),
    (
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        "rolebindings",
        true,
    ),
    ("apps/v1", "Deployment", "deployments", true),
    ("apps/v1", "DaemonSet", "daemonsets", true),
    (
        "policy/v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
    ),
    (
        "scheduling.k8s.io/v1",
        "PriorityClass",
        "priorityclasses",
        false,
    ),
    (
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
    ),
];

/// One object of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiObject {
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The object's path on the API server.
    pub path: String,
    /// The object as JSON: the body of its server-side apply.
    #[serde(skip)]
    pub body: String,
    /// A Secret: never printed or diffed.
    pub secret: bool,
}

impl ApiObject {
    /// `Kind namespace/name` or `Kind name`.
    pub fn display(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// A manifest and its objects, in the order they are applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Addon {
    /// The manifest's path on the control-plane nodes.
    pub path: String,
    pub objects: Vec<ApiObject>,
}

fn text<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Splits a multi-document manifest into its objects.
pub fn parse(yaml: &str) -> Result<Vec<ApiObject>, String> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let n = i + 1;
        let v = Value::deserialize(doc).map_err(|e| format!("document {n}: {e}"))?;
        if v.is_null() {
            continue;
        }
        let api_version =
            text(&v, "/apiVersion").ok_or_else(|| format!("document {n} has no apiVersion"))?;
        let kind = text(&v, "/kind").ok_or_else(|| format!("document {n} has no kind"))?;
        let name = text(&v, "/metadata/name")
            .ok_or_else(|| format!("document {n} ({kind}) has no metadata.name"))?;
        let &(_, _, resource, namespaced) = KINDS
            .iter()
            .find(|(a, k, _, _)| *a == api_version && *k == kind)
            .ok_or_else(|| {
                format!(
                    "document {n}: kubeforge does not know where the API serves {api_version} {kind}\n  help: use one of {}",
                    KINDS
                        .iter()
                        .map(|(a, k, _, _)| format!("{a} {k}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        let namespace = text(&v, "/metadata/namespace").map(str::to_string);
        let base = match api_version.split_once('/') {
            Some(_) => format!("/apis/{api_version}"),
            None => format!("/api/{api_version}"),
        };
        let path = match (&namespace, namespaced) {
            (Some(ns), true) => format!("{base}/namespaces/{ns}/{resource}/{name}"),
            (None, true) => {
                return Err(format!(
                    "document {n} ({kind} {name}) has no metadata.namespace"
                ))
            }
            (Some(_), false) => {
                return Err(format!(
                    "document {n} ({kind} {name}) is not namespaced but names a namespace"
                ))
            }
            (None, false) => format!("{base}/{resource}/{name}"),
        };
        let body = serde_json::to_string(&v).map_err(|e| format!("document {n}: {e}"))?;
        out.push(ApiObject {
            kind: kind.to_string(),
            name: name.to_string(),
            namespace,
            path,
            body,
            secret: kind == "Secret",
        });
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_core_group_cluster_and_namespaced_kinds() {
        let objs = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: kube-dns, namespace: kube-system}\n---\n\
             # nothing\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: 'system:coredns'}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: coredns, namespace: kube-system}\n",
        )
        .unwrap();
        let paths: Vec<&str> = objs.iter().map(|o| o.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/api/v1/namespaces/kube-system/services/kube-dns",
                "/apis/rbac.authorization.k8s.io/v1/clusterroles/system:coredns",
                "/apis/apps/v1/namespaces/kube-system/deployments/coredns",
            ]
        );
        assert_eq!(objs[2].display(), "Deployment kube-system/coredns");
        let body: Value = serde_json::from_str(&objs[0].body).unwrap();
        assert_eq!(body["metadata"]["name"], "kube-dns");
    }

    #[test]
    fn bad_documents_are_named() {
        for (yaml, want) in [
            (
                "kind: Service\nmetadata: {name: x}\n",
                "document 1 has no apiVersion",
            ),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n",
                "document 1 (Service x) has no metadata.namespace",
            ),
            (
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, namespace: y}\n",
                "document 1 (Namespace x) is not namespaced but names a namespace",
            ),
            (
                "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: x}\n",
                "document 1: kubeforge does not know where the API serves example.com/v1 Widget",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\n",
                "document 1 (ConfigMap) has no metadata.name",
            ),
        ] {
            let err = parse(yaml).unwrap_err();
            assert!(err.starts_with(want), "{yaml:?}: {err}");
        }
    }
}
