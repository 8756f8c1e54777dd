//! The stand-in run the way kubeforge will run it: under the real binaries'
//! names, with the command lines of the units rendered for cp1 (control
//! plane) and worker1 (kubelet, kube-proxy) of `inventories/single.toml`
//! (only paths, addresses and ports moved into the test's temporary
//! directory and onto loopback), with the certificates kubeforge issued,
//! against a real etcd started from the rendered `etcd.service`. The
//! kubelet's container runtime is a unix socket the test listens on.
//!
//! Network: loopback only. Every address the rendered units name is
//! rewritten to 127.0.0.1 and checked to be gone before anything starts.
//!
//! Needs `etcd` (from `KUBEFORGE_ETCD_DIR`, default
//! `target/test-tools/etcd/usr/bin`, as tests/setup.sh installs it) and
//! `curl`; the etcd test is skipped with a notice without them, and fails
//! when the `CI` environment variable is set.
//!
//! The logs of the processes a test started are printed when it fails, and
//! always with `KUBEFORGE_STANDIN_TEST_LOGS=1` (and `--nocapture`).

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

const NODE: &str = "cp1";
const WORKER: &str = "worker1";
const STANDIN: &str = env!("CARGO_BIN_EXE_kubeforge-standin");

// --- skipping -----------------------------------------------------------------

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// A notice (or, under CI, a failure) that `test` cannot run here.
fn skip(test: &str, why: &str) {
    if in_ci() {
        panic!("{test}: {why} (CI is set, so this is a failure, not a skip)");
    }
    eprintln!("note: {test} SKIPPED: {why}");
}

fn executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn etcd_dir() -> PathBuf {
    match std::env::var_os("KUBEFORGE_ETCD_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-tools/etcd/usr/bin"),
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| executable(p))
}

// --- rendering ----------------------------------------------------------------

/// `inventories/single.toml` rendered as `kubeforge render` would.
struct Rendered {
    /// Holds `state/` (the PKI), `out/` (the node trees) and run files.
    dir: TempDir,
    /// The addresses of every node (none may be left in what runs).
    node_addresses: Vec<String>,
    /// The addon objects: (API path, JSON body of the server-side apply).
    addons: Vec<(String, String)>,
}

impl Rendered {
    fn new() -> Rendered {
        let inventory = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../inventories/single.toml");
        let dir = tempfile::tempdir().unwrap();
        let cluster = kubeforge_inventory::load(&inventory).unwrap().cluster;
        let state = dir.path().join("state");
        let out = dir.path().join("out");
        std::fs::create_dir_all(&state).unwrap();
        let prepared = kubeforge_render::prepare(&state, &cluster, &Default::default()).unwrap();
        prepared.persist(&state).unwrap();
        let rendered = prepared.rendered;
        kubeforge_render::write_tree(&rendered, &out).unwrap();
        assert!(rendered.nodes.iter().any(|n| n.name == NODE));
        assert!(rendered.nodes.iter().any(|n| n.name == WORKER));
        let node_addresses = rendered.nodes.iter().map(|n| n.address.clone()).collect();
        let addons = rendered
            .addons
            .iter()
            .flat_map(|a| &a.objects)
            .map(|o| (o.path.clone(), o.body.clone()))
            .collect();
        Rendered {
            dir,
            node_addresses,
            addons,
        }
    }

    fn tmp(&self) -> &Path {
        self.dir.path()
    }

    /// Where `path` (absolute, as on the node) of cp1 was written.
    fn node_path(&self, path: &str) -> PathBuf {
        self.path_on(NODE, path)
    }

    /// Where `path` (absolute, as on the node) of `node` was written.
    fn path_on(&self, node: &str, path: &str) -> PathBuf {
        self.tmp()
            .join("out")
            .join(node)
            .join(path.trim_start_matches('/'))
    }

    fn read(&self, path: &str) -> String {
        self.read_on(NODE, path)
    }

    fn read_on(&self, node: &str, path: &str) -> String {
        std::fs::read_to_string(self.path_on(node, path)).unwrap()
    }

    /// Replaces text in a rendered file of cp1.
    fn edit(&self, path: &str, from: &str, to: &str) {
        self.edit_on(NODE, path, from, to);
    }

    /// Replaces text in a rendered file of `node`.
    fn edit_on(&self, node: &str, path: &str, from: &str, to: &str) {
        let text = self.read_on(node, path);
        assert!(
            text.contains(from),
            "{node}:{path} does not contain {from:?}"
        );
        std::fs::write(self.path_on(node, path), text.replace(from, to)).unwrap();
    }

    /// Checks that a rendered file of `node` names no node address and no
    /// path outside the test's directory (after the test's edits).
    fn assert_file_relocated(&self, node: &str, path: &str) {
        let text = self.read_on(node, path);
        let tmp = self.tmp().display().to_string();
        for a in &self.node_addresses {
            assert!(
                !text.contains(a.as_str()),
                "{node}:{path} still names {a} (loopback only):\n{text}"
            );
        }
        for word in text.split_whitespace() {
            let word = word.trim_start_matches("unix://");
            if word.starts_with('/') {
                assert!(
                    word.starts_with(&tmp),
                    "{node}:{path} names {word}, outside the test"
                );
            }
        }
    }

    fn state_pki(&self, name: &str) -> PathBuf {
        self.tmp().join("state/pki").join(name)
    }

    /// The ExecStart argv of a rendered unit of cp1 with `/etc/kubernetes`
    /// and `/var/log/kubernetes` moved into the test's directory.
    fn argv(&self, unit: &str, program: &str) -> Vec<String> {
        self.argv_on(NODE, unit, program)
    }

    /// [`Rendered::argv`] of a unit of `node`.
    fn argv_on(&self, node: &str, unit: &str, program: &str) -> Vec<String> {
        let text = self.read_on(node, &format!("/etc/systemd/system/{unit}.service"));
        let mut argv = exec_start(&text);
        assert!(
            argv[0].ends_with(&format!("/{program}")),
            "{unit}: ExecStart runs {}",
            argv[0]
        );
        let etc = self.path_on(node, "/etc/kubernetes").display().to_string();
        let log = self.tmp().join("log").display().to_string();
        for a in &mut argv[1..] {
            *a = a
                .replace("/etc/kubernetes", &etc)
                .replace("/var/log/kubernetes", &log);
        }
        argv
    }
}

/// The words of `ExecStart=` of a unit, continuation lines joined (the
/// rendered units quote nothing).
fn exec_start(unit: &str) -> Vec<String> {
    let mut logical = String::new();
    let mut inside = false;
    for line in unit.lines() {
        let t = line.trim();
        if !inside {
            match t.strip_prefix("ExecStart=") {
                Some(rest) => {
                    inside = true;
                    logical.push_str(rest);
                }
                None => continue,
            }
        } else {
            logical.push_str(t);
        }
        match logical.strip_suffix('\\') {
            Some(head) => logical = format!("{head} "),
            None => break,
        }
    }
    logical.split_whitespace().map(String::from).collect()
}

/// Sets `--name=value` in `argv` (which must have it once).
fn set_flag(argv: &mut [String], name: &str, value: &str) {
    let prefix = format!("--{name}=");
    let hits: Vec<usize> = (1..argv.len())
        .filter(|&i| argv[i].starts_with(&prefix))
        .collect();
    assert_eq!(hits.len(), 1, "--{name} in {argv:?}");
    argv[hits[0]] = format!("{prefix}{value}");
}

/// Checks that nothing in `argv` still points at a node's address or at
/// a path outside the test's directory.
fn assert_relocated(argv: &[String], r: &Rendered) {
    let tmp = r.tmp().display().to_string();
    for a in &argv[1..] {
        for address in &r.node_addresses {
            assert!(
                !a.contains(address.as_str()),
                "{a} still names a node's address (loopback only)"
            );
        }
        if let Some((_, v)) = a.split_once('=') {
            for part in v.split(',') {
                if part.starts_with('/') {
                    assert!(part.starts_with(&tmp), "{a} names a path outside the test");
                }
            }
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The stand-in under a real binary's name, in `dir`: a symbolic link, not
/// a copy, since executing a freshly written file races with other tests'
/// forks that still hold it open for writing ("Text file busy").
fn install(dir: &Path, name: &str) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let path = bin.join(name);
    if !path.exists() {
        std::os::unix::fs::symlink(STANDIN, &path).unwrap();
    }
    path
}

// --- processes ----------------------------------------------------------------

/// A long-running child, its output in a log file; killed on drop, and its
/// log printed when the test fails.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let file = File::create(log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.into(),
            child,
            log: log.into(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Some(s) = self.child.try_wait().unwrap() {
            panic!("{} exited early ({s}):\n{}", self.name, self.log());
        }
    }

    /// Sends SIGTERM and waits for the exit.
    fn terminate(&mut self, within: Duration) -> ExitStatus {
        let pid = self.child.id().to_string();
        let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(st.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "{} ignored SIGTERM", self.name);
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() || std::env::var_os("KUBEFORGE_STANDIN_TEST_LOGS").is_some() {
            eprintln!("----- {} log -----\n{}", self.name, self.log());
        }
    }
}

/// Runs a command that should exit by itself within 20 s.
fn run_to_end(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not exit within 20 s");
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `curl --cacert ca` of an https URL on loopback (127.0.0.1, or a name
/// that a `--resolve name:port:127.0.0.1` flag sends there): (HTTP status,
/// body); status 0 when no HTTP answer came (the body is then curl's error).
fn curl(url: &str, ca: &Path, flags: &[&str]) -> (u16, String) {
    let resolved_to_loopback = flags.windows(2).any(|w| {
        w[0] == "--resolve"
            && w[1].ends_with(":127.0.0.1")
            && url.starts_with(&format!("https://{}/", w[1].trim_end_matches(":127.0.0.1")))
    });
    assert!(
        url.starts_with("https://127.0.0.1:") || resolved_to_loopback,
        "{url}: loopback only"
    );
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca)
        .args(flags)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "000"));
    match code.parse::<u16>() {
        Ok(c) if c != 0 => (c, body.to_string()),
        _ => (0, String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// Polls `f` until it returns Some, or panics after `within`.
fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for `READY=1` on a notify socket while `proc` runs.
fn wait_ready(sock: &UnixDatagram, proc: &mut Proc, within: Duration) {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 512];
    loop {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]);
            if msg.lines().any(|l| l == "READY=1") {
                return;
            }
        }
        proc.assert_running();
        assert!(
            Instant::now() < deadline,
            "{}: no READY=1 within {within:?}:\n{}",
            proc.name,
            proc.log()
        );
    }
}

// --- the tests ----------------------------------------------------------------

#[test]
fn unknown_flag_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["kube-apiserver", "kube-scheduler", "kubelet"] {
        let bin = install(dir.path(), name);
        let out = run_to_end(Command::new(&bin).arg("--no-such-flag=1"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains("unknown flag: --no-such-flag"),
            "{name}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("{name} (kubeforge stand-in): ")),
            "{name}: {stderr}"
        );
    }
    // A removed flag, and a bool given a separate value.
    let api = install(dir.path(), "kube-apiserver");
    for args in [&["--insecure-port=8080"][..], &["--profiling", "false"]] {
        let out = run_to_end(Command::new(&api).args(args));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
    }
    let out = run_to_end(Command::new(&api).arg("--help"));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("TEST STAND-IN"));
    let out = run_to_end(Command::new(&api).arg("--version"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Kubernetes v1.31.4-kubeforge-standin"
    );
}

/// The flags checked are those of the minor the stand-in is told
/// (`KUBEFORGE_STANDIN_MINOR` or `--minor`), 1.31 by default.
#[test]
fn checks_the_flags_of_its_minor() {
    let dir = tempfile::tempdir().unwrap();
    let kubelet = install(dir.path(), "kubelet");
    // --fail-cgroupv1 is new in 1.31; --keep-terminated-pod-volumes left in 1.31.
    let run = |minor: Option<&str>, flag: &str| {
        let mut cmd = Command::new(&kubelet);
        cmd.env_remove("KUBEFORGE_STANDIN_MINOR");
        if let Some(m) = minor {
            cmd.env("KUBEFORGE_STANDIN_MINOR", m);
        }
        run_to_end(cmd.arg(flag).arg("--version"))
    };
    for (minor, flag, ok, version) in [
        (None, "--fail-cgroupv1=false", true, "v1.31.4"),
        (Some("1.31"), "--fail-cgroupv1=false", true, "v1.31.4"),
        (Some("1.30"), "--fail-cgroupv1=false", false, ""),
        (
            Some("1.30"),
            "--keep-terminated-pod-volumes",
            true,
            "v1.30.0",
        ),
        (None, "--keep-terminated-pod-volumes", false, ""),
        (Some("1.35"), "--fail-cgroupv1", true, "v1.35.0"),
    ] {
        let out = run(minor, flag);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{minor:?} {flag}: {stderr}");
        if ok {
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                format!("Kubernetes {version}-kubeforge-standin")
            );
        } else {
            assert!(
                stderr.contains("unknown flag: --"),
                "{minor:?} {flag}: {stderr}"
            );
        }
    }
    for bad in ["1.40", "one"] {
        let out = run(Some(bad), "--v=1");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {stderr}");
        assert!(
            stderr.contains("KUBEFORGE_STANDIN_MINOR"),
            "{bad}: {stderr}"
        );
    }
    // As kubeforge-standin, --minor comes before the part and wins.
    let out = run_to_end(
        Command::new(STANDIN)
            .env("KUBEFORGE_STANDIN_MINOR", "1.29")
            .args(["--minor", "1.33", "kube-apiserver", "--version"]),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Kubernetes v1.33.0-kubeforge-standin"
    );
    let out = run_to_end(Command::new(STANDIN).args(["--minor=1.28", "kube-apiserver", "--help"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("kube-apiserver v1.28"));
}

#[test]
fn bad_files_exit_1_naming_flag_and_path() {
    let started = Instant::now();
    let r = Rendered::new();
    let api = install(r.tmp(), "kube-apiserver");
    let mut base = r.argv("kube-apiserver", "kube-apiserver");
    set_flag(&mut base, "advertise-address", "127.0.0.1");
    set_flag(&mut base, "bind-address", "127.0.0.1");
    set_flag(&mut base, "secure-port", &free_port().to_string());
    set_flag(&mut base, "etcd-servers", "https://127.0.0.1:1");
    assert_relocated(&base, &r);

    let missing = r.tmp().join("no-such.crt");
    let garbage = r.tmp().join("garbage.key");
    std::fs::write(&garbage, "not a key\n").unwrap();
    let other_key = r.node_path("/etc/kubernetes/pki/apiserver-kubelet-client.key");
    let cases: [(&str, PathBuf, &str); 3] = [
        ("tls-cert-file", missing.clone(), "cannot read"),
        ("tls-private-key-file", garbage.clone(), "private key"),
        ("tls-private-key-file", other_key, "does not match"),
    ];
    for (flag, path, why) in cases {
        let mut argv = base.clone();
        set_flag(&mut argv, flag, &path.display().to_string());
        let out = run_to_end(Command::new(&api).args(&argv[1..]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "--{flag}: {stderr}");
        let named = format!("--{flag}={}", path.display());
        assert!(stderr.contains(&named), "expected {named:?} in:\n{stderr}");
        assert!(stderr.contains(why), "expected {why:?} in:\n{stderr}");
    }

    // A kubeconfig whose embedded certificate is not base64.
    let cm = install(r.tmp(), "kube-controller-manager");
    let mut argv = r.argv("kube-controller-manager", "kube-controller-manager");
    set_flag(&mut argv, "secure-port", &free_port().to_string());
    r.edit(
        "/etc/kubernetes/controller-manager.conf",
        "client-certificate-data: ",
        "client-certificate-data: not-base64-",
    );
    assert_relocated(&argv, &r);
    let out = run_to_end(Command::new(&cm).args(&argv[1..]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--kubeconfig=") && stderr.contains("controller-manager.conf"),
        "{stderr}"
    );
    assert!(stderr.contains("not base64"), "{stderr}");
    eprintln!("bad_files: {:.1?}", started.elapsed());
}

/// worker1's kubelet and kube-proxy files moved into the test's directory
/// and onto loopback: the apiserver at `api_port`, the container runtime at
/// `cri` and free ports for what they serve.
struct Worker {
    kubelet: Vec<String>,
    kubelet_healthz: u16,
    kubelet_api: u16,
    proxy: Vec<String>,
    proxy_healthz: u16,
}

fn prepare_worker(r: &Rendered, api_port: u16, cri: &Path) -> Worker {
    let etc = r.path_on(WORKER, "/etc/kubernetes").display().to_string();
    let server = format!("server: https://127.0.0.1:{api_port}");
    for conf in ["kubelet.conf", "kube-proxy.conf"] {
        let path = format!("/etc/kubernetes/{conf}");
        let text = r.read_on(WORKER, &path);
        if text.contains("/etc/kubernetes") {
            r.edit_on(WORKER, &path, "/etc/kubernetes", &etc);
        }
        let text = r.read_on(WORKER, &path);
        let old = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .unwrap()
            .to_string();
        r.edit_on(WORKER, &path, &format!("server: {old}"), &server);
        r.assert_file_relocated(WORKER, &path);
    }
    let (kubelet_healthz, kubelet_api) = (free_port(), free_port());
    let kc = "/etc/kubernetes/kubelet-config.yaml";
    r.edit_on(WORKER, kc, "/etc/kubernetes", &etc);
    r.edit_on(
        WORKER,
        kc,
        "healthzPort: 10248",
        &format!("healthzPort: {kubelet_healthz}"),
    );
    r.edit_on(
        WORKER,
        kc,
        "unix:///run/containerd/containerd.sock",
        &format!("unix://{}", cri.display()),
    );
    r.edit_on(
        WORKER,
        kc,
        "resolvConf: /etc/resolv.conf",
        "resolvConf: \"\"",
    );
    // The kubelet API's address and port (defaults 0.0.0.0:10250).
    r.edit_on(
        WORKER,
        kc,
        "readOnlyPort: 0\n",
        &format!("readOnlyPort: 0\naddress: 127.0.0.1\nport: {kubelet_api}\n"),
    );
    r.assert_file_relocated(WORKER, kc);
    let mut kubelet = r.argv_on(WORKER, "kubelet", "kubelet");
    set_flag(&mut kubelet, "node-ip", "127.0.0.1");
    assert_relocated(&kubelet, r);

    let proxy_healthz = free_port();
    let pc = "/etc/kubernetes/kube-proxy-config.yaml";
    r.edit_on(WORKER, pc, "/etc/kubernetes", &etc);
    r.edit_on(
        WORKER,
        pc,
        "healthzBindAddress: 0.0.0.0:10256",
        &format!("healthzBindAddress: 127.0.0.1:{proxy_healthz}"),
    );
    r.edit_on(
        WORKER,
        pc,
        "bindAddress: 0.0.0.0\n",
        "bindAddress: 127.0.0.1\n",
    );
    r.assert_file_relocated(WORKER, pc);
    let proxy = r.argv_on(WORKER, "kube-proxy", "kube-proxy");
    assert_relocated(&proxy, r);
    Worker {
        kubelet,
        kubelet_healthz,
        kubelet_api,
        proxy,
        proxy_healthz,
    }
}

/// A stand-in container runtime: a unix socket that accepts (and drops)
/// connections until the test ends.
fn fake_cri(path: &Path) {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
}

#[test]
fn node_parts_refuse_wrong_identities() {
    let started = Instant::now();
    let r = Rendered::new();
    let cri = r.tmp().join("containerd.sock");
    fake_cri(&cri);
    let w = prepare_worker(&r, free_port(), &cri);

    // worker1's kubelet with worker2's kubeconfig: the Node authorizer would
    // refuse it, so the stand-in exits 1 before talking to anything.
    let kubelet = install(r.tmp(), "kubelet");
    let mut argv = w.kubelet.clone();
    let other = r.path_on("worker2", "/etc/kubernetes/kubelet.conf");
    set_flag(&mut argv, "kubeconfig", &other.display().to_string());
    assert_relocated(&argv, &r);
    let out = run_to_end(Command::new(&kubelet).args(&argv[1..]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("--kubeconfig={}", other.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("CN is \"system:node:worker2\", expected \"system:node:worker1\""),
        "{stderr}"
    );
    assert!(stderr.contains("Node authorizer"), "{stderr}");

    // A node label the kubelet may not set on itself.
    let mut argv = w.kubelet.clone();
    argv.push("--node-labels=node-role.kubernetes.io/worker=".into());
    let out = run_to_end(Command::new(&kubelet).args(&argv[1..]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("node-role.kubernetes.io/worker"),
        "{stderr}"
    );

    // TLS bootstrapping (kubelet_join = "bootstrap-token") needs the real
    // kubelet: the stand-in says so rather than imitate it.
    let mut argv = w.kubelet.clone();
    let bootstrap = r.path_on(WORKER, "/etc/kubernetes/bootstrap-kubelet.conf");
    argv.push(format!("--bootstrap-kubeconfig={}", bootstrap.display()));
    assert_relocated(&argv, &r);
    let out = run_to_end(Command::new(&kubelet).args(&argv[1..]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--bootstrap-kubeconfig={}: not supported by the stand-in",
            bootstrap.display()
        )),
        "{stderr}"
    );

    // kube-proxy: an unknown mode, then the kubelet's kubeconfig.
    let proxy = install(r.tmp(), "kube-proxy");
    let pc = "/etc/kubernetes/kube-proxy-config.yaml";
    let mode = r
        .read_on(WORKER, pc)
        .lines()
        .find(|l| l.starts_with("mode: "))
        .unwrap()
        .to_string();
    r.edit_on(WORKER, pc, &mode, "mode: userspace");
    let out = run_to_end(Command::new(&proxy).args(&w.proxy[1..]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("mode Some(\"userspace\")"), "{stderr}");
    r.edit_on(WORKER, pc, "mode: userspace", &mode);
    r.edit_on(WORKER, pc, "/kube-proxy.conf", "/kubelet.conf");
    let out = run_to_end(Command::new(&proxy).args(&w.proxy[1..]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("expected \"system:kube-proxy\""),
        "{stderr}"
    );
    eprintln!(
        "node_parts_refuse_wrong_identities: {:.1?}",
        started.elapsed()
    );
}

/// A plain-HTTP GET on loopback: (status, body); None without an answer.
fn http_get_plain_status(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// A plain-HTTP GET on loopback; the body of a 200.
fn http_get_plain(port: u16, path: &str) -> Option<String> {
    http_get_plain_status(port, path).and_then(|(status, body)| (status == 200).then_some(body))
}

/// Every `--flag=<file>` of `argv` (but `except`) shows up in the log of
/// the files the stand-in checked.
fn assert_checked_every_file(argv: &[String], log: &str, except: &[&str]) {
    for a in &argv[1..] {
        let Some((flag, value)) = a.split_once('=') else {
            continue;
        };
        if value.starts_with('/') && !except.contains(&flag.trim_start_matches('-')) {
            assert!(log.contains(a.as_str()), "{a} was not checked:\n{log}");
        }
    }
}

/// etcd, or None after a skip notice (a failure under CI) when it or curl
/// is missing.
fn etcd_or_skip(test: &str) -> Option<PathBuf> {
    let etcd = etcd_dir().join("etcd");
    if !executable(&etcd) {
        skip(
            test,
            &format!(
                "no etcd at {} (run tests/setup.sh or set KUBEFORGE_ETCD_DIR)",
                etcd.display()
            ),
        );
        return None;
    }
    if on_path("curl").is_none() {
        skip(test, "curl is not on PATH");
        return None;
    }
    Some(etcd)
}

/// cp1's etcd from its rendered unit, on loopback ports: the process and
/// its client URL.
fn start_etcd(r: &Rendered, etcd: &Path) -> (Proc, String) {
    let (client_port, peer_port) = (free_port(), free_port());
    let client_url = format!("https://127.0.0.1:{client_port}");
    let peer_url = format!("https://127.0.0.1:{peer_port}");
    let mut argv = r.argv("etcd", "etcd");
    set_flag(
        &mut argv,
        "data-dir",
        &r.tmp().join("etcd-data").display().to_string(),
    );
    set_flag(&mut argv, "listen-client-urls", &client_url);
    set_flag(&mut argv, "advertise-client-urls", &client_url);
    set_flag(&mut argv, "listen-peer-urls", &peer_url);
    set_flag(&mut argv, "initial-advertise-peer-urls", &peer_url);
    assert_relocated(&argv, r);
    let mut cmd = Command::new(etcd);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(k);
        }
    }
    let env = r.read("/etc/etcd/initial-cluster.env");
    for line in env
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
    {
        let (k, v) = line.split_once('=').unwrap();
        let v = if k == "ETCD_INITIAL_CLUSTER" {
            format!("{NODE}={peer_url}")
        } else {
            v.to_string()
        };
        assert!(
            !r.node_addresses.iter().any(|a| v.contains(a.as_str())),
            "{k}={v}"
        );
        cmd.env(k, v);
    }
    cmd.args(&argv[1..]);
    (
        Proc::spawn("etcd", cmd, &r.tmp().join("etcd.log")),
        client_url,
    )
}

/// cp1's kube-apiserver (the stand-in) from its rendered unit against
/// `etcd_url`, serving (READY=1): the process, its port and its argv.
fn start_apiserver(r: &Rendered, etcd_url: &str) -> (Proc, u16, Vec<String>) {
    let api_port = free_port();
    let mut argv = r.argv("kube-apiserver", "kube-apiserver");
    set_flag(&mut argv, "advertise-address", "127.0.0.1");
    set_flag(&mut argv, "bind-address", "127.0.0.1");
    set_flag(&mut argv, "secure-port", &api_port.to_string());
    set_flag(&mut argv, "etcd-servers", etcd_url);
    assert_relocated(&argv, r);
    let notify_path = r.tmp().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let api_bin = install(r.tmp(), "kube-apiserver");
    let mut cmd = Command::new(&api_bin);
    cmd.args(&argv[1..]).env("NOTIFY_SOCKET", &notify_path);
    let mut api = Proc::spawn("kube-apiserver", cmd, &r.tmp().join("kube-apiserver.log"));
    wait_ready(&notify, &mut api, Duration::from_secs(75));
    (api, api_port, argv)
}

/// cp1's kube-controller-manager (the stand-in) from its rendered unit
/// against the apiserver at `api_port`: the process, its port, its argv.
fn start_controller_manager(r: &Rendered, api_port: u16) -> (Proc, u16, Vec<String>) {
    let server = format!("server: https://127.0.0.1:{api_port}");
    // The controllers reach the API through the endpoint (the only
    // control-plane node of this inventory).
    r.edit(
        "/etc/kubernetes/controller-manager.conf",
        "server: https://10.77.0.11:6443",
        &server,
    );
    let name = "kube-controller-manager";
    let port = free_port();
    let mut argv = r.argv(name, name);
    set_flag(&mut argv, "secure-port", &port.to_string());
    assert_relocated(&argv, r);
    let mut cmd = Command::new(install(r.tmp(), name));
    cmd.args(&argv[1..]);
    let p = Proc::spawn(name, cmd, &r.tmp().join(format!("{name}.log")));
    (p, port, argv)
}

#[test]
fn control_plane_against_real_etcd() {
    const TEST: &str = "control_plane_against_real_etcd";
    let started = Instant::now();
    let Some(etcd) = etcd_or_skip(TEST) else {
        return;
    };
    let r = Rendered::new();
    let ca = r.node_path("/etc/kubernetes/pki/ca.crt");

    // etcd from its rendered unit, on loopback ports.
    let (mut etcd_proc, client_url) = start_etcd(&r, &etcd);

    // kube-apiserver (the stand-in) from its rendered unit.
    let (mut api, api_port, argv) = start_apiserver(&r, &client_url);
    eprintln!(
        "{TEST}: etcd healthy and the apiserver serving after {:.1?}",
        started.elapsed()
    );
    etcd_proc.assert_running();

    let api_url = |path: &str| format!("https://127.0.0.1:{api_port}{path}");
    let (code, body) = curl(&api_url("/readyz"), &ca, &[]);
    assert_eq!((code, body.as_str()), (200, "ok"), "{}", api.log());
    for path in ["/livez", "/healthz"] {
        let (code, body) = curl(&api_url(path), &ca, &[]);
        assert_eq!((code, body.as_str()), (200, "ok"), "{path}");
    }
    let (code, body) = curl(&api_url("/version"), &ca, &[]);
    assert_eq!(code, 200);
    assert!(
        body.contains("\"gitVersion\":\"v1.31.4-kubeforge-standin\""),
        "{body}"
    );
    // Anything else: 401 without a client certificate, 404 with one the
    // client CA issued.
    let (code, _) = curl(&api_url("/api"), &ca, &[]);
    assert_eq!(code, 401);
    let admin_crt = r.state_pki("admin.crt");
    let admin_key = r.state_pki("admin.key");
    let (code, _) = curl(
        &api_url("/api"),
        &ca,
        &[
            "--cert",
            &admin_crt.display().to_string(),
            "--key",
            &admin_key.display().to_string(),
        ],
    );
    assert_eq!(code, 404, "{}", api.log());
    let log = api.log();
    assert_checked_every_file(&argv, &log, &["audit-log-path"]);
    assert!(log.contains("\"GET /readyz HTTP/1.1\" 200"), "{log}");
    assert!(
        log.lines()
            .all(|l| l.starts_with("kube-apiserver (kubeforge stand-in): ")),
        "{log}"
    );

    // kube-controller-manager and kube-scheduler (stand-ins) against it.
    let server = format!("server: https://127.0.0.1:{api_port}");
    r.edit(
        "/etc/kubernetes/scheduler.conf",
        "server: https://10.77.0.11:6443",
        &server,
    );
    let etc = r.node_path("/etc/kubernetes").display().to_string();
    r.edit(
        "/etc/kubernetes/kube-scheduler-config.yaml",
        "/etc/kubernetes/scheduler.conf",
        &format!("{etc}/scheduler.conf"),
    );
    let scheduler = {
        let name = "kube-scheduler";
        let port = free_port();
        let mut argv = r.argv(name, name);
        set_flag(&mut argv, "secure-port", &port.to_string());
        assert_relocated(&argv, &r);
        let mut cmd = Command::new(install(r.tmp(), name));
        cmd.args(&argv[1..]);
        let p = Proc::spawn(name, cmd, &r.tmp().join(format!("{name}.log")));
        (p, port, argv)
    };
    let mut controllers = [start_controller_manager(&r, api_port), scheduler];
    for (p, port, argv) in &mut controllers {
        let url = format!("https://127.0.0.1:{port}/healthz");
        let body = wait_for(
            &format!("{} /healthz", p.name),
            Duration::from_secs(30),
            || {
                p.assert_running();
                let (code, body) = curl(&url, &ca, &[]);
                (code == 200).then_some(body)
            },
        );
        assert_eq!(body, "ok");
        assert_checked_every_file(argv, &p.log(), &[]);
    }
    eprintln!(
        "{TEST}: controllers healthy after {:.1?}",
        started.elapsed()
    );

    // worker1's kubelet and kube-proxy (stand-ins) against it, the kubelet
    // with a stand-in container runtime socket.
    let cri = r.tmp().join("containerd.sock");
    fake_cri(&cri);
    let w = prepare_worker(&r, api_port, &cri);
    let kubelet_notify_path = r.tmp().join("kubelet-notify.sock");
    let kubelet_notify = UnixDatagram::bind(&kubelet_notify_path).unwrap();
    let mut cmd = Command::new(install(r.tmp(), "kubelet"));
    cmd.args(&w.kubelet[1..])
        .env("NOTIFY_SOCKET", &kubelet_notify_path);
    let mut kubelet = Proc::spawn("kubelet", cmd, &r.tmp().join("kubelet.log"));
    let mut cmd = Command::new(install(r.tmp(), "kube-proxy"));
    cmd.args(&w.proxy[1..]);
    let proxy = Proc::spawn("kube-proxy", cmd, &r.tmp().join("kube-proxy.log"));
    wait_ready(&kubelet_notify, &mut kubelet, Duration::from_secs(30));
    let mut node_parts = [(kubelet, w.kubelet_healthz), (proxy, w.proxy_healthz)];
    for (p, port) in &mut node_parts {
        let port = *port;
        let body = wait_for(
            &format!("{} /healthz", p.name),
            Duration::from_secs(30),
            || {
                p.assert_running();
                http_get_plain(port, "/healthz")
            },
        );
        assert_eq!(body, "ok");
    }
    // The kubelet API: HTTPS with its serving certificate (for worker1),
    // client certificates from the cluster CA required.
    let resolve = format!("{WORKER}:{}:127.0.0.1", w.kubelet_api);
    let kubelet_url = |path: &str| format!("https://{WORKER}:{}{path}", w.kubelet_api);
    let (code, err) = curl(&kubelet_url("/healthz"), &ca, &["--resolve", &resolve]);
    assert_eq!(code, 0, "no client certificate, yet an answer: {err}");
    let kubelet_client = r.state_pki("apiserver-kubelet-client.crt");
    let kubelet_client_key = r.state_pki("apiserver-kubelet-client.key");
    let with_client = [
        "--resolve",
        &resolve,
        "--cert",
        &kubelet_client.display().to_string(),
        "--key",
        &kubelet_client_key.display().to_string(),
    ]
    .map(String::from);
    let with_client: Vec<&str> = with_client.iter().map(String::as_str).collect();
    let (code, body) = curl(&kubelet_url("/healthz"), &ca, &with_client);
    assert_eq!(
        (code, body.as_str()),
        (200, "ok"),
        "{}",
        node_parts[0].0.log()
    );
    let (code, _) = curl(&kubelet_url("/pods"), &ca, &with_client);
    assert_eq!(code, 404);
    let log = node_parts[0].0.log();
    assert_checked_every_file(&w.kubelet, &log, &[]);
    for needle in [
        "client certificate CN=system:node:worker1",
        "container runtime unix://",
        "KubeletConfiguration (cgroupDriver systemd",
    ] {
        assert!(log.contains(needle), "{needle:?} not in:\n{log}");
    }
    assert!(
        api.log().contains("CN=system:node:worker1"),
        "the apiserver saw no request from the kubelet:\n{}",
        api.log()
    );
    assert!(
        api.log().contains("CN=system:kube-proxy"),
        "the apiserver saw no request from kube-proxy:\n{}",
        api.log()
    );
    eprintln!(
        "{TEST}: kubelet and kube-proxy healthy after {:.1?}",
        started.elapsed()
    );

    // What kubeforge asks of the API: server-side apply of the addons
    // (a dry run stores nothing), GET of them, the Node list (the kubelet
    // registered worker1, Ready) and the CSR list (empty: nothing
    // bootstraps). Nothing else: no POST, and no access without a client
    // certificate.
    let admin = admin_flags(&r);
    let send = |method: &str, path: &str, body: &str| {
        let file = r.tmp().join("body.json");
        std::fs::write(&file, body).unwrap();
        let data = format!("@{}", file.display());
        let content_type = if method == "PATCH" {
            "Content-Type: application/apply-patch+yaml"
        } else {
            "Content-Type: application/json"
        };
        let mut flags = strs(&admin);
        flags.extend(["-X", method, "-H", content_type, "--data-binary", &data]);
        curl(&api_url(path), &ca, &flags)
    };
    let get = |path: &str| curl(&api_url(path), &ca, &strs(&admin));
    let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
    assert!(!r.addons.is_empty());
    let (first, first_body) = &r.addons[0];
    let (code, answer) = send(
        "PATCH",
        &format!("{first}?fieldManager=kubeforge&force=true&dryRun=All"),
        first_body,
    );
    assert_eq!((code, json(&answer)), (200, json(first_body)), "{first}");
    assert_eq!(get(first).0, 404, "a dry run stored {first}");
    for (path, body) in &r.addons {
        let (code, answer) = send(
            "PATCH",
            &format!("{path}?fieldManager=kubeforge&force=true"),
            body,
        );
        assert_eq!(code, 200, "{path}: {answer}");
    }
    for (path, body) in &r.addons {
        let (code, answer) = get(path);
        assert_eq!((code, json(&answer)), (200, json(body)), "{path}");
    }
    let (collection, name) = first.rsplit_once('/').unwrap();
    let (code, list) = get(collection);
    assert_eq!(code, 200, "{list}");
    let names: Vec<String> = json(&list)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(names.iter().any(|n| n == name), "{names:?}");
    let node = wait_for("worker1's Node", Duration::from_secs(10), || {
        let (code, list) = get("/api/v1/nodes");
        assert_eq!(code, 200, "{list}");
        json(&list)["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["metadata"]["name"] == WORKER)
            .cloned()
    });
    let mut ready = node["status"]["conditions"][0].clone();
    // Reported now, as a restarted kubelet reports its status.
    let beat = ready["lastHeartbeatTime"].as_str().unwrap_or_default();
    assert!(beat.ends_with('Z') && beat.len() == 20, "{node}");
    ready["lastHeartbeatTime"] = serde_json::Value::Null;
    assert_eq!(
        ready,
        serde_json::json!({
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kubelet stand-in (not a real kubelet)",
            "lastHeartbeatTime": null
        }),
        "{node}"
    );
    assert_eq!(node["status"]["addresses"][0]["address"], "127.0.0.1");
    let csrs = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    let (code, list) = get(csrs);
    assert_eq!(code, 200, "{list}");
    assert_eq!(json(&list)["items"], serde_json::json!([]));
    let (code, answer) = send("POST", csrs, "{}");
    assert_eq!(code, 405, "{answer}");
    // DELETE removes one object, once.
    let (code, answer) = send("DELETE", first, "");
    assert_eq!(code, 200, "{answer}");
    assert_eq!(get(first).0, 404, "{first} deleted");
    assert_eq!(send("DELETE", first, "").0, 404, "{first} deleted twice");
    let (code, _) = curl(&api_url("/api/v1/nodes"), &ca, &[]);
    assert_eq!(code, 401);

    // etcd down: the apiserver is not ready, the controllers not healthy.
    etcd_proc.terminate(Duration::from_secs(10));
    let body = wait_for("apiserver /readyz 500", Duration::from_secs(10), || {
        let (code, body) = curl(&api_url("/readyz"), &ca, &[]);
        (code == 500).then_some(body)
    });
    assert!(body.contains("etcd"), "{body}");
    for (p, port, _) in &mut controllers {
        let url = format!("https://127.0.0.1:{port}/healthz");
        wait_for(
            &format!("{} /healthz 500", p.name),
            Duration::from_secs(10),
            || {
                let (code, _) = curl(&url, &ca, &[]);
                (code == 500).then_some(())
            },
        );
        let status = p.terminate(Duration::from_secs(5));
        assert!(status.success(), "{}: {status}", p.name);
    }
    // The node parts notice within their 10 s window (re-checked every 2 s).
    for (p, port) in &mut node_parts {
        let port = *port;
        let body = wait_for(
            &format!("{} /healthz 500", p.name),
            Duration::from_secs(20),
            || {
                p.assert_running();
                http_get_plain_status(port, "/healthz")
                    .and_then(|(status, body)| (status == 500).then_some(body))
            },
        );
        assert!(body.contains("apiserver https://127.0.0.1:"), "{body}");
        let status = p.terminate(Duration::from_secs(5));
        assert!(status.success(), "{}: {status}", p.name);
    }
    let status = api.terminate(Duration::from_secs(5));
    assert!(status.success(), "kube-apiserver after SIGTERM: {status}");
    assert!(api.log().contains("received SIGTERM"));
    eprintln!("{TEST}: done after {:.1?}", started.elapsed());
}

/// `curl` with the admin client certificate of the state directory.
fn admin_flags(r: &Rendered) -> Vec<String> {
    vec![
        "--cert".into(),
        r.state_pki("admin.crt").display().to_string(),
        "--key".into(),
        r.state_pki("admin.key").display().to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
