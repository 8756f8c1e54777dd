//! The certificates of the state directory as they are (read only, never
//! reissued): what `kubeforge certs` lists and what the nodes' copies are
//! compared with.

use crate::catalog::{self, CaId};
use crate::check::{self, CertState};
use crate::rotation::{self, Rotation, Step};
use crate::store::Store;
use crate::PkiError;
use kubeforge_inventory::Cluster;
use std::collections::BTreeMap;
use std::path::Path;
use time::OffsetDateTime;

/// The certificates of the state directory (public parts only).
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// The certificate of each CA that signs (`<stem>.crt`).
    pub signers: BTreeMap<CaId, String>,
    /// Each CA's trust bundle, as the nodes hold it (see
    /// [`crate::Pki::trust`]).
    pub trust: BTreeMap<CaId, String>,
    /// Every leaf's certificate, by [`catalog::LeafRequest::stem`].
    pub leaves: BTreeMap<String, String>,
    pub rotation: Option<Rotation>,
}

/// One certificate of the state directory and its state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    /// `kubernetes CA`, `kubernetes CA (new)`, `apiserver`,
    /// `etcd-server for cp1`, ...
    pub name: String,
    /// Below the state directory's `pki/`.
    pub file: String,
    /// The CA that issues it (none for a CA).
    pub ca: Option<CaId>,
    pub serial: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
    pub check: CertState,
}

fn serial(pem: &str) -> Option<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.raw_serial_as_string())
}

fn not_after(pem: &str) -> Option<OffsetDateTime> {
    check::inspect(pem).ok().map(|i| i.not_after)
}

/// Reads the state directory's certificates and judges each: CAs by their
/// expiry, leaves as [`check::judge`] says against the CA that signs, the
/// names the inventory needs and `renew_before_days` (and whether the
/// key beside it belongs to it).
pub fn list(
    state_dir: &Path,
    cluster: &Cluster,
    now: OffsetDateTime,
) -> Result<(Stored, Vec<Listed>), PkiError> {
    let store = Store::new(state_dir);
    let days = cluster.pki.renew_before_days;
    let rotation = rotation::recorded(state_dir)?;
    let mut stored = Stored {
        rotation,
        ..Stored::default()
    };
    let mut rows = Vec::new();
    for ca in CaId::ALL {
        let stem = ca.file_stem();
        let file = format!("{stem}.crt");
        let current = store.read_optional(&file)?;
        let mut row = |name: String, file: String, pem: Option<&String>| {
            rows.push(Listed {
                name,
                file,
                ca: None,
                serial: pem.and_then(|p| serial(p)),
                not_after: pem.and_then(|p| not_after(p)),
                check: pem.map_or(CertState::Missing, |p| check::judge_ca(p, days, now)),
            });
        };
        row(ca.to_string(), file, current.as_ref());
        let Some(current) = current else {
            continue;
        };
        let mut bundle = current.clone();
        match rotation.filter(|r| r.ca == ca).map(|r| r.step) {
            Some(Step::Trust) => {
                let next = format!("{stem}.next.crt");
                let pem = store.read_optional(&next)?;
                row(format!("{ca} (new, not signing yet)"), next, pem.as_ref());
                if let Some(p) = pem {
                    bundle = crate::bundle(&current, &p);
                }
            }
            Some(Step::Reissue | Step::Drop) => {
                let previous = format!("{stem}.previous.crt");
                if let Some(p) = store.read_optional(&previous)? {
                    row(format!("{ca} (old, still trusted)"), previous, Some(&p));
                    bundle = crate::bundle(&p, &current);
                }
            }
            None => {}
        }
        stored.trust.insert(ca, bundle);
        stored.signers.insert(ca, current);
    }
    for req in catalog::requests(cluster) {
        let stem = req.stem();
        let file = format!("{stem}.crt");
        let pair = store.read_pair(&stem)?;
        let check = match (&pair, stored.signers.get(&req.spec.ca)) {
            (None, _) => CertState::Missing,
            (Some(_), None) => CertState::NotSignedByCurrentCa,
            (Some((cert, key)), Some(ca)) => {
                let state = check::judge(cert, ca, &req.sans, days, now);
                match check::key_matches_pem(cert, key) {
                    Ok(()) => state,
                    Err(e) => state.worst(CertState::Invalid(e)),
                }
            }
        };
        let cert = pair.map(|(c, _)| c);
        rows.push(Listed {
            name: req.describe(),
            file,
            ca: Some(req.spec.ca),
            serial: cert.as_deref().and_then(serial),
            not_after: cert.as_deref().and_then(not_after),
            check,
        });
        if let Some(c) = cert {
            stored.leaves.insert(stem, c);
        }
    }
    Ok((stored, rows))
}
