//! The commands that talk to nodes: online `plan` and `apply`.

pub use crate::progress::Bars;
use anyhow::{Context, Result};
use kubeforge_apply::{ApplyError, Transports};
use kubeforge_inventory::Cluster;
use kubeforge_transport::{SshOptions, SshTransport, Transport};
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
    std::fs::create_dir_all(state).with_context(|| format!("creating {}", state.display()))?;
    let known_hosts = state.join("known_hosts");
    let sem = Arc::new(tokio::sync::Semaphore::new(reach.concurrency.max(1)));
    let mut tasks = Vec::new();
    for node in &cluster.nodes {
        let opts = SshOptions {
            node: node.name.clone(),
            address: node.address.to_string(),
            user: node.ssh.user.clone(),
            port: node.ssh.port,
            key: node.ssh.key.as_deref().map(expand_home),
            sudo: node.ssh.sudo,
            accept_new_host_keys: node.ssh.accept_new_host_keys,
            known_hosts: known_hosts.clone(),
            config_file: reach.ssh_config.clone(),
            connect_timeout: reach.connect_timeout,
        };
        let sem = Arc::clone(&sem);
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            SshTransport::connect(opts).await
        }));
    }
    let mut transports: Transports = BTreeMap::new();
    let mut problems = BTreeMap::new();
    for (node, task) in cluster.nodes.iter().zip(tasks) {
        match task.await {
            Ok(Ok(t)) => {
                transports.insert(node.name.clone(), Arc::new(t) as Arc<dyn Transport>);
            }
            Ok(Err(e)) => {
                problems.insert(node.name.clone(), e.to_string());
            }
            Err(e) => {
                problems.insert(node.name.clone(), format!("{}: {e}", node.name));
            }
        }
    }
    Ok((transports, problems))
}

/// Turns an apply error into the message an admin sees.
pub fn explain(e: ApplyError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}
