//! Checks before anything changes, on the facts gathered: every node a
//! Linux host with systemd and the commands kubeforge uses, unique
//! hostnames and machine-ids, clocks within the allowed skew, the ports of
//! units not running yet free, and every requirement the table gives the
//! node's roles and the cluster's settings (`[[requirement]]` rows:
//! commands, kernel modules, files, nginx's stream module), checked in the
//! facts' round trip. Every problem is reported, not just the first.

use crate::{ApplyError, Options};
use kubeforge_plan::Facts;
use kubeforge_render::{NodeTree, Rendered};
use kubeforge_transport::ops::HostFacts;
use std::collections::BTreeMap;

const ARCHES: [&str; 2] = ["x86_64", "aarch64"];

/// Checks the hosts as gathered (see [`crate::gather`]); every problem
/// is reported. Pure: nothing is asked of the nodes here.
pub fn preflight(
    rendered: &Rendered,
    hosts: &BTreeMap<String, HostFacts>,
    facts: &Facts,
    opts: &Options,
) -> Result<(), ApplyError> {
    let now = crate::facts::epoch_secs();
    let mut problems = Vec::new();
    for tree in &rendered.nodes {
        if !hosts.contains_key(&tree.name) {
            problems.push(format!("{}: no facts gathered", tree.name));
        }
    }
    for (name, h) in hosts {
        host_problems(name, h, now, opts, &mut problems);
        port_problems(rendered, facts, name, h, &mut problems);
        if let Some(tree) = rendered.nodes.iter().find(|t| &t.name == name) {
            requirement_problems(tree, h, &mut problems);
        }
    }
    duplicates(hosts, &mut problems);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApplyError::Preflight(problems))
    }
}

/// The host itself: Linux with systemd, a supported architecture, the
/// commands kubeforge uses, and a clock close to this machine's.
fn host_problems(name: &str, h: &HostFacts, now: f64, opts: &Options, problems: &mut Vec<String>) {
    if h.kernel != "Linux" {
        problems.push(format!("{name}: runs {}, not Linux", h.kernel));
    }
    if !h.has_systemd {
        problems.push(format!("{name}: systemd is not running as init"));
    }
    if !ARCHES.contains(&h.arch.as_str()) {
        problems.push(format!(
            "{name}: architecture {} is not supported (x86_64, aarch64)",
            h.arch
        ));
    }
    if !h.missing_commands.is_empty() {
        problems.push(format!(
            "{name}: missing commands: {} (install them, e.g. curl and util-linux)",
            h.missing_commands.join(", ")
        ));
    }
    let skew = clock_skew(h, now).abs();
    if skew > opts.max_clock_skew.as_secs_f64() {
        problems.push(format!(
            "{name}: clock differs from this machine's by {skew:.1} s (allowed {} s); enable time sync (chrony or systemd-timesyncd)",
            opts.max_clock_skew.as_secs()
        ));
    }
}

/// How far the node's clock is from this machine's: its reading against
/// the window in which it was taken (asked .. answered), so that a slow
/// round trip (many nodes, a busy link) is not mistaken for skew; `now`
/// when no window was recorded.
fn clock_skew(h: &HostFacts, now: f64) -> f64 {
    if h.asked_at <= 0.0 || h.answered_at < h.asked_at {
        return h.time - now;
    }
    if h.time < h.asked_at {
        h.time - h.asked_at
    } else if h.time > h.answered_at {
        h.time - h.answered_at
    } else {
        0.0
    }
}

/// The node's requirements as one read-only script: each check in a
/// subshell, and `unmet=INDEX` for every one that fails.
pub fn requirements_script(tree: &NodeTree) -> String {
    let mut s = String::new();
    for (i, r) in tree.requirements.iter().enumerate() {
        s.push_str(&format!(
            "if ( {} ) >/dev/null 2>&1; then :; else echo unmet={i}; fi\n",
            r.check
        ));
    }
    s
}

/// Every requirement the node lacks, with what it is for and the package
/// that provides it.
fn requirement_problems(tree: &NodeTree, h: &HostFacts, problems: &mut Vec<String>) {
    for (i, r) in tree.requirements.iter().enumerate() {
        if h.unmet.iter().any(|u| u.parse() == Ok(i)) {
            problems.push(r.problem.clone());
        }
    }
}

/// The ports (from the table) of units that are not running yet must be
/// free.
fn port_problems(
    rendered: &Rendered,
    facts: &Facts,
    name: &str,
    h: &HostFacts,
    problems: &mut Vec<String>,
) {
    let (Facts::Gathered(map), Some(tree)) =
        (facts, rendered.nodes.iter().find(|t| t.name == name))
    else {
        return;
    };
    let Some(nf) = map.get(name) else { return };
    for unit in &tree.units {
        if nf.units.get(&unit.name).is_some_and(|s| s.active) {
            continue;
        }
        for port in &unit.ports {
            if h.listening.contains(port) {
                problems.push(format!(
                    "{name}: port {port} that {} needs is taken by another program (see `ss -ltnp 'sport = :{port}'`)",
                    unit.name
                ));
            }
        }
    }
}

/// No two nodes may be the same host.
fn duplicates(hosts: &BTreeMap<String, HostFacts>, problems: &mut Vec<String>) {
    let mut by_hostname: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut by_machine_id: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, h) in hosts {
        by_hostname.entry(&h.hostname).or_default().push(name);
        by_machine_id.entry(&h.machine_id).or_default().push(name);
    }
    for (hostname, nodes) in by_hostname {
        if nodes.len() > 1 {
            problems.push(format!(
                "nodes {} share the hostname \"{hostname}\"; give each host its own",
                nodes.join(", ")
            ));
        }
    }
    for (id, nodes) in by_machine_id {
        if nodes.len() > 1 {
            problems.push(format!(
                "nodes {} share the machine-id {id} (cloned image?); run `systemd-machine-id-setup` after removing /etc/machine-id",
                nodes.join(", ")
            ));
        }
    }
}

/// Problems that do not stop an apply: clocks that systemd does not report
/// synchronized (certificates and etcd need agreeing clocks), asked when
/// a node is installed; the clock's offset from this machine's is checked
/// on every run.
pub fn warnings(hosts: &BTreeMap<String, HostFacts>) -> Vec<String> {
    hosts
        .iter()
        .filter(|(_, h)| h.ntp_synchronized == Some(false))
        .map(|(name, _)| {
            format!(
                "{name}: the clock is not synchronized (timedatectl: NTPSynchronized=no); enable chrony or systemd-timesyncd"
            )
        })
        .collect()
}
