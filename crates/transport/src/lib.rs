//! Transport: the one way kubeforge acts on a node. A transport runs a
//! shell script as root on its node, with arguments and standard input;
//! every higher operation ([`ops`]: atomic uploads, file facts, systemd,
//! locks) is built on that one primitive, so SSH in production and the
//! local transport in tests behave the same.
//!
//! # SSH master connections
//!
//! [`SshTransport`] keeps one multiplexed ssh master per node. A master
//! exits by itself [`MASTER_LINGER`] after kubeforge is gone, even when
//! kubeforge was killed; closing them at once on a normal end and on
//! SIGINT/SIGTERM is up to the program, with one call around everything
//! it does with nodes:
//!
//! ```no_run
//! # async fn connect_and_apply() -> Result<(), String> { Ok(()) }
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! match kubeforge_transport::closing_masters(connect_and_apply()).await {
//!     Ok(result) => result?,
//!     Err(interrupted) => {
//!         // "interrupted by SIGINT; the SSH connections ... were closed"
//!         std::process::exit(interrupted.exit_code().into());
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! [`close_all`] alone closes every master open in the process, for a
//! program that handles signals itself.

pub mod blobs;
pub mod gather;
pub mod ops;
pub mod recording;
mod ssh;

pub use ssh::{
    close_all, closing_masters, Interrupted, Keep, SshOptions, SshTransport, MASTER_LINGER,
};

use async_trait::async_trait;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// What a script printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == 0
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{node}: cannot connect to {destination}: {detail}\n  help: check that `ssh {destination}` works (address, port, user, key, host key); kubeforge uses the system ssh and ~/.ssh/config")]
    Connect {
        node: String,
        destination: String,
        detail: String,
    },
    #[error("{node}: running `{what}` failed: {detail}")]
    Run {
        node: String,
        what: String,
        detail: String,
    },
    #[error("{node}: `{what}` exited with status {status}: {stderr}")]
    Failed {
        node: String,
        what: String,
        status: i32,
        stderr: String,
    },
    #[error("{node}: `{what}` did not finish within {secs} s")]
    Timeout {
        node: String,
        what: String,
        secs: u64,
    },
}

/// A script to run on a node: `sh -c SCRIPT kubeforge ARGS...`.
#[derive(Clone)]
pub struct Script<'a> {
    /// A short name for messages and logs (never the script body).
    pub what: &'a str,
    pub body: &'a str,
    pub args: Vec<String>,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
}

/// Shows the script's name and arguments, never its stdin (which carries
/// file contents, keys among them, and credentials).
impl std::fmt::Debug for Script<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Script")
            .field("what", &self.what)
            .field("args", &self.args)
            .field(
                "stdin",
                &self.stdin.as_ref().map(|b| format!("{} bytes", b.len())),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<'a> Script<'a> {
    pub fn new(what: &'a str, body: &'a str) -> Self {
        Script {
            what,
            body,
            args: Vec::new(),
            stdin: None,
            timeout: Duration::from_secs(120),
        }
    }
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
    pub fn stdin(mut self, bytes: Vec<u8>) -> Self {
        self.stdin = Some(bytes);
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// How the script starts ([`Launch`]): as `sh -c BODY kubeforge
    /// ARGS...` while that command line stays within [`COMMAND_LINE_MAX`],
    /// else with its body and arguments on stdin ahead of its own input.
    pub(crate) fn launch(&self) -> Launch<'_> {
        // Quoting a `'` takes four bytes, any argument two more and a space.
        let quoted = |a: &String| a.len() + 3 * a.matches('\'').count() + 3;
        let line = self.body.len() + self.args.iter().map(quoted).sum::<usize>();
        if line <= COMMAND_LINE_MAX {
            return Launch {
                body: self.body,
                args: std::borrow::Cow::Borrowed(&self.args),
                ahead: Vec::new(),
            };
        }
        let args: String = self
            .args
            .iter()
            .map(|a| format!("'{}' ", a.replace('\'', r"'\''")))
            .collect();
        let mut ahead = Vec::with_capacity(self.body.len() + args.len());
        ahead.extend_from_slice(self.body.as_bytes());
        ahead.extend_from_slice(args.as_bytes());
        Launch {
            body: FROM_STDIN,
            args: std::borrow::Cow::Owned(vec![
                self.body.len().to_string(),
                args.len().to_string(),
            ]),
            ahead,
        }
    }
}

/// The longest command line (script and quoted arguments) a script is
/// started with; a longer one is sent on its stdin instead, ahead of
/// its own input, for a small launcher to read. sshd hands the whole
/// command to the login shell as ONE argument, and Linux refuses an
/// argument over 128 KiB (`Argument list too long`): a large cluster's
/// `/etc/hosts` and pod routes steps reach that size at about a thousand
/// nodes.
pub const COMMAND_LINE_MAX: usize = 64 * 1024;

/// Starts a script whose body and arguments come first on stdin: `$1`
/// bytes of body, then `$2` bytes of arguments, each quoted with `'`. GNU
/// `head -c` reads no further than it is asked, so the script's own input
/// follows untouched. The body runs in this shell (`eval`: it is never
/// an argument of another program), with `$0` and its arguments as with
/// `sh -c`.
const FROM_STDIN: &str = r#"_kf_b=$(head -c "$1"; echo .) && _kf_a=$(head -c "$2") || exit 126
eval "set -- $_kf_a"
unset _kf_a
eval "unset _kf_b
${_kf_b%.}"
"#;

/// What starts a script on its node: `sh -c BODY kubeforge ARGS...`, and
/// the bytes written to its stdin before the script's own input.
pub(crate) struct Launch<'a> {
    pub body: &'a str,
    pub args: std::borrow::Cow<'a, [String]>,
    pub ahead: Vec<u8>,
}

/// A long-running process on a node that ends when its handle is dropped
/// or closed (used for the apply lock).
#[async_trait]
pub trait Held: Send {
    async fn release(self: Box<Self>);
}

/// The interface every effect on a node goes through.
#[async_trait]
pub trait Transport: Send + Sync {
    /// The inventory name of the node.
    fn node(&self) -> &str;

    /// Runs a script as root and returns its output whatever its status.
    async fn run(&self, script: Script<'_>) -> Result<Output, TransportError>;

    /// Starts a script and waits until it prints its first line; the
    /// script keeps running (holding, for example, a lock) until the
    /// returned handle is released or dropped, which closes its stdin.
    async fn hold(&self, script: Script<'_>) -> Result<(String, Box<dyn Held>), TransportError>;

    /// Takes the node's apply lock, `flock` on `path` (its `.owner` file
    /// naming `owner`), held until the returned handle is released or
    /// dropped; fails at once when another apply holds it. By default a
    /// held script of its own ([`ops::LOCK`]).
    async fn lock(&self, path: &str, owner: &str) -> Result<Box<dyn Held>, TransportError> {
        ops::lock_in_session(self, path, owner).await
    }

    /// Runs a script and fails unless it exits 0.
    async fn run_ok(&self, script: Script<'_>) -> Result<Output, TransportError> {
        let what = script.what.to_string();
        let out = self.run(script).await?;
        if out.success() {
            Ok(out)
        } else {
            Err(TransportError::Failed {
                node: self.node().to_string(),
                what,
                status: out.status,
                stderr: out.stderr_str().trim().to_string(),
            })
        }
    }
}

/// Runs scripts on this machine with `sh` (tests, and a control machine
/// that is itself a node). Everything else is identical to SSH.
pub struct LocalTransport {
    name: String,
}

impl LocalTransport {
    pub fn new(name: impl Into<String>) -> Self {
        LocalTransport { name: name.into() }
    }

    /// Starts `script`, with what its launch writes ahead on its stdin
    /// ([`Script::launch`]) written.
    async fn spawn(script: &Script<'_>) -> std::io::Result<tokio::process::Child> {
        let launch = script.launch();
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(launch.body)
            .arg("kubeforge")
            .args(launch.args.iter())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        if let Some(stdin) = child.stdin.as_mut().filter(|_| !launch.ahead.is_empty()) {
            stdin.write_all(&launch.ahead).await?;
        }
        Ok(child)
    }
}

struct LocalHeld {
    child: tokio::process::Child,
}

#[async_trait]
impl Held for LocalHeld {
    async fn release(mut self: Box<Self>) {
        drop(self.child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

#[async_trait]
impl Transport for LocalTransport {
    fn node(&self) -> &str {
        &self.name
    }

    async fn run(&self, script: Script<'_>) -> Result<Output, TransportError> {
        let err = |detail: String| TransportError::Run {
            node: self.name.clone(),
            what: script.what.to_string(),
            detail,
        };
        let mut child = Self::spawn(&script).await.map_err(|e| err(e.to_string()))?;
        let stdin = child.stdin.take();
        let input = script.stdin.clone().unwrap_or_default();
        let feed = async move {
            if let Some(mut s) = stdin {
                let _ = s.write_all(&input).await;
                let _ = s.shutdown().await;
            }
        };
        let run = async {
            let ((), out) = tokio::join!(feed, child.wait_with_output());
            out
        };
        match tokio::time::timeout(script.timeout, run).await {
            Err(_) => Err(TransportError::Timeout {
                node: self.name.clone(),
                what: script.what.to_string(),
                secs: script.timeout.as_secs(),
            }),
            Ok(Err(e)) => Err(err(e.to_string())),
            Ok(Ok(o)) => Ok(Output {
                status: o.status.code().unwrap_or(-1),
                stdout: o.stdout,
                stderr: o.stderr,
            }),
        }
    }

    async fn hold(&self, script: Script<'_>) -> Result<(String, Box<dyn Held>), TransportError> {
        let err = |detail: String| TransportError::Run {
            node: self.name.clone(),
            what: script.what.to_string(),
            detail,
        };
        let mut child = Self::spawn(&script).await.map_err(|e| err(e.to_string()))?;
        let first = ops::first_line(child.stdout.take(), script.timeout)
            .await
            .map_err(err)?;
        Ok((first, Box::new(LocalHeld { child })))
    }
}

#[cfg(test)]
mod debug_tests {
    #[test]
    fn debug_never_shows_stdin() {
        let s = super::Script::new("put", "cat").stdin(b"-----BEGIN PRIVATE KEY-----".to_vec());
        let text = format!("{s:?}");
        assert!(!text.contains("PRIVATE"), "{text}");
        assert!(text.contains("27 bytes"), "{text}");
    }
}
