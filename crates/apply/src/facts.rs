//! Facts gathered read-only from every node: the files the plan is about
//! (sha256, mode, owner; the old text of changed non-secret files for the
//! diff) and the state of its units.

use crate::api::{Api, Credentials};
use crate::cluster::{judge_serving_csr, Csr};
use crate::{bounded, ApplyError, Transports};
use kubeforge_plan::{ApiFacts, Facts, NodeFacts, PendingCsr, RemoteFile, UnitFacts};
use kubeforge_render::Rendered;
use kubeforge_transport::ops;
use std::collections::BTreeMap;

pub async fn gather(
    transports: &Transports,
    rendered: &Rendered,
    concurrency: usize,
) -> Result<Facts, ApplyError> {
    let results = bounded(
        rendered.nodes.iter().collect(),
        concurrency,
        |tree| async move {
            let t = transports
                .get(&tree.name)
                .ok_or_else(|| ApplyError::Other(format!("no connection to node {}", tree.name)))?;
            let paths: Vec<String> = tree.files.keys().cloned().collect();
            let stats = ops::stat(t.as_ref(), &paths).await?;
            let units: Vec<String> = tree.units.iter().map(|u| u.name.clone()).collect();
            let unit_states = ops::units(t.as_ref(), &units).await?;
            let mut files = BTreeMap::new();
            for (path, st) in stats {
                let want = &tree.files[&path];
                let content =
                    if want.sha256 != st.sha256 && !want.secret && want.from_file.is_none() {
                        ops::read(t.as_ref(), &path).await?
                    } else {
                        None
                    };
                files.insert(
                    path,
                    RemoteFile {
                        sha256: st.sha256,
                        mode: st.mode,
                        owner: st.owner,
                        content,
                    },
                );
            }
            let mut steps_done = Vec::new();
            for step in &tree.steps {
                let o = t
                    .run(kubeforge_transport::Script::new(&step.name, &step.check))
                    .await?;
                if o.success() {
                    steps_done.push(step.name.clone());
                }
            }
            let mut csrs = Vec::new();
            let api = if rendered.addon_node.as_ref() == Some(&tree.name)
                && !rendered.addons.is_empty()
            {
                let creds = Credentials::from_rendered(rendered)?;
                let api = Api {
                    t: t.as_ref(),
                    creds: &creds,
                    port: rendered.api_port,
                };
                let objects: Vec<_> = rendered.addons.iter().flat_map(|a| &a.objects).collect();
                let facts = api.read(&objects).await?;
                if matches!(facts, ApiFacts::Objects(_)) {
                    let nodes = rendered.kubelet_nodes();
                    for csr in api.csrs().await? {
                        match judge_serving_csr(&csr, &nodes) {
                            Csr::Skip => {}
                            Csr::Approve { name, node } => csrs.push(PendingCsr {
                                name,
                                node: Some(node),
                                refused: String::new(),
                            }),
                            Csr::Refuse { name, why } => csrs.push(PendingCsr {
                                name,
                                node: None,
                                refused: why,
                            }),
                        }
                    }
                }
                Some(facts)
            } else {
                None
            };
            let units = unit_states
                .into_iter()
                .map(|(u, s)| {
                    (
                        u,
                        UnitFacts {
                            active: s.active,
                            enabled: s.enabled,
                        },
                    )
                })
                .collect();
            Ok::<_, ApplyError>((
                tree.name.clone(),
                NodeFacts {
                    files,
                    units,
                    steps_done,
                    api,
                    csrs,
                    bootstrapped: crate::bootstrap::bootstrapped(t.as_ref(), tree).await?,
                },
            ))
        },
    )
    .await;
    let mut map = BTreeMap::new();
    for r in results {
        let (name, facts) = r?;
        map.insert(name, facts);
    }
    Ok(Facts::Gathered(map))
}
