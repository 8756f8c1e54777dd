//! SSH through the system `ssh` (the `openssh` crate, one multiplexed
//! master connection per node): honours `~/.ssh/config`, agents, ports,
//! jump hosts and keys. Host keys are verified; unknown hosts are accepted
//! only when asked, and then recorded in kubeforge's own known-hosts file.
//! Commands open their sessions on the master's control socket themselves
//! (openssh's native mux client): no `ssh` process per command.
//!
//! A master never outlives kubeforge for long: each runs with a short
//! `ControlPersist` ([`MASTER_LINGER`]) and its transport keeps one idle
//! channel open on it for as long as the transport lives, so the master
//! stays up through pauses in the work and exits on its own that long
//! after kubeforge is gone, however kubeforge ended (a killed process
//! closes the channel's stdin). Every open master is also registered, so
//! [`close_all`] (or [`closing_masters`] around the work, which adds
//! SIGINT and SIGTERM) closes them at once. The idle channel takes one of
//! the sessions sshd allows per connection (`MaxSessions`, 10 by default);
//! commands and held scripts share at most [`SESSIONS`] more, the rest wait
//! for one to end (beyond `MaxSessions`, sshd refuses the channel: the
//! master answers "Session open refused by peer", and the command, which
//! never started, is opened again).

use crate::{ops, Held, Output, Script, Transport, TransportError};
use async_trait::async_trait;
use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder, Stdio};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::future::Future;
use std::num::NonZeroUsize;
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt};

/// How long a master connection stays up once no client uses it any more
/// (ssh's `ControlPersist`). A live transport always holds one channel, so
/// this only counts once kubeforge itself is gone.
pub const MASTER_LINGER: Duration = Duration::from_secs(15);

/// Sessions (commands and held scripts) open at once on one node's master
/// connection, beside the idle channel: below sshd's default `MaxSessions`
/// of 10.
pub const SESSIONS: usize = 8;

/// How long [`close_all`] waits for one master to acknowledge `-O exit`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The control sockets of the master connections open in this process.
static MASTERS: Mutex<BTreeMap<u64, PathBuf>> = Mutex::new(BTreeMap::new());
static NEXT_MASTER: AtomicU64 = AtomicU64::new(0);

/// A master's entry in [`MASTERS`], removed when its transport goes.
struct Registered(u64);

impl Registered {
    fn new(control_socket: &Path) -> Registered {
        let id = NEXT_MASTER.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = MASTERS.lock() {
            m.insert(id, control_socket.to_path_buf());
        }
        Registered(id)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut m) = MASTERS.lock() {
            m.remove(&self.0);
        }
    }
}

/// Closes every SSH master connection this process has open, all at
/// once, and removes their control directories. Commands still running
/// over them fail; transports left after it cannot run anything more.
/// Meant for the end of a command and for SIGINT/SIGTERM handlers (see
/// [`closing_masters`], which does both).
pub async fn close_all() {
    let sockets: Vec<PathBuf> = match MASTERS.lock() {
        Ok(mut m) => std::mem::take(&mut *m).into_values().collect(),
        Err(_) => return,
    };
    let closes = sockets.into_iter().map(|socket| async move {
        if !exit_master(&socket).await {
            tracing::warn!(
                "the SSH master at {} did not close within {} s; it exits by itself {} s after its last use",
                socket.display(),
                CLOSE_TIMEOUT.as_secs(),
                MASTER_LINGER.as_secs()
            );
        }
        // The directory openssh made for this master: its socket and log.
        if let Some(dir) = socket.parent() {
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
    });
    futures::future::join_all(closes).await;
}

/// Asks the master behind `socket` to exit (`ssh -O exit`); false when it
/// did not answer within [`CLOSE_TIMEOUT`].
async fn exit_master(socket: &Path) -> bool {
    let exit = tokio::process::Command::new("ssh")
        .arg("-S")
        .arg(socket)
        .args(["-o", "BatchMode=yes", "-O", "exit", "none"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status();
    tokio::time::timeout(CLOSE_TIMEOUT, exit).await.is_ok()
}

/// Why [`closing_masters`] stopped the work before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted by {name}; the SSH connections to the nodes were closed (a command that was running on a node may have been cut short: run kubeforge again)")]
pub struct Interrupted {
    /// The signal's number (2 for SIGINT, 15 for SIGTERM).
    pub signal: i32,
    /// `SIGINT` or `SIGTERM`.
    pub name: &'static str,
}

impl Interrupted {
    /// The exit status a shell expects of a process ended by this signal.
    pub fn exit_code(&self) -> u8 {
        u8::try_from(128 + self.signal).unwrap_or(u8::MAX)
    }
}

/// Runs `work` (everything a command does with nodes) and then closes
/// every SSH master connection ([`close_all`]); on SIGINT or SIGTERM stops
/// `work` first, closes them and returns [`Interrupted`]. Call it inside a
/// tokio runtime with signals enabled (`enable_all`). tokio keeps its
/// signal handlers for the rest of the process, so a caller that got
/// [`Interrupted`] should exit with [`Interrupted::exit_code`] soon after.
pub async fn closing_masters<F: Future>(work: F) -> Result<F::Output, Interrupted> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut work = std::pin::pin!(work);
    let (mut int, mut term) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(int), Ok(term)) => (int, term),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("cannot watch for SIGINT/SIGTERM ({e}); SSH connections close {} s after an interruption", MASTER_LINGER.as_secs());
            let out = work.await;
            close_all().await;
            return Ok(out);
        }
    };
    let interrupted = tokio::select! {
        out = &mut work => {
            close_all().await;
            return Ok(out);
        }
        _ = int.recv() => Interrupted { signal: 2, name: "SIGINT" },
        _ = term.recv() => Interrupted { signal: 15, name: "SIGTERM" },
    };
    tracing::info!("{interrupted}");
    // Close before the work is dropped: dropping it closes its own
    // transports one by one, which then finds them closed already.
    close_all().await;
    Err(interrupted)
}

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
    /// Keep the master connection up after this process, for the next
    /// one to use (None: it closes with the transport).
    pub keep: Option<Keep>,
}

/// A master connection kept for later processes: recorded in `dir` (one
/// file per node and way of reaching it, naming the control socket), up
/// until it has been unused for `idle` (ssh's `ControlPersist`).
#[derive(Debug, Clone)]
pub struct Keep {
    pub dir: PathBuf,
    pub idle: Duration,
}

/// How long a kept master may take to echo a line through a new channel
/// before it is given up (a dead connection hangs until ssh's keepalives
/// notice it).
const REUSE_TIMEOUT: Duration = Duration::from_secs(3);

type Channel = openssh::Child<Arc<Session>>;

/// What the idle channel runs: a shell that answers an empty line with
/// one (the proof that a kept master still answers, see [`reuse`]) and
/// holds the node's apply lock while this transport asks it to (`lock`,
/// then the lock file and the owner on a line each, answered as
/// [`ops::take_lock!`] answers; `unlock`): the lock needs no session of its own,
/// and ends with the channel, however kubeforge ended.
const KEEPER: &str = concat!(
    ops::take_lock!(),
    r#"held=
while IFS= read -r l; do
  case "$l" in
    lock)
      IFS= read -r p || exit 0
      IFS= read -r o || exit 0
      if [ -n "$held" ]; then
        echo "busy $(cat "$p.owner" 2>/dev/null)"
      elif take_lock "$p" "$o"; then
        held=1
      fi ;;
    unlock)
      if [ -n "$held" ]; then exec 9>&-; held=; fi
      echo unlocked ;;
    *) echo ;;
  esac
done
"#
);

/// The idle channel ([`KEEPER`]) and its pipes.
struct Keeper {
    _channel: Channel,
    stdin: openssh::ChildStdin,
    stdout: tokio::io::BufReader<openssh::ChildStdout>,
    /// A request went unanswered: later answers may be out of step.
    broken: bool,
}

/// How long the keeper may take to answer a request.
const KEEPER_TIMEOUT: Duration = Duration::from_secs(30);

impl Keeper {
    fn new(mut channel: Channel) -> Option<Keeper> {
        let stdin = channel.stdin().take()?;
        let stdout = channel.stdout().take()?;
        Some(Keeper {
            _channel: channel,
            stdin,
            stdout: tokio::io::BufReader::new(stdout),
            broken: false,
        })
    }

    /// Sends `request` and returns the line answering it.
    async fn ask(&mut self, request: &str) -> Result<String, String> {
        use tokio::io::AsyncBufReadExt as _;
        if self.broken {
            return Err("the connection's idle channel stopped answering".into());
        }
        self.broken = true;
        let exchange = async {
            self.stdin.write_all(request.as_bytes()).await?;
            self.stdin.flush().await?;
            let mut line = String::new();
            match self.stdout.read_line(&mut line).await? {
                0 => Err(std::io::Error::other("the connection's idle channel ended")),
                _ => Ok(line.trim_end_matches('\n').to_string()),
            }
        };
        let line = tokio::time::timeout(KEEPER_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {} s", KEEPER_TIMEOUT.as_secs()))?
            .map_err(|e| e.to_string())?;
        self.broken = false;
        Ok(line)
    }
}

type Shared = Arc<tokio::sync::Mutex<Keeper>>;

/// The apply lock held by a transport's [`Keeper`]: released by asking
/// it (dropped unreleased, asked from a task of its own); gone with the
/// transport, whose channel's end ends the keeper and the lock with it.
struct KeeperHeld {
    keeper: std::sync::Weak<tokio::sync::Mutex<Keeper>>,
    released: bool,
}

impl KeeperHeld {
    async fn unlock(keeper: Shared) {
        let _ = keeper.lock().await.ask("unlock\n").await;
    }
}

#[async_trait]
impl Held for KeeperHeld {
    async fn release(mut self: Box<Self>) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        if let Some(k) = self.keeper.upgrade() {
            Self::unlock(k).await;
        }
    }
}

impl Drop for KeeperHeld {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let (Some(k), Ok(rt)) = (self.keeper.upgrade(), tokio::runtime::Handle::try_current()) {
            rt.spawn(Self::unlock(k));
        }
    }
}

pub struct SshTransport {
    opts: SshOptions,
    /// The idle channel ([`KEEPER`]) that keeps the master in use while
    /// this transport lives, and holds its apply lock; dropped (its ssh
    /// session closed, its stdin with it) first.
    keepalive: Option<Shared>,
    session: Arc<Session>,
    /// One permit per session open on the master ([`SESSIONS`]).
    sessions: Arc<tokio::sync::Semaphore>,
    /// In [`MASTERS`] while it lives; a kept master is not (it outlives
    /// this process on purpose).
    registered: Option<Registered>,
}

impl SshTransport {
    pub async fn connect(opts: SshOptions) -> Result<SshTransport, TransportError> {
        if let Some(keep) = &opts.keep {
            if let Some((session, keepalive)) = reuse(&opts, keep).await {
                tracing::debug!(node = opts.node, "using the kept SSH connection");
                return Ok(Self::with(opts, session, keepalive, None));
            }
        }
        let persist = match &opts.keep {
            Some(keep) => idle_for(keep.idle),
            None => linger(),
        };
        let mut b = SessionBuilder::default();
        b.user(opts.user.clone())
            .port(opts.port)
            .connect_timeout(opts.connect_timeout)
            .server_alive_interval(Duration::from_secs(15))
            .control_persist(persist)
            .known_hosts_check(if opts.accept_new_host_keys {
                KnownHosts::Add
            } else {
                KnownHosts::Strict
            });
        let mut files = vec![opts.known_hosts.clone()];
        if let Some(home) = std::env::var_os("HOME") {
            files.push(PathBuf::from(home).join(".ssh/known_hosts"));
        }
        let known_hosts = known_hosts_files(&files).map_err(|detail| TransportError::Connect {
            node: opts.node.clone(),
            destination: format!("{}@{}:{}", opts.user, opts.address, opts.port),
            detail,
        })?;
        b.user_known_hosts_file(known_hosts);
        if let Some(k) = &opts.key {
            b.keyfile(k);
        }
        if let Some(c) = &opts.config_file {
            b.config_file(c);
        }
        if let Some(keep) = opts.keep.as_ref().filter(|k| fits_socket(&k.dir)) {
            // Beside its record, where a later process that finds the
            // master gone removes what is left of it.
            if std::fs::create_dir_all(&keep.dir).is_ok() {
                b.control_directory(&keep.dir);
            }
        }
        let session = b
            .connect_mux(&opts.address)
            .await
            .map_err(|e| TransportError::Connect {
                node: opts.node.clone(),
                destination: format!("{}@{}:{}", opts.user, opts.address, opts.port),
                detail: error_chain(&e),
            })?;
        let (session, registered) = match &opts.keep {
            Some(keep) => {
                // Detached: dropping it no longer closes the master.
                let (ctl, log) = session.detach();
                record(&opts, keep, &ctl, log.as_deref());
                (Session::resume_mux(ctl, log), None)
            }
            None => {
                let r = Registered::new(session.control_socket());
                (session, Some(r))
            }
        };
        Self::over(opts, session, registered).await
    }

    /// A transport over `session`, with the idle channel that keeps its
    /// master in use.
    async fn over(
        opts: SshOptions,
        session: Session,
        registered: Option<Registered>,
    ) -> Result<SshTransport, TransportError> {
        let session = Arc::new(session);
        let keepalive = keepalive(&session)
            .await
            .map_err(|e| error_chain(&e))
            .and_then(|c| Keeper::new(c).ok_or_else(|| "no pipes".to_string()))
            .map_err(|e| TransportError::Connect {
                node: opts.node.clone(),
                destination: format!("{}@{}:{}", opts.user, opts.address, opts.port),
                detail: format!("cannot open the channel that keeps the connection up: {e}"),
            })?;
        Ok(Self::with(opts, session, keepalive, registered))
    }

    fn with(
        opts: SshOptions,
        session: Arc<Session>,
        keepalive: Keeper,
        registered: Option<Registered>,
    ) -> SshTransport {
        SshTransport {
            opts,
            keepalive: Some(Arc::new(tokio::sync::Mutex::new(keepalive))),
            session,
            sessions: Arc::new(tokio::sync::Semaphore::new(SESSIONS)),
            registered,
        }
    }

    /// The control socket of this node's master connection (`ssh -S`).
    pub fn control_socket(&self) -> &Path {
        self.session.control_socket()
    }

    fn command(&self, launch: &crate::Launch<'_>) -> openssh::OwningCommand<Arc<Session>> {
        let program = if self.opts.sudo { "sudo" } else { "sh" };
        let mut cmd = Session::to_command(Arc::clone(&self.session), program);
        if self.opts.sudo {
            cmd.arg("-n").arg("sh");
        }
        cmd.arg("-c").arg(launch.body).arg("kubeforge");
        for a in launch.args.iter() {
            cmd.arg(a);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Closes the master connection (when no command holds it any more).
    pub async fn close(self) {
        let SshTransport {
            keepalive,
            session,
            registered,
            ..
        } = self;
        drop(keepalive);
        if registered.is_none() {
            // Kept: it closes by itself once unused for its idle time.
            return;
        }
        if let Ok(session) = Arc::try_unwrap(session) {
            let _ = session.close().await;
        }
    }
}

/// How long to wait before each new try when the node's sshd refused to
/// open a session on the master connection: the command never started,
/// so it is tried again. sshd counts a session until the channel's close
/// reaches it, which can come after ssh reported the command's end.
const REFUSALS: [Duration; 4] = [
    Duration::from_millis(50),
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_secs(1),
];

/// How one try of a command ended when it did not run to its end.
enum Attempt {
    /// sshd refused the session: the command never started.
    Refused(String),
    Failed(String),
}

/// Whether the master's answer (or ssh's own message) says the session
/// was never opened (sshd's `MaxSessions`: "Session open refused by
/// peer"), as opposed to a command that ran and was cut off.
fn session_refused(stderr: &str) -> bool {
    stderr.contains("Session open refused by peer") || stderr.contains("session request failed")
}

impl SshTransport {
    /// Opens the session of `script` (its stderr discarded when `quiet`),
    /// and writes what its launch puts ahead on its stdin
    /// ([`Script::launch`]).
    async fn spawn(
        &self,
        script: &Script<'_>,
        quiet: bool,
    ) -> Result<openssh::Child<Arc<Session>>, Attempt> {
        let launch = script.launch();
        let mut cmd = self.command(&launch);
        if quiet {
            cmd.stderr(Stdio::null());
        }
        let mut child = cmd.spawn().await.map_err(|e| {
            let e = error_chain(&e);
            if session_refused(&e) {
                Attempt::Refused(e)
            } else {
                Attempt::Failed(e)
            }
        })?;
        if let Some(stdin) = child.stdin().as_mut().filter(|_| !launch.ahead.is_empty()) {
            stdin
                .write_all(&launch.ahead)
                .await
                .map_err(|e| Attempt::Failed(format!("sending the script on stdin: {e}")))?;
        }
        Ok(child)
    }

    /// `attempt` again, after each pause of [`REFUSALS`], while sshd
    /// refuses its session (the command never started); then what it
    /// gave, or why it failed.
    async fn unless_refused<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, String>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        let mut refusals = 0;
        loop {
            match attempt().await {
                Err(Attempt::Refused(why)) if refusals < REFUSALS.len() => {
                    tracing::info!(node = %self.opts.node, what, "{why}; opening the session again");
                    tokio::time::sleep(REFUSALS[refusals]).await;
                    refusals += 1;
                }
                Err(Attempt::Refused(why) | Attempt::Failed(why)) => return Err(why),
                Ok(v) => return Ok(v),
            }
        }
    }

    /// One try of `script`: stdin written while stdout and stderr are read.
    async fn run_once(&self, script: &Script<'_>) -> Result<Output, Attempt> {
        let mut child = self.spawn(script, false).await?;
        let stdin = child.stdin().take();
        let stdout = child.stdout().take();
        let stderr = child.stderr().take();
        let write = async {
            if let Some(mut stdin) = stdin {
                let input = script.stdin.clone().unwrap_or_default();
                let _ = stdin.write_all(&input).await;
                let _ = stdin.shutdown().await;
            }
        };
        let ((), stdout, stderr) = tokio::join!(write, read_all(stdout), read_all(stderr));
        let e = match child.wait().await {
            Ok(status) => {
                return Ok(Output {
                    status: status.code().unwrap_or(-1),
                    stdout,
                    stderr,
                })
            }
            Err(e) => error_chain(&e),
        };
        let said = String::from_utf8_lossy(&stderr);
        let said = said.trim();
        Err(if session_refused(said) {
            Attempt::Refused(format!("{e}: {said}"))
        } else if said.is_empty() {
            Attempt::Failed(e)
        } else {
            Attempt::Failed(format!("{e} (stderr: {said})"))
        })
    }
}

/// Everything `r` yields until its end (nothing when there is no `r`).
async fn read_all<R: tokio::io::AsyncRead + Unpin>(r: Option<R>) -> Vec<u8> {
    let mut v = Vec::new();
    if let Some(mut r) = r {
        let _ = r.read_to_end(&mut v).await;
    }
    v
}

/// The value of ssh_config's `UserKnownHostsFile` for several files: each
/// path made absolute and double-quoted (ssh splits the value into words
/// like a config line), with `\\` and `"` escaped by a backslash and `%`
/// doubled (ssh expands `%` tokens in it). ssh also expands `${NAME}`
/// there, with no way to escape it, and a line ends at a newline: a path
/// containing either is refused with what to change.
fn known_hosts_files(files: &[PathBuf]) -> Result<OsString, String> {
    let mut value = Vec::new();
    for file in files {
        let path = std::path::absolute(file).map_err(|e| {
            format!(
                "cannot make the known-hosts path {} absolute: {e}",
                file.display()
            )
        })?;
        let bytes = path.as_os_str().as_bytes();
        if bytes.windows(2).any(|w| w == b"${") || bytes.iter().any(|&c| c == b'\n' || c == b'\r') {
            return Err(format!(
                "the known-hosts path {} contains `${{` or a line break, which ssh cannot read in UserKnownHostsFile; use a state directory without them",
                path.display()
            ));
        }
        if !value.is_empty() {
            value.push(b' ');
        }
        value.push(b'"');
        for &c in bytes {
            match c {
                b'\\' | b'"' => value.extend_from_slice(&[b'\\', c]),
                b'%' => value.extend_from_slice(b"%%"),
                _ => value.push(c),
            }
        }
        value.push(b'"');
    }
    Ok(OsString::from_vec(value))
}

fn linger() -> ControlPersist {
    idle_for(MASTER_LINGER)
}

fn idle_for(d: Duration) -> ControlPersist {
    match NonZeroUsize::new(usize::try_from(d.as_secs()).unwrap_or(usize::MAX)) {
        Some(secs) => ControlPersist::IdleFor(secs),
        None => ControlPersist::ClosedAfterInitialConnection,
    }
}

/// Whether a control socket made in `dir` (`.ssh-connectionXXXXXX/master`
/// inside it) fits a Unix socket's path (108 bytes with its final NUL);
/// else kept masters live in openssh's default control directory.
fn fits_socket(dir: &Path) -> bool {
    std::path::absolute(dir)
        .is_ok_and(|d| d.as_os_str().len() + "/.ssh-connectionXXXXXX/master".len() < 108)
}

/// The record of the kept master for `opts`: the node's name and a hash
/// of everything that decides where and how ssh connects, so that a
/// changed address, user, port, key or configuration never reuses a
/// connection made another way.
fn record_file(opts: &SshOptions, keep: &Keep) -> PathBuf {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for part in [
        opts.user.as_bytes(),
        opts.address.as_bytes(),
        opts.port.to_string().as_bytes(),
        opts.key
            .as_deref()
            .map_or(&b""[..], |k| k.as_os_str().as_bytes()),
        opts.config_file
            .as_deref()
            .map_or(&b""[..], |c| c.as_os_str().as_bytes()),
        opts.known_hosts.as_os_str().as_bytes(),
    ] {
        h.update(part);
        h.update([0]);
    }
    let hash: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    keep.dir.join(format!("{}-{hash}", opts.node))
}

/// Records the kept master's control socket (and log) for later
/// processes: written to a temporary file, then renamed. A record that
/// cannot be written only means the next process connects anew.
fn record(opts: &SshOptions, keep: &Keep, ctl: &Path, log: Option<&Path>) {
    use std::io::Write as _;
    let file = record_file(opts, keep);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&keep.dir)?;
        let mut t = tempfile::NamedTempFile::new_in(&keep.dir)?;
        t.write_all(ctl.as_os_str().as_bytes())?;
        t.write_all(b"\n")?;
        if let Some(log) = log {
            t.write_all(log.as_os_str().as_bytes())?;
        }
        t.persist(&file).map_err(|e| e.error)?;
        Ok(())
    };
    if let Err(e) = write() {
        tracing::warn!(
            node = opts.node,
            "cannot record the kept SSH connection in {}: {e}",
            file.display()
        );
    }
}

/// The idle channel ([`KEEPER`]) that keeps the master of `session` in
/// use (its stdin and stdout piped).
async fn keepalive(session: &Arc<Session>) -> Result<Channel, openssh::Error> {
    let mut c = Session::to_command(Arc::clone(session), "sh");
    c.arg("-c")
        .arg(KEEPER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    c.spawn().await
}

/// The kept master recorded for `opts`, when it is still up and answers,
/// with its keepalive channel: the channel's [`KEEPER`] answering an
/// empty line is the proof (one session on the node, not a probe and then the channel);
/// else its record is dropped (with the master, and the directory openssh
/// made for it) and None.
async fn reuse(opts: &SshOptions, keep: &Keep) -> Option<(Arc<Session>, Keeper)> {
    let file = record_file(opts, keep);
    let text = std::fs::read(&file).ok()?;
    let mut lines = text.split(|&b| b == b'\n');
    let ctl = PathBuf::from(OsString::from_vec(lines.next()?.to_vec()));
    let log = lines
        .next()
        .filter(|l| !l.is_empty())
        .map(|l| PathBuf::from(OsString::from_vec(l.to_vec())).into_boxed_path());
    if ctl.exists() {
        let session = Arc::new(Session::resume_mux(ctl.clone().into_boxed_path(), log));
        let probe = async {
            let mut k = Keeper::new(keepalive(&session).await.ok()?)?;
            k.ask("\n").await.ok()?;
            Some(k)
        };
        if let Ok(Some(c)) = tokio::time::timeout(REUSE_TIMEOUT, probe).await {
            return Some((session, c));
        }
        exit_master(&ctl).await;
    }
    let _ = std::fs::remove_file(&file);
    // What openssh made for it (socket and log), when it is in `keep.dir`
    // (a master in openssh's default directory leaves its own there).
    if let Some(dir) = ctl.parent().filter(|d| {
        d.parent() == Some(keep.dir.as_path())
            && d.file_name()
                .is_some_and(|n| n.as_bytes().starts_with(b".ssh-connection"))
    }) {
        let _ = std::fs::remove_dir_all(dir);
    }
    None
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
    /// Its session's place, free again once it is released.
    _permit: tokio::sync::OwnedSemaphorePermit,
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
        // Waiting for a free session does not count against the timeout.
        let _permit = self
            .sessions
            .acquire()
            .await
            .map_err(|e| err(e.to_string()))?;
        let run = async {
            self.unless_refused(script.what, || self.run_once(&script))
                .await
                .map_err(err)
        };
        match tokio::time::timeout(script.timeout, run).await {
            Err(_) => Err(TransportError::Timeout {
                node: self.opts.node.clone(),
                what: script.what.to_string(),
                secs: script.timeout.as_secs(),
            }),
            Ok(r) => r,
        }
    }

    /// Held by the shell of the idle channel that keeps the connection up
    /// (`KEEPER`) when this transport runs as root (else, under sudo, by a
    /// session of its own).
    async fn lock(&self, path: &str, owner: &str) -> Result<Box<dyn Held>, TransportError> {
        let Some(keeper) = self.keepalive.as_ref().filter(|_| !self.opts.sudo) else {
            return ops::lock_in_session(self, path, owner).await;
        };
        // One line each: a line break in the owner would be read as a
        // request.
        let owner = owner.replace(['\n', '\r'], " ");
        let first = keeper
            .lock()
            .await
            .ask(&format!("lock\n{path}\n{owner}\n"))
            .await
            .map_err(|detail| TransportError::Run {
                node: self.opts.node.clone(),
                what: "take the apply lock".into(),
                detail,
            })?;
        let held = Box::new(KeeperHeld {
            keeper: Arc::downgrade(keeper),
            released: first != "locked",
        });
        ops::locked(self.node(), path, first, held).await
    }

    async fn hold(&self, script: Script<'_>) -> Result<(String, Box<dyn Held>), TransportError> {
        let err = |detail: String| TransportError::Run {
            node: self.opts.node.clone(),
            what: script.what.to_string(),
            detail,
        };
        let permit = Arc::clone(&self.sessions)
            .acquire_owned()
            .await
            .map_err(|e| err(e.to_string()))?;
        let mut child = self
            .unless_refused(script.what, || self.spawn(&script, true))
            .await
            .map_err(err)?;
        let first = ops::first_line(child.stdout().take(), script.timeout)
            .await
            .map_err(err)?;
        Ok((
            first,
            Box::new(SshHeld {
                child,
                _permit: permit,
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::known_hosts_files;
    use std::path::PathBuf;

    fn option(files: &[&str]) -> Result<String, String> {
        let files: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
        known_hosts_files(&files).map(|v| v.to_string_lossy().into_owned())
    }

    #[test]
    fn every_known_hosts_path_is_quoted() {
        assert_eq!(
            option(&["/var/lib/kube forge/known_hosts", "/root/.ssh/known_hosts"]).as_deref(),
            Ok(r#""/var/lib/kube forge/known_hosts" "/root/.ssh/known_hosts""#)
        );
    }

    #[test]
    fn quotes_backslashes_and_percents_are_escaped() {
        assert_eq!(
            option(&[r#"/s/a "b" c\d 100%/known_hosts"#]).as_deref(),
            Ok(r#""/s/a \"b\" c\\d 100%%/known_hosts""#)
        );
    }

    #[test]
    fn a_relative_path_is_made_absolute() {
        let cwd = std::env::current_dir().expect("cwd");
        let got = option(&["state/known_hosts"]).expect("quoted");
        assert_eq!(got, format!("\"{}/state/known_hosts\"", cwd.display()));
    }

    #[test]
    fn what_ssh_would_expand_is_refused_with_advice() {
        let err = option(&["/s/${HOME}/known_hosts"]).expect_err("refused");
        assert!(err.contains("/s/${HOME}/known_hosts"), "{err}");
        assert!(err.contains("use a state directory without"), "{err}");
        assert!(option(&["/s/a\nb/known_hosts"]).is_err());
        // A lone `$` is not expanded.
        assert_eq!(option(&["/s/$x"]).as_deref(), Ok(r#""/s/$x""#));
    }
}
