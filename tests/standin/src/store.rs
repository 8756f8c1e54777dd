//! The stand-in kube-apiserver's objects: kept in etcd (through etcd's
//! JSON gateway, `/v3/kv/*`) under [`PREFIX`], so every stand-in apiserver
//! of a cluster sees the same ones. Just enough for an installer: a
//! server-side apply (PATCH) stores the object as sent (with
//! `dryRun=All` it only returns it), GET returns an object or lists a
//! collection (empty when nothing was applied to it). No defaulting,
//! merging, validation, creation by POST, subresources or watch; who may
//! do it is decided before (a client certificate of the cluster CA).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls::ClientConfig;
use serde_json::{json, Value};

use crate::http::{self, Request, Url};

const PREFIX: &str = "/kubeforge-standin/objects";
const TIMEOUT: Duration = Duration::from_secs(5);

pub struct Store {
    pub etcd: Vec<Url>,
    pub tls: Arc<ClientConfig>,
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

fn unb64(s: &str) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The end of an etcd range holding every key that starts with `prefix`.
fn range_end(prefix: &str) -> String {
    let mut b = prefix.as_bytes().to_vec();
    if let Some(last) = b.last_mut() {
        *last += 1;
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// A Status object as the API answers errors.
pub fn status(code: u16, reason: &str, message: &str) -> String {
    let message = message.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{{}},\"status\":\"Failure\",\"message\":\"{message}\",\"reason\":\"{reason}\",\"code\":{code}}}"
    )
}

/// The keys and values of an etcd range answer, decoded.
fn kvs(answer: &str) -> Vec<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Kv {
        key: String,
        #[serde(default)]
        value: String,
    }
    #[derive(serde::Deserialize)]
    struct Range {
        #[serde(default)]
        kvs: Vec<Kv>,
    }
    serde_json::from_str::<Range>(answer)
        .map(|r| {
            r.kvs
                .into_iter()
                .map(|kv| (unb64(&kv.key), unb64(&kv.value)))
                .collect()
        })
        .unwrap_or_default()
}

/// A collection path: `/api/v1/nodes`, `/api/v1/namespaces/N/pods`,
/// `/apis/G/V/R`, `/apis/G/V/namespaces/N/R`.
pub fn is_collection(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let rest = match parts.first() {
        Some(&"api") => parts.get(2..),
        Some(&"apis") => parts.get(3..),
        _ => None,
    };
    matches!(rest, Some([_]) | Some(["namespaces", _, _]))
}

impl Store {
    async fn call(&self, rpc: &str, body: String) -> Result<String, String> {
        let mut errors = Vec::new();
        for url in &self.etcd {
            let r = http::send(
                url,
                self.tls.clone(),
                "POST",
                &format!("/v3/kv/{rpc}"),
                Some(("application/json", body.as_bytes())),
                TIMEOUT,
            )
            .await;
            match r {
                Ok(r) if r.status == 200 => return Ok(r.body),
                Ok(r) => errors.push(format!(
                    "{}:{}: {} {}",
                    url.host, url.port, r.status, r.body
                )),
                Err(e) => errors.push(format!("{}:{}: {e}", url.host, url.port)),
            }
        }
        Err(format!("etcd: {}", errors.join("; ")))
    }

    async fn put(&self, path: &str, value: &str) -> Result<(), String> {
        let key = format!("{PREFIX}{path}");
        self.call(
            "put",
            format!("{{\"key\":\"{}\",\"value\":\"{}\"}}", b64(&key), b64(value)),
        )
        .await
        .map(|_| ())
    }

    /// Deletes the object at `path`; false when there was none.
    async fn delete(&self, path: &str) -> Result<bool, String> {
        let key = b64(&format!("{PREFIX}{path}"));
        let answer = self
            .call("deleterange", json!({ "key": key }).to_string())
            .await?;
        // The gateway writes int64 as a string and leaves out zero.
        Ok(serde_json::from_str::<Value>(&answer)
            .ok()
            .and_then(|v| v["deleted"].as_str().map(|d| d != "0"))
            .unwrap_or(false))
    }

    /// The object at `path` (`exact`), or the objects under it.
    async fn range(&self, path: &str, exact: bool) -> Result<Vec<(String, String)>, String> {
        let key = format!("{PREFIX}{path}");
        let body = if exact {
            format!("{{\"key\":\"{}\"}}", b64(&key))
        } else {
            format!(
                "{{\"key\":\"{}\",\"range_end\":\"{}\"}}",
                b64(&key),
                b64(&range_end(&key))
            )
        };
        Ok(kvs(&self.call("range", body).await?))
    }

    /// The objects directly in collection `path` (not those of deeper
    /// collections under it), as a List.
    async fn list(&self, path: &str) -> Result<String, String> {
        let depth = format!("{PREFIX}{path}/").matches('/').count();
        let items: Vec<String> = self
            .range(&format!("{path}/"), false)
            .await?
            .into_iter()
            .filter(|(key, _)| key.matches('/').count() == depth)
            .map(|(_, value)| value)
            .collect();
        Ok(format!(
            "{{\"kind\":\"List\",\"apiVersion\":\"v1\",\"metadata\":{{}},\"items\":[{}]}}",
            items.join(",")
        ))
    }

    /// Answers an API request (already authenticated): (status, JSON body).
    pub async fn handle(&self, req: &Request) -> (u16, String) {
        let path = req.path().trim_end_matches('/');
        let internal = |e: String| (500, status(500, "InternalError", &e));
        match req.method.as_str() {
            "PATCH" if !is_collection(path) => {
                let body = String::from_utf8_lossy(&req.body).into_owned();
                if serde_yaml_ng::from_str::<serde_json::Value>(&body).is_err() {
                    return (
                        400,
                        status(400, "BadRequest", "the body is not JSON or YAML"),
                    );
                }
                if req.query("dryRun") == Some("All") {
                    return (200, body);
                }
                match self.put(path, &body).await {
                    Ok(()) => (200, body),
                    Err(e) => internal(e),
                }
            }
            "GET" if is_collection(path) => match self.list(path).await {
                Ok(list) => (200, list),
                Err(e) => internal(e),
            },
            "GET" => match self.range(path, true).await {
                Ok(found) => match found.into_iter().next() {
                    Some((_, value)) => (200, value),
                    None => (404, status(404, "NotFound", &format!("{path} not found"))),
                },
                Err(e) => internal(e),
            },
            "DELETE" if !is_collection(path) => match self.delete(path).await {
                Ok(true) => (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}).to_string(),
                ),
                Ok(false) => (404, status(404, "NotFound", &format!("{path} not found"))),
                Err(e) => internal(e),
            },
            method => (
                405,
                status(
                    405,
                    "MethodNotAllowed",
                    &format!(
                        "{method} {path}: the stand-in answers only server-side apply (PATCH) of an object, GET and DELETE"
                    ),
                ),
            ),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn collections() {
        assert!(is_collection("/api/v1/nodes"));
        assert!(is_collection("/api/v1/namespaces/kube-system/pods"));
        assert!(is_collection(
            "/apis/apps/v1/namespaces/kube-system/deployments"
        ));
        assert!(is_collection(
            "/apis/certificates.k8s.io/v1/certificatesigningrequests"
        ));
        assert!(!is_collection("/api/v1/nodes/w1"));
        assert!(!is_collection("/api"));
        assert!(!is_collection(
            "/apis/apps/v1/namespaces/kube-system/deployments/coredns"
        ));
    }

    #[test]
    fn ranges_and_answers() {
        assert_eq!(range_end("/a/b/"), "/a/b0");
        let answer = format!(
            "{{\"header\":{{}},\"kvs\":[{{\"key\":\"{}\",\"value\":\"{}\",\"mod_revision\":\"42\"}}],\"count\":\"1\"}}",
            b64("/kubeforge-standin/objects/api/v1/nodes/w1"),
            b64("{\"kind\":\"Node\"}")
        );
        assert_eq!(
            kvs(&answer),
            [(
                "/kubeforge-standin/objects/api/v1/nodes/w1".to_string(),
                "{\"kind\":\"Node\"}".to_string()
            )]
        );
        assert_eq!(kvs("{\"header\":{}}"), []);
        assert!(status(404, "NotFound", "x \"y\"").contains("\"message\":\"x \\\"y\\\"\""));
    }
}
