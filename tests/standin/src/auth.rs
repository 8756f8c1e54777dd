//! Who a request to the stand-in kube-apiserver comes from, and the little
//! it authorizes: a client certificate of the cluster CA is user CN in the
//! groups O (and may do anything: the stand-in has no RBAC); a bootstrap
//! token (`Authorization: Bearer <id>.<secret>`, with
//! `--enable-bootstrap-token-auth=true`) is user `system:bootstrap:<id>` in
//! `system:bootstrappers` and the token's `auth-extra-groups`, and may only
//! create and read CertificateSigningRequests, and only while a
//! ClusterRoleBinding gives one of its groups `system:node-bootstrapper`.

use base64::Engine as _;
use serde_json::Value;

/// Every authenticated identity is in this group too.
pub const AUTHENTICATED: &str = "system:authenticated";
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
const BOOTSTRAP_USER_PREFIX: &str = "system:bootstrap:";
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// The ClusterRole that lets bootstrap tokens ask for client certificates.
pub const NODE_BOOTSTRAPPER: &str = "system:node-bootstrapper";
/// The collection of CertificateSigningRequests.
pub const CSR_COLLECTION: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
/// The collection of ClusterRoleBindings.
pub const CRB_COLLECTION: &str = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings";

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
    /// Authenticated by a bootstrap token (else by a client certificate).
    pub token: bool,
}

impl Identity {
    /// A client certificate's identity: CN is the user, every O a group.
    pub fn from_certificate(cn: Option<&str>, orgs: &[String]) -> Identity {
        let mut groups = orgs.to_vec();
        groups.push(AUTHENTICATED.to_string());
        Identity {
            user: cn.unwrap_or_default().to_string(),
            groups,
            token: false,
        }
    }

    /// For logs.
    pub fn describe(&self) -> String {
        let how = if self.token {
            "bootstrap token"
        } else {
            "client certificate"
        };
        format!("{how} user {} groups {:?}", self.user, self.groups)
    }
}

/// The token of `Authorization: Bearer <token>`.
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// `<id>.<secret>` of a bootstrap token: `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// The API path of the Secret of bootstrap token `id`.
pub fn token_secret_path(id: &str) -> String {
    format!("/api/v1/namespaces/kube-system/secrets/bootstrap-token-{id}")
}

/// A key of a Secret: from `stringData` (as the stand-in stores what was
/// applied; the real API merges it into `data`), else base64 `data`.
fn secret_value(secret: &Value, key: &str) -> Option<String> {
    if let Some(v) = secret
        .get("stringData")
        .and_then(|d| d.get(key))
        .and_then(Value::as_str)
    {
        return Some(v.to_string());
    }
    let encoded = secret.get("data")?.get(key)?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// Compares without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Checks bootstrap token `<id>.<secret>` against its Secret (None when
/// the store has none), as the real bootstrap token authenticator does:
/// type `bootstrap.kubernetes.io/token`, `token-id` and `token-secret`
/// matching, `usage-bootstrap-authentication: "true"`, no `expiration` in
/// the past, every `auth-extra-groups` entry under `system:bootstrappers:`.
pub fn check_bootstrap_token(
    token: &str,
    secret: Option<&Value>,
    now: time::OffsetDateTime,
) -> Result<Identity, String> {
    let (id, given) = parse_token(token).ok_or("not a bootstrap token (<6>.<16> of [a-z0-9])")?;
    let secret = secret.ok_or_else(|| format!("no Secret kube-system/bootstrap-token-{id}"))?;
    let name = format!("kube-system/bootstrap-token-{id}");
    let ty = secret.get("type").and_then(Value::as_str).unwrap_or("");
    if ty != SECRET_TYPE {
        return Err(format!("Secret {name} has type {ty:?}, not {SECRET_TYPE}"));
    }
    if secret_value(secret, "token-id").is_some_and(|v| v != id) {
        return Err(format!("Secret {name}: token-id does not match"));
    }
    match secret_value(secret, "token-secret") {
        Some(s) if same(&s, given) => {}
        _ => return Err(format!("Secret {name}: the token's secret does not match")),
    }
    if secret_value(secret, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err(format!(
            "Secret {name}: usage-bootstrap-authentication is not \"true\""
        ));
    }
    if let Some(exp) = secret_value(secret, "expiration") {
        let at =
            time::OffsetDateTime::parse(exp.trim(), &time::format_description::well_known::Rfc3339)
                .map_err(|e| format!("Secret {name}: expiration {exp:?}: {e}"))?;
        if at <= now {
            return Err(format!("Secret {name}: expired at {exp}"));
        }
    }
    let mut groups = vec![BOOTSTRAPPERS.to_string()];
    for g in secret_value(secret, "auth-extra-groups")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
    {
        if !g.starts_with("system:bootstrappers:") {
            return Err(format!(
                "Secret {name}: auth-extra-groups entry {g:?} does not start with \"system:bootstrappers:\""
            ));
        }
        groups.push(g.to_string());
    }
    groups.push(AUTHENTICATED.to_string());
    Ok(Identity {
        user: format!("{BOOTSTRAP_USER_PREFIX}{id}"),
        groups,
        token: true,
    })
}

/// Whether a ClusterRoleBinding of `bindings` (a list, or the objects)
/// binds ClusterRole `role` to `user` or one of `groups`.
pub fn bound(bindings: &[Value], role: &str, user: &str, groups: &[String]) -> bool {
    bindings.iter().any(|b| {
        let role_ref = b.get("roleRef");
        let kind = role_ref.and_then(|r| r.get("kind")).and_then(Value::as_str);
        let name = role_ref.and_then(|r| r.get("name")).and_then(Value::as_str);
        if kind != Some("ClusterRole") || name != Some(role) {
            return false;
        }
        b.get("subjects")
            .and_then(Value::as_array)
            .is_some_and(|subjects| {
                subjects.iter().any(|s| {
                    let field = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or_default();
                    match field("kind") {
                        "Group" => groups.iter().any(|g| g == field("name")),
                        "User" => field("name") == user,
                        _ => false,
                    }
                })
            })
    })
}

/// The verb of a request, as RBAC names it.
pub fn verb(method: &str, collection: bool) -> &'static str {
    match method {
        "GET" | "HEAD" if collection => "list",
        "GET" | "HEAD" => "get",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" if collection => "deletecollection",
        "DELETE" => "delete",
        _ => "unknown",
    }
}

/// Whether a bootstrap token may do this: what `system:node-bootstrapper`
/// allows (create, get, list CertificateSigningRequests), and only when
/// `bound_to_bootstrapper` (a ClusterRoleBinding gives it that role).
/// Err is the Forbidden message.
pub fn authorize_token(
    identity: &Identity,
    method: &str,
    path: &str,
    bound_to_bootstrapper: bool,
) -> Result<(), String> {
    let path = path.trim_end_matches('/');
    let collection = path == CSR_COLLECTION;
    let object = path
        .strip_prefix(CSR_COLLECTION)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|name| !name.is_empty() && !name.contains('/'));
    let verb = verb(method, collection);
    let allowed = match verb {
        "create" | "list" => collection,
        "get" => object,
        _ => false,
    };
    let user = &identity.user;
    if !allowed {
        return Err(format!(
            "User \"{user}\" cannot {verb} {path}: a bootstrap token may only create, get and list certificatesigningrequests (system:node-bootstrapper)"
        ));
    }
    if !bound_to_bootstrapper {
        return Err(format!(
            "certificatesigningrequests.certificates.k8s.io is forbidden: User \"{user}\" cannot {verb} resource \"certificatesigningrequests\" in API group \"certificates.k8s.io\" at the cluster scope: no ClusterRoleBinding binds ClusterRole {NODE_BOOTSTRAPPER} to one of its groups {:?}",
            identity.groups
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap()
    }

    fn secret() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system"},
            "type": "bootstrap.kubernetes.io/token",
            "stringData": {
                "token-id": "abcdef",
                "token-secret": "0123456789abcdef",
                "usage-bootstrap-authentication": "true",
                "auth-extra-groups": "system:bootstrappers:kubeforge"
            }
        })
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer(Some("Bearer abc.def")), Some("abc.def"));
        assert_eq!(bearer(Some("bearer  abc.def ")), Some("abc.def"));
        assert_eq!(bearer(Some("Basic eA==")), None);
        assert_eq!(bearer(None), None);
        assert_eq!(
            parse_token("abcdef.0123456789abcdef"),
            Some(("abcdef", "0123456789abcdef"))
        );
        for bad in [
            "abcdef",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcde",
            "abcdef.0123456789abcdef.x",
        ] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn valid_tokens_name_the_bootstrap_user_and_groups() {
        let id = check_bootstrap_token("abcdef.0123456789abcdef", Some(&secret()), now()).unwrap();
        assert_eq!(
            id,
            Identity {
                user: "system:bootstrap:abcdef".into(),
                groups: vec![
                    "system:bootstrappers".into(),
                    "system:bootstrappers:kubeforge".into(),
                    "system:authenticated".into()
                ],
                token: true
            }
        );
        // base64 data works as well as stringData.
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let data = json!({
            "type": "bootstrap.kubernetes.io/token",
            "data": {
                "token-id": b("abcdef"),
                "token-secret": b("0123456789abcdef"),
                "usage-bootstrap-authentication": b("true")
            }
        });
        let id = check_bootstrap_token("abcdef.0123456789abcdef", Some(&data), now()).unwrap();
        assert_eq!(id.groups, ["system:bootstrappers", "system:authenticated"]);
    }

    #[test]
    fn invalid_tokens_are_refused() {
        let check =
            |token: &str, s: Option<&Value>| check_bootstrap_token(token, s, now()).unwrap_err();
        let good = secret();
        assert!(check("abcdef.0123456789abcdee", Some(&good)).contains("does not match"));
        assert!(check("abcdef.0123456789abcdef", None).contains("no Secret"));
        assert!(check("nonsense", Some(&good)).contains("not a bootstrap token"));
        let mut s = good.clone();
        s["type"] = "Opaque".into();
        assert!(check("abcdef.0123456789abcdef", Some(&s)).contains("type"));
        let mut s = good.clone();
        s["stringData"]["usage-bootstrap-authentication"] = "false".into();
        assert!(
            check("abcdef.0123456789abcdef", Some(&s)).contains("usage-bootstrap-authentication")
        );
        let mut s = good.clone();
        s["stringData"]["token-id"] = "zzzzzz".into();
        assert!(check("abcdef.0123456789abcdef", Some(&s)).contains("token-id"));
        let mut s = good.clone();
        s["stringData"]["expiration"] = "2020-01-01T00:00:00Z".into();
        assert!(check("abcdef.0123456789abcdef", Some(&s)).contains("expired"));
        s["stringData"]["expiration"] = "2099-01-01T00:00:00Z".into();
        check_bootstrap_token("abcdef.0123456789abcdef", Some(&s), now()).unwrap();
        let mut s = good;
        s["stringData"]["auth-extra-groups"] = "system:masters".into();
        assert!(check("abcdef.0123456789abcdef", Some(&s)).contains("auth-extra-groups"));
    }

    #[test]
    fn certificate_identities() {
        let id = Identity::from_certificate(Some("system:node:w1"), &["system:nodes".into()]);
        assert_eq!(id.user, "system:node:w1");
        assert_eq!(id.groups, ["system:nodes", "system:authenticated"]);
        assert!(!id.token);
        assert!(id
            .describe()
            .contains("client certificate user system:node:w1"));
    }

    fn binding(role: &str, kind: &str, name: &str) -> Value {
        json!({
            "kind": "ClusterRoleBinding",
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}]
        })
    }

    #[test]
    fn bindings() {
        let b = [
            binding(NODE_BOOTSTRAPPER, "Group", "system:bootstrappers:kubeforge"),
            binding("cluster-admin", "Group", "kubeforge:cluster-admins"),
            binding("x", "User", "alice"),
        ];
        let groups = ["system:bootstrappers:kubeforge".to_string()];
        assert!(bound(
            &b,
            NODE_BOOTSTRAPPER,
            "system:bootstrap:abcdef",
            &groups
        ));
        assert!(!bound(
            &b,
            NODE_BOOTSTRAPPER,
            "u",
            &["system:bootstrappers".into()]
        ));
        assert!(bound(&b, "x", "alice", &[]));
        assert!(!bound(&b, "x", "bob", &["alice".into()]));
        let mut role = binding("x", "User", "alice");
        role["roleRef"]["kind"] = "Role".into();
        assert!(!bound(&[role], "x", "alice", &[]));
    }

    #[test]
    fn tokens_may_only_create_and_read_csrs() {
        let id = check_bootstrap_token("abcdef.0123456789abcdef", Some(&secret()), now()).unwrap();
        let csrs = CSR_COLLECTION;
        let one = format!("{CSR_COLLECTION}/node-csr-x");
        authorize_token(&id, "POST", csrs, true).unwrap();
        authorize_token(&id, "GET", csrs, true).unwrap();
        authorize_token(&id, "GET", &one, true).unwrap();
        for (method, path) in [
            ("PUT", format!("{one}/approval")),
            ("PUT", format!("{one}/status")),
            ("PATCH", one.clone()),
            ("DELETE", one.clone()),
            ("POST", one.clone()),
            ("GET", "/api/v1/nodes".to_string()),
            ("GET", token_secret_path("abcdef")),
            ("PATCH", "/api/v1/nodes/w1".to_string()),
        ] {
            let e = authorize_token(&id, method, &path, true).unwrap_err();
            assert!(
                e.contains("may only create, get and list"),
                "{method} {path}: {e}"
            );
        }
        let e = authorize_token(&id, "POST", csrs, false).unwrap_err();
        assert!(
            e.contains("cannot create") && e.contains("system:node-bootstrapper"),
            "{e}"
        );
    }
}
