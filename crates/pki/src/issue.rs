//! Issuing: CAs, leaves and the other key material, with rcgen.

use crate::catalog::{CaId, LeafRequest, San};
use crate::{KeyCert, PkiError, SecretPem};
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

fn err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |e| PkiError::Issue {
        what,
        detail: e.to_string(),
    }
}

fn random(n: usize, what: &str) -> Result<Vec<u8>, PkiError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| PkiError::Issue {
        what: what.to_string(),
        detail: format!("no randomness from the operating system: {e}"),
    })?;
    Ok(buf)
}

/// A bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}` (the format the API
/// server accepts).
pub(crate) fn bootstrap_token() -> Result<SecretPem, PkiError> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let bytes = random(64, "bootstrap token")?;
    // 252 = 7 * 36: rejecting larger bytes keeps every character equally likely.
    let chars: Vec<u8> = bytes
        .into_iter()
        .filter(|b| *b < 252)
        .map(|b| ALPHABET[usize::from(b % 36)])
        .collect();
    if chars.len() < 22 {
        return Err(PkiError::Issue {
            what: "bootstrap token".into(),
            detail: "not enough random bytes".into(),
        });
    }
    let text = String::from_utf8_lossy(&chars[..22]).into_owned();
    Ok(SecretPem(format!("{}.{}", &text[..6], &text[6..])))
}

fn serial(what: &str) -> Result<SerialNumber, PkiError> {
    let mut bytes = random(16, what)?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Backdating covers small clock differences between machines.
const BACKDATE: Duration = Duration::minutes(5);

pub(crate) fn ca(ca: CaId, days: u32, now: OffsetDateTime) -> Result<KeyCert, PkiError> {
    let what = ca.to_string();
    let key = KeyPair::generate().map_err(err(&what))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, ca.common_name());
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(i64::from(days));
    params.serial_number = Some(serial(&what)?);
    let cert = params.self_signed(&key).map_err(err(&what))?;
    Ok(KeyCert {
        cert_pem: cert.pem(),
        key: SecretPem(key.serialize_pem()),
    })
}

pub(crate) fn leaf(
    req: &LeafRequest,
    ca: &KeyCert,
    days: u32,
    now: OffsetDateTime,
) -> Result<KeyCert, PkiError> {
    let what = req.describe();
    let ca_key = KeyPair::from_pem(&ca.key.0).map_err(err(&what))?;
    let ca_info = crate::check::inspect(&ca.cert_pem).map_err(|detail| PkiError::Issue {
        what: what.clone(),
        detail,
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(err(&what))?;
    let key = KeyPair::generate().map_err(err(&what))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, req.cn.as_str());
    if let Some(org) = &req.org {
        dn.push(DnType::OrganizationName, org.as_str());
    }
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    if req.spec.kind.server() {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if req.spec.kind.client() {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    for san in &req.sans {
        params.subject_alt_names.push(match san {
            San::Ip(ip) => SanType::IpAddress(*ip),
            San::Dns(d) => SanType::DnsName(d.clone().try_into().map_err(err(&what))?),
        });
    }
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    // A leaf never outlives its CA.
    params.not_after = (now + Duration::days(i64::from(days))).min(ca_info.not_after);
    params.serial_number = Some(serial(&what)?);
    let cert = params.signed_by(&key, &issuer).map_err(err(&what))?;
    Ok(KeyCert {
        cert_pem: cert.pem(),
        key: SecretPem(key.serialize_pem()),
    })
}

/// The service-account signing key pair: (private PEM, public PEM).
pub(crate) fn sa_key() -> Result<(SecretPem, String), PkiError> {
    let key = KeyPair::generate().map_err(err("service-account key"))?;
    Ok((SecretPem(key.serialize_pem()), key.public_key_pem()))
}

pub(crate) fn encryption_key() -> Result<SecretPem, PkiError> {
    let bytes = random(32, "secrets encryption key")?;
    Ok(SecretPem(
        base64::engine::general_purpose::STANDARD.encode(bytes),
    ))
}
