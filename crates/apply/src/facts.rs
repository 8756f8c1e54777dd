//! Facts gathered from every node in one round trip each (see
//! [`kubeforge_transport::gather`]): the files the plan is about (sha256,
//! mode, owner; the old text of changed non-secret files for the diff),
//! the state of its units, the versions of the running components the
//! version skew policy speaks of, which preparation steps are done, and the
//! host itself for the pre-flight checks; from the addon node, also what the API
//! holds and the pending serving certificate requests.

use crate::api::{Api, Credentials};
use crate::cluster::{judge_serving_csr, Csr};
use crate::{fan_out, transport, ApplyError, Transports};
use kubeforge_plan::{ApiFacts, Facts, NodeFacts, PendingCsr, RemoteFile, UnitFacts};
use kubeforge_render::{NodeTree, Rendered};
use kubeforge_transport::gather::{self, Check, Request, CACHE};
use kubeforge_transport::ops::HostFacts;
use kubeforge_transport::Transport;
use std::collections::BTreeMap;

/// What was gathered from the nodes.
#[derive(Debug, Clone)]
pub struct Gathered {
    pub facts: Facts,
    pub hosts: BTreeMap<String, HostFacts>,
    /// Files whose sha256 came from the nodes' caches, of all files found.
    pub cached: usize,
    pub files: usize,
}

/// Gathers every node's facts, at most `concurrency` nodes at a time.
/// `record`: the run holds the apply lock and may refresh the nodes'
/// sha256 caches; a plan only reads them.
pub async fn gather(
    transports: &Transports,
    rendered: &Rendered,
    concurrency: usize,
    record: bool,
) -> Result<Gathered, ApplyError> {
    let results = fan_out(
        rendered.nodes.iter().collect(),
        concurrency,
        |tree| async move {
            let t = transport(transports, &tree.name)?;
            let files = async {
                let asked_at = epoch_secs();
                let mut report = gather::gather(t, &request(tree, record)).await?;
                report.host.asked_at = asked_at;
                report.host.answered_at = epoch_secs();
                Ok::<_, ApplyError>(report)
            };
            let api = api_facts(t, rendered, tree);
            let started = std::time::Instant::now();
            let (report, (api, csrs)) = tokio::try_join!(files, api)?;
            let kubelet = crate::bootstrap::kubelet_certs(tree, &report.certificates);
            let cached = report.cached;
            let found = report.files.len();
            tracing::info!(
                node = tree.name,
                "facts in {:.2} s: {found} files ({cached} sums from the node's cache), {} units",
                started.elapsed().as_secs_f64(),
                report.units.len()
            );
            let facts = NodeFacts {
                files: report
                    .files
                    .into_iter()
                    .map(|(path, f)| {
                        let file = RemoteFile {
                            sha256: f.sha256,
                            mode: f.mode,
                            owner: f.owner,
                            content: f.content,
                        };
                        (path, file)
                    })
                    .collect(),
                units: report
                    .units
                    .into_iter()
                    .map(|(u, s)| {
                        let state = UnitFacts {
                            active: s.active,
                            enabled: s.enabled,
                        };
                        (u, state)
                    })
                    .collect(),
                steps_done: report.checks_passed,
                api,
                csrs,
                bootstrapped: kubelet.joined,
                kubelet_rejoin: kubelet.rejoin,
                versions: report.versions,
                manifest: report.manifest,
            };
            Ok((tree.name.clone(), facts, report.host, cached, found))
        },
    )
    .await?;
    let mut gathered = Gathered {
        facts: Facts::Offline,
        hosts: BTreeMap::new(),
        cached: 0,
        files: 0,
    };
    let mut map = BTreeMap::new();
    for (name, facts, host, cached, found) in results {
        map.insert(name.clone(), facts);
        gathered.hosts.insert(name, host);
        gathered.cached += cached;
        gathered.files += found;
    }
    gathered.facts = Facts::Gathered(map);
    Ok(gathered)
}

/// What to ask a node: every file it must hold with its sha256 (the old
/// text only of text files without secrets), its units, its steps'
/// checks and its kubelet's certificates.
fn request(tree: &NodeTree, record: bool) -> Request {
    Request {
        files: tree
            .files
            .values()
            .map(|f| {
                let diffable = !f.secret && f.from_file.is_none();
                (f.path.clone(), f.sha256.clone(), diffable)
            })
            .collect(),
        units: tree.units.iter().map(|u| u.name.clone()).collect(),
        checks: tree
            .steps
            .iter()
            .filter(|s| s.written.is_none())
            .map(|s| Check {
                name: s.name.clone(),
                script: s.check.clone(),
                key: s.check_key.clone(),
            })
            .collect(),
        versions: tree
            .units
            .iter()
            .filter(|u| u.skew.is_some())
            .map(|u| u.name.clone())
            .collect(),
        host_extra: crate::preflight::requirements_script(tree),
        cache: CACHE.to_string(),
        record,
        manifest: Some(kubeforge_plan::MANIFEST_PATH.to_string()),
        certificates: crate::bootstrap::certificate_files(tree),
    }
}

/// On the addon node: the addon objects as the API has them, and the
/// pending serving certificate requests as kubeforge judges them.
async fn api_facts(
    t: &dyn Transport,
    rendered: &Rendered,
    tree: &NodeTree,
) -> Result<(Option<ApiFacts>, Vec<PendingCsr>), ApplyError> {
    if rendered.addon_node.as_ref() != Some(&tree.name) || rendered.addons.is_empty() {
        return Ok((None, Vec::new()));
    }
    let creds = Credentials::from_rendered(rendered)?;
    let api = Api {
        t,
        creds: &creds,
        port: rendered.api_port,
    };
    let objects: Vec<_> = rendered.addons.iter().flat_map(|a| &a.objects).collect();
    let (facts, listed) = api.read(&objects).await?;
    let mut csrs = Vec::new();
    if matches!(facts, ApiFacts::Objects(_)) {
        let nodes = rendered.kubelet_nodes();
        for csr in listed {
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
    Ok((Some(facts), csrs))
}

/// This machine's clock, in seconds since the epoch.
pub(crate) fn epoch_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}
