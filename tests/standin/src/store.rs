//! The stand-in kube-apiserver's objects: kept in etcd (through etcd's
//! JSON gateway, `/v3/kv/*`) under [`PREFIX`], so every stand-in apiserver
//! of a cluster sees the same ones. Just enough for an installer and for
//! kubelet TLS bootstrapping: a server-side apply (or a PUT) stores the
//! object as sent (a dry run returns it without storing), a POST to a
//! collection creates an object (`metadata.name` or `generateName`; 409
//! when it exists; a CertificateSigningRequest gets the requester as
//! `spec.username` / `spec.groups`), a PUT of a request's `approval` or
//! `status` replaces only what that subresource may (see
//! [`csr::update_subresource`]), GET returns an object or lists a
//! collection. No defaulting, merging, validation or watch; who may do
//! what is decided before (see `auth`).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls::ClientConfig;
use serde_json::{json, Value};

use crate::auth::Identity;
use crate::csr;
use crate::http::{self, Request, Url};

const PREFIX: &str = "/kubeforge-standin/objects";
const TIMEOUT: Duration = Duration::from_secs(5);
/// Letters of generated name suffixes (as the real API uses).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

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

/// One key of an etcd range answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Kv {
    key: String,
    value: String,
    mod_revision: String,
}

/// The keys of an etcd range answer, decoded.
fn kvs(answer: &str) -> Vec<Kv> {
    #[derive(serde::Deserialize)]
    struct Raw {
        key: String,
        #[serde(default)]
        value: String,
        #[serde(default)]
        mod_revision: Value,
    }
    #[derive(serde::Deserialize)]
    struct Range {
        #[serde(default)]
        kvs: Vec<Raw>,
    }
    serde_json::from_str::<Range>(answer)
        .map(|r| {
            r.kvs
                .into_iter()
                .map(|kv| Kv {
                    key: unb64(&kv.key),
                    value: unb64(&kv.value),
                    mod_revision: match kv.mod_revision {
                        Value::String(s) => s,
                        other => other.to_string(),
                    },
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether an etcd txn answer says its comparisons held.
fn txn_succeeded(answer: &str) -> bool {
    serde_json::from_str::<Value>(answer)
        .ok()
        .and_then(|v| v.get("succeeded").and_then(Value::as_bool))
        .unwrap_or(false)
}

/// A JSON (or YAML) body as JSON.
pub fn parse_body(body: &[u8]) -> Option<Value> {
    let text = String::from_utf8_lossy(body);
    serde_json::from_str(&text)
        .ok()
        .or_else(|| serde_yaml_ng::from_str(&text).ok())
}

/// `count` random letters of [`SUFFIX_ALPHABET`].
pub fn random_suffix(count: usize) -> String {
    let mut b = vec![0u8; count];
    if getrandom::fill(&mut b).is_err() {
        // No randomness: the time still makes collisions (409) unlikely.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        for (i, x) in b.iter_mut().enumerate() {
            *x = (nanos >> (i % 4 * 8)) as u8;
        }
    }
    b.iter()
        .map(|x| char::from(SUFFIX_ALPHABET[usize::from(*x) % SUFFIX_ALPHABET.len()]))
        .collect()
}

/// A new UID.
fn new_uid() -> String {
    let s = random_suffix(32);
    format!(
        "{}-{}-{}-{}-{}",
        &s[..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..]
    )
}

/// A refused request: (HTTP status, Status body).
type Refusal = (u16, String);

/// What a POST of `body` to `collection` by `identity` creates: its name
/// and the object, with `metadata.name` (from `generateName` and `suffix`
/// when it has none), `uid`, `creationTimestamp`, and for a
/// CertificateSigningRequest the requester in `spec.username` and
/// `spec.groups` and an empty status, as the real API sets them.
pub fn prepare_create(
    collection: &str,
    body: &Value,
    identity: &Identity,
    suffix: &str,
    uid: &str,
    now: time::OffsetDateTime,
) -> Result<(String, Value), Refusal> {
    let invalid = |m: &str| (422, status(422, "Invalid", m));
    let mut obj = body.clone();
    let Some(map) = obj.as_object_mut() else {
        return Err(invalid("the object is not a JSON object"));
    };
    let meta = map
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| invalid("metadata is not an object"))?;
    let given = meta
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    let name = match given {
        Some(n) => n,
        None => match meta.get("generateName").and_then(Value::as_str) {
            Some(g) if !g.is_empty() => format!("{g}{suffix}"),
            _ => {
                return Err(invalid(
                    "metadata.name: Required value: name or generateName is required",
                ))
            }
        },
    };
    if name.contains('/') || name == "." || name == ".." {
        return Err(invalid(&format!("metadata.name: Invalid value: {name:?}")));
    }
    meta.insert("name".into(), json!(name));
    meta.insert("uid".into(), json!(uid));
    meta.insert("creationTimestamp".into(), json!(csr::timestamp(now)));
    if collection.trim_end_matches('/') == crate::auth::CSR_COLLECTION {
        let spec = map
            .entry("spec")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| invalid("spec is not an object"))?;
        spec.insert("username".into(), json!(identity.user));
        spec.insert("groups".into(), json!(identity.groups));
        map.insert("status".into(), json!({}));
    }
    Ok((name, obj))
}

/// `/apis/certificates.k8s.io/v1/certificatesigningrequests/NAME/SUB`:
/// (object path, subresource) of the `approval` and `status` subresources.
fn csr_subresource(path: &str) -> Option<(String, &str)> {
    let rest = path
        .strip_prefix(crate::auth::CSR_COLLECTION)?
        .strip_prefix('/')?;
    let (name, sub) = rest.split_once('/')?;
    (!name.is_empty() && matches!(sub, "approval" | "status"))
        .then(|| (format!("{}/{name}", crate::auth::CSR_COLLECTION), sub))
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

    /// Puts `value` at `path` only if the key's create revision (target
    /// CREATE, `0`: it does not exist) or mod revision (target MOD) is
    /// `revision`; false when it was not.
    async fn put_if(
        &self,
        path: &str,
        value: &str,
        target: &str,
        revision: &str,
    ) -> Result<bool, String> {
        let key = b64(&format!("{PREFIX}{path}"));
        let field = if target == "CREATE" {
            "create_revision"
        } else {
            "mod_revision"
        };
        let body = json!({
            "compare": [{"key": key, "result": "EQUAL", "target": target, field: revision}],
            "success": [{"request_put": {"key": key, "value": b64(value)}}],
        });
        Ok(txn_succeeded(&self.call("txn", body.to_string()).await?))
    }

    /// Objects whose path starts with `prefix`.
    async fn range(&self, prefix: &str, exact: bool) -> Result<Vec<Kv>, String> {
        let key = format!("{PREFIX}{prefix}");
        let body = if exact {
            format!("{{\"key\":\"{}\"}}", b64(&key))
        } else {
            format!(
                "{{\"key\":\"{}\",\"range_end\":\"{}\"}}",
                b64(&key),
                b64(&range_end(&key))
            )
        };
        Ok(kvs(&self.call("range", body).await?)
            .into_iter()
            .map(|kv| Kv {
                key: kv.key.trim_start_matches(PREFIX).to_string(),
                ..kv
            })
            .collect())
    }

    /// The object at `path`, if any.
    pub async fn get(&self, path: &str) -> Result<Option<Value>, String> {
        Ok(self
            .range(path, true)
            .await?
            .into_iter()
            .next()
            .and_then(|kv| parse_body(kv.value.as_bytes())))
    }

    /// The objects of a collection.
    pub async fn list(&self, collection: &str) -> Result<Vec<Value>, String> {
        let collection = collection.trim_end_matches('/');
        let depth = collection.matches('/').count() + 1;
        Ok(self
            .range(&format!("{collection}/"), false)
            .await?
            .into_iter()
            .filter(|kv| kv.key.matches('/').count() == depth)
            .filter_map(|kv| parse_body(kv.value.as_bytes()))
            .collect())
    }

    async fn create(&self, collection: &str, body: &[u8], identity: &Identity) -> (u16, String) {
        let Some(value) = parse_body(body) else {
            return (
                400,
                status(400, "BadRequest", "the body is not JSON or YAML"),
            );
        };
        let (name, obj) = match prepare_create(
            collection,
            &value,
            identity,
            &random_suffix(5),
            &new_uid(),
            time::OffsetDateTime::now_utc(),
        ) {
            Ok(v) => v,
            Err(refused) => return refused,
        };
        let text = obj.to_string();
        match self
            .put_if(&format!("{collection}/{name}"), &text, "CREATE", "0")
            .await
        {
            Ok(true) => (201, text),
            Ok(false) => {
                let resource = collection.rsplit('/').next().unwrap_or_default();
                (
                    409,
                    status(
                        409,
                        "AlreadyExists",
                        &format!("{resource} \"{name}\" already exists"),
                    ),
                )
            }
            Err(e) => (500, status(500, "InternalError", &e)),
        }
    }

    /// PUT of a request's `approval` or `status`: read, change, write back
    /// unless someone else wrote in between (then again, a few times).
    async fn update_csr(&self, path: &str, sub: &str, body: &[u8]) -> (u16, String) {
        let Some(incoming) = parse_body(body) else {
            return (
                400,
                status(400, "BadRequest", "the body is not JSON or YAML"),
            );
        };
        for _ in 0..5 {
            let found = match self.range(path, true).await {
                Ok(found) => found,
                Err(e) => return (500, status(500, "InternalError", &e)),
            };
            let Some(kv) = found.into_iter().next() else {
                return (404, status(404, "NotFound", &format!("{path} not found")));
            };
            let Some(stored) = parse_body(kv.value.as_bytes()) else {
                return (
                    500,
                    status(500, "InternalError", "the stored object does not parse"),
                );
            };
            let updated = match csr::update_subresource(&stored, &incoming, sub) {
                Ok(v) => v,
                Err(e) => return (422, status(422, "Invalid", &e)),
            };
            let text = updated.to_string();
            match self.put_if(path, &text, "MOD", &kv.mod_revision).await {
                Ok(true) => return (200, text),
                Ok(false) => continue,
                Err(e) => return (500, status(500, "InternalError", &e)),
            }
        }
        (
            409,
            status(
                409,
                "Conflict",
                &format!("{path}: changed concurrently, try again"),
            ),
        )
    }

    /// Answers an API request of `identity` (already authorized): (status,
    /// JSON body).
    pub async fn handle(&self, req: &Request, identity: &Identity) -> (u16, String) {
        let path = req.path().trim_end_matches('/').to_string();
        match req.method.as_str() {
            "POST" if is_collection(&path) => {
                if req.query("dryRun") == Some("All") {
                    return match parse_body(&req.body) {
                        Some(v) => (201, v.to_string()),
                        None => (
                            400,
                            status(400, "BadRequest", "the body is not JSON or YAML"),
                        ),
                    };
                }
                self.create(&path, &req.body, identity).await
            }
            "PUT" if csr_subresource(&path).is_some() => {
                let Some((object, sub)) = csr_subresource(&path) else {
                    return (404, status(404, "NotFound", &path));
                };
                self.update_csr(&object, sub, &req.body).await
            }
            "PATCH" | "PUT" | "POST" => {
                let body = String::from_utf8_lossy(&req.body).into_owned();
                if serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&body).is_err() {
                    return (
                        400,
                        status(400, "BadRequest", "the body is not JSON or YAML"),
                    );
                }
                if req.query("dryRun") == Some("All") {
                    return (200, body);
                }
                match self.put(&path, &body).await {
                    Ok(()) => (200, body),
                    Err(e) => (500, status(500, "InternalError", &e)),
                }
            }
            "GET" => {
                match self.range(&path, true).await {
                    Ok(found) if !found.is_empty() => (200, found[0].value.clone()),
                    Ok(_) => match self.range(&format!("{path}/"), false).await {
                        Ok(items) => {
                            let depth = path.matches('/').count() + 1;
                            let items: Vec<String> = items
                                .into_iter()
                                .filter(|kv| kv.key.matches('/').count() == depth)
                                .map(|kv| kv.value)
                                .collect();
                            if items.is_empty() && !is_collection(&path) {
                                (404, status(404, "NotFound", &format!("{path} not found")))
                            } else {
                                (
                                200,
                                format!("{{\"kind\":\"List\",\"apiVersion\":\"v1\",\"items\":[{}]}}", items.join(",")),
                            )
                            }
                        }
                        Err(e) => (500, status(500, "InternalError", &e)),
                    },
                    Err(e) => (500, status(500, "InternalError", &e)),
                }
            }
            "DELETE" if !is_collection(&path) => match self.delete(&path).await {
                Ok(true) => (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}).to_string(),
                ),
                Ok(false) => (404, status(404, "NotFound", &format!("{path} not found"))),
                Err(e) => (500, status(500, "InternalError", &e)),
            },
            _ => (405, status(405, "MethodNotAllowed", &req.method)),
        }
    }
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
        assert!(!is_collection("/api/v1/nodes/w1"));
        assert!(!is_collection(
            "/apis/apps/v1/namespaces/kube-system/deployments/coredns"
        ));
    }

    #[test]
    fn ranges_and_answers() {
        assert_eq!(range_end("/a/b/"), "/a/b0");
        let answer = format!(
            "{{\"header\":{{}},\"kvs\":[{{\"key\":\"{}\",\"value\":\"{}\"}}],\"count\":\"1\"}}",
            b64("/kubeforge-standin/objects/api/v1/nodes/w1"),
            b64("{\"kind\":\"Node\"}")
        );
        assert_eq!(
            kvs(&answer),
            [Kv {
                key: "/kubeforge-standin/objects/api/v1/nodes/w1".to_string(),
                value: "{\"kind\":\"Node\"}".to_string(),
                mod_revision: "null".to_string(),
            }]
        );
        let answer = format!(
            "{{\"kvs\":[{{\"key\":\"{}\",\"value\":\"{}\",\"mod_revision\":\"42\"}}]}}",
            b64("/k"),
            b64("v")
        );
        assert_eq!(kvs(&answer)[0].mod_revision, "42");
        assert!(txn_succeeded(
            "{\"header\":{},\"succeeded\":true,\"responses\":[]}"
        ));
        assert!(!txn_succeeded("{\"header\":{},\"responses\":[]}"));
        assert!(status(404, "NotFound", "x \"y\"").contains("\"message\":\"x \\\"y\\\"\""));
    }

    fn bootstrap_identity() -> Identity {
        Identity {
            user: "system:bootstrap:abcdef".into(),
            groups: vec![
                "system:bootstrappers".into(),
                "system:bootstrappers:kubeforge".into(),
                "system:authenticated".into(),
            ],
            token: true,
        }
    }

    #[test]
    fn creating_a_csr_names_the_requester() {
        let body = json!({
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {"generateName": "node-csr-"},
            "spec": {
                "request": "eA==",
                "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                "usages": ["digital signature", "client auth"],
                // Whatever the client claims is replaced.
                "username": "system:node:cp1",
                "groups": ["system:masters"]
            },
            "status": {"certificate": "Zm9v"}
        });
        let now = time::OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap();
        let (name, obj) = prepare_create(
            crate::auth::CSR_COLLECTION,
            &body,
            &bootstrap_identity(),
            "x2b4z",
            "u-1",
            now,
        )
        .unwrap();
        assert_eq!(name, "node-csr-x2b4z");
        assert_eq!(obj["metadata"]["name"], "node-csr-x2b4z");
        assert_eq!(obj["metadata"]["uid"], "u-1");
        assert_eq!(obj["metadata"]["creationTimestamp"], "2025-06-15T15:06:40Z");
        assert_eq!(obj["spec"]["username"], "system:bootstrap:abcdef");
        assert_eq!(
            obj["spec"]["groups"],
            json!([
                "system:bootstrappers",
                "system:bootstrappers:kubeforge",
                "system:authenticated"
            ])
        );
        assert_eq!(obj["status"], json!({}));
        assert_eq!(obj["spec"]["request"], "eA==");

        // A given name wins; other kinds keep their spec and status.
        let cm = json!({"kind": "ConfigMap", "metadata": {"name": "c", "generateName": "g-"}, "status": {"x": 1}});
        let (name, obj) = prepare_create(
            "/api/v1/namespaces/default/configmaps",
            &cm,
            &bootstrap_identity(),
            "zzzzz",
            "u-2",
            now,
        )
        .unwrap();
        assert_eq!(name, "c");
        assert_eq!(obj["status"]["x"], 1);
        assert!(obj.get("spec").is_none());

        for bad in [
            json!({"metadata": {}}),
            json!([1]),
            json!({"metadata": {"name": "a/b"}}),
        ] {
            let (code, _) = prepare_create(
                crate::auth::CSR_COLLECTION,
                &bad,
                &bootstrap_identity(),
                "x",
                "u",
                now,
            )
            .unwrap_err();
            assert_eq!(code, 422, "{bad}");
        }
    }

    #[test]
    fn subresource_paths_and_suffixes() {
        assert_eq!(
            csr_subresource(
                "/apis/certificates.k8s.io/v1/certificatesigningrequests/csr-1/approval"
            ),
            Some((
                "/apis/certificates.k8s.io/v1/certificatesigningrequests/csr-1".to_string(),
                "approval"
            ))
        );
        assert_eq!(
            csr_subresource("/apis/certificates.k8s.io/v1/certificatesigningrequests/csr-1/status")
                .map(|(_, s)| s),
            Some("status")
        );
        assert_eq!(
            csr_subresource("/apis/certificates.k8s.io/v1/certificatesigningrequests/csr-1"),
            None
        );
        assert_eq!(csr_subresource("/api/v1/nodes/w1/status"), None);
        let s = random_suffix(5);
        assert_eq!(s.len(), 5);
        assert!(s.bytes().all(|b| SUFFIX_ALPHABET.contains(&b)), "{s}");
        assert_ne!(random_suffix(16), random_suffix(16));
        assert_eq!(new_uid().len(), 36);
        assert_eq!(
            parse_body(b"kind: Node\nmetadata:\n  name: w1\n").unwrap()["metadata"]["name"],
            "w1"
        );
    }
}
