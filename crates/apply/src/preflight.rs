//! Checks before anything changes: every node reachable and a Linux host
//! with systemd and the commands kubeforge uses, unique hostnames and
//! machine-ids, clocks within the allowed skew, and the ports of units
//! not running yet free. Every problem is reported, not just the first.

use crate::{bounded, ApplyError, Options, Transports};
use kubeforge_inventory::Cluster;
use kubeforge_plan::Facts;
use kubeforge_transport::ops::{self, HostFacts};
use std::collections::BTreeMap;

/// Ports each unit listens on.
fn ports(cluster: &Cluster, unit: &str) -> Vec<u16> {
    match unit {
        "etcd" => vec![2379, 2380],
        "kube-apiserver" => vec![cluster.apiserver_port],
        "kube-controller-manager" => vec![10257],
        "kube-scheduler" => vec![10259],
        "nginx" => cluster
            .loadbalancer
            .as_ref()
            .map(|l| vec![l.port])
            .unwrap_or_default(),
        "kubelet" => vec![10250, 10248],
        "kube-proxy" => vec![10256, 10249],
        _ => Vec::new(),
    }
}

const ARCHES: [&str; 2] = ["x86_64", "aarch64"];

pub async fn preflight(
    cluster: &Cluster,
    transports: &Transports,
    facts: &Facts,
    opts: &Options,
) -> Result<BTreeMap<String, HostFacts>, ApplyError> {
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let results = bounded(names, opts.concurrency, |name| async move {
        let t = transports.get(&name);
        let r = match t {
            Some(t) => ops::host(t.as_ref()).await.map_err(|e| e.to_string()),
            None => Err(format!("{name}: not connected")),
        };
        (name, r)
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    let mut problems = Vec::new();
    let mut hosts = BTreeMap::new();
    for (name, r) in results {
        match r {
            Err(e) => problems.push(e),
            Ok(h) => {
                hosts.insert(name, h);
            }
        }
    }
    let mut by_hostname: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut by_machine_id: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, h) in &hosts {
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
        let skew = (h.time - now).abs();
        if skew > opts.max_clock_skew.as_secs_f64() {
            problems.push(format!(
                "{name}: clock differs from this machine's by {skew:.1} s (allowed {} s); enable time sync (chrony or systemd-timesyncd)",
                opts.max_clock_skew.as_secs()
            ));
        }
        by_hostname.entry(&h.hostname).or_default().push(name);
        by_machine_id.entry(&h.machine_id).or_default().push(name);
        if let Facts::Gathered(map) = facts {
            if let (Some(node), Some(nf)) = (cluster.node(name), map.get(name)) {
                let _ = node;
                for (unit, state) in &nf.units {
                    if state.active {
                        continue;
                    }
                    for port in ports(cluster, unit) {
                        if h.listening.contains(&port) {
                            problems.push(format!(
                                "{name}: port {port} that {unit} needs is taken by another program (see `ss -ltnp 'sport = :{port}'`)"
                            ));
                        }
                    }
                }
            }
        }
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
    if problems.is_empty() {
        Ok(hosts)
    } else {
        Err(ApplyError::Preflight(problems))
    }
}

/// Problems that do not stop an apply: clocks that systemd does not report
/// synchronized (certificates and etcd need agreeing clocks).
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
