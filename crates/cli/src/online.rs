//! The commands that talk to nodes: online `plan` and `apply`.

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kubeforge_apply::{ApplyError, Event, EventKind, Progress, Transports};
use kubeforge_inventory::Cluster;
use kubeforge_transport::{SshOptions, SshTransport, Transport};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
    let mut problems = Vec::new();
    for (node, task) in cluster.nodes.iter().zip(tasks) {
        match task.await {
            Ok(Ok(t)) => {
                transports.insert(node.name.clone(), Arc::new(t) as Arc<dyn Transport>);
            }
            Ok(Err(e)) => problems.push(e.to_string()),
            Err(e) => problems.push(format!("{}: {e}", node.name)),
        }
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "cannot reach every node; nothing was changed:\n{}",
            problems.join("\n")
        );
    }
    Ok(transports)
}

/// Progress bars per phase and node on a terminal; plain lines otherwise.
pub struct Bars {
    multi: Option<MultiProgress>,
    bars: Mutex<BTreeMap<String, ProgressBar>>,
}

impl Bars {
    pub fn new() -> Bars {
        let multi = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Bars {
            multi,
            bars: Mutex::new(BTreeMap::new()),
        }
    }

    fn plain(&self, line: String) {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

impl Progress for Bars {
    fn event(&self, e: Event) {
        let Some(multi) = &self.multi else {
            match (e.kind, &e.node) {
                (EventKind::PhaseStarted, _) => {
                    self.plain(format!("== phase {} ({})", e.phase, e.message))
                }
                (EventKind::PhaseDone, _) => self.plain(format!("== phase {} done", e.phase)),
                (EventKind::Step, Some(n)) => {
                    self.plain(format!("   [{}] {n}: {}", e.phase, e.message))
                }
                (EventKind::Step, None) => self.plain(format!("   [{}] {}", e.phase, e.message)),
                (EventKind::Warning, _) => self.plain(format!("warning: {}", e.message)),
            }
            return;
        };
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        let key = format!("{}/{}", e.phase, e.node.clone().unwrap_or_default());
        match e.kind {
            EventKind::Warning => {
                let _ = multi.println(format!("warning: {}", e.message));
            }
            EventKind::PhaseStarted | EventKind::Step => {
                let bar = bars.entry(key).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new_spinner());
                    b.set_style(
                        ProgressStyle::with_template("{spinner} {prefix:>22} {wide_msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    b.set_prefix(match &e.node {
                        Some(n) => format!("{} {n}", e.phase),
                        None => e.phase.clone(),
                    });
                    b.enable_steady_tick(Duration::from_millis(120));
                    b
                });
                bar.set_message(e.message);
            }
            EventKind::PhaseDone => {
                let prefix = format!("{}/", e.phase);
                for (k, b) in bars.iter() {
                    if k.starts_with(&prefix) {
                        b.finish_with_message("done");
                    }
                }
            }
        }
    }
}

/// Turns an apply error into the message an admin sees.
pub fn explain(e: ApplyError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}
