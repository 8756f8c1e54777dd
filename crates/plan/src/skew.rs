//! Upgrades and the Kubernetes version skew policy
//! (<https://kubernetes.io/releases/version-skew-policy/>), pure: the
//! versions the components run (a fact of every node) and the version the
//! plan installs (the inventory's, for a component whose binary comes
//! from the bundle and which starts or restarts) give the versions after
//! each phase, in the order apply runs them. A plan that would break the
//! policy at any point is refused before anything is touched:
//!
//! - kube-apiserver moves one minor version at a time, and the apiservers
//!   of a cluster are at most one minor apart;
//! - kube-controller-manager and kube-scheduler are not newer than any
//!   apiserver and at most one minor older than the newest;
//! - kubelet and kube-proxy are not newer than any apiserver and at most
//!   three minors older than the newest;
//! - no minor version goes back; a patch release goes back only when
//!   asked (`allow_downgrade`).

use crate::work::Decided;
use crate::{Facts, PlanError};
use kubeforge_render::{KubeVersion, Rendered, Skew};
use serde::Serialize;

/// A component whose version changes in this plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionChange {
    pub node: String,
    pub unit: String,
    /// What it runs now (`None`: not running, or its version unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub to: String,
}

/// The version a `--version` line names: `Kubernetes v1.31.4`,
/// `Kubernetes v1.31.4-kubeforge-standin` (a suffix after `-` or `+` is
/// left out).
pub fn parse_version(line: &str) -> Option<KubeVersion> {
    line.split_whitespace().find_map(|tok| {
        let t = tok.strip_prefix('v').unwrap_or(tok);
        let core = t.split(['-', '+']).next()?;
        let mut parts = core.split('.');
        let (Some(major), Some(minor), Some(patch), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        Some(KubeVersion {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
            patch: patch.parse().ok()?,
        })
    })
}

/// `v1.31.4`.
fn v(k: KubeVersion) -> String {
    k.to_string()
}

/// `1.31`.
fn minor_of(k: KubeVersion) -> String {
    format!("{}.{}", k.major, k.minor)
}

/// Minor versions as one number, for distances.
fn minor_rank(k: KubeVersion) -> i64 {
    i64::from(k.major) * 1000 + i64::from(k.minor)
}

/// One component on one node.
struct Component<'a> {
    node: &'a str,
    unit: &'a str,
    skew: Skew,
    phase: &'a str,
    now: Option<KubeVersion>,
    after: Option<KubeVersion>,
    /// Its binary is replaced and it restarts (an upgrade, or a rebuilt
    /// binary of the same version).
    replaced: bool,
}

fn refused(rule: &str, detail: String, help: &str) -> PlanError {
    PlanError::Refused {
        rule: rule.to_string(),
        detail,
        help: help.to_string(),
    }
}

/// The skew components of every node, with their versions now and after
/// this plan.
fn components<'a>(
    rendered: &'a Rendered,
    facts: &'a Facts,
    decided: &'a [Decided<'a>],
) -> Vec<Component<'a>> {
    let mut out = Vec::new();
    for d in decided {
        let tree = d.tree;
        let node_facts = match facts {
            Facts::Offline => None,
            Facts::Gathered(map) => map.get(&tree.name),
        };
        for u in &tree.units {
            let Some(skew) = u.skew else { continue };
            let running = node_facts
                .and_then(|f| f.units.get(&u.name))
                .is_some_and(|s| s.active);
            let now = node_facts
                .filter(|_| running)
                .and_then(|f| f.versions.get(&u.name))
                .and_then(|line| parse_version(line));
            // Its binary comes from the bundle: started or restarted, it
            // runs the bundle's, of the inventory's version.
            let managed = tree
                .files
                .values()
                .any(|f| f.from_file.is_some() && f.restarts.contains(&u.name));
            let moves = d.start.contains(&u.name) || d.restart.contains(&u.name);
            let replaced = d.restart.contains(&u.name)
                && d.puts
                    .iter()
                    .any(|f| f.from_file.is_some() && f.restarts.contains(&u.name));
            let after = if managed && moves {
                Some(rendered.version)
            } else {
                now
            };
            out.push(Component {
                node: &tree.name,
                unit: &u.name,
                skew,
                phase: &u.phase,
                now,
                after,
                replaced,
            });
        }
    }
    out
}

/// The version changes of this plan, or the rule it would break.
pub(crate) fn check(
    rendered: &Rendered,
    facts: &Facts,
    decided: &[Decided<'_>],
    selected: &dyn Fn(&str) -> bool,
    allow_downgrade: bool,
    refuse: bool,
) -> Result<Vec<VersionChange>, PlanError> {
    let comps = components(rendered, facts, decided);
    let changes: Vec<VersionChange> = comps
        .iter()
        .filter(|c| selected(c.phase))
        .filter_map(|c| {
            let to = c.after?;
            (c.now != Some(to) || c.replaced).then(|| VersionChange {
                node: c.node.to_string(),
                unit: c.unit.to_string(),
                from: c.now.map(v),
                to: v(to),
            })
        })
        .collect();
    if !refuse {
        return Ok(changes);
    }
    // Each change on its own.
    for c in comps.iter().filter(|c| selected(c.phase)) {
        let (Some(now), Some(after)) = (c.now, c.after) else {
            continue;
        };
        let what = format!(
            "{} on {} runs {}, the plan would install {}",
            c.unit,
            c.node,
            v(now),
            v(after)
        );
        if minor_rank(after) < minor_rank(now) {
            return Err(refused(
                "no minor version goes back",
                what,
                "Kubernetes does not support going back a minor version (its stored objects may already be in the newer form): keep kubernetes_version and the bundle at the running minor; to return to the cluster as it was, restore the etcd snapshot taken before the upgrade (kubeforge etcd restore) once the old binaries are back",
            ));
        }
        if after < now && !allow_downgrade {
            return Err(refused(
                "no downgrade unless asked",
                what,
                "a patch release may go back within its minor version: run again with --allow-downgrade if that is what you want",
            ));
        }
        if c.skew == Skew::Apiserver && minor_rank(after) > minor_rank(now) + 1 {
            let next = KubeVersion {
                major: now.major,
                minor: now.minor + 1,
                patch: 0,
            };
            return Err(refused(
                "kube-apiserver moves one minor version at a time",
                what,
                &format!(
                    "upgrade to {} first: set kubernetes_version to a {} release and use its bundle, apply, then go on to {}",
                    minor_of(next),
                    minor_of(next),
                    minor_of(after)
                ),
            ));
        }
    }
    // The versions after each phase, in the order apply runs them.
    let mut state: Vec<(usize, Option<KubeVersion>)> =
        comps.iter().enumerate().map(|(i, c)| (i, c.now)).collect();
    for phase in rendered.phases.iter().filter(|p| selected(&p.name)) {
        let mut moved = false;
        for (i, version) in &mut state {
            let c = &comps[*i];
            if c.phase == phase.name && c.after != *version {
                *version = c.after;
                moved = true;
            }
        }
        if moved {
            policy(&comps, &state, &phase.name)?;
        }
    }
    Ok(changes)
}

/// The policy on the versions after `phase`.
fn policy(
    comps: &[Component<'_>],
    state: &[(usize, Option<KubeVersion>)],
    phase: &str,
) -> Result<(), PlanError> {
    let known: Vec<(&Component<'_>, KubeVersion)> = state
        .iter()
        .filter_map(|(i, ver)| Some((&comps[*i], (*ver)?)))
        .collect();
    let apiservers: Vec<&(&Component<'_>, KubeVersion)> = known
        .iter()
        .filter(|(c, _)| c.skew == Skew::Apiserver)
        .collect();
    let (Some(oldest), Some(newest)) = (
        apiservers.iter().min_by_key(|(_, k)| minor_rank(*k)),
        // The first of the newest, in the nodes' order.
        apiservers.iter().rev().max_by_key(|(_, k)| minor_rank(*k)),
    ) else {
        return Ok(());
    };
    let after = format!("after phase {phase}");
    if minor_rank(newest.1) - minor_rank(oldest.1) > 1 {
        return Err(refused(
            "the apiservers of a cluster are at most one minor version apart",
            format!(
                "{after}, kube-apiserver on {} would run {} and on {} {}",
                newest.0.node,
                v(newest.1),
                oldest.0.node,
                v(oldest.1)
            ),
            "upgrade every apiserver one minor version at a time",
        ));
    }
    for (c, k) in known.iter().filter(|(c, _)| c.skew != Skew::Apiserver) {
        let (rule, help) = match c.skew {
            Skew::Node => (
                "kubelet and kube-proxy are never newer than kube-apiserver",
                "upgrade the control plane first: apply every phase (or --phase etcd, apiserver, lb and controllers before node)",
            ),
            _ => (
                "kube-controller-manager and kube-scheduler are never newer than kube-apiserver",
                "upgrade the apiservers first: apply every phase (or --phase apiserver before controllers)",
            ),
        };
        if minor_rank(*k) > minor_rank(oldest.1) {
            return Err(refused(
                rule,
                format!(
                    "{after}, {} on {} would run {} while kube-apiserver on {} runs {}",
                    c.unit,
                    c.node,
                    v(*k),
                    oldest.0.node,
                    v(oldest.1)
                ),
                help,
            ));
        }
        let behind = c.skew.oldest_behind();
        if minor_rank(newest.1) - minor_rank(*k) > i64::from(behind) {
            let (rule, help) = match c.skew {
                Skew::Node => (
                    "kubelet and kube-proxy are at most three minor versions older than kube-apiserver",
                    "upgrade the kubelets and kube-proxies first, one minor version at a time (the node phase), before the control plane moves on",
                ),
                _ => (
                    "kube-controller-manager and kube-scheduler are at most one minor version older than kube-apiserver",
                    "apply the controllers phase with the apiservers (every phase) so that they follow them",
                ),
            };
            return Err(refused(
                rule,
                format!(
                    "{after}, {} on {} would run {} while kube-apiserver on {} runs {}",
                    c.unit,
                    c.node,
                    v(*k),
                    newest.0.node,
                    v(newest.1)
                ),
                help,
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_version_lines() {
        let k = |major, minor, patch| KubeVersion {
            major,
            minor,
            patch,
        };
        for (line, want) in [
            ("Kubernetes v1.31.4", Some(k(1, 31, 4))),
            ("Kubernetes v1.31.4-kubeforge-standin", Some(k(1, 31, 4))),
            ("Kubernetes v1.28.0+k3s1", Some(k(1, 28, 0))),
            ("1.30.2", Some(k(1, 30, 2))),
            ("Kubernetes v1.31", None),
            ("", None),
            ("unknown flag: --version", None),
        ] {
            assert_eq!(parse_version(line), want, "{line}");
        }
    }
}
