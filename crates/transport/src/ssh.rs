//! SSH through the system `ssh` (the `openssh` crate, one multiplexed
//! master connection per node): honours `~/.ssh/config`, agents, ports,
//! jump hosts and keys. Host keys are verified; unknown hosts are accepted
//! only when asked, and then recorded in kubeforge's own known-hosts file.

use crate::{ops, Held, Output, Script, Transport, TransportError};
use async_trait::async_trait;
use openssh::{KnownHosts, Session, SessionBuilder, Stdio};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How to reach one node.
#[derive(Debug, Clone)]
pub struct SshOptions {
    pub node: String,
    pub address: String,
    pub user: String,
    pub port: u16,
    pub key: Option<PathBuf>,
    pub sudo: bool,
    /// Accept and record a host key never seen before.
    pub accept_new_host_keys: bool,
    /// kubeforge's known-hosts file (in the state directory); the user's
    /// `~/.ssh/known_hosts` is consulted too.
    pub known_hosts: PathBuf,
    /// An ssh_config file to use instead of `~/.ssh/config`.
    pub config_file: Option<PathBuf>,
    pub connect_timeout: Duration,
}

pub struct SshTransport {
    opts: SshOptions,
    session: Arc<Session>,
}

impl SshTransport {
    pub async fn connect(opts: SshOptions) -> Result<SshTransport, TransportError> {
        let mut b = SessionBuilder::default();
        b.user(opts.user.clone())
            .port(opts.port)
            .connect_timeout(opts.connect_timeout)
            .server_alive_interval(Duration::from_secs(15))
            .known_hosts_check(if opts.accept_new_host_keys {
                KnownHosts::Add
            } else {
                KnownHosts::Strict
            });
        let mut files = vec![opts.known_hosts.display().to_string()];
        if let Some(home) = std::env::var_os("HOME") {
            files.push(
                PathBuf::from(home)
                    .join(".ssh/known_hosts")
                    .display()
                    .to_string(),
            );
        }
        b.user_known_hosts_file(files.join(" "));
        if let Some(k) = &opts.key {
            b.keyfile(k);
        }
        if let Some(c) = &opts.config_file {
            b.config_file(c);
        }
        let session = b
            .connect(&opts.address)
            .await
            .map_err(|e| TransportError::Connect {
                node: opts.node.clone(),
                destination: format!("{}@{}:{}", opts.user, opts.address, opts.port),
                detail: error_chain(&e),
            })?;
        Ok(SshTransport {
            opts,
            session: Arc::new(session),
        })
    }

    fn command(&self, script: &Script<'_>) -> openssh::OwningCommand<Arc<Session>> {
        let program = if self.opts.sudo { "sudo" } else { "sh" };
        let mut cmd = Session::to_command(Arc::clone(&self.session), program);
        if self.opts.sudo {
            cmd.arg("-n").arg("sh");
        }
        cmd.arg("-c").arg(script.body).arg("kubeforge");
        for a in &script.args {
            cmd.arg(a);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Closes the master connection (when no command holds it any more).
    pub async fn close(self) {
        if let Ok(session) = Arc::try_unwrap(self.session) {
            let _ = session.close().await;
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

struct SshHeld {
    child: openssh::Child<Arc<Session>>,
}

#[async_trait]
impl Held for SshHeld {
    async fn release(mut self: Box<Self>) {
        drop(self.child.stdin().take());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

#[async_trait]
impl Transport for SshTransport {
    fn node(&self) -> &str {
        &self.opts.node
    }

    async fn run(&self, script: Script<'_>) -> Result<Output, TransportError> {
        let err = |detail: String| TransportError::Run {
            node: self.opts.node.clone(),
            what: script.what.to_string(),
            detail,
        };
        let run = async {
            let mut child = self
                .command(&script)
                .spawn()
                .await
                .map_err(|e| err(error_chain(&e)))?;
            if let Some(mut stdin) = child.stdin().take() {
                let input = script.stdin.clone().unwrap_or_default();
                let _ = stdin.write_all(&input).await;
                let _ = stdin.shutdown().await;
            }
            child
                .wait_with_output()
                .await
                .map_err(|e| err(error_chain(&e)))
        };
        match tokio::time::timeout(script.timeout, run).await {
            Err(_) => Err(TransportError::Timeout {
                node: self.opts.node.clone(),
                what: script.what.to_string(),
                secs: script.timeout.as_secs(),
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok(o)) => Ok(Output {
                status: o.status.code().unwrap_or(-1),
                stdout: o.stdout,
                stderr: o.stderr,
            }),
        }
    }

    async fn hold(&self, script: Script<'_>) -> Result<(String, Box<dyn Held>), TransportError> {
        let err = |detail: String| TransportError::Run {
            node: self.opts.node.clone(),
            what: script.what.to_string(),
            detail,
        };
        let mut cmd = self.command(&script);
        cmd.stderr(Stdio::null());
        let mut child = cmd.spawn().await.map_err(|e| err(error_chain(&e)))?;
        let first = ops::first_line(child.stdout().take(), script.timeout)
            .await
            .map_err(err)?;
        Ok((first, Box::new(SshHeld { child })))
    }
}
