//! The cluster PKI: three CAs, the service-account key pair, the secrets
//! encryption key and every leaf certificate of the [`catalog`].
//!
//! [`reconcile`] reads the state directory and decides, certificate by
//! certificate, whether to keep it or (re)issue it and why; it writes
//! nothing. [`Reconciled::persist`] writes what changed, atomically, keys
//! with mode 0600. A CA is never regenerated unless asked for by name.

pub mod catalog;
mod check;
mod issue;
pub mod listing;
pub mod rotation;
mod store;

pub use catalog::{CaId, CertSpec, LeafRequest, San, CATALOG};
pub use check::{
    client_certificate_valid, inspect, judge, judge_ca, signed_by, CertInfo, CertState,
};
pub use listing::{list, Listed, Stored};
pub use rotation::Rotation;
pub use store::{write_atomic, write_files};

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

use kubeforge_inventory::Cluster;

/// A private key in PEM. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretPem(pub String);

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

/// A certificate and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCert {
    pub cert_pem: String,
    pub key: SecretPem,
}

/// Everything the renderer needs from the PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CAs that sign, with their keys.
    pub cas: BTreeMap<CaId, KeyCert>,
    /// What each CA's trust bundle holds (PEM): the CA itself, and during
    /// a rotation the old and the new one (see [`rotation`]). Every `.crt`
    /// file of a CA on the nodes and every kubeconfig's
    /// `certificate-authority-data` is this.
    pub trust: BTreeMap<CaId, String>,
    /// The rotation whose step this PKI is, if one is under way.
    pub rotation: Option<Rotation>,
    /// Keyed by [`LeafRequest::stem`]: `apiserver`, `nodes/cp1/etcd-server`, ...
    pub leaves: BTreeMap<String, KeyCert>,
    pub sa_private: SecretPem,
    pub sa_public_pem: String,
    /// Base64 of 32 random bytes for the apiserver's secretbox provider.
    pub encryption_key: SecretPem,
    /// The kubelets' bootstrap token (`kubelet_join = "bootstrap-token"`).
    pub bootstrap_token: Option<SecretPem>,
    /// When it expires, RFC 3339 (the bootstrap token Secret's
    /// `expiration`).
    pub bootstrap_token_expiration: Option<String>,
}

impl Pki {
    pub fn leaf(&self, id: &str, node: Option<&str>) -> Option<&KeyCert> {
        let stem = match node {
            Some(n) => format!("nodes/{n}/{id}"),
            None => id.to_string(),
        };
        self.leaves.get(&stem)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "reason", content = "detail", rename_all = "kebab-case")]
pub enum Reason {
    NotSignedByCa,
    MissingSans(Vec<String>),
    ExpiresSoon(String),
    SubjectChanged(String),
    UsageChanged,
    KeyMismatch,
    Unreadable(String),
    /// A bootstrap token recorded without its expiration.
    NoExpiration,
    /// A bootstrap token valid for longer than the inventory's TTL now
    /// allows.
    OutlivesTtl(String),
    /// Renewed because it was asked for (`kubeforge certs renew`).
    Asked,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotSignedByCa => f.write_str("not signed by the current CA"),
            Reason::MissingSans(s) => write!(f, "lacks SANs {}", s.join(", ")),
            Reason::ExpiresSoon(when) => write!(f, "expires {when}, within the renewal window"),
            Reason::SubjectChanged(s) => write!(f, "subject changed: {s}"),
            Reason::UsageChanged => f.write_str("key usages differ from the catalog"),
            Reason::KeyMismatch => f.write_str("private key does not match the certificate"),
            Reason::Unreadable(e) => write!(f, "cannot be parsed: {e}"),
            Reason::NoExpiration => f.write_str("has no expiration"),
            Reason::OutlivesTtl(when) => {
                write!(
                    f,
                    "expires {when}, later than bootstrap_token_ttl_hours allows"
                )
            }
            Reason::Asked => f.write_str("renewal asked for"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    Created,
    Kept,
    Reissued {
        why: Reason,
    },
    /// A CA close to expiry is only reported, never replaced on its own.
    CaExpiresSoon {
        not_after: String,
    },
    /// A CA replaced because the caller asked for it.
    CaRegenerated,
    /// A CA rotation's step: what it did to a CA (see [`rotation`]).
    CaRotation {
        what: String,
    },
}

/// What reconcile decided about one item.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    pub subject: String,
    #[serde(flatten)]
    pub action: Action,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.action {
            Action::Created => write!(f, "{}: created", self.subject),
            Action::Kept => write!(f, "{}: kept", self.subject),
            Action::Reissued { why } => write!(f, "{}: reissued ({why})", self.subject),
            Action::CaExpiresSoon { not_after } => write!(
                f,
                "{}: expires {not_after}; plan a CA rotation (--new-ca)",
                self.subject
            ),
            Action::CaRegenerated => write!(f, "{}: regenerated as asked", self.subject),
            Action::CaRotation { what } => write!(f, "{}: {what}", self.subject),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}\n  help: check the permissions of the state directory")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the {ca} certificate exists but its key cannot be used: {detail}\n  help: restore the key from a backup; only if the cluster is to be rebuilt, pass --new-ca {name}", name = ca.name())]
    CaKey {
        ca: CaId,
        path: PathBuf,
        detail: String,
    },
    #[error("{path}: {detail}\n  help: restore the file from a backup; regenerating it invalidates every service-account token")]
    ServiceAccount { path: PathBuf, detail: String },
    #[error("{path}: {detail}\n  help: restore the file from a backup; a new key cannot read the Secrets encrypted with the old one")]
    EncryptionKey { path: PathBuf, detail: String },
    #[error("issuing {what}: {detail}")]
    Issue { what: String, detail: String },
    #[error("{path}: {detail}")]
    Rotation { path: PathBuf, detail: String },
}

/// Options of a reconcile run.
#[derive(Debug, Clone)]
pub struct Options {
    /// CAs to replace with new ones at once (every leaf they signed is
    /// reissued).
    pub new_cas: Vec<CaId>,
    /// The step of a CA rotation to decide for (recorded when persisted);
    /// `None`: the one recorded in the state directory, if any.
    pub rotation: Option<Rotation>,
    /// Leaves to reissue whatever their state, by [`LeafRequest::stem`].
    pub renew: Vec<String>,
    /// The time certificates are checked against and issued from.
    pub now: OffsetDateTime,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            new_cas: Vec::new(),
            rotation: None,
            renew: Vec::new(),
            now: OffsetDateTime::now_utc(),
        }
    }
}

/// The result of [`reconcile`]: the PKI to render with, what was decided,
/// and which files [`Reconciled::persist`] must write.
#[derive(Debug, Clone)]
pub struct Reconciled {
    pub pki: Pki,
    pub events: Vec<Event>,
    writes: Vec<Vec<store::Write>>,
}

impl Reconciled {
    /// True when persisting would write nothing.
    pub fn is_clean(&self) -> bool {
        self.writes.is_empty()
    }

    /// Writes what changed into `state_dir/pki`, atomically; returns the
    /// paths written.
    pub fn persist(&self, state_dir: &Path) -> Result<Vec<PathBuf>, PkiError> {
        store::persist(state_dir, &self.writes)
    }
}

/// Loads the PKI from `state_dir` and decides what to keep and what to
/// (re)issue for `cluster`. Reads only.
pub fn reconcile(
    state_dir: &Path,
    cluster: &Cluster,
    opts: &Options,
) -> Result<Reconciled, PkiError> {
    let store = store::Store::new(state_dir);
    let mut d = Decisions::default();
    let settings = &cluster.pki;

    let recorded = rotation::recorded(state_dir)?;
    if let (Some(r), Some(ca)) = (recorded, opts.new_cas.first()) {
        return Err(PkiError::Rotation {
            path: store.path(rotation::FILE),
            detail: format!(
                "a rotation of the {} is under way ({}); --new-ca {} would replace a CA the nodes are moving between\n  help: finish the rotation with kubeforge certs renew --new-ca {}",
                r.ca,
                r.step,
                ca.name(),
                r.ca.name()
            ),
        });
    }
    let rotating = opts.rotation.or(recorded);
    if let Some(r) = opts.rotation.filter(|r| Some(*r) != recorded) {
        d.writes.push(vec![store::Write::public(
            rotation::FILE,
            &rotation::text(&r),
        )]);
    }
    let (cas, trust, established) = cas(&store, &mut d, settings, opts, rotating)?;
    let (sa_private, sa_public_pem) = service_account_key(&store, &mut d, established)?;
    let encryption_key = encryption_key(&store, &mut d, established)?;
    let (bootstrap_token, bootstrap_token_expiration) =
        if cluster.kubelet_join == kubeforge_inventory::KubeletJoin::BootstrapToken {
            let (token, expires) = bootstrap_token(&store, &mut d, settings, opts.now)?;
            (Some(token), Some(check::fmt_time(expires)))
        } else {
            (None, None)
        };
    let leaves = leaves(&store, &mut d, cluster, &cas, opts)?;
    Ok(Reconciled {
        pki: Pki {
            cas,
            trust,
            rotation: rotating,
            leaves,
            sa_private,
            sa_public_pem,
            encryption_key,
            bootstrap_token,
            bootstrap_token_expiration,
        },
        events: d.events,
        writes: d.writes,
    })
}

/// What reconcile decided so far: the events to report and the files to
/// write.
#[derive(Default)]
struct Decisions {
    events: Vec<Event>,
    writes: Vec<Vec<store::Write>>,
}

impl Decisions {
    fn event(&mut self, subject: impl Into<String>, action: Action) {
        self.events.push(Event {
            subject: subject.into(),
            action,
        });
    }
}

/// The CAs that sign, each CA's trust bundle, and whether the cluster's
/// CAs existed already.
type Cas = (BTreeMap<CaId, KeyCert>, BTreeMap<CaId, String>, bool);

/// The three CAs: kept, created when missing, or regenerated when asked
/// for. Also returns whether the cluster is established (its Kubernetes CA
/// existed before this run).
fn cas(
    store: &store::Store,
    d: &mut Decisions,
    settings: &kubeforge_inventory::PkiSettings,
    opts: &Options,
    rotating: Option<Rotation>,
) -> Result<Cas, PkiError> {
    let mut cas = BTreeMap::new();
    let mut trust = BTreeMap::new();
    // A cluster whose CA exists already: its service-account and encryption
    // keys are never created anew, since that would break running clusters.
    let mut established = false;
    for ca in CaId::ALL {
        let stem = ca.file_stem();
        let subject = ca.to_string();
        let asked = opts.new_cas.contains(&ca);
        let cert = store.read_optional(&format!("{stem}.crt"))?;
        let key = store.read_optional(&format!("{stem}.key"))?;
        // A CA certificate without its key must not be silently replaced by
        // a new CA: every node trusts the old one.
        if cert.is_some() != key.is_some() && !asked {
            let (missing, present) = if key.is_none() {
                ("key", "crt")
            } else {
                ("crt", "key")
            };
            return Err(PkiError::CaKey {
                ca,
                path: store.path(&format!("{stem}.{missing}")),
                detail: format!("the file is missing but {stem}.{present} exists"),
            });
        }
        if ca == CaId::Kubernetes && cert.is_some() {
            established = true;
        }
        let existing = cert.zip(key);
        match existing {
            Some((cert_pem, key_pem)) if !asked => {
                check::ca_usable(&cert_pem, &key_pem).map_err(|detail| PkiError::CaKey {
                    ca,
                    path: store.path(&format!("{stem}.key")),
                    detail,
                })?;
                let info = check::inspect(&cert_pem).map_err(|detail| PkiError::CaKey {
                    ca,
                    path: store.path(&format!("{stem}.crt")),
                    detail,
                })?;
                let window = time::Duration::days(i64::from(settings.renew_before_days));
                if info.not_after - opts.now < window {
                    d.event(
                        subject,
                        Action::CaExpiresSoon {
                            not_after: check::fmt_time(info.not_after),
                        },
                    );
                } else {
                    d.event(subject, Action::Kept);
                }
                cas.insert(
                    ca,
                    KeyCert {
                        cert_pem,
                        key: SecretPem(key_pem),
                    },
                );
            }
            existing => {
                let kc = issue::ca(ca, settings.ca_validity_days, opts.now)?;
                if existing.is_some() {
                    d.writes.push(store::Write::backup(stem));
                }
                d.writes.push(store::Write::pair(stem, &kc));
                d.event(
                    subject,
                    if existing.is_some() {
                        Action::CaRegenerated
                    } else {
                        Action::Created
                    },
                );
                cas.insert(ca, kc);
            }
        }
    }
    for ca in CaId::ALL {
        let Some(signer) = cas.get(&ca).cloned() else {
            continue;
        };
        let bundle = match rotating.filter(|r| r.ca == ca) {
            None => signer.cert_pem,
            Some(r) => {
                let (signer, bundle) = rotate(store, d, settings, opts, ca, r.step, signer)?;
                cas.insert(ca, signer);
                bundle
            }
        };
        trust.insert(ca, bundle);
    }
    Ok((cas, trust, established))
}

/// Two certificates as one PEM bundle.
fn bundle(first: &str, second: &str) -> String {
    let mut s = first.trim_end().to_string();
    s.push('\n');
    s.push_str(second.trim_end());
    s.push('\n');
    s
}

/// A rotation's step for `ca` (see [`rotation`]): the CA that signs and
/// the trust bundle. `current` is the CA of `<stem>.crt`/`.key`.
fn rotate(
    store: &store::Store,
    d: &mut Decisions,
    settings: &kubeforge_inventory::PkiSettings,
    opts: &Options,
    ca: CaId,
    step: rotation::Step,
    current: KeyCert,
) -> Result<(KeyCert, String), PkiError> {
    use rotation::Step;
    let stem = ca.file_stem();
    let next_stem = format!("{stem}.next");
    let previous = format!("{stem}.previous.crt");
    let next = store
        .read_pair(&next_stem)?
        .map(|(cert_pem, key_pem)| {
            check::ca_usable(&cert_pem, &key_pem).map_err(|detail| PkiError::CaKey {
                ca,
                path: store.path(&format!("{next_stem}.key")),
                detail,
            })?;
            Ok(KeyCert {
                cert_pem,
                key: SecretPem(key_pem),
            })
        })
        .transpose()?;
    let new_subject = format!("{ca} (new)");
    let old_subject = format!("{ca} (old)");
    match step {
        Step::Trust => {
            let next = match next {
                Some(n) => {
                    d.event(new_subject, Action::Kept);
                    n
                }
                None => {
                    let n = issue::ca(ca, settings.ca_validity_days, opts.now)?;
                    d.writes.push(store::Write::pair(&next_stem, &n));
                    d.event(
                        new_subject,
                        Action::CaRotation {
                            what: "created, trusted beside the current one".into(),
                        },
                    );
                    n
                }
            };
            let trust = bundle(&current.cert_pem, &next.cert_pem);
            Ok((current, trust))
        }
        Step::Reissue => match next {
            // The new CA takes the old one's place; the old certificate
            // stays trusted.
            Some(n) => {
                let mut writes = store::Write::backup(stem);
                writes.extend(store::Write::pair(stem, &n));
                writes.push(store::Write::public(&previous, &current.cert_pem));
                writes.push(store::Write::remove(&format!("{next_stem}.crt")));
                writes.push(store::Write::remove(&format!("{next_stem}.key")));
                d.writes.push(writes);
                d.event(
                    ca.to_string(),
                    Action::CaRotation {
                        what: "the new CA signs from now on; the old one stays trusted".into(),
                    },
                );
                let trust = bundle(&current.cert_pem, &n.cert_pem);
                Ok((n, trust))
            }
            None => {
                let old = store.read_optional(&previous)?.ok_or_else(|| PkiError::Rotation {
                    path: store.path(&previous),
                    detail: format!(
                        "step 2 of the {ca} rotation needs the new CA of step 1 ({next_stem}.crt) or, once it signs, the old one ({previous}); neither is there\n  help: restore the state directory from a backup"
                    ),
                })?;
                d.event(old_subject, Action::Kept);
                let trust = bundle(&old, &current.cert_pem);
                Ok((current, trust))
            }
        },
        Step::Drop => {
            if next.is_some() {
                return Err(PkiError::Rotation {
                    path: store.path(&format!("{next_stem}.crt")),
                    detail: format!(
                        "step 3 of the {ca} rotation, but the new CA of step 1 does not sign yet: step 2 has not run"
                    ),
                });
            }
            if store.read_optional(&previous)?.is_some() {
                d.writes.push(vec![store::Write::remove(&previous)]);
                d.event(
                    old_subject,
                    Action::CaRotation {
                        what: "no longer trusted".into(),
                    },
                );
            }
            let trust = current.cert_pem.clone();
            Ok((current, trust))
        }
    }
}

/// What a created-once item's absence from the state directory means.
enum WhenMissing {
    /// It is created (again).
    Create,
    /// It is an error: a new one would break the running cluster.
    Refuse(PkiError),
}

/// An item that is created once and then never replaced: `kept` is the
/// stored one, already read and checked. When there is none, `when_missing`
/// decides whether `create` makes a new one (with the files to write) or
/// the run stops.
fn created_once<T>(
    d: &mut Decisions,
    subject: &str,
    kept: Option<T>,
    when_missing: WhenMissing,
    create: impl FnOnce() -> Result<(T, Vec<store::Write>), PkiError>,
) -> Result<T, PkiError> {
    if let Some(kept) = kept {
        d.event(subject, Action::Kept);
        return Ok(kept);
    }
    match when_missing {
        WhenMissing::Refuse(e) => Err(e),
        WhenMissing::Create => {
            let (created, writes) = create()?;
            d.writes.push(writes);
            d.event(subject, Action::Created);
            Ok(created)
        }
    }
}

/// The service-account key pair: created once, never replaced; once the
/// cluster is established, a lost pair is an error.
fn service_account_key(
    store: &store::Store,
    d: &mut Decisions,
    established: bool,
) -> Result<(SecretPem, String), PkiError> {
    let sa_pub = store.read_optional("sa.pub")?;
    let sa_key = store.read_optional("sa.key")?;
    // Half a pair is not regenerated: that would invalidate every token.
    match (&sa_pub, &sa_key) {
        (Some(_), None) | (None, Some(_)) => {
            let (missing, present) = if sa_key.is_none() {
                ("sa.key", "sa.pub")
            } else {
                ("sa.pub", "sa.key")
            };
            return Err(PkiError::ServiceAccount {
                path: store.path(missing),
                detail: format!("the file is missing but {present} exists"),
            });
        }
        _ => {}
    }
    let kept = sa_pub
        .zip(sa_key)
        .map(|(public, private)| {
            check::sa_usable(&public, &private).map_err(|detail| PkiError::ServiceAccount {
                path: store.path("sa.key"),
                detail,
            })?;
            Ok((SecretPem(private), public))
        })
        .transpose()?;
    let when_missing = if established {
        WhenMissing::Refuse(PkiError::ServiceAccount {
            path: store.path("sa.key"),
            detail: "sa.key and sa.pub are missing but the cluster CA exists".into(),
        })
    } else {
        WhenMissing::Create
    };
    created_once(d, "service-account key", kept, when_missing, || {
        let (private, public) = issue::sa_key()?;
        let writes = vec![
            store::Write::public("sa.pub", &public),
            store::Write::secret("sa.key", &private.0),
        ];
        Ok(((private, public), writes))
    })
}

/// The secrets encryption key: created once, never replaced; once the
/// cluster is established, a lost key is an error (the Secrets encrypted
/// with it could not be read).
fn encryption_key(
    store: &store::Store,
    d: &mut Decisions,
    established: bool,
) -> Result<SecretPem, PkiError> {
    let kept = store
        .read_optional("encryption-key")?
        .map(|k| {
            let k = k.trim().to_string();
            check::encryption_key_usable(&k).map_err(|detail| PkiError::EncryptionKey {
                path: store.path("encryption-key"),
                detail,
            })?;
            Ok(SecretPem(k))
        })
        .transpose()?;
    let when_missing = if established {
        WhenMissing::Refuse(PkiError::EncryptionKey {
            path: store.path("encryption-key"),
            detail: "the file is missing but the cluster CA exists".into(),
        })
    } else {
        WhenMissing::Create
    };
    created_once(d, "secrets encryption key", kept, when_missing, || {
        let k = issue::encryption_key()?;
        let writes = vec![store::Write::secret(
            "encryption-key",
            &format!("{}\n", k.0),
        )];
        Ok((k, writes))
    })
}

/// The kubelets' bootstrap token and when it expires: kept while more
/// than half of `bootstrap_token_ttl_hours` is left (and no more than all
/// of it), else replaced. A replacement keeps the token id, so the bootstrap
/// token Secret (`bootstrap-token-<id>`) is updated in place and the old
/// secret stops working with it. It is no identity (nodes that joined have
/// their own certificates), so a lost one is simply created again.
///
/// `<state>/pki/bootstrap-token` holds the token on its first line and
/// `expiration=<RFC 3339>` on the second.
fn bootstrap_token(
    store: &store::Store,
    d: &mut Decisions,
    settings: &kubeforge_inventory::PkiSettings,
    now: OffsetDateTime,
) -> Result<(SecretPem, OffsetDateTime), PkiError> {
    const SUBJECT: &str = "kubelet bootstrap token";
    let ttl = time::Duration::hours(i64::from(settings.bootstrap_token_ttl_hours));
    let stored = store
        .read_optional("bootstrap-token")?
        .map(|text| {
            parse_bootstrap_token(&text).map_err(|detail| PkiError::Issue {
                what: format!("{}", store.path("bootstrap-token").display()),
                detail: format!(
                    "{detail}\n  help: remove the file and kubeforge creates a new token"
                ),
            })
        })
        .transpose()?;
    let why = match &stored {
        None => None,
        Some((_, None)) => Some(Reason::NoExpiration),
        Some((_, Some(expires))) if *expires - now < ttl / 2 => {
            Some(Reason::ExpiresSoon(check::fmt_time(*expires)))
        }
        Some((_, Some(expires))) if *expires - now > ttl => {
            Some(Reason::OutlivesTtl(check::fmt_time(*expires)))
        }
        Some((token, Some(expires))) => {
            d.event(SUBJECT, Action::Kept);
            return Ok((token.clone(), *expires));
        }
    };
    let fresh = issue::bootstrap_token()?;
    let token = match &stored {
        Some((old, _)) => {
            let id = old.0.split_once('.').map_or("", |(id, _)| id);
            let secret = fresh.0.split_once('.').map_or("", |(_, s)| s);
            SecretPem(format!("{id}.{secret}"))
        }
        None => fresh,
    };
    let expires = (now + ttl)
        .replace_nanosecond(0)
        .unwrap_or(now + ttl)
        .to_offset(time::UtcOffset::UTC);
    d.writes.push(vec![store::Write::secret(
        "bootstrap-token",
        &format!("{}\nexpiration={}\n", token.0, check::fmt_time(expires)),
    )]);
    d.event(
        SUBJECT,
        match why {
            None => Action::Created,
            Some(why) => Action::Reissued { why },
        },
    );
    Ok((token, expires))
}

/// The token and, when recorded, its expiration.
fn parse_bootstrap_token(text: &str) -> Result<(SecretPem, Option<OffsetDateTime>), String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let token = lines.next().unwrap_or_default().to_string();
    check::bootstrap_token_usable(&token)?;
    let mut expires = None;
    for line in lines {
        let Some(value) = line.strip_prefix("expiration=") else {
            return Err(format!("unexpected line {line:?}"));
        };
        expires = Some(
            OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
                .map_err(|e| format!("expiration {value:?} is not an RFC 3339 time: {e}"))?,
        );
    }
    Ok((SecretPem(token), expires))
}

/// Every leaf certificate of the catalog: kept while it passes the checks,
/// else (re)issued by its CA.
fn leaves(
    store: &store::Store,
    d: &mut Decisions,
    cluster: &Cluster,
    cas: &BTreeMap<CaId, KeyCert>,
    opts: &Options,
) -> Result<BTreeMap<String, KeyCert>, PkiError> {
    let settings = &cluster.pki;
    let mut leaves = BTreeMap::new();
    for req in catalog::requests(cluster) {
        let stem = req.stem();
        let ca = cas.get(&req.spec.ca).ok_or_else(|| PkiError::Issue {
            what: req.describe(),
            detail: format!("catalog names {} which was not loaded", req.spec.ca),
        })?;
        let existing = store.read_pair(&stem)?;
        let verdict = existing.as_ref().map(|(cert, key)| {
            check::leaf(&req, cert, key, ca, settings, opts.now).and_then(|()| {
                if opts.renew.contains(&stem) {
                    Err(Reason::Asked)
                } else {
                    Ok(())
                }
            })
        });
        match (existing, verdict) {
            (Some((cert_pem, key_pem)), Some(Ok(()))) => {
                d.event(req.describe(), Action::Kept);
                leaves.insert(
                    stem,
                    KeyCert {
                        cert_pem,
                        key: SecretPem(key_pem),
                    },
                );
            }
            (_, verdict) => {
                let kc = issue::leaf(&req, ca, settings.leaf_validity_days, opts.now)?;
                d.writes.push(store::Write::pair(&stem, &kc));
                d.event(
                    req.describe(),
                    match verdict {
                        Some(Err(why)) => Action::Reissued { why },
                        _ => Action::Created,
                    },
                );
                leaves.insert(stem, kc);
            }
        }
    }
    Ok(leaves)
}
