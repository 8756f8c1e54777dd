//! Shared harness of kubeforge's integration tests: render an inventory
//! into temporary directories, find the real programs, isolate them in
//! network namespaces the test creates itself, keep every process they
//! start on a leash, and read rendered systemd units the way systemd does.
//!
//! [`lab`] boots whole machines instead: systemd-nspawn nodes reachable
//! over SSH, for the installer itself.
//!
//! Tests that need something this machine lacks (a program, root) are
//! skipped with a notice, or fail when the `CI` environment variable is set
//! so that a CI job cannot pass by skipping.

// Diagnostics of a failing or skipped test go to stderr, like a test's own.
#![allow(clippy::print_stderr)]

pub mod inventory_fuzz;
pub mod lab;
pub mod oci;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use kubeforge_inventory::Cluster;
use kubeforge_render::Rendered;
use tempfile::TempDir;

// --- skipping ----------------------------------------------------------------

/// True when running under CI: `CI` is set to anything but "", "0" or "false".
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// Reports that a test cannot run here: a panic under CI, else a notice on
/// stderr. The caller returns right after.
pub fn skip(test: &str, reason: &str) {
    if in_ci() {
        panic!("{test}: {reason} (CI is set, so this is a failure, not a skip)");
    }
    eprintln!("note: {test} SKIPPED: {reason}");
}

/// `require!(test, expr, "why {}", ...)`: the `Some` value of `expr`, or
/// [`skip`] with the message and return from the calling test.
#[macro_export]
macro_rules! require {
    ($test:expr, $opt:expr, $($msg:tt)+) => {
        match $opt {
            Some(v) => v,
            None => {
                $crate::skip($test, &format!($($msg)+));
                return;
            }
        }
    };
}

// --- finding programs --------------------------------------------------------

fn executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds program `name`: in the directory named by the environment variable
/// `dir_var` when that is set (and only there: a set variable that points to
/// a directory without the program is a configuration error and panics),
/// else on `PATH`.
pub fn find_tool(name: &str, dir_var: Option<&str>) -> Option<PathBuf> {
    if let Some(var) = dir_var {
        if let Some(dir) = std::env::var_os(var).filter(|d| !d.is_empty()) {
            let path = Path::new(&dir).join(name);
            if executable(&path) {
                return Some(path);
            }
            panic!(
                "{var}={} holds no executable {name}; point {var} at the directory holding it or unset it to search PATH",
                Path::new(&dir).display()
            );
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| executable(p))
}

/// Checks that this process may create network namespaces: effective uid 0
/// with CAP_SYS_ADMIN and CAP_NET_ADMIN. Returns why not.
pub fn root_privileges() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    let euid = field("Uid:");
    let euid = euid.split_whitespace().nth(1).unwrap_or("?");
    if euid != "0" {
        return Err(format!(
            "needs root to create network namespaces (effective uid is {euid})"
        ));
    }
    let caps = u64::from_str_radix(&field("CapEff:"), 16).unwrap_or(0);
    const CAP_NET_ADMIN: u64 = 1 << 12;
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    if caps & (CAP_NET_ADMIN | CAP_SYS_ADMIN) != CAP_NET_ADMIN | CAP_SYS_ADMIN {
        return Err(format!(
            "runs as root but without CAP_SYS_ADMIN and CAP_NET_ADMIN (CapEff {caps:016x}), so it cannot create network namespaces"
        ));
    }
    Ok(())
}

// --- running commands --------------------------------------------------------

/// What a finished (or timed-out) command did.
#[derive(Debug)]
pub struct Run {
    /// `None` when the command was killed at its timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub command: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The command, how it ended and its output, for assertion messages.
    pub fn describe(&self) -> String {
        let how = match self.status {
            Some(s) => s.to_string(),
            None => "killed at its timeout".into(),
        };
        format!(
            "$ {}\n{how}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

fn describe_command(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// How a command ended under [`capture`].
pub struct Captured {
    pub status: ExitStatus,
    /// It was killed at its timeout (`status` then says killed).
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `cmd` with stdin closed, reading stdout and stderr as it goes
/// (so a chatty command never blocks), and kills it after `timeout`.
pub fn capture(cmd: &mut Command, timeout: Duration) -> std::io::Result<Captured> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            timed_out = true;
            break child.wait()?;
        }
        thread::sleep(Duration::from_millis(10));
    };
    Ok(Captured {
        status,
        timed_out,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Runs `cmd` to completion with stdin closed, capturing its output; kills
/// it after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Run, String> {
    let command = describe_command(cmd);
    let c = capture(cmd, timeout).map_err(|e| format!("running `{command}`: {e}"))?;
    Ok(Run {
        status: (!c.timed_out).then_some(c.status),
        stdout: String::from_utf8_lossy(&c.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&c.stderr).into_owned(),
        command,
    })
}

/// Runs `cmd` and fails unless it succeeds.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<Run, String> {
    let r = run(cmd, timeout)?;
    if r.success() {
        Ok(r)
    } else {
        Err(r.describe())
    }
}

/// The last `lines` lines of a file (all of it when shorter), reading at
/// most its last 64 KiB.
pub fn tail(path: &Path, lines: usize) -> String {
    let read = || -> io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A position in a growing log file, to look at what was appended since.
pub struct LogCursor {
    path: PathBuf,
    offset: u64,
}

impl LogCursor {
    /// The current end of `path` (0 when it does not exist yet).
    pub fn at_end(path: &Path) -> LogCursor {
        LogCursor {
            path: path.into(),
            offset: std::fs::metadata(path).map_or(0, |m| m.len()),
        }
    }

    /// What was appended since the cursor was taken.
    pub fn appended(&self) -> String {
        let read = || -> io::Result<String> {
            let mut f = File::open(&self.path)?;
            f.seek(SeekFrom::Start(self.offset))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf).into_owned())
        };
        read().unwrap_or_default()
    }

    /// Waits up to `timeout` for an appended line satisfying `pred`.
    pub fn wait_for_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.appended().lines().find(|l| pred(l)) {
                return Some(l.to_string());
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

// --- processes ---------------------------------------------------------------

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Long-running processes of a test, each writing stdout and stderr to its
/// own log file. On drop every one is killed and reaped; when the drop
/// happens during a panic, the tail of each log is printed first, like a
/// journal.
#[derive(Default)]
pub struct Procs {
    procs: Vec<Proc>,
}

impl Procs {
    /// Lines of each log printed when a test fails.
    pub const JOURNAL_LINES: usize = 40;

    pub fn new() -> Procs {
        Procs::default()
    }

    /// Starts `cmd` as `name`, its output appended to `log`.
    pub fn spawn(&mut self, name: &str, mut cmd: Command, log: &Path) -> Result<(), String> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let file2 = file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let command = describe_command(&cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .map_err(|e| format!("cannot start {name} (`{command}`): {e}"))?;
        self.procs.push(Proc {
            name: name.into(),
            child,
            log: log.into(),
        });
        Ok(())
    }

    /// Fails when a process has exited.
    pub fn check_running(&mut self) -> Result<(), String> {
        for p in &mut self.procs {
            match p.child.try_wait() {
                Ok(None) => {}
                Ok(Some(s)) => return Err(format!("{} exited early: {s}", p.name)),
                Err(e) => return Err(format!("{}: {e}", p.name)),
            }
        }
        Ok(())
    }

    /// The tail of every process's log.
    pub fn journal(&self, lines: usize) -> String {
        let mut s = String::new();
        for p in &self.procs {
            s.push_str(&format!(
                "----- {}: last {lines} lines of its output -----\n{}\n",
                p.name,
                tail(&p.log, lines)
            ));
        }
        s
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.journal(Procs::JOURNAL_LINES));
        }
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

// --- network namespaces ------------------------------------------------------

/// A network namespace this test created; deleted on drop (after killing
/// whatever still runs in it), also when the test panics.
pub struct NetNs {
    name: String,
    ip: PathBuf,
}

impl NetNs {
    /// Creates namespace `name` with its loopback up.
    pub fn create(ip: &Path, name: &str) -> Result<NetNs, String> {
        // A namespace left by a killed earlier run with the same pid.
        let _ = Command::new(ip)
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        run_ok(
            Command::new(ip).args(["netns", "add", name]),
            Duration::from_secs(10),
        )?;
        let ns = NetNs {
            name: name.into(),
            ip: ip.into(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        run_ok(
            Command::new(&self.ip).arg("-n").arg(&self.name).args(args),
            Duration::from_secs(10),
        )
        .map(|_| ())
    }

    /// A command running `program` inside the namespace
    /// (`ip netns exec <ns> <program>`; `ip` execs it, so the child's pid is
    /// the program's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(&self.ip);
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Kills every process still inside the namespace.
    pub fn kill_all(&self) {
        let Ok(out) = Command::new(&self.ip)
            .args(["netns", "pids", &self.name])
            .stderr(Stdio::null())
            .output()
        else {
            return;
        };
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill")
                .args(["-KILL", pid])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.kill_all();
        match Command::new(&self.ip)
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: cannot delete network namespace {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!(
                "warning: cannot delete network namespace {}: {e}",
                self.name
            ),
        }
    }
}

/// A private LAN: one namespace per host, each with its own loopback and an
/// `eth0` holding the host's address, all plugged into a bridge in a hub
/// namespace, which also holds an address of its own (the "control
/// machine") from which clients can reach every host. Nothing leaves these
/// namespaces.
pub struct Lan {
    // Dropped in this order: hosts first, then the hub with the bridge.
    hosts: Vec<(String, NetNs)>,
    hub: NetNs,
}

impl Lan {
    /// Creates the hub `prefix` and one namespace `prefix-<host>` per host.
    /// Addresses are `a.b.c.d/len`.
    pub fn create(
        ip: &Path,
        prefix: &str,
        hub_address: &str,
        hosts: &[(&str, String)],
    ) -> Result<Lan, String> {
        let hub = NetNs::create(ip, prefix)?;
        hub.ip(&["link", "add", "br0", "type", "bridge"])?;
        hub.ip(&["link", "set", "br0", "up"])?;
        hub.ip(&["addr", "add", hub_address, "dev", "br0"])?;
        let mut lan = Lan {
            hosts: Vec::new(),
            hub,
        };
        for (i, (host, address)) in hosts.iter().enumerate() {
            let ns = NetNs::create(ip, &format!("{prefix}-{host}"))?;
            // Interface names have at most 15 bytes: number the hub's ends.
            let port = format!("kf-port{i}");
            lan.hub.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ])?;
            lan.hub.ip(&["link", "set", &port, "master", "br0"])?;
            lan.hub.ip(&["link", "set", &port, "up"])?;
            ns.ip(&["addr", "add", address, "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            lan.hosts.push(((*host).to_string(), ns));
        }
        Ok(lan)
    }

    pub fn hub(&self) -> &NetNs {
        &self.hub
    }

    /// The namespace of `host`; panics for a host the LAN was not made with.
    pub fn host(&self, host: &str) -> &NetNs {
        match self.hosts.iter().find(|(h, _)| h == host) {
            Some((_, ns)) => ns,
            None => panic!("host {host} is not on this LAN"),
        }
    }
}

// --- rendering ---------------------------------------------------------------

/// An inventory file of the repository, e.g. `inventory("ha.toml")`.
pub fn inventory(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("inventories")
        .join(name)
}

/// An inventory rendered the way `kubeforge render` does it, into
/// temporary directories that live as long as this value.
pub struct RenderedCluster {
    pub cluster: Cluster,
    pub rendered: Rendered,
    /// The state directory: `pki/` holds every certificate and key.
    pub state: TempDir,
    /// The render output: `<node>/<absolute path on the node>`.
    pub out: TempDir,
}

impl RenderedCluster {
    /// Where `path` (absolute, as on the node) of `node` was written.
    pub fn node_path(&self, node: &str, path: &str) -> PathBuf {
        self.out
            .path()
            .join(node)
            .join(path.trim_start_matches('/'))
    }

    /// Reads `path` (absolute, as on the node) of `node`.
    pub fn read_node_file(&self, node: &str, path: &str) -> Result<String, String> {
        let p = self.node_path(node, path);
        std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
    }

    /// A file of the state directory's `pki/`, e.g. `admin.crt`.
    pub fn state_pki(&self, rel: &str) -> PathBuf {
        self.state.path().join("pki").join(rel)
    }
}

/// Loads `inventory`, issues its PKI into a fresh state directory, renders
/// every node and writes the trees into a fresh output directory.
pub fn render_inventory(inventory: &Path) -> Result<RenderedCluster, String> {
    let loaded = kubeforge_inventory::load(inventory)
        .map_err(|e| format!("{}: {e}", inventory.display()))?;
    let cluster = loaded.cluster;
    let state = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = tempfile::tempdir().map_err(|e| e.to_string())?;
    let prepared = kubeforge_render::prepare(state.path(), &cluster, &Default::default())
        .map_err(|e| format!("render: {e}"))?;
    prepared
        .persist(state.path())
        .map_err(|e| format!("state: {e}"))?;
    let rendered = prepared.rendered;
    kubeforge_render::write_tree(&rendered, out.path()).map_err(|e| format!("write: {e}"))?;
    Ok(RenderedCluster {
        cluster,
        rendered,
        state,
        out,
    })
}

// --- systemd units and environment files ------------------------------------

/// The values of `key` in `[section]` of a unit file, in order, with
/// backslash-continued lines joined as systemd joins them.
pub fn unit_values(unit: &str, section: &str, key: &str) -> Vec<String> {
    let mut values = Vec::new();
    let mut current_section = String::new();
    let mut logical = String::new();
    let mut continuing = false;
    let mut take = |line: &str, current: &str| {
        if current != section {
            return;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == key {
                values.push(v.trim().to_string());
            }
        }
    };
    for raw in unit.lines() {
        let line = raw.trim();
        if continuing && (line.starts_with('#') || line.starts_with(';')) {
            continue;
        }
        if !continuing {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if line.starts_with('[') && line.ends_with(']') {
                current_section = line[1..line.len() - 1].to_string();
                continue;
            }
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                logical.push_str(head);
                logical.push(' ');
                continuing = true;
            }
            None => {
                logical.push_str(line);
                take(&logical, &current_section);
                logical.clear();
                continuing = false;
            }
        }
    }
    if continuing {
        take(&logical, &current_section);
    }
    values
}

/// Splits a systemd command line into words: whitespace separates words,
/// single and double quotes group, C escapes are decoded and `%%` is `%`.
/// Other specifiers and `$VAR` expansion are refused, since the test could
/// not reproduce what systemd would make of them.
pub fn split_command_line(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while let Some(c) = chars.next() {
            match c {
                '"' | '\'' if quote == Some(c) => quote = None,
                '"' | '\'' if quote.is_none() => quote = Some(c),
                c if c.is_whitespace() && quote.is_none() => break,
                '\\' => {
                    let e = chars
                        .next()
                        .ok_or_else(|| format!("trailing backslash in `{line}`"))?;
                    word.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        's' => ' ',
                        '\\' | '"' | '\'' | ';' | ' ' => e,
                        _ => return Err(format!("unsupported escape \\{e} in `{line}`")),
                    });
                }
                '%' => match chars.next() {
                    Some('%') => word.push('%'),
                    other => {
                        return Err(format!(
                            "unsupported specifier %{} in `{line}`",
                            other.unwrap_or(' ')
                        ))
                    }
                },
                '$' => match chars.peek() {
                    Some('$') => {
                        chars.next();
                        word.push('$');
                    }
                    Some(n) if *n == '{' || n.is_ascii_alphabetic() || *n == '_' => {
                        return Err(format!("unsupported variable expansion in `{line}`"))
                    }
                    _ => word.push('$'),
                },
                c => word.push(c),
            }
        }
        if let Some(q) = quote {
            return Err(format!("unterminated {q} quote in `{line}`"));
        }
        words.push(word);
    }
    Ok(words)
}

/// The argv of a unit's single `ExecStart=` in `[Service]`, with the
/// `-`, `:`, `+` and `!` prefixes removed (`@` is refused).
pub fn exec_start_argv(unit: &str) -> Result<Vec<String>, String> {
    let values = unit_values(unit, "Service", "ExecStart");
    let [value] = values.as_slice() else {
        return Err(format!(
            "expected exactly one ExecStart= in [Service], found {}",
            values.len()
        ));
    };
    let mut argv = split_command_line(value)?;
    let Some(first) = argv.first_mut() else {
        return Err("ExecStart= is empty".into());
    };
    let prefixes = first.len() - first.trim_start_matches(['-', ':', '+', '!', '@']).len();
    if first[..prefixes].contains('@') {
        return Err("ExecStart=@ (a separate argv[0]) is not supported".into());
    }
    first.drain(..prefixes);
    Ok(argv)
}

/// The `EnvironmentFile=` paths of `[Service]`, without the `-` prefix.
pub fn environment_files(unit: &str) -> Vec<String> {
    unit_values(unit, "Service", "EnvironmentFile")
        .into_iter()
        .map(|v| v.trim_start_matches('-').to_string())
        .collect()
}

/// Parses an `EnvironmentFile=` file into `(key, value)` pairs: `#` and `;`
/// start comments, values may be wrapped in single or double quotes.
pub fn parse_environment_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: no `=` in `{line}`", n + 1));
        };
        let key = key.trim();
        let valid = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("line {}: invalid variable name `{key}`", n + 1));
        }
        let value = value.trim();
        let value = match value.chars().next() {
            Some(q @ ('"' | '\'')) if value.len() >= 2 && value.ends_with(q) => {
                value[1..value.len() - 1].to_string()
            }
            _ => value.to_string(),
        };
        pairs.push((key.to_string(), value));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const UNIT: &str = "# comment\n[Unit]\nDescription=x\n\n[Service]\nType=notify\nEnvironmentFile=-/etc/x.env\nExecStart=-/usr/bin/prog \\\n  --a=1 \\\n  # a comment inside\n  --b=\"two words\" \\\n  --c=100%% 'q\\'s'\nRestart=on-failure\n[Install]\nExecStart=/not/this\n";

    #[test]
    fn exec_start_joins_continuations_and_unquotes() {
        assert_eq!(
            exec_start_argv(UNIT).unwrap(),
            ["/usr/bin/prog", "--a=1", "--b=two words", "--c=100%", "q's"]
        );
        assert_eq!(environment_files(UNIT), ["/etc/x.env"]);
        assert_eq!(unit_values(UNIT, "Service", "Restart"), ["on-failure"]);
    }

    #[test]
    fn exec_start_refuses_what_it_cannot_reproduce() {
        for bad in [
            "[Service]\nExecStart=/bin/x $FOO\n",
            "[Service]\nExecStart=/bin/x %n\n",
            "[Service]\nExecStart=@/bin/x y\n",
            "[Service]\nExecStart=/bin/x \"open\n",
            "[Service]\n",
        ] {
            assert!(exec_start_argv(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn environment_file() {
        let env = parse_environment_file("# c\n; c\nA=1\n B = \"x y\" \nC='z'\nD=\n").unwrap();
        let want = [("A", "1"), ("B", "x y"), ("C", "z"), ("D", "")];
        assert_eq!(
            env,
            want.map(|(k, v)| (k.to_string(), v.to_string())).to_vec()
        );
        assert!(parse_environment_file("no equals\n").is_err());
        assert!(parse_environment_file("1A=x\n").is_err());
    }
}
