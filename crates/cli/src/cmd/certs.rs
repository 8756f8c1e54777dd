//! `kubeforge certs`: every certificate of the state directory and of the
//! nodes, checked.

use crate::args::{CertsArgs, InventoryArgs, Output, ReachArgs};
use crate::common::{load, runtime, Term};
use crate::online;
use anyhow::{anyhow, Result};
use kubeforge_apply::certs::NodeCerts;
use kubeforge_pki::{CaId, CertState, Listed};
use time::OffsetDateTime;

pub(crate) fn run(args: CertsArgs, term: &mut Term) -> Result<()> {
    check(&args.inv, &args.reach, args.local, args.output, term)
}

/// Rows padded to their columns' widths, the last column as it is.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut width = vec![0usize; columns];
    for r in rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&width)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn rfc3339(t: Option<OffsetDateTime>) -> String {
    t.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_else(|| "-".into())
}

/// Days left, as kubeadm shows them, or `EXPIRED`.
fn residual(t: Option<OffsetDateTime>, now: OffsetDateTime) -> String {
    match t {
        None => "-".into(),
        Some(t) if t <= now => "EXPIRED".into(),
        Some(t) => format!("{}d", (t - now).whole_days()),
    }
}

fn ca_name(ca: Option<CaId>) -> String {
    ca.map_or("-".into(), |c| c.name().to_string())
}

/// What `kubeforge certs` found.
#[derive(serde::Serialize)]
struct Found {
    /// The state directory's certificates.
    state_dir: Vec<Listed>,
    /// Each node's, unless --local.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    nodes: Vec<NodeCerts>,
}

fn check(
    inv: &InventoryArgs,
    reach: &ReachArgs,
    local: bool,
    output: Output,
    term: &mut Term,
) -> Result<()> {
    let (loaded, state) = load(inv, term)?;
    let cluster = &loaded.cluster;
    let now = OffsetDateTime::now_utc();
    let (stored, listed) = kubeforge_pki::list(&state, cluster, now)?;
    let mut found = Found {
        state_dir: listed,
        nodes: Vec::new(),
    };
    if !local {
        // The rendered trees say which files are where; what they must
        // hold is the state directory's copy.
        let prepared = crate::common::prepare(&state, cluster, Vec::new())?;
        let reach = reach.reach();
        found.nodes = runtime()?.block_on(kubeforge_transport::closing_masters(async {
            let (transports, unreachable) = online::connect_each(cluster, &state, &reach).await?;
            Ok::<_, anyhow::Error>(
                kubeforge_apply::certs::nodes(
                    &prepared.rendered,
                    &transports,
                    &unreachable,
                    &stored,
                    cluster,
                    reach.concurrency,
                )
                .await,
            )
        }))??;
    }
    let unread: Vec<&NodeCerts> = found.nodes.iter().filter(|n| n.error.is_some()).collect();
    let failed = if unread.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "could not read the certificates of {}",
            unread
                .iter()
                .map(|n| n.node.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    };
    if output == Output::Json {
        term.line(serde_json::to_string_pretty(&found)?)?;
        return failed;
    }
    let mut rows = vec![["CERTIFICATE", "CA", "EXPIRES", "RESIDUAL", "CHECK"]
        .map(String::from)
        .to_vec()];
    for r in &found.state_dir {
        rows.push(vec![
            r.name.clone(),
            ca_name(r.ca),
            rfc3339(r.not_after),
            residual(r.not_after, now),
            r.check.to_string(),
        ]);
    }
    term.raw(table(&rows))?;
    if !found.nodes.is_empty() {
        let mut rows = vec![[
            "NODE",
            "FILE",
            "CERTIFICATE",
            "SUBJECT",
            "CA",
            "EXPIRES",
            "RESIDUAL",
            "CHECK",
        ]
        .map(String::from)
        .to_vec()];
        for n in &found.nodes {
            if let Some(e) = &n.error {
                rows.push(vec![
                    n.node.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    format!("unreachable: {}", e.lines().next().unwrap_or_default()),
                ]);
            }
            for c in &n.certificates {
                rows.push(vec![
                    c.node.clone(),
                    c.path.clone(),
                    c.name.clone(),
                    if c.subject.is_empty() {
                        "-".into()
                    } else {
                        c.subject.clone()
                    },
                    ca_name(c.ca),
                    rfc3339(c.not_after),
                    residual(c.not_after, now),
                    c.check.to_string(),
                ]);
            }
        }
        term.line("")?;
        term.raw(table(&rows))?;
    }
    let attention = found
        .state_dir
        .iter()
        .map(|r| &r.check)
        .chain(
            found
                .nodes
                .iter()
                .flat_map(|n| &n.certificates)
                .map(|c| &c.check),
        )
        .filter(|c| **c != CertState::Ok)
        .count();
    if attention > 0 {
        term.line(format!(
            "\n{attention} certificates need attention: `kubeforge apply` reissues those expiring, expired or lacking names and puts the state directory's on the nodes."
        ))?;
    }
    failed
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_residual_time() {
        let rows = vec![
            vec!["A".to_string(), "long cell".into(), "x".into()],
            vec!["bb".to_string(), "c".into(), "".into()],
        ];
        assert_eq!(table(&rows), "A   long cell  x\nbb  c\n");
        let now = OffsetDateTime::now_utc();
        assert_eq!(
            residual(
                Some(now + time::Duration::days(30) + time::Duration::hours(1)),
                now
            ),
            "30d"
        );
        assert_eq!(
            residual(Some(now - time::Duration::days(1)), now),
            "EXPIRED"
        );
        assert_eq!(residual(None, now), "-");
    }
}
