//! The SSH transport against a real sshd on loopback: host-key handling
//! (accept-new recorded in kubeforge's own known_hosts, then strict),
//! atomic uploads, facts, the apply lock, sudo-less root, and master
//! connections that never outlive kubeforge for long.

use kubeforge_tests::{find_tool, require, root_privileges, Procs};
use kubeforge_transport::{ops, SshOptions, SshTransport, Transport, MASTER_LINGER};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs")
        .success();
    assert!(ok, "ssh-keygen {}", path.display());
}

struct Sshd {
    _procs: Procs,
    port: u16,
    client_key: PathBuf,
}

fn start_sshd(dir: &Path, sshd: &Path, host_key: &Path) -> Sshd {
    start_sshd_with(dir, sshd, host_key, 50)
}

/// An sshd that opens at most `max_sessions` sessions per connection.
fn start_sshd_with(dir: &Path, sshd: &Path, host_key: &Path, max_sessions: u32) -> Sshd {
    let client_key = dir.join("client");
    if !client_key.exists() {
        keygen(&client_key);
    }
    let auth = dir.join("authorized_keys");
    std::fs::copy(dir.join("client.pub"), &auth).expect("authorized_keys");
    let port = free_port();
    let config = dir.join(format!("sshd_config.{port}"));
    std::fs::write(
        &config,
        format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nAuthorizedKeysFile {}\n\
             PidFile none\nStrictModes no\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             MaxSessions {max_sessions}\nMaxStartups 50\nLogLevel VERBOSE\n",
            host_key.display(),
            auth.display()
        ),
    )
    .expect("sshd_config");
    std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
    let mut procs = Procs::new();
    let mut cmd = Command::new(sshd);
    cmd.arg("-D").arg("-e").arg("-f").arg(&config);
    procs
        .spawn("sshd", cmd, &dir.join(format!("sshd.{port}.log")))
        .expect("sshd starts");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Sshd {
        _procs: procs,
        port,
        client_key,
    }
}

fn options(dir: &Path, sshd: &Sshd, accept_new: bool) -> SshOptions {
    options_at(dir, sshd.port, &sshd.client_key, accept_new)
}

fn options_at(dir: &Path, port: u16, client_key: &Path, accept_new: bool) -> SshOptions {
    SshOptions {
        node: "n1".into(),
        address: "127.0.0.1".into(),
        user: "root".into(),
        port,
        key: Some(client_key.to_path_buf()),
        sudo: false,
        accept_new_host_keys: accept_new,
        known_hosts: known_hosts(dir),
        config_file: Some(dir.join("ssh_config")),
        connect_timeout: Duration::from_secs(5),
        keep: None,
    }
}

/// Whether the master connection behind a control socket still answers.
fn master_alive(control_socket: &Path) -> bool {
    Command::new("ssh")
        .arg("-S")
        .arg(control_socket)
        .args(["-o", "BatchMode=yes", "-O", "check", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The pid of the master behind a control socket (`ssh -O check`).
fn master_pid(control_socket: &Path) -> u32 {
    let out = Command::new("ssh")
        .arg("-S")
        .arg(control_socket)
        .args(["-o", "BatchMode=yes", "-O", "check", "none"])
        .stdin(Stdio::null())
        .output()
        .expect("ssh -O check");
    let text = String::from_utf8_lossy(&out.stderr);
    text.split("pid=")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no master pid in {text:?}"))
}

/// Whether a process runs (a zombie does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// Polls `cond` every 200 ms for at most `limit`; how long it took.
fn wait_until(limit: Duration, cond: impl Fn() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

const CHILD_ENV: &str = "KUBEFORGE_TEST_SSH_CHILD";

/// A kubeforge-like process that opens a transport and is then killed:
/// this test binary again, running only [`ssh_transport_child`].
struct ChildProcess(std::process::Child);

impl ChildProcess {
    fn start(dir: &Path, sshd: &Sshd) -> ChildProcess {
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "ssh_transport::ssh_transport_child",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env(
                CHILD_ENV,
                format!(
                    "{}\n{}\n{}",
                    sshd.port,
                    sshd.client_key.display(),
                    dir.display()
                ),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the child test process starts");
        ChildProcess(child)
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run by [`ChildProcess`] only: connects, tells its control socket
/// through `<dir>/child-control`, and waits to be killed.
#[test]
#[ignore = "a helper process of ssh_transport_against_a_real_sshd"]
fn ssh_transport_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.lines();
    let (Some(port), Some(key), Some(dir)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("{CHILD_ENV}: port, key and directory expected");
    };
    let dir = Path::new(dir);
    let port: u16 = port.parse().expect("port");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let t = rt
        .block_on(SshTransport::connect(options_at(
            dir,
            port,
            Path::new(key),
            false,
        )))
        .expect("the child connects");
    let tmp = dir.join("child-control.tmp");
    std::fs::write(&tmp, t.control_socket().as_os_str().as_encoded_bytes()).expect("write");
    std::fs::rename(&tmp, dir.join("child-control")).expect("rename");
    // Killed long before this.
    std::thread::sleep(Duration::from_secs(120));
}

/// kubeforge's known_hosts, in a state directory whose path has a space
/// (ssh_config splits UserKnownHostsFile into words).
fn known_hosts(dir: &Path) -> PathBuf {
    dir.join("state dir/known_hosts")
}

#[test]
fn ssh_transport_against_a_real_sshd() {
    let test = "ssh_transport_against_a_real_sshd";
    let sshd_bin = require!(
        test,
        find_tool("sshd", None).or_else(|| {
            Path::new("/usr/sbin/sshd")
                .exists()
                .then(|| PathBuf::from("/usr/sbin/sshd"))
        }),
        "sshd not found (apt-get install openssh-server)"
    );
    require!(test, find_tool("ssh", None), "ssh not found");
    if let Err(e) = root_privileges() {
        kubeforge_tests::skip(test, &e);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // An empty ssh_config: the user's own ~/.ssh/config must not interfere.
    std::fs::write(d.join("ssh_config"), "").expect("ssh_config");
    std::fs::create_dir_all(known_hosts(d).parent().expect("state dir")).expect("state dir");
    let host_key = d.join("host");
    keygen(&host_key);
    let sshd = start_sshd(d, &sshd_bin, &host_key);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // Unknown host, not allowed: refused, nothing recorded.
        let err = SshTransport::connect(options(d, &sshd, false))
            .await
            .err()
            .expect("an unknown host key is refused");
        let msg = err.to_string();
        assert!(
            msg.starts_with("n1: cannot connect to root@127.0.0.1:"),
            "{msg}"
        );
        assert!(msg.contains("help:"), "{msg}");

        // Allowed on first contact: accepted and recorded in kubeforge's file.
        let t = SshTransport::connect(options(d, &sshd, true))
            .await
            .expect("first contact accepted");
        let known = std::fs::read_to_string(known_hosts(d)).expect("known_hosts written");
        assert!(known.contains("ssh-ed25519"), "{known}");

        // Atomic upload with mode, then facts read back over SSH.
        let target = d.join("node/etc/kubernetes/pki/x.key");
        let path = target.to_str().expect("utf-8 path");
        ops::put(&t, path, b"key material\n".to_vec(), 0o600, "root:root")
            .await
            .expect("put");
        let st = ops::stat(&t, &[path.to_string()]).await.expect("stat");
        assert_eq!(st[path].mode, 0o600);
        assert_eq!(st[path].owner, "root:root");
        assert_eq!(
            ops::read(&t, path).await.expect("read"),
            Some(b"key material\n".to_vec())
        );
        let host = ops::host(&t).await.expect("host facts");
        assert_eq!(host.kernel, "Linux");

        // A command far over the 128 KiB that sshd's `sh -c` may take as
        // its one argument (the pod routes of thousands of nodes), and a
        // round trip of such parts: sent on stdin, run whole.
        let hosts: String = (0..9000)
            .map(|i| format!("10.77.{}.{} node-{i}\n", i / 250, i % 250))
            .collect();
        let body = format!("want='{hosts}'\nprintf '%s' \"$want\" | wc -l; echo \"${{#1}}\"; cat");
        let out = t
            .run_ok(
                kubeforge_transport::Script::new("hosts", &body)
                    .args(["z".repeat(150_000)])
                    .stdin(b"input\n".to_vec()),
            )
            .await
            .expect("a command over the argument limit");
        assert_eq!(out.stdout_str(), "9000\n150000\ninput\n");
        let part = |name: &str| ops::Part::step(name, &format!("want='{hosts}'\ntrue"));
        ops::run_parts(&t, vec![part("hosts"), part("routes")], Vec::new())
            .await
            .expect("parts over the argument limit");

        // Many commands over the one multiplexed connection, concurrently.
        let runs = (0..20).map(|i| {
            let t = &t;
            async move {
                t.run_ok(
                    kubeforge_transport::Script::new("echo", r#"echo "$1""#).args([i.to_string()]),
                )
                .await
                .map(|o| o.stdout_str())
            }
        });
        let outs = futures::future::join_all(runs).await;
        for (i, o) in outs.into_iter().enumerate() {
            assert_eq!(o.expect("echo").trim(), i.to_string());
        }

        // An sshd that allows fewer sessions than the transport opens at
        // once: the sessions it refuses (the commands never started) are
        // opened again once others end, and every command runs once.
        let narrow = start_sshd_with(d, &sshd_bin, &host_key, 3);
        let tn = SshTransport::connect(options(d, &narrow, true))
            .await
            .expect("connects to the narrow sshd");
        let runs = (0..4).map(|i| {
            let t = &tn;
            async move {
                t.run_ok(
                    kubeforge_transport::Script::new("sleep, then echo", r#"sleep 0.3; echo "$1""#)
                        .args([i.to_string()]),
                )
                .await
                .map(|o| o.stdout_str())
            }
        });
        let outs = futures::future::join_all(runs).await;
        for (i, o) in outs.into_iter().enumerate() {
            assert_eq!(
                o.expect("opened again after a refusal").trim(),
                i.to_string()
            );
        }
        // A held script asked for while the other sessions are taken:
        // refused, then opened again. The apply lock needs no session: the
        // idle channel holds it.
        let narrow_lock = d.join("narrow.lock");
        let narrow_lock = narrow_lock.to_str().expect("utf-8 path");
        let busy =
            (0..2).map(|_| tn.run_ok(kubeforge_transport::Script::new("sleep", "sleep 0.5")));
        let hold = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let script = kubeforge_transport::Script::new("hold", "echo ready; read -r _");
            let held = tn.hold(script).await;
            let lock = tn.lock(narrow_lock, "narrow").await;
            (held, lock)
        };
        let (busy, (held, lock)) = tokio::join!(futures::future::join_all(busy), hold);
        for b in busy {
            b.expect("the sleeps ran");
        }
        let (first, held) = held.expect("the held script, opened again after a refusal");
        assert_eq!(first, "ready");
        held.release().await;
        lock.expect("the lock, with every session taken")
            .release()
            .await;
        tn.close().await;

        // The lock is exclusive across connections and released on close.
        let lock_path = d.join("kubeforge.lock");
        let lp = lock_path.to_str().expect("utf-8 path");
        let held = t.lock(lp, "first apply").await.expect("lock");
        let t2 = SshTransport::connect(options(d, &sshd, false))
            .await
            .expect("recorded host key is trusted now");
        let busy = t2.lock(lp, "second apply").await.err().expect("busy");
        assert!(busy.to_string().contains("(first apply)"), "{busy}");
        // Asked twice by one run: refused the second time, still held.
        let twice = t
            .lock(lp, "first apply, again")
            .await
            .err()
            .expect("held already");
        assert!(twice.to_string().contains("(first apply)"), "{twice}");
        held.release().await;
        t2.lock(lp, "second apply")
            .await
            .expect("free again")
            .release()
            .await;
        // One line per owner, whatever it holds.
        let t3 = SshTransport::connect(options(d, &sshd, false))
            .await
            .expect("connects");
        let odd = t3.lock(lp, "odd\nowner").await.expect("lock");
        assert_eq!(
            std::fs::read_to_string(d.join("kubeforge.lock.owner")).expect("owner"),
            "odd owner\n"
        );
        // A transport closed with the lock held lets go of it (the node's
        // shell ends with the channel, soon after).
        t3.close().await;
        let mut again = t.lock(lp, "third apply").await;
        for _ in 0..50 {
            if again.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            again = t.lock(lp, "third apply").await;
        }
        again.expect("free once closed").release().await;
        drop(odd);
        let missing = t
            .lock("/nonexistent/dir/kubeforge.lock", "x")
            .await
            .err()
            .expect("no such directory");
        assert!(
            missing
                .to_string()
                .contains("cannot open /nonexistent/dir/kubeforge.lock"),
            "{missing}"
        );

        // A master outlives pauses in the work longer than its linger, and
        // exits by itself soon after its process is killed outright.
        let child = ChildProcess::start(d, &sshd);
        let control = d.join("child-control");
        wait_until(Duration::from_secs(30), || control.exists()).expect("the child connected");
        let child_master = PathBuf::from(std::fs::read_to_string(&control).expect("control"));
        // Watched through its pid: every `ssh -O check` is a client of the
        // master and would restart its linger.
        let pid = master_pid(&child_master);
        assert!(running(pid));
        let idle_since = Instant::now();
        drop(child); // SIGKILL: no chance to close anything
        let gone = wait_until(MASTER_LINGER + Duration::from_secs(20), || !running(pid))
            .expect("the killed process's master exits by itself");
        assert!(
            gone + Duration::from_secs(2) >= MASTER_LINGER,
            "gone after {gone:?}"
        );
        // What a killed process cannot clean up: the master's directory.
        if let Some(dir) = child_master.parent() {
            std::fs::remove_dir_all(dir).expect("remove the killed process's control directory");
        }
        let idle = idle_since.elapsed();
        if idle < MASTER_LINGER + Duration::from_secs(2) {
            tokio::time::sleep(MASTER_LINGER + Duration::from_secs(2) - idle).await;
        }
        assert!(master_alive(t.control_socket()));
        t.run_ok(kubeforge_transport::Script::new("echo", "echo still here"))
            .await
            .expect("a transport idle for longer than the linger still works");

        t.close().await;
        t2.close().await;

        // close_all closes every master of the process at once.
        let t3 = SshTransport::connect(options(d, &sshd, false))
            .await
            .expect("connect");
        let master = t3.control_socket().to_path_buf();
        assert!(master_alive(&master));
        kubeforge_transport::close_all().await;
        assert!(!master_alive(&master));
        assert!(!master.exists(), "{}", master.display());
        let after = t3
            .run(kubeforge_transport::Script::new("echo", "echo too late"))
            .await;
        assert!(!matches!(&after, Ok(o) if o.success()), "{after:?}");
        drop(t3);

        // Kept for the next process: closing the transport and close_all
        // leave the master up; the next connect made the same way uses it
        // (the same master), one made another way does not; a record whose
        // master is gone means a new connection; unused for its idle time,
        // the master exits by itself.
        let keep = kubeforge_transport::Keep {
            dir: d.join("state/ssh"),
            idle: Duration::from_secs(2),
        };
        let kept = || SshOptions {
            keep: Some(keep.clone()),
            ..options(d, &sshd, false)
        };
        let k1 = SshTransport::connect(kept()).await.expect("connect, kept");
        let socket = k1.control_socket().to_path_buf();
        let pid = master_pid(&socket);
        k1.close().await;
        kubeforge_transport::close_all().await;
        assert!(
            master_alive(&socket),
            "a kept master outlives its transport"
        );
        let k2 = SshTransport::connect(kept())
            .await
            .expect("connect again, kept");
        assert_eq!(k2.control_socket(), socket.as_path());
        assert_eq!(master_pid(&socket), pid);
        k2.run_ok(kubeforge_transport::Script::new("echo", "echo reused"))
            .await
            .expect("a command over the kept master");
        std::fs::write(d.join("ssh_config2"), "").expect("ssh_config2");
        let other = SshTransport::connect(SshOptions {
            config_file: Some(d.join("ssh_config2")),
            ..kept()
        })
        .await
        .expect("connect another way, kept");
        assert_ne!(other.control_socket(), socket.as_path());
        other.close().await;
        k2.close().await;
        let exit = Command::new("ssh")
            .arg("-S")
            .arg(&socket)
            .args(["-o", "BatchMode=yes", "-O", "exit", "none"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("ssh -O exit");
        assert!(exit.success());
        assert!(wait_until(Duration::from_secs(5), || !master_alive(&socket)).is_some());
        let k3 = SshTransport::connect(kept())
            .await
            .expect("connect, the kept master gone");
        let socket3 = k3.control_socket().to_path_buf();
        assert_ne!(socket3, socket);
        assert!(
            !socket.parent().is_some_and(Path::exists),
            "the dead master's directory is removed"
        );
        k3.run_ok(kubeforge_transport::Script::new("echo", "echo new"))
            .await
            .expect("a command over the new master");
        k3.close().await;
        // (Watched through its socket's file: `ssh -O check` is a use.)
        assert!(socket3.exists());
        assert!(
            wait_until(Duration::from_secs(8), || !socket3.exists()).is_some(),
            "a kept master exits once unused for its idle time"
        );
    });

    // The same address with another host key: refused (a changed key is
    // never accepted, even when new keys may be).
    let other_key = d.join("other-host");
    keygen(&other_key);
    let sshd2 = start_sshd(d, &sshd_bin, &other_key);
    // Pretend the host at the new port was known with the first key.
    let known = std::fs::read_to_string(known_hosts(d)).expect("known_hosts");
    let first_line = known.lines().next().expect("one line").to_string();
    let key_part: Vec<&str> = first_line.split_whitespace().skip(1).collect();
    std::fs::write(
        known_hosts(d),
        format!("[127.0.0.1]:{} {}\n", sshd2.port, key_part.join(" ")),
    )
    .expect("known_hosts");
    let err = rt
        .block_on(SshTransport::connect(options(d, &sshd2, true)))
        .err()
        .expect("a changed host key is refused");
    assert!(err.to_string().contains("cannot connect"), "{err}");
}
