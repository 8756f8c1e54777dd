//! The commands that talk to nodes: online `plan` and `apply`.

pub use crate::progress::Bars;
use anyhow::{Context, Result};
use kubeforge_apply::{ApplyError, Transports};
use kubeforge_inventory::Cluster;
use kubeforge_plan::Known;
use kubeforge_plan::Reach as Ssh;
use kubeforge_transport::{Keep, SshOptions, SshTransport, Transport};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How to reach the nodes, from the command line.
#[derive(Debug, Clone)]
pub struct Reach {
    pub ssh_config: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub concurrency: usize,
    /// Keep the connections up this long after their last use.
    pub keep: Option<Duration>,
}

fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}

/// Opens one multiplexed SSH connection per node, all at once (bounded);
/// reports every node that cannot be reached.
pub async fn connect_all(cluster: &Cluster, state: &Path, reach: &Reach) -> Result<Transports> {
    let (transports, problems) = connect_each(cluster, state, reach).await?;
    if !problems.is_empty() {
        anyhow::bail!(
            "cannot reach every node; nothing was changed:\n{}",
            problems.into_values().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(transports)
}

/// Like [`connect_all`], but a node that cannot be reached is returned
/// with why instead of failing the whole command (`kubeforge status`).
pub async fn connect_each(
    cluster: &Cluster,
    state: &Path,
    reach: &Reach,
) -> Result<(Transports, BTreeMap<String, String>)> {
    connect_to(targets(cluster, &[]), state, reach).await
}

/// [`connect_all`] with nodes known only from their records in the state
/// directory (nodes to remove). A node to remove that cannot be reached
/// is named with `--unreachable` in the error's help.
pub async fn connect_all_with(
    cluster: &Cluster,
    gone: &[Known],
    state: &Path,
    reach: &Reach,
) -> Result<Transports> {
    let (transports, problems) = connect_to(targets(cluster, gone), state, reach).await?;
    if !problems.is_empty() {
        let dead: Vec<&str> = gone
            .iter()
            .map(|k| k.manifest.node.as_str())
            .filter(|n| problems.contains_key(*n))
            .collect();
        let mut help = String::new();
        if !dead.is_empty() {
            let flags: Vec<String> = dead.iter().map(|n| format!("--unreachable {n}")).collect();
            help = format!(
                "\n  help: {} {} being removed (the inventory no longer names {}); if {} gone for good (powered off, its disk lost), `kubeforge apply --prune {}` removes {} from the cluster without contacting {}",
                dead.join(", "),
                if dead.len() == 1 { "is" } else { "are" },
                if dead.len() == 1 { "it" } else { "them" },
                if dead.len() == 1 { "it is" } else { "they are" },
                flags.join(" "),
                if dead.len() == 1 { "it" } else { "them" },
                if dead.len() == 1 { "it" } else { "them" },
            );
        }
        anyhow::bail!(
            "cannot reach every node; nothing was changed:\n{}{help}",
            problems.into_values().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(transports)
}

/// [`connect_all`] to the nodes of `records` alone (from the state
/// directory).
pub async fn connect_known(records: &[Known], state: &Path, reach: &Reach) -> Result<Transports> {
    let nodes = records
        .iter()
        .map(|k| {
            (
                k.manifest.node.clone(),
                k.manifest.address.clone(),
                k.ssh.clone(),
            )
        })
        .collect();
    let (transports, problems) = connect_to(nodes, state, reach).await?;
    if !problems.is_empty() {
        anyhow::bail!(
            "cannot reach every node; nothing was changed:\n{}",
            problems.into_values().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(transports)
}

/// (name, address, how to reach it) of every node of the inventory, then
/// of every node of `gone`.
fn targets(cluster: &Cluster, gone: &[Known]) -> Vec<(String, String, Ssh)> {
    let mut out: Vec<(String, String, Ssh)> = cluster
        .nodes
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                n.address.to_string(),
                Ssh {
                    user: n.ssh.user.clone(),
                    port: n.ssh.port,
                    key: n.ssh.key.clone(),
                    sudo: n.ssh.sudo,
                    accept_new_host_keys: n.ssh.accept_new_host_keys,
                },
            )
        })
        .collect();
    for k in gone {
        out.push((
            k.manifest.node.clone(),
            k.manifest.address.clone(),
            Ssh {
                user: k.ssh.user.clone(),
                port: k.ssh.port,
                key: k.ssh.key.clone(),
                sudo: k.ssh.sudo,
                accept_new_host_keys: k.ssh.accept_new_host_keys,
            },
        ));
    }
    out
}

async fn connect_to(
    nodes: Vec<(String, String, Ssh)>,
    state: &Path,
    reach: &Reach,
) -> Result<(Transports, BTreeMap<String, String>)> {
    std::fs::create_dir_all(state).with_context(|| format!("creating {}", state.display()))?;
    let known_hosts = state.join("known_hosts");
    // Absolute: the records of kept connections name sockets for other
    // processes, which may run from another directory.
    let kept = state.join("ssh");
    let kept = std::path::absolute(&kept).unwrap_or(kept);
    let sem = Arc::new(tokio::sync::Semaphore::new(reach.concurrency.max(1)));
    let mut tasks = Vec::new();
    for (name, address, ssh) in &nodes {
        let opts = SshOptions {
            node: name.clone(),
            address: address.clone(),
            user: ssh.user.clone(),
            port: ssh.port,
            key: ssh.key.as_deref().map(expand_home),
            sudo: ssh.sudo,
            accept_new_host_keys: ssh.accept_new_host_keys,
            known_hosts: known_hosts.clone(),
            config_file: reach.ssh_config.clone(),
            connect_timeout: reach.connect_timeout,
            keep: reach.keep.map(|idle| Keep {
                dir: kept.clone(),
                idle,
            }),
        };
        let sem = Arc::clone(&sem);
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            SshTransport::connect(opts).await
        }));
    }
    let mut transports: Transports = BTreeMap::new();
    let mut problems = BTreeMap::new();
    for ((name, _, _), task) in nodes.iter().zip(tasks) {
        match task.await {
            Ok(Ok(t)) => {
                transports.insert(name.clone(), Arc::new(t) as Arc<dyn Transport>);
            }
            Ok(Err(e)) => {
                problems.insert(name.clone(), e.to_string());
            }
            Err(e) => {
                problems.insert(name.clone(), format!("{name}: {e}"));
            }
        }
    }
    Ok((transports, problems))
}

/// Turns an apply error into the message an admin sees.
pub fn explain(e: ApplyError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}
