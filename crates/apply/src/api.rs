//! The API, reached through a control-plane node: kubeforge runs `curl`
//! there against its local API server with the break-glass credentials,
//! which travel on the script's stdin into a private directory under /run
//! that is removed when the script ends. Used to read and apply the addon
//! objects and for the cluster gates.

use crate::ApplyError;
use base64::Engine as _;
use kubeforge_plan::{ApiApply, ApiFacts, LiveObject};
use kubeforge_render::{ApiObject, Rendered};
use kubeforge_transport::{Script, Transport};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// Reads the credentials, then one request per line (`METHOD PATH BODY`,
/// the body base64 or `-`; a PATCH is a server-side apply, anything else
/// JSON), and prints `CODE BASE64-RESPONSE` per request. One `curl` makes
/// every request, in order, over one connection where the API server
/// keeps it open (a program and a TLS handshake for the lot, not for
/// each); a request that gets no answer (code 000: refused, timed out)
/// ends the run there, and it and the rest answer with curl's error.
const REQUESTS: &str = r#"set -eu
port=$1
umask 077
d=$(mktemp -d /run/kubeforge-api.XXXXXX)
trap 'rm -rf "$d"' EXIT
trap 'rm -rf "$d"; exit 1' HUP INT TERM PIPE
IFS= read -r c; printf '%s' "$c" | base64 -d > "$d/c.crt"
IFS= read -r k; printf '%s' "$k" | base64 -d > "$d/c.key"
set --
n=0
while read -r m p b; do
  n=$((n + 1))
  [ "$n" -eq 1 ] || set -- "$@" --next
  set -- "$@" -sS --max-time 20 --cacert /etc/kubernetes/pki/ca.crt \
    --cert "$d/c.crt" --key "$d/c.key" -H 'Accept: application/json' \
    -X "$m" -o "$d/out.$n" -w '%{http_code}\n'
  if [ "$b" != - ]; then
    printf '%s' "$b" | base64 -d > "$d/body.$n"
    case "$m" in
      PATCH) ct=application/apply-patch+yaml ;;
      *) ct=application/json ;;
    esac
    set -- "$@" -H "Content-Type: $ct" --data-binary @"$d/body.$n"
  fi
  set -- "$@" "https://127.0.0.1:$port$p"
done
[ "$n" -gt 0 ] || exit 0
curl --fail-early "$@" </dev/null >"$d/codes" 2>"$d/err" || true
exec 3<"$d/codes"
i=0
while [ "$i" -lt "$n" ]; do
  i=$((i + 1))
  code=
  IFS= read -r code <&3 || true
  case "$code" in
    [1-9][0-9][0-9]) [ -f "$d/out.$i" ] || : >"$d/out.$i" ;;
    *) code=000; cp "$d/err" "$d/out.$i" ;;
  esac
  printf '%s %s\n' "$code" "$(base64 -w0 <"$d/out.$i")"
done
"#;

/// Every CertificateSigningRequest.
const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";

/// Query of a server-side apply by kubeforge.
const APPLY_QUERY: &str = "fieldManager=kubeforge&force=true";

/// One request (its answer is a [`Response`]).
pub struct Request {
    pub method: &'static str,
    pub path: String,
    pub body: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub code: u16,
    pub body: String,
}

impl Response {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// The API's own message, or the body.
    pub fn message(&self) -> String {
        let text = self
            .json()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| self.body.trim().to_string());
        if self.code == 0 {
            format!("no answer: {text}")
        } else {
            format!("HTTP {}: {text}", self.code)
        }
    }
}

/// The break-glass client certificate and key, base64 encoded as in the
/// kubeconfig.
#[derive(Clone)]
pub struct Credentials {
    cert: String,
    key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

impl Credentials {
    /// A client certificate and its key, each base64 encoded PEM.
    pub fn new(cert: String, key: String) -> Credentials {
        Credentials { cert, key }
    }

    pub fn from_rendered(rendered: &Rendered) -> Result<Credentials, ApplyError> {
        let kc: Value = serde_yaml_ng::from_slice(&rendered.super_admin_kubeconfig)
            .map_err(|e| ApplyError::Other(format!("the super-admin kubeconfig: {e}")))?;
        let field = |name: &str| {
            kc.pointer(&format!("/users/0/user/{name}"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    ApplyError::Other(format!("the super-admin kubeconfig has no {name}"))
                })
        };
        Ok(Credentials {
            cert: field("client-certificate-data")?,
            key: field("client-key-data")?,
        })
    }
}

/// The API of one control-plane node.
pub struct Api<'a> {
    pub t: &'a dyn Transport,
    pub creds: &'a Credentials,
    pub port: u16,
}

impl Api<'_> {
    pub async fn send(&self, what: &str, reqs: &[Request]) -> Result<Vec<Response>, ApplyError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut stdin = format!("{}\n{}\n", self.creds.cert, self.creds.key);
        for r in reqs {
            let body = r.body.as_deref().map(|b| b64.encode(b));
            stdin.push_str(&format!(
                "{} {} {}\n",
                r.method,
                r.path,
                body.as_deref().unwrap_or("-")
            ));
        }
        let out = self
            .t
            .run(
                Script::new(what, REQUESTS)
                    .args([self.port.to_string()])
                    .stdin(stdin.into_bytes())
                    .timeout(Duration::from_secs(30 + 20 * reqs.len() as u64)),
            )
            .await?;
        if !out.success() {
            return Err(ApplyError::Other(format!(
                "{}: {what} failed: {}",
                self.t.node(),
                out.stderr_str().trim()
            )));
        }
        let mut res = Vec::new();
        for line in out.stdout_str().lines() {
            let (code, body) = line.split_once(' ').unwrap_or((line, ""));
            let body = b64.decode(body.trim()).unwrap_or_default();
            res.push(Response {
                code: code.parse().unwrap_or(0),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        if res.len() != reqs.len() {
            return Err(ApplyError::Other(format!(
                "{}: {what}: {} answers to {} requests",
                self.t.node(),
                res.len(),
                reqs.len()
            )));
        }
        Ok(res)
    }

    pub async fn get(&self, what: &str, path: &str) -> Result<Response, ApplyError> {
        let mut r = self
            .send(
                what,
                &[Request {
                    method: "GET",
                    path: path.to_string(),
                    body: None,
                }],
            )
            .await?;
        r.pop()
            .ok_or_else(|| ApplyError::Other(format!("{what}: no answer")))
    }

    /// Each object as the API has it and as a dry-run apply would leave it,
    /// and every CertificateSigningRequest (as JSON): asked in one round
    /// trip with the API's readiness, and used only when it is ready.
    pub async fn read(&self, objects: &[&ApiObject]) -> Result<(ApiFacts, Vec<Value>), ApplyError> {
        let mut reqs = vec![Request {
            method: "GET",
            path: "/readyz".to_string(),
            body: None,
        }];
        for o in objects {
            reqs.push(Request {
                method: "GET",
                path: o.path.clone(),
                body: None,
            });
            reqs.push(Request {
                method: "PATCH",
                path: format!("{}?{APPLY_QUERY}&dryRun=All", o.path),
                body: Some(o.body.clone()),
            });
        }
        reqs.push(Request {
            method: "GET",
            path: CSRS.to_string(),
            body: None,
        });
        let res = self.send("read the addon objects", &reqs).await?;
        let (Some((ready, rest)), Some(list)) = (res.split_first(), res.last()) else {
            return Err(ApplyError::Other(format!(
                "{}: read the addon objects: no answer",
                self.t.node()
            )));
        };
        if !ready.ok() {
            return Ok((ApiFacts::Unreachable(ready.message()), Vec::new()));
        }
        let mut map = BTreeMap::new();
        for (o, pair) in objects.iter().zip(rest.chunks(2)) {
            let [live, dry] = pair else { continue };
            if live.code != 404 && !live.ok() {
                return Err(ApplyError::Other(format!(
                    "{}: reading {}: {}",
                    self.t.node(),
                    o.display(),
                    live.message()
                )));
            }
            map.insert(
                o.path.clone(),
                LiveObject {
                    live: live.ok().then(|| live.body.clone()),
                    dry_run: dry.ok().then(|| dry.body.clone()),
                },
            );
        }
        Ok((ApiFacts::Objects(map), self.csr_items(list)?))
    }

    /// Every CertificateSigningRequest, as JSON.
    pub async fn csrs(&self) -> Result<Vec<Value>, ApplyError> {
        let list = self.get("list certificate signing requests", CSRS).await?;
        self.csr_items(&list)
    }

    /// The items of a list of CertificateSigningRequests.
    fn csr_items(&self, list: &Response) -> Result<Vec<Value>, ApplyError> {
        if !list.ok() {
            return Err(ApplyError::Other(format!(
                "{}: listing certificate signing requests: {}",
                self.t.node(),
                list.message()
            )));
        }
        Ok(list
            .json()
            .and_then(|v| v.get("items").and_then(Value::as_array).cloned())
            .unwrap_or_default())
    }

    /// Approves a CertificateSigningRequest (its JSON as read), saying why.
    pub async fn approve_csr(&self, csr: &Value, message: &str) -> Result<(), ApplyError> {
        let name = csr
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut body = csr.clone();
        let condition = serde_json::json!({
            "type": "Approved",
            "status": "True",
            "reason": "KubeforgeApproved",
            "message": message,
        });
        match body
            .pointer_mut("/status/conditions")
            .and_then(Value::as_array_mut)
        {
            Some(c) => c.push(condition),
            None => body["status"] = serde_json::json!({ "conditions": [condition] }),
        }
        let req = Request {
            method: "PUT",
            path: format!(
                "/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}/approval"
            ),
            body: Some(body.to_string()),
        };
        let res = self
            .send("approve a certificate signing request", &[req])
            .await?;
        match res.first() {
            Some(r) if r.ok() => Ok(()),
            Some(r) => Err(ApplyError::Other(format!(
                "{}: approving certificate signing request {name}: {}",
                self.t.node(),
                r.message()
            ))),
            None => Err(ApplyError::Other(format!("approving {name}: no answer"))),
        }
    }

    /// Applies one object (server-side apply by kubeforge).
    pub async fn apply(&self, o: &ApiApply) -> Result<(), ApplyError> {
        let req = Request {
            method: "PATCH",
            path: format!("{}?{APPLY_QUERY}", o.path),
            body: Some(o.body.clone()),
        };
        let res = self.send("apply an addon object", &[req]).await?;
        match res.first() {
            Some(r) if !r.ok() => Err(ApplyError::Other(format!(
                "{}: the API refused {}: {}\n  help: `kubeforge render` writes the manifests for inspection ({})",
                self.t.node(),
                o.object,
                r.message(),
                o.path
            ))),
            _ => Ok(()),
        }
    }
}
