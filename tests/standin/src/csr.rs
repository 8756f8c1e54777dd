//! CertificateSigningRequests (certificates.k8s.io/v1), just enough for
//! kubelet TLS bootstrapping: what a request asks for, the rules of the
//! real kube-controller-manager's csrapproving controller for kubelet
//! client certificates, the kubelet signers' validation and signing with
//! the cluster signing CA, and the `approval` / `status` subresources.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::auth;

pub const CLIENT_KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
/// May ask for a node client certificate for any node (bootstrap tokens).
pub const NODE_CLIENT: &str = "system:certificates.k8s.io:certificatesigningrequests:nodeclient";
/// May renew its own node client certificate.
pub const SELF_NODE_CLIENT: &str =
    "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient";
const NODE_PREFIX: &str = "system:node:";
const NODES_GROUP: &str = "system:nodes";
/// The signer backdates certificates by this much (clock skew), as the
/// real one does.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// `spec.expirationSeconds` below this is raised to it.
const MIN_EXPIRATION: Duration = Duration::from_secs(600);

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn name(csr: &Value) -> &str {
    text(csr, "/metadata/name")
}

pub fn signer_name(csr: &Value) -> &str {
    text(csr, "/spec/signerName")
}

pub fn username(csr: &Value) -> &str {
    text(csr, "/spec/username")
}

fn strings(v: &Value, pointer: &str) -> Vec<String> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

pub fn usages(csr: &Value) -> Vec<String> {
    strings(csr, "/spec/usages")
}

/// What the PKCS#10 request of `spec.request` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    pub cn: Option<String>,
    pub orgs: Vec<String>,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// Email and URI names (kubelet signers refuse them).
    pub other_names: Vec<String>,
    /// The request, PEM.
    pub pem: String,
}

/// Decodes and parses `spec.request` (base64 of a PEM CERTIFICATE
/// REQUEST) and checks its signature.
pub fn requested(csr: &Value) -> Result<Requested, String> {
    use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension};
    let pem = base64::engine::general_purpose::STANDARD
        .decode(text(csr, "/spec/request").trim())
        .map_err(|e| format!("spec.request is not base64: {e}"))?;
    let der = match x509_parser::pem::parse_x509_pem(&pem) {
        Ok((_, p)) if p.label == "CERTIFICATE REQUEST" => p.contents,
        _ => return Err("spec.request is not a PEM CERTIFICATE REQUEST".into()),
    };
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| format!("spec.request does not parse: {e}"))?;
    req.verify_signature()
        .map_err(|_| "the request's signature does not verify".to_string())?;
    let subject = &req.certification_request_info.subject;
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string);
    let orgs = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok())
        .map(str::to_string)
        .collect();
    let (mut dns, mut ips, mut other_names) = (Vec::new(), Vec::new(), Vec::new());
    for ext in req.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for g in &san.general_names {
                match g {
                    GeneralName::DNSName(d) => dns.push(d.to_string()),
                    GeneralName::IPAddress(ip) => match ip.len() {
                        4 => ips.extend(<[u8; 4]>::try_from(*ip).ok().map(IpAddr::from)),
                        16 => ips.extend(<[u8; 16]>::try_from(*ip).ok().map(IpAddr::from)),
                        _ => other_names.push(format!("IP {ip:?}")),
                    },
                    other => other_names.push(other.to_string()),
                }
            }
        }
    }
    Ok(Requested {
        cn,
        orgs,
        dns,
        ips,
        other_names,
        pem: String::from_utf8_lossy(&pem).into_owned(),
    })
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Approved,
    /// Approved and the certificate issued.
    Issued,
    Denied,
    Failed,
}

fn has_condition(csr: &Value, ty: &str) -> bool {
    csr.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some(ty)
                    && c.get("status").and_then(Value::as_str).unwrap_or("True") == "True"
            })
        })
}

pub fn certificate(csr: &Value) -> &str {
    text(csr, "/status/certificate")
}

pub fn state(csr: &Value) -> State {
    if has_condition(csr, "Denied") {
        State::Denied
    } else if has_condition(csr, "Failed") {
        State::Failed
    } else if has_condition(csr, "Approved") {
        if certificate(csr).is_empty() {
            State::Approved
        } else {
            State::Issued
        }
    } else {
        State::Pending
    }
}

/// `have` holds exactly the usages of one of `allowed`.
fn usages_match(have: &[String], allowed: &[&[&str]]) -> bool {
    let mut have: Vec<&str> = have.iter().map(String::as_str).collect();
    have.sort_unstable();
    have.dedup();
    allowed.iter().any(|want| {
        let mut want = want.to_vec();
        want.sort_unstable();
        want == have
    })
}

/// The node-subject rules both kubelet signers share.
fn node_subject(req: &Requested) -> Result<(), String> {
    if req.orgs != [NODES_GROUP] {
        return Err(format!(
            "subject O is {:?}, must be [\"{NODES_GROUP}\"]",
            req.orgs
        ));
    }
    let cn = req.cn.as_deref().unwrap_or_default();
    if !cn.starts_with(NODE_PREFIX) {
        return Err(format!(
            "subject CN {cn:?} does not start with {NODE_PREFIX:?}"
        ));
    }
    if !req.other_names.is_empty() {
        return Err(format!(
            "email or URI names are not allowed: {:?}",
            req.other_names
        ));
    }
    Ok(())
}

/// The `kubernetes.io/kube-apiserver-client-kubelet` rules
/// (ValidateKubeletClientCSR).
pub fn validate_kubelet_client(req: &Requested, usages: &[String]) -> Result<(), String> {
    node_subject(req)?;
    if !req.dns.is_empty() || !req.ips.is_empty() {
        return Err("DNS and IP names are not allowed in a kubelet client certificate".into());
    }
    if !usages_match(
        usages,
        &[
            &["digital signature", "key encipherment", "client auth"],
            &["digital signature", "client auth"],
        ],
    ) {
        return Err(format!(
            "usages {usages:?} are not [digital signature (key encipherment) client auth]"
        ));
    }
    Ok(())
}

/// The `kubernetes.io/kubelet-serving` rules (ValidateKubeletServingCSR).
pub fn validate_kubelet_serving(req: &Requested, usages: &[String]) -> Result<(), String> {
    node_subject(req)?;
    if req.dns.is_empty() && req.ips.is_empty() {
        return Err("at least one DNS or IP name is required".into());
    }
    if !usages_match(
        usages,
        &[
            &["digital signature", "key encipherment", "server auth"],
            &["digital signature", "server auth"],
        ],
    ) {
        return Err(format!(
            "usages {usages:?} are not [digital signature (key encipherment) server auth]"
        ));
    }
    Ok(())
}

/// What the csrapproving controller does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientApproval {
    /// Not a pending kubelet client request.
    NotMine,
    /// Approve, with this message (reason AutoApproved).
    Approve(&'static str),
    /// Leave it pending (never deny), and why.
    Leave(String),
}

/// The csrapproving controller's rules for a kubelet client request: a
/// node client certificate (see [`validate_kubelet_client`]) is approved
/// when its requester may ask for it: `selfnodeclient` when the requester
/// is the node the certificate names, `nodeclient` for any node (what
/// bootstrap tokens get). "May" is a ClusterRoleBinding of `bindings`
/// naming the role and the requester or one of its groups (the stand-in
/// has no other RBAC).
pub fn judge_client_csr(csr: &Value, bindings: &[Value]) -> ClientApproval {
    if signer_name(csr) != CLIENT_KUBELET || state(csr) != State::Pending {
        return ClientApproval::NotMine;
    }
    let req = match requested(csr) {
        Ok(r) => r,
        Err(e) => return ClientApproval::Leave(e),
    };
    if let Err(e) = validate_kubelet_client(&req, &usages(csr)) {
        return ClientApproval::Leave(format!("not a node client certificate: {e}"));
    }
    let user = username(csr);
    let groups = strings(csr, "/spec/groups");
    if req.cn.as_deref() == Some(user) && auth::bound(bindings, SELF_NODE_CLIENT, user, &groups) {
        return ClientApproval::Approve(
            "Auto approving self kubelet client certificate after SubjectAccessReview.",
        );
    }
    if auth::bound(bindings, NODE_CLIENT, user, &groups) {
        return ClientApproval::Approve(
            "Auto approving kubelet client certificate after SubjectAccessReview.",
        );
    }
    ClientApproval::Leave(format!(
        "no ClusterRoleBinding gives user {user:?} or its groups {groups:?} {NODE_CLIENT}{}",
        if req.cn.as_deref() == Some(user) {
            format!(" or {SELF_NODE_CLIENT}")
        } else {
            String::new()
        }
    ))
}

/// RFC 3339 in UTC, as the API writes times.
pub fn timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `csr` with a condition added (status True).
pub fn with_condition(
    csr: &Value,
    ty: &str,
    reason: &str,
    message: &str,
    now: OffsetDateTime,
) -> Value {
    let mut out = csr.clone();
    let at = timestamp(now);
    let condition = json!({
        "type": ty,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastUpdateTime": at,
        "lastTransitionTime": at,
    });
    match out
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    {
        Some(c) => c.push(condition),
        None => match out.get_mut("status").and_then(Value::as_object_mut) {
            Some(status) => {
                status.insert("conditions".into(), json!([condition]));
            }
            None => out["status"] = json!({ "conditions": [condition] }),
        },
    }
    out
}

/// Whether the kubelet signers of the controller manager sign this one:
/// approved, not yet issued, of one of their signer names.
pub fn to_sign(csr: &Value) -> bool {
    state(csr) == State::Approved && [CLIENT_KUBELET, KUBELET_SERVING].contains(&signer_name(csr))
}

/// The cluster signing CA of the controller manager.
pub struct SigningCa {
    pub cert_pem: String,
    pub key_pem: String,
    /// At most this long (`--cluster-signing-duration`).
    pub duration: Duration,
}

fn random_serial() -> Result<rcgen::SerialNumber, String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| format!("no random serial number: {e}"))?;
    b[0] = (b[0] & 0x7f) | 0x01;
    Ok(rcgen::SerialNumber::from_slice(&b))
}

/// Signs an approved kubelet request as the real signer would: after its
/// signer's validation, subject and names from the request, key usage and
/// extended key usage from `spec.usages` only, not a CA, valid from `now`
/// minus 5 min for `ca.duration` (or `spec.expirationSeconds`, at least
/// 10 min), never beyond the CA. Returns the certificate, PEM.
pub fn sign(csr: &Value, ca: &SigningCa, now: OffsetDateTime) -> Result<String, String> {
    use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose as Ku};
    let req = requested(csr)?;
    let usages = usages(csr);
    match signer_name(csr) {
        CLIENT_KUBELET => validate_kubelet_client(&req, &usages)?,
        KUBELET_SERVING => validate_kubelet_serving(&req, &usages)?,
        other => return Err(format!("signer {other:?} is not a kubelet signer")),
    }
    let mut params = rcgen::CertificateSigningRequestParams::from_pem(&req.pem)
        .map_err(|e| format!("the request: {e}"))?;
    let ca_not_after = {
        let der = x509_parser::pem::parse_x509_pem(ca.cert_pem.as_bytes())
            .map_err(|e| format!("the signing CA certificate: {e}"))?
            .1
            .contents;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("the signing CA certificate: {e}"))?;
        OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
            .map_err(|e| format!("the signing CA's notAfter: {e}"))?
    };
    let mut ttl = ca.duration;
    if let Some(secs) = csr
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_u64)
    {
        ttl = ttl.min(Duration::from_secs(secs).max(MIN_EXPIRATION));
    }
    let p = &mut params.params;
    p.not_before = now - BACKDATE;
    p.not_after = (now + ttl).min(ca_not_after);
    p.serial_number = Some(random_serial()?);
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    p.key_usages = Vec::new();
    p.extended_key_usages = Vec::new();
    for u in &usages {
        match u.as_str() {
            "digital signature" => p.key_usages.push(Ku::DigitalSignature),
            "key encipherment" => p.key_usages.push(Ku::KeyEncipherment),
            "client auth" => p.extended_key_usages.push(Eku::ClientAuth),
            "server auth" => p.extended_key_usages.push(Eku::ServerAuth),
            other => return Err(format!("usage {other:?} is not one a kubelet signer sets")),
        }
    }
    p.name_constraints = None;
    p.crl_distribution_points = Vec::new();
    p.custom_extensions = Vec::new();
    p.use_authority_key_identifier_extension = true;
    let key = rcgen::KeyPair::from_pem(&ca.key_pem).map_err(|e| format!("the CA key: {e}"))?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem, key)
        .map_err(|e| format!("the CA certificate: {e}"))?;
    let cert = params
        .signed_by(&issuer)
        .map_err(|e| format!("signing: {e}"))?;
    Ok(cert.pem())
}

/// `status.certificate` for a PEM certificate.
pub fn encode_certificate(pem: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(pem.as_bytes())
}

/// A PUT of the `approval` or `status` subresource: the stored object with
/// the new status, as the real API keeps things apart. `approval` changes
/// only the conditions (spec and certificate stay); `status` changes the
/// status but keeps the stored Approved and Denied conditions, and sets a
/// certificate only on an approved request, and only once.
pub fn update_subresource(stored: &Value, incoming: &Value, sub: &str) -> Result<Value, String> {
    let mut out = stored.clone();
    let new_status = incoming.get("status").cloned().unwrap_or_else(|| json!({}));
    if !new_status.is_object() {
        return Err("status is not an object".into());
    }
    let conditions = |v: &Value| -> Vec<Value> {
        v.get("conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let is_decision = |c: &Value| {
        matches!(
            c.get("type").and_then(Value::as_str),
            Some("Approved" | "Denied")
        )
    };
    let old_status = stored.get("status").cloned().unwrap_or_else(|| json!({}));
    let status = match sub {
        "approval" => {
            let conds = conditions(&new_status);
            let approved = conds
                .iter()
                .any(|c| c.get("type") == Some(&json!("Approved")));
            let denied = conds
                .iter()
                .any(|c| c.get("type") == Some(&json!("Denied")));
            if approved && denied {
                return Err("status.conditions: Approved and Denied cannot both be set".into());
            }
            let mut s = old_status.clone();
            s["conditions"] = Value::Array(conds);
            s
        }
        "status" => {
            let mut conds: Vec<Value> = conditions(&new_status)
                .into_iter()
                .filter(|c| !is_decision(c))
                .collect();
            conds.extend(conditions(&old_status).into_iter().filter(is_decision));
            let mut s = new_status.clone();
            s["conditions"] = Value::Array(conds);
            let new_cert = s
                .get("certificate")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let old_cert = certificate(stored);
            if !new_cert.is_empty() && new_cert != old_cert {
                if !old_cert.is_empty() {
                    return Err(
                        "status.certificate: updates may not modify existing certificate content"
                            .into(),
                    );
                }
                if !has_condition(stored, "Approved") || has_condition(stored, "Denied") {
                    return Err("status.certificate: may only be set on an approved request".into());
                }
            }
            s
        }
        other => return Err(format!("no subresource {other:?}")),
    };
    out["status"] = status;
    Ok(out)
}

/// A PKCS#10 request (PEM) for `key` with subject CN `cn`, O `org`, and
/// the given names.
pub fn new_request(
    key: &rcgen::KeyPair,
    cn: &str,
    org: &str,
    dns: &[String],
    ips: &[IpAddr],
) -> Result<String, String> {
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, org);
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    for d in dns {
        let name = d
            .clone()
            .try_into()
            .map_err(|e| format!("DNS name {d:?}: {e}"))?;
        p.subject_alt_names.push(rcgen::SanType::DnsName(name));
    }
    for ip in ips {
        p.subject_alt_names.push(rcgen::SanType::IpAddress(*ip));
    }
    p.serialize_request(key)
        .and_then(|r| r.pem())
        .map_err(|e| format!("building the request: {e}"))
}

/// A CertificateSigningRequest object to POST.
pub fn object(generate_name: &str, signer: &str, usages: &[&str], request_pem: &str) -> Value {
    json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": generate_name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(request_pem.as_bytes()),
            "signerName": signer,
            "usages": usages,
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CLIENT_USAGES: [&str; 2] = ["digital signature", "client auth"];
    const SERVING_USAGES: [&str; 3] = ["digital signature", "key encipherment", "server auth"];

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    /// A CSR object as the API holds it after a create by `user`.
    fn stored(
        signer: &str,
        usages: &[&str],
        user: &str,
        groups: &[&str],
        cn: &str,
        dns: &[&str],
        ips: &[&str],
    ) -> Value {
        let key = rcgen::KeyPair::generate().unwrap();
        let dns: Vec<String> = dns.iter().map(|d| d.to_string()).collect();
        let ips: Vec<IpAddr> = ips.iter().map(|i| i.parse().unwrap()).collect();
        let pem = new_request(&key, cn, "system:nodes", &dns, &ips).unwrap();
        let mut o = object("csr-", signer, usages, &pem);
        o["metadata"] = json!({"name": "csr-1"});
        o["spec"]["username"] = user.into();
        o["spec"]["groups"] = json!(groups);
        o["status"] = json!({});
        o
    }

    fn bootstrap_csr() -> Value {
        stored(
            CLIENT_KUBELET,
            &CLIENT_USAGES,
            "system:bootstrap:abcdef",
            &[
                "system:bootstrappers",
                "system:bootstrappers:kubeforge",
                "system:authenticated",
            ],
            "system:node:w1",
            &[],
            &[],
        )
    }

    fn binding(role: &str, group: &str) -> Value {
        json!({
            "roleRef": {"kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "Group", "name": group}]
        })
    }

    fn kubeforge_bindings() -> Vec<Value> {
        vec![
            binding(auth::NODE_BOOTSTRAPPER, "system:bootstrappers:kubeforge"),
            binding(NODE_CLIENT, "system:bootstrappers:kubeforge"),
            binding(SELF_NODE_CLIENT, "system:nodes"),
        ]
    }

    #[test]
    fn requests_parse() {
        let c = stored(
            KUBELET_SERVING,
            &SERVING_USAGES,
            "system:node:w1",
            &["system:nodes"],
            "system:node:w1",
            &["w1"],
            &["10.77.0.21"],
        );
        let r = requested(&c).unwrap();
        assert_eq!(r.cn.as_deref(), Some("system:node:w1"));
        assert_eq!(r.orgs, ["system:nodes"]);
        assert_eq!(r.dns, ["w1"]);
        assert_eq!(r.ips, ["10.77.0.21".parse::<IpAddr>().unwrap()]);
        assert!(r.other_names.is_empty());
        let mut bad = c;
        bad["spec"]["request"] = "bm90IGEgcmVxdWVzdA==".into();
        assert!(requested(&bad).unwrap_err().contains("not a PEM"));
    }

    #[test]
    fn states() {
        let c = bootstrap_csr();
        assert_eq!(state(&c), State::Pending);
        let a = with_condition(&c, "Approved", "AutoApproved", "ok", now());
        assert_eq!(state(&a), State::Approved);
        assert!(a["status"]["conditions"][0]["lastUpdateTime"]
            .as_str()
            .unwrap()
            .ends_with('Z'));
        let mut i = a.clone();
        i["status"]["certificate"] = "eA==".into();
        assert_eq!(state(&i), State::Issued);
        assert_eq!(
            state(&with_condition(&c, "Denied", "No", "no", now())),
            State::Denied
        );
        assert_eq!(
            state(&with_condition(
                &a,
                "Failed",
                "SignerValidationFailure",
                "x",
                now()
            )),
            State::Failed
        );
        assert!(to_sign(&a));
        assert!(!to_sign(&c) && !to_sign(&i));
    }

    #[test]
    fn bootstrap_client_requests_are_approved_with_nodeclient() {
        let c = bootstrap_csr();
        assert_eq!(
            judge_client_csr(&c, &kubeforge_bindings()),
            ClientApproval::Approve(
                "Auto approving kubelet client certificate after SubjectAccessReview."
            )
        );
        // Without the nodeclient binding it stays pending.
        let only_bootstrapper = [binding(
            auth::NODE_BOOTSTRAPPER,
            "system:bootstrappers:kubeforge",
        )];
        match judge_client_csr(&c, &only_bootstrapper) {
            ClientApproval::Leave(why) => assert!(why.contains(NODE_CLIENT), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn renewals_are_approved_with_selfnodeclient_only_for_the_node_itself() {
        let own = stored(
            CLIENT_KUBELET,
            &CLIENT_USAGES,
            "system:node:w1",
            &["system:nodes", "system:authenticated"],
            "system:node:w1",
            &[],
            &[],
        );
        assert_eq!(
            judge_client_csr(&own, &kubeforge_bindings()),
            ClientApproval::Approve(
                "Auto approving self kubelet client certificate after SubjectAccessReview."
            )
        );
        // w1 asking for w2's client certificate: selfnodeclient does not
        // cover it, and nodes have no nodeclient.
        let other = stored(
            CLIENT_KUBELET,
            &CLIENT_USAGES,
            "system:node:w1",
            &["system:nodes", "system:authenticated"],
            "system:node:w2",
            &[],
            &[],
        );
        assert!(matches!(
            judge_client_csr(&other, &kubeforge_bindings()),
            ClientApproval::Leave(_)
        ));
    }

    #[test]
    fn what_the_approver_leaves_alone() {
        let b = kubeforge_bindings();
        // Serving requests are never its business.
        let serving = stored(
            KUBELET_SERVING,
            &SERVING_USAGES,
            "system:node:w1",
            &["system:nodes"],
            "system:node:w1",
            &["w1"],
            &[],
        );
        assert_eq!(judge_client_csr(&serving, &b), ClientApproval::NotMine);
        // Already decided.
        let approved = with_condition(&bootstrap_csr(), "Approved", "x", "y", now());
        assert_eq!(judge_client_csr(&approved, &b), ClientApproval::NotMine);
        // Not a node client certificate: a SAN, server usage, another O.
        let with_san = stored(
            CLIENT_KUBELET,
            &CLIENT_USAGES,
            "system:bootstrap:abcdef",
            &["system:bootstrappers:kubeforge"],
            "system:node:w1",
            &["w1"],
            &[],
        );
        let server_usage = stored(
            CLIENT_KUBELET,
            &["digital signature", "server auth"],
            "system:bootstrap:abcdef",
            &["system:bootstrappers:kubeforge"],
            "system:node:w1",
            &[],
            &[],
        );
        let not_a_node = stored(
            CLIENT_KUBELET,
            &CLIENT_USAGES,
            "system:bootstrap:abcdef",
            &["system:bootstrappers:kubeforge"],
            "admin",
            &[],
            &[],
        );
        for (c, want) in [
            (with_san, "DNS and IP names"),
            (server_usage, "usages"),
            (not_a_node, "does not start with"),
        ] {
            match judge_client_csr(&c, &b) {
                ClientApproval::Leave(why) => assert!(why.contains(want), "{why}"),
                other => panic!("{want}: {other:?}"),
            }
        }
    }

    fn test_ca() -> SigningCa {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "kubernetes");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = now() - Duration::from_secs(60);
        p.not_after = now() + Duration::from_secs(30 * 24 * 3600);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        SigningCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            duration: Duration::from_secs(365 * 24 * 3600),
        }
    }

    #[test]
    fn signing_follows_the_usages_and_the_ca() {
        use x509_parser::prelude::*;
        let ca = test_ca();
        let serving = with_condition(
            &stored(
                KUBELET_SERVING,
                &SERVING_USAGES,
                "system:node:w1",
                &["system:nodes"],
                "system:node:w1",
                &["w1"],
                &["10.77.0.21"],
            ),
            "Approved",
            "KubeforgeApproved",
            "ok",
            now(),
        );
        let pem = sign(&serving, &ca, now()).unwrap();
        let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents;
        let (_, cert) = parse_x509_certificate(&der).unwrap();
        assert_eq!(
            cert.subject().to_string(),
            "O=system:nodes, CN=system:node:w1"
        );
        assert_eq!(cert.issuer().to_string(), "CN=kubernetes");
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
        assert!(!cert.is_ca());
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(san.general_names.len(), 2);
        // Capped at the CA's notAfter (30 days, not the year asked for).
        let ca_der = x509_parser::pem::parse_x509_pem(ca.cert_pem.as_bytes())
            .unwrap()
            .1
            .contents;
        let (_, ca_cert) = parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(cert.validity().not_after, ca_cert.validity().not_after);
        assert!(cert.validity().is_valid());
        // Verifies with the CA's key.
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();

        // A client request with expirationSeconds: one hour.
        let mut client = with_condition(&bootstrap_csr(), "Approved", "AutoApproved", "", now());
        client["spec"]["expirationSeconds"] = 3600.into();
        let pem = sign(&client, &ca, now()).unwrap();
        let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents;
        let (_, cert) = parse_x509_certificate(&der).unwrap();
        let v = cert.validity();
        let secs = v.not_after.timestamp() - v.not_before.timestamp();
        assert_eq!(secs, 3600 + 300, "an hour, backdated 5 min");
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);

        // The serving signer refuses a request without names.
        let no_names = with_condition(
            &stored(
                KUBELET_SERVING,
                &SERVING_USAGES,
                "system:node:w1",
                &["system:nodes"],
                "system:node:w1",
                &[],
                &[],
            ),
            "Approved",
            "x",
            "",
            now(),
        );
        assert!(sign(&no_names, &ca, now())
            .unwrap_err()
            .contains("at least one DNS or IP"));
    }

    #[test]
    fn subresources_keep_spec_and_decisions() {
        let c = bootstrap_csr();
        // approval: only the conditions change.
        let mut incoming = with_condition(&c, "Approved", "KubeforgeApproved", "ok", now());
        incoming["spec"]["username"] = "someone-else".into();
        incoming["status"]["certificate"] = "Zm9v".into();
        let approved = update_subresource(&c, &incoming, "approval").unwrap();
        assert_eq!(approved["spec"], c["spec"]);
        assert_eq!(state(&approved), State::Approved);
        assert_eq!(certificate(&approved), "");
        let both = with_condition(&incoming, "Denied", "x", "y", now());
        assert!(update_subresource(&c, &both, "approval").is_err());

        // status: the certificate, but not the decisions.
        let mut signed = approved.clone();
        signed["status"]["certificate"] = "Y2VydA==".into();
        signed["status"]["conditions"] = json!([]);
        let issued = update_subresource(&approved, &signed, "status").unwrap();
        assert_eq!(state(&issued), State::Issued);
        // Not on a pending request, and never twice.
        assert!(update_subresource(&c, &signed, "status")
            .unwrap_err()
            .contains("approved"));
        let mut again = issued.clone();
        again["status"]["certificate"] = "b3RoZXI=".into();
        assert!(update_subresource(&issued, &again, "status")
            .unwrap_err()
            .contains("existing certificate"));
        assert!(update_subresource(&c, &c, "scale").is_err());
    }
}
