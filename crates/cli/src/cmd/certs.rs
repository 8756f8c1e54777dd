//! `kubeforge certs`: every certificate of the state directory with its
//! expiry.

use crate::args::{InventoryArgs, Output};
use crate::common::{load, Term};
use anyhow::Result;
use kubeforge_inventory::Cluster;
use kubeforge_pki::CaId;
use std::path::{Path, PathBuf};

pub(crate) fn run(inv: &InventoryArgs, output: Output, term: &mut Term) -> Result<()> {
    let (loaded, state) = load(inv, term)?;
    let rows = certs(&state, &loaded.cluster)?;
    match output {
        Output::Json => term.line(serde_json::to_string_pretty(&rows)?)?,
        Output::Text => {
            term.line(format!(
                "{:<48} {:<12} {:<26} {}",
                "CERTIFICATE", "CA", "EXPIRES", "RESIDUAL"
            ))?;
            for r in rows {
                term.line(format!(
                    "{:<48} {:<12} {:<26} {}",
                    r.name, r.ca, r.not_after, r.residual
                ))?;
            }
        }
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct CertRow {
    name: String,
    ca: String,
    not_after: String,
    residual: String,
}

fn certs(state: &Path, cluster: &Cluster) -> Result<Vec<CertRow>> {
    let now = time::OffsetDateTime::now_utc();
    let mut rows = Vec::new();
    let mut push = |name: String, ca: String, path: PathBuf| -> Result<()> {
        let (not_after, residual) = match std::fs::read_to_string(&path) {
            Err(_) => ("missing".to_string(), "-".to_string()),
            Ok(pem) => {
                let info = kubeforge_pki::inspect(&pem)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                let days = (info.not_after - now).whole_days();
                (
                    info.not_after
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    if days < 0 {
                        "EXPIRED".to_string()
                    } else {
                        format!("{days}d")
                    },
                )
            }
        };
        rows.push(CertRow {
            name,
            ca,
            not_after,
            residual,
        });
        Ok(())
    };
    for ca in CaId::ALL {
        push(
            ca.to_string(),
            "-".into(),
            state.join("pki").join(format!("{}.crt", ca.file_stem())),
        )?;
    }
    for req in kubeforge_pki::catalog::requests(cluster) {
        push(
            req.describe(),
            req.spec.ca.name().into(),
            state.join("pki").join(format!("{}.crt", req.stem())),
        )?;
    }
    Ok(rows)
}
