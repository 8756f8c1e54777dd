//! Reading certificates back: what a certificate says, and whether an
//! existing one still fits the catalog, the CA and the inventory.

use crate::catalog::{LeafRequest, San};
use crate::{KeyCert, Reason};
use kubeforge_inventory::PkiSettings;
use rcgen::{KeyPair, PublicKeyData};
use std::net::IpAddr;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::prelude::X509Certificate;

/// What a certificate says about itself, as parsed from its DER.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertInfo {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub issuer_common_name: String,
    pub is_ca: bool,
    pub server_auth: bool,
    pub client_auth: bool,
    pub digital_signature: bool,
    pub key_encipherment: bool,
    pub key_cert_sign: bool,
    pub sans: Vec<San>,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

pub(crate) fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn pem(text: &str) -> Result<Pem, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    Ok(pem)
}

fn parsed(pem: &Pem) -> Result<X509Certificate<'_>, String> {
    pem.parse_x509()
        .map_err(|e| format!("not an X.509 certificate: {e}"))
}

fn ts(t: i64) -> Result<OffsetDateTime, String> {
    OffsetDateTime::from_unix_timestamp(t).map_err(|e| e.to_string())
}

fn info_of(cert: &X509Certificate<'_>) -> Result<CertInfo, String> {
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
        it.next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let common_name = first(&mut cert.subject().iter_common_name());
    let issuer_common_name = first(&mut cert.issuer().iter_common_name());
    let organizations = cert
        .subject()
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect();
    let eku = cert.extended_key_usage().map_err(|e| e.to_string())?;
    let ku = cert.key_usage().map_err(|e| e.to_string())?;
    let mut sans = Vec::new();
    if let Some(ext) = cert.subject_alternative_name().map_err(|e| e.to_string())? {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push(San::Dns((*d).to_string())),
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        sans.push(San::Ip(IpAddr::from(a)));
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        sans.push(San::Ip(IpAddr::from(a)));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        common_name,
        organizations,
        issuer_common_name,
        is_ca: cert.is_ca(),
        server_auth: eku.as_ref().is_some_and(|e| e.value.server_auth),
        client_auth: eku.as_ref().is_some_and(|e| e.value.client_auth),
        digital_signature: ku.as_ref().is_some_and(|k| k.value.digital_signature()),
        key_encipherment: ku.as_ref().is_some_and(|k| k.value.key_encipherment()),
        key_cert_sign: ku.as_ref().is_some_and(|k| k.value.key_cert_sign()),
        sans,
        not_before: ts(cert.validity().not_before.timestamp())?,
        not_after: ts(cert.validity().not_after.timestamp())?,
    })
}

/// Parses a PEM certificate and reports what it says.
pub fn inspect(cert_pem: &str) -> Result<CertInfo, String> {
    let pem = pem(cert_pem)?;
    let cert = parsed(&pem)?;
    info_of(&cert)
}

fn key_matches(cert: &X509Certificate<'_>, key_pem: &str) -> Result<(), String> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| format!("unreadable private key: {e}"))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
        return Err("the private key does not belong to the certificate".into());
    }
    Ok(())
}

/// Whether the private key `key_pem` belongs to the certificate.
pub(crate) fn key_matches_pem(cert_pem: &str, key_pem: &str) -> Result<(), String> {
    let pem = pem(cert_pem)?;
    let cert = parsed(&pem)?;
    key_matches(&cert, key_pem)
}

pub(crate) fn ca_usable(cert_pem: &str, key_pem: &str) -> Result<(), String> {
    let pem = pem(cert_pem)?;
    let cert = parsed(&pem)?;
    if !cert.is_ca() {
        return Err("the certificate is not a CA".into());
    }
    key_matches(&cert, key_pem)
}

pub(crate) fn sa_usable(public_pem: &str, private_pem: &str) -> Result<(), String> {
    let key = KeyPair::from_pem(private_pem).map_err(|e| format!("unreadable private key: {e}"))?;
    if key.public_key_pem().trim() != public_pem.trim() {
        return Err("sa.pub does not belong to sa.key".into());
    }
    Ok(())
}

/// Decides whether an existing leaf can be kept.
pub(crate) fn leaf(
    req: &LeafRequest,
    cert_pem: &str,
    key_pem: &str,
    ca: &KeyCert,
    settings: &PkiSettings,
    now: OffsetDateTime,
) -> Result<(), Reason> {
    let pem = pem(cert_pem).map_err(Reason::Unreadable)?;
    let cert = parsed(&pem).map_err(Reason::Unreadable)?;
    let ca_pem = self::pem(&ca.cert_pem).map_err(Reason::Unreadable)?;
    let ca_cert = parsed(&ca_pem).map_err(Reason::Unreadable)?;
    if cert.issuer().as_raw() != ca_cert.subject().as_raw()
        || cert.verify_signature(Some(ca_cert.public_key())).is_err()
    {
        return Err(Reason::NotSignedByCa);
    }
    key_matches(&cert, key_pem).map_err(|_| Reason::KeyMismatch)?;
    let info = info_of(&cert).map_err(Reason::Unreadable)?;
    let want_org: Vec<String> = req.org.iter().cloned().collect();
    if info.common_name != req.cn || info.organizations != want_org {
        return Err(Reason::SubjectChanged(format!(
            "CN={} O={:?}, want CN={} O={:?}",
            info.common_name, info.organizations, req.cn, want_org
        )));
    }
    if info.server_auth != req.spec.kind.server()
        || info.client_auth != req.spec.kind.client()
        || !info.digital_signature
        || !info.key_encipherment
        || info.is_ca
    {
        return Err(Reason::UsageChanged);
    }
    let missing: Vec<String> = req
        .sans
        .iter()
        .filter(|s| !info.sans.contains(s))
        .map(ToString::to_string)
        .collect();
    if !missing.is_empty() {
        return Err(Reason::MissingSans(missing));
    }
    let window = time::Duration::days(i64::from(settings.renew_before_days));
    // A leaf already valid until its CA's own end cannot be renewed any
    // further: reissuing it would only repeat on every run.
    let capped = info.not_after
        >= info_of(&ca_cert).map_err(Reason::Unreadable)?.not_after - time::Duration::minutes(1);
    if info.not_after - now < window && !capped {
        return Err(Reason::ExpiresSoon(fmt_time(info.not_after)));
    }
    Ok(())
}

/// What `kubeforge certs` says of a certificate (its CHECK column), the
/// worst that holds: unreadable, expired, not signed by the CA that signs
/// now, lacking a name the inventory needs, different from the state
/// directory's copy (a node's file), within `renew_before_days`, or ok.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "kebab-case")]
pub enum CertState {
    Ok,
    RenewSoon,
    /// A node's file is not the certificate of the state directory.
    Differs,
    /// The names it lacks.
    SanMismatch(Vec<String>),
    NotSignedByCurrentCa,
    Expired,
    Missing,
    Invalid(String),
}

impl CertState {
    /// Higher is worse.
    pub fn severity(&self) -> u8 {
        match self {
            CertState::Ok => 0,
            CertState::RenewSoon => 1,
            CertState::Differs => 2,
            CertState::SanMismatch(_) => 3,
            CertState::NotSignedByCurrentCa => 4,
            CertState::Expired => 5,
            CertState::Missing => 6,
            CertState::Invalid(_) => 7,
        }
    }

    /// The worse of two.
    pub fn worst(self, other: CertState) -> CertState {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }
}

impl std::fmt::Display for CertState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertState::Ok => f.write_str("ok"),
            CertState::RenewSoon => f.write_str("renew soon"),
            CertState::Differs => f.write_str("differs from the state directory"),
            CertState::SanMismatch(s) => write!(f, "SAN mismatch (lacks {})", s.join(", ")),
            CertState::NotSignedByCurrentCa => f.write_str("not signed by the current CA"),
            CertState::Expired => f.write_str("expired"),
            CertState::Missing => f.write_str("missing"),
            CertState::Invalid(e) => write!(f, "invalid: {e}"),
        }
    }
}

/// The state of a leaf certificate (the first of `cert_pem`): signed by
/// `ca_pem` (the CA that signs now), carrying every name of `sans`, and
/// its expiry against `renew_before_days` at `now`.
pub fn judge(
    cert_pem: &str,
    ca_pem: &str,
    sans: &[San],
    renew_before_days: u32,
    now: OffsetDateTime,
) -> CertState {
    let Ok(pem) = pem(cert_pem) else {
        return CertState::Invalid("not a PEM certificate".into());
    };
    let cert = match parsed(&pem) {
        Ok(c) => c,
        Err(e) => return CertState::Invalid(e),
    };
    let info = match info_of(&cert) {
        Ok(i) => i,
        Err(e) => return CertState::Invalid(e),
    };
    if info.not_after <= now {
        return CertState::Expired;
    }
    if !signed(&cert, ca_pem) {
        return CertState::NotSignedByCurrentCa;
    }
    let missing: Vec<String> = sans
        .iter()
        .filter(|s| !info.sans.contains(s))
        .map(ToString::to_string)
        .collect();
    if !missing.is_empty() {
        return CertState::SanMismatch(missing);
    }
    expiry(&info, renew_before_days, now)
}

fn signed(cert: &X509Certificate<'_>, ca_pem: &str) -> bool {
    self::pem(ca_pem)
        .ok()
        .and_then(|p| {
            let ca = p.parse_x509().ok()?;
            Some(
                cert.issuer().as_raw() == ca.subject().as_raw()
                    && cert.verify_signature(Some(ca.public_key())).is_ok(),
            )
        })
        .unwrap_or(false)
}

/// Whether the CA of `ca_pem` (its first certificate) signed the first
/// certificate of `cert_pem`; false when either does not parse.
pub fn signed_by(cert_pem: &str, ca_pem: &str) -> bool {
    let Ok(pem) = pem(cert_pem) else {
        return false;
    };
    parsed(&pem).is_ok_and(|cert| signed(&cert, ca_pem))
}

fn expiry(info: &CertInfo, renew_before_days: u32, now: OffsetDateTime) -> CertState {
    if info.not_after <= now {
        CertState::Expired
    } else if info.not_after - now < time::Duration::days(i64::from(renew_before_days)) {
        CertState::RenewSoon
    } else {
        CertState::Ok
    }
}

/// The state of a CA certificate: only its expiry (it signs itself).
pub fn judge_ca(cert_pem: &str, renew_before_days: u32, now: OffsetDateTime) -> CertState {
    match inspect(cert_pem) {
        Ok(info) => expiry(&info, renew_before_days, now),
        Err(e) => CertState::Invalid(e),
    }
}

/// Whether `cert_pem` (the first certificate in it) is a client
/// certificate that `ca_pem` signed for `common_name`, valid at `now`: the
/// kubelet's own certificate after a bootstrap-token join. Says why not.
pub fn client_certificate_valid(
    cert_pem: &str,
    ca_pem: &str,
    common_name: &str,
    now: std::time::SystemTime,
) -> Result<(), String> {
    let now = OffsetDateTime::from(now);
    let pem = pem(cert_pem)?;
    let cert = parsed(&pem)?;
    let ca_pem = self::pem(ca_pem)?;
    let ca_cert = parsed(&ca_pem)?;
    if cert.issuer().as_raw() != ca_cert.subject().as_raw()
        || cert.verify_signature(Some(ca_cert.public_key())).is_err()
    {
        return Err("not signed by the cluster CA".into());
    }
    let info = info_of(&cert)?;
    if info.common_name != common_name {
        return Err(format!("issued to {}, not {common_name}", info.common_name));
    }
    if !info.client_auth {
        return Err("not a client certificate".into());
    }
    if now < info.not_before || now >= info.not_after {
        return Err(format!(
            "valid from {} to {}, not now",
            fmt_time(info.not_before),
            fmt_time(info.not_after)
        ));
    }
    Ok(())
}

pub(crate) fn encryption_key_usable(key: &str) -> Result<(), String> {
    use base64::Engine;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(bytes) if bytes.len() == 32 => Ok(()),
        Ok(bytes) => Err(format!("the key is {} bytes long, not 32", bytes.len())),
        Err(e) => Err(format!("the key is not base64: {e}")),
    }
}

/// `[a-z0-9]{6}.[a-z0-9]{16}`.
pub(crate) fn bootstrap_token_usable(token: &str) -> Result<(), String> {
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    match token.split_once('.') {
        Some((id, secret)) if ok(id, 6) && ok(secret, 16) => Ok(()),
        _ => Err("not a bootstrap token ([a-z0-9]{6}.[a-z0-9]{16})".into()),
    }
}
