//! The plan of a certificate renewal (`kubeforge certs renew`) and of a CA
//! rotation's step: the plan of the cluster rendered with the renewed PKI,
//! against the nodes' facts. Its files are the certificates, keys, CA
//! bundles and kubeconfigs that changed; its
//! restarts exactly the units those files name, walked by the phases'
//! strategies (etcd members one at a time, each apiserver out of the load
//! balancers while it restarts, the other units behind their gates); the
//! cluster gate after a kubelet restart. Such a plan must carry nothing
//! else: a cluster whose nodes differ from the inventory in other ways is
//! applied first.

use crate::{FileAction, Plan};
use kubeforge_render::Rendered;

/// The sources (see [`kubeforge_render::RenderedFile::source`]) of the
/// files a renewal may write.
const CERTIFICATE_SOURCES: [&str; 4] = ["ca:", "ca-signer:", "cert:", "kubeconfig:"];

/// Whether `plan` changes nothing but certificate material; else what
/// else it would change, one line each.
pub fn beyond_certificates(plan: &Plan, rendered: &Rendered) -> Vec<String> {
    let mut out = Vec::new();
    for n in &plan.nodes {
        let Some(tree) = rendered.nodes.iter().find(|t| t.name == n.node) else {
            continue;
        };
        let bootstrap = tree.bootstrap.as_ref();
        for c in &n.changes {
            let certificate = tree.files.get(&c.path).is_some_and(|f| {
                CERTIFICATE_SOURCES.iter().any(|s| f.source.starts_with(s))
                    || bootstrap.is_some_and(|b| b.files.contains(&c.path))
            });
            if !certificate {
                let what = match c.action {
                    FileAction::Create => "create",
                    FileAction::Update => "update",
                    FileAction::Chmod => "fix the mode of",
                };
                out.push(format!("{}: {what} {}", n.node, c.path));
            }
        }
        for s in &n.steps {
            let by_file = tree
                .steps
                .iter()
                .any(|x| &x.name == s && x.written.is_some());
            // The bootstrap steps: the removal, and the kubelet joining
            // again when a previous CA signed its certificates.
            let bootstrap_step = bootstrap.is_some_and(|b| &b.step == s || &b.rejoin == s);
            if !by_file && !bootstrap_step {
                out.push(format!("{}: run {s}", n.node));
            }
        }
        for u in &n.start {
            out.push(format!("{}: start {u} (not running)", n.node));
        }
        for a in &n.api {
            out.push(format!("{}: api apply {}", n.node, a.object));
        }
    }
    out
}

/// The nodes whose kubelet holds certificates of a CA other than the one
/// that signs now (bootstrap-token joins): the plan has them join again.
/// Dropping the old CA (step 3 of a rotation) before they have would lock
/// them out of the API.
pub fn kubelets_joining_again(plan: &Plan, rendered: &Rendered) -> Vec<String> {
    plan.nodes
        .iter()
        .filter(|n| {
            rendered
                .nodes
                .iter()
                .find(|t| t.name == n.node)
                .and_then(|t| t.bootstrap.as_ref())
                .is_some_and(|b| n.steps.contains(&b.rejoin))
        })
        .map(|n| n.node.clone())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{FileChange, NodePlan, Summary};

    fn rendered() -> Rendered {
        rendered_with("")
    }

    /// single.toml with `extra` lines in its [cluster] table.
    fn rendered_with(extra: &str) -> Rendered {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../inventories/single.toml");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("[cluster]\n", &format!("[cluster]\n{extra}"));
        let cluster = kubeforge_inventory::parse(&path, &text).unwrap().cluster;
        let state = tempfile::tempdir().unwrap();
        kubeforge_render::prepare(state.path(), &cluster, &Default::default())
            .unwrap()
            .rendered
    }

    fn change(path: &str) -> FileChange {
        FileChange {
            path: path.into(),
            action: FileAction::Update,
            mode: "0644".into(),
            old_mode: None,
            secret: false,
            diff: None,
            summary: Vec::new(),
        }
    }

    fn one_node(n: NodePlan) -> Plan {
        Plan {
            cluster: "single".into(),
            offline: false,
            nodes: vec![n],
            phases: Vec::new(),
            cluster_gates: None,
            versions: Vec::new(),
            healthy_before: None,
            summary: Summary::default(),
            manifests: Default::default(),
            removals: Vec::new(),
            sources: Default::default(),
        }
    }

    #[test]
    fn only_certificate_material_may_change() {
        let r = rendered();
        let node = |changes: Vec<FileChange>, steps: Vec<&str>, start: Vec<&str>| NodePlan {
            node: "cp1".into(),
            address: "10.77.0.11".into(),
            steps: steps.into_iter().map(String::from).collect(),
            changes,
            unchanged: 0,
            daemon_reload: false,
            start: start.into_iter().map(String::from).collect(),
            restart: vec!["kube-apiserver".into()],
            reload: Vec::new(),
            api: Vec::new(),
            api_unchanged: 0,
            approve: Vec::new(),
            refused: Vec::new(),
        };
        let plan = one_node;
        let certs = node(
            vec![
                change("/etc/kubernetes/pki/apiserver.crt"),
                change("/etc/kubernetes/pki/apiserver.key"),
                change("/etc/kubernetes/pki/ca.crt"),
                change("/etc/kubernetes/kubelet.conf"),
            ],
            vec!["remove the kubelet's copy of its previous client certificate"],
            vec![],
        );
        assert_eq!(beyond_certificates(&plan(certs), &r), Vec::<String>::new());
        let more = node(
            vec![
                change("/etc/kubernetes/pki/apiserver.crt"),
                change("/etc/systemd/system/kube-apiserver.service"),
                change("/etc/kubernetes/pki/sa.key"),
            ],
            vec!["IPv4 forwarding"],
            vec!["kubelet"],
        );
        assert_eq!(
            beyond_certificates(&plan(more), &r),
            vec![
                "cp1: update /etc/systemd/system/kube-apiserver.service",
                "cp1: update /etc/kubernetes/pki/sa.key",
                "cp1: run IPv4 forwarding",
                "cp1: start kubelet (not running)",
            ]
        );
    }

    /// A kubelet joining again (bootstrap-token joins, after the CA that
    /// signs changed) is certificate work, and the one thing that stops
    /// the old CA from being dropped.
    #[test]
    fn kubelets_joining_again_are_certificate_work() {
        let r = rendered_with("kubelet_join = \"bootstrap-token\"\n");
        let b = r.nodes[0].bootstrap.clone().unwrap();
        let n = NodePlan {
            node: "cp1".into(),
            address: "10.77.0.11".into(),
            steps: vec![b.rejoin.clone(), b.step.clone()],
            changes: vec![change(&b.files[0])],
            unchanged: 0,
            daemon_reload: false,
            start: Vec::new(),
            restart: vec!["kubelet".into()],
            reload: Vec::new(),
            api: Vec::new(),
            api_unchanged: 0,
            approve: Vec::new(),
            refused: Vec::new(),
        };
        let mut p = one_node(n);
        assert_eq!(beyond_certificates(&p, &r), Vec::<String>::new());
        assert_eq!(kubelets_joining_again(&p, &r), ["cp1"]);
        p.nodes[0].steps.remove(0);
        assert!(kubelets_joining_again(&p, &r).is_empty());
    }
}
