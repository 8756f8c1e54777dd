//! Certificates, keys and kubeconfigs as a plan shows them: what changed
//! in meaning (subject, issuer, names, validity, key; a kubeconfig's
//! server and user), never their encoded bytes or embedded credentials.

use std::fmt::Write as _;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

/// What a certificate says, as the plan compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// The subject, as `CN=..., O=...`.
    pub subject: String,
    pub issuer: String,
    /// `DNS:name` and `IP:address`, in the certificate's order.
    pub sans: Vec<String>,
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// The subject public key info (DER): equal keys, equal bytes.
    pub public_key: Vec<u8>,
    pub serial: String,
}

impl CertSummary {
    /// The subject's common name (the whole subject when it has none).
    pub fn common_name(&self) -> &str {
        self.subject
            .split(", ")
            .find_map(|p| p.strip_prefix("CN="))
            .unwrap_or(&self.subject)
    }
}

/// Whether `bytes` are PEM certificates and nothing secret.
pub fn is_certificate_pem(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    text.contains("-----BEGIN CERTIFICATE-----") && !text.contains("PRIVATE KEY-----")
}

/// Every certificate of a PEM text (other PEM blocks are skipped).
pub fn parse_pem(bytes: &[u8]) -> Result<Vec<CertSummary>, String> {
    let mut out = Vec::new();
    for (i, pem) in Pem::iter_from_buffer(bytes).enumerate() {
        let pem = pem.map_err(|e| format!("PEM block {}: {e}", i + 1))?;
        if pem.label != "CERTIFICATE" {
            continue;
        }
        let cert = pem
            .parse_x509()
            .map_err(|e| format!("certificate {}: {e}", i + 1))?;
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                    GeneralName::IPAddress(b) => {
                        let ip = match b.len() {
                            4 => <[u8; 4]>::try_from(*b)
                                .map(|a| std::net::IpAddr::from(a).to_string())
                                .ok(),
                            16 => <[u8; 16]>::try_from(*b)
                                .map(|a| std::net::IpAddr::from(a).to_string())
                                .ok(),
                            _ => None,
                        };
                        sans.push(format!("IP:{}", ip.unwrap_or_else(|| "?".into())));
                    }
                    other => sans.push(other.to_string()),
                }
            }
        }
        out.push(CertSummary {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            sans,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            public_key: cert.public_key().raw.to_vec(),
            serial: cert.raw_serial_as_string(),
        });
    }
    if out.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(out)
}

/// A time as RFC 3339 (UTC, seconds).
pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}

fn validity(c: &CertSummary) -> String {
    format!("{} to {}", rfc3339(c.not_before), rfc3339(c.not_after))
}

/// What changed between the certificates a node holds (`old`, when they
/// were read) and the rendered ones, one line per change.
pub fn certificate_changes(old: Option<&[u8]>, new: &[u8]) -> Vec<String> {
    let mut lines = Vec::new();
    let new = match parse_pem(new) {
        Ok(n) => n,
        Err(e) => return vec![format!("(the rendered certificate is unreadable: {e})")],
    };
    let old = match old.map(parse_pem) {
        None => {
            for c in &new {
                lines.push(format!("certificate {}: old content not read", c.subject));
                lines.push(format!("  now: {}", describe(c)));
            }
            return lines;
        }
        Some(Err(e)) => {
            lines.push(format!(
                "the node's copy is not a readable certificate ({e})"
            ));
            for c in &new {
                lines.push(format!("now: {}", describe(c)));
            }
            return lines;
        }
        Some(Ok(o)) => o,
    };
    if old.len() != new.len() {
        lines.push(format!("certificates: {} -> {}", old.len(), new.len()));
    }
    for (i, (o, n)) in old.iter().zip(&new).enumerate() {
        let label = if new.len() > 1 {
            format!("certificate {} ", i + 1)
        } else {
            String::new()
        };
        lines.extend(one_change(&label, o, n));
    }
    for n in new.iter().skip(old.len()) {
        lines.push(format!("certificate added: {}", describe(n)));
    }
    for o in old.iter().skip(new.len()) {
        lines.push(format!("certificate removed: {}", describe(o)));
    }
    lines
}

/// One line about a certificate: subject, issuer, expiry.
pub fn describe(c: &CertSummary) -> String {
    format!(
        "{}, issued by {}, valid until {}",
        c.subject,
        c.issuer,
        rfc3339(c.not_after)
    )
}

fn one_change(label: &str, o: &CertSummary, n: &CertSummary) -> Vec<String> {
    let mut lines = Vec::new();
    if o.subject == n.subject {
        lines.push(format!("{label}subject: {} (kept)", n.subject));
    } else {
        lines.push(format!("{label}subject: {} -> {}", o.subject, n.subject));
    }
    if o.issuer != n.issuer {
        lines.push(format!("{label}issuer: {} -> {}", o.issuer, n.issuer));
    }
    for s in n.sans.iter().filter(|s| !o.sans.contains(s)) {
        lines.push(format!("{label}SAN added: {s}"));
    }
    for s in o.sans.iter().filter(|s| !n.sans.contains(s)) {
        lines.push(format!("{label}SAN removed: {s}"));
    }
    if (o.not_before, o.not_after) != (n.not_before, n.not_after) {
        lines.push(format!(
            "{label}validity: {} -> {}",
            validity(o),
            validity(n)
        ));
    }
    if o.public_key == n.public_key {
        lines.push(format!("{label}key: kept"));
    } else {
        lines.push(format!("{label}key: changed"));
    }
    if o.serial != n.serial && lines.len() == 2 && o.issuer == n.issuer {
        let mut s = format!("{label}reissued with the same names and validity");
        let _ = write!(s, " (serial {} -> {})", o.serial, n.serial);
        lines.push(s);
    }
    lines
}

/// The lines of a kubeconfig that say where it points and who it is: its
/// `server`, user and context names. Never an embedded certificate, key
/// or token.
pub fn kubeconfig_identity(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut section = "";
    for line in text.lines() {
        let trimmed = line.trim_start();
        if !line.starts_with(' ') && !line.starts_with('-') {
            section = trimmed.split(':').next().unwrap_or_default();
        }
        let item = trimmed.trim_start_matches("- ").trim_start();
        let Some((key, value)) = item.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        let field = match (section, key) {
            ("clusters", "server") => "server",
            ("users", "name") => "user",
            ("current-context", _) | (_, "current-context") => "context",
            _ => continue,
        };
        out.push((field.to_string(), value.to_string()));
    }
    out
}

/// Whether a file is a kubeconfig with embedded credentials.
pub fn is_kubeconfig(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    text.contains("kind: Config")
        && (text.contains("client-certificate-data:")
            || text.contains("client-key-data:")
            || text.contains("token:"))
}

/// What changed in a kubeconfig: its server and user, from the rendered
/// file and, when the node's identity lines were read (`old`), against
/// them. Never its embedded certificate, key or token.
pub fn kubeconfig_changes(old: Option<&str>, new: &[u8]) -> Vec<String> {
    let new = kubeconfig_identity(&String::from_utf8_lossy(new));
    let values = |v: &[(String, String)], field: &str| -> String {
        v.iter()
            .filter(|(k, _)| k == field)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(old) = old.map(kubeconfig_identity) else {
        return vec![format!(
            "(secret) changed; server {}, user {}",
            values(&new, "server"),
            values(&new, "user")
        )];
    };
    let mut lines = Vec::new();
    for field in ["server", "user"] {
        let (o, n) = (values(&old, field), values(&new, field));
        if o == n {
            lines.push(format!("{field}: {n} (kept)"));
        } else {
            lines.push(format!("{field}: {o} -> {n}"));
        }
    }
    lines.push("(secret) embedded credentials changed".into());
    lines
}
