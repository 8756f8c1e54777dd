//! Lab nodes: small Debian machines booted with `systemd-nspawn`, real
//! systemd as PID 1, each in its own network namespace on a private host
//! bridge, reachable over SSH like the machines kubeforge installs to.
//!
//! ```ignore
//! use kubeforge_tests::lab::{self, Lab};
//! if !lab::available(TEST) { return; }
//! let mut lab = Lab::up(&[("n1", Ipv4Addr::new(10, 77, 0, 11))]);
//! lab.watch_units(&["etcd"]); // printed when the test fails
//! let hostname = lab.ssh_ok("n1", "hostname");
//! ```
//!
//! # Requirements
//! Root (network namespaces, mounts, cgroups) and `systemd-nspawn`
//! (systemd-container), `ip` (iproute2), `ssh`/`ssh-keygen`
//! (openssh-client), `flock`, `mount`/`umount` (util-linux) and, to build
//! the node root file system, `debootstrap` and `chroot`. `tests/setup.sh`
//! installs them. [`available`] skips a test without them (a failure when
//! `CI` is set).
//!
//! # Root file system
//! Built lazily by the first [`Lab::up`] that finds it missing or out of
//! date, not by `tests/setup.sh` (which only installs the host's tools, so
//! it stays fast), then cached in `target/test-tools/lab-rootfs` of the
//! workspace. `debootstrap --foreign --variant=minbase` of Debian [`SUITE`]
//! with [`PACKAGES`] downloads from the mirror this machine's apt uses (the
//! first non-security `URIs:` of `/etc/apt/sources.list.d/debian.sources`,
//! else the first `deb` line of `/etc/apt/sources.list`;
//! `KUBEFORGE_LAB_MIRROR` overrides it); its second stage then installs
//! every package inside the tree (nothing inside reaches the network) under
//! a `policy-rc.d` that exits 101, so no package starts a service (the
//! harness checks that no process runs from the tree afterwards). Then:
//! nginx and keepalived disabled (the installer under test enables them),
//! apt timers and the like masked, root login by key only,
//! `lab-cgroup-rw.service` (remounts the v1 cgroup controllers writable, for
//! containerd), `DefaultTimeoutStopSec=10s` (bounded power-off), a
//! persistent journal (so [`Lab::journal`] can read it from the host when
//! SSH is gone), no ssh host keys and an empty machine-id (each node gets
//! its own). It is built in `lab-rootfs.tmp-<pid>` and renamed when
//! complete, so an interrupted build is never taken for a finished one; the
//! stamp file `.kubeforge-lab-stamp` holds [`ROOTFS_STAMP`], the suite and
//! the packages, and a different stamp rebuilds it. About 45 s (mostly the
//! download); the log is `target/test-tools/lab-rootfs.log`. Delete the
//! directory to force a rebuild.
//!
//! # Nodes
//! Host bridge [`BRIDGE`] holds [`HOST_ADDRESS`]/24: no NAT, no default
//! route, `ip_forward` untouched, so nodes reach only each other and the
//! host. Per node: network namespace `kflab-<node>` with `eth0` (a veth into
//! the bridge) holding the node's address/24; an overlay of the root file
//! system under a per-lab temporary directory (`$TMPDIR/kflab-*`) with its
//! own hostname, `/etc/hosts` line, machine-id, ssh host key and root's
//! `authorized_keys` (the lab's key pair, made per lab); ext4 directories of
//! the lab directory bound on `/var/lib/containerd` and `/var/lib/kubelet`;
//! its own cgroup in every hierarchy (below this process's own cgroup, in
//! `kflab/<node>`), or all nodes would share one payload cgroup and
//! `systemctl stop` in one node would stop the unit in all. nspawn runs
//! from a small shell loop that starts it again when it exits with 133
//! (`systemctl reboot` inside a node). [`Lab::power_off`] cuts a node's
//! power (SIGKILL to everything in its cgroups) and [`Lab::power_on`]
//! boots it again.
//!
//! # One lab at a time
//! [`Lab::up`] takes a process-wide mutex and the host-wide lock
//! [`LOCK_FILE`] (flock) and holds them until the lab is dropped. The lock
//! file names the running lab's directory: a lab whose process was killed
//! is cleaned up by the next [`Lab::up`].
//!
//! # Teardown
//! Dropping the [`Lab`] (also during a panic) powers every node off
//! (SIGTERM to nspawn, then SIGKILL to what is left in the node's cgroups),
//! unmounts, deletes the namespaces, veths, cgroups, the bridge and the lab
//! directory. During a panic it first prints, per node, the journal of the
//! units given to [`Lab::watch_units`] and the end of the node's console.

// Progress and diagnostics of the lab go to stderr, like a test's own.
#![allow(clippy::print_stderr)]

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{capture, find_tool, root_privileges, run, skip, tail};

/// The host bridge every node is plugged into.
pub const BRIDGE: &str = "kflab0";
/// The host's address on [`BRIDGE`]; nodes take others of its /24.
pub const HOST_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const PREFIX_LEN: u8 = 24;
/// Node `n` lives in network namespace `kflab-n`.
pub const NETNS_PREFIX: &str = "kflab-";
/// The host-wide lock: one lab per machine.
pub const LOCK_FILE: &str = "/run/kubeforge-lab.lock";
/// The Debian release of the nodes.
pub const SUITE: &str = "bookworm";
/// What the node root file system holds, besides `minbase`.
pub const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "iproute2",
    "procps",
    "curl",
    "ca-certificates",
    "nginx",
    "libnginx-mod-stream",
    "keepalived",
    "util-linux",
    "coreutils",
    // What kube-proxy and the kubelet run on a real host: without them the
    // real kube-proxy exits ("iptables is not available on this host").
    "iptables",
    "conntrack",
    // Binaries travel zstd-compressed to nodes that have it (gzip else).
    "zstd",
];
/// Bump when the build of the root file system changes: a cached one with
/// another stamp is rebuilt.
pub const ROOTFS_STAMP: &str = "kubeforge-lab-rootfs 5";
const STAMP_FILE: &str = ".kubeforge-lab-stamp";
/// Units masked in the nodes: timers and services that only add noise.
const MASKED_UNITS: &[&str] = &[
    "apt-daily-upgrade.timer",
    "apt-daily.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "e2scrub_reap.service",
    "systemd-pstore.service",
    "getty@tty1.service",
];
/// Enabled by their packages; the installer under test enables them.
const DISABLED_UNITS: &[&str] = &["nginx.service", "keepalived.service"];

const SSH_READY_TIMEOUT: Duration = Duration::from_secs(60);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(20);
const SSH_TIMEOUT: Duration = Duration::from_secs(120);
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const LOCK_TIMEOUT_SECS: u32 = 3600;
const INOTIFY_SYSCTLS: &[(&str, u64)] = &[
    ("/proc/sys/fs/inotify/max_user_instances", 8192),
    ("/proc/sys/fs/inotify/max_user_watches", 1_048_576),
];

/// The kernel's one ARP table holds every network namespace's entries:
/// with N nodes that talk to each other, about N² of them (a host of a
/// real cluster holds N). Its limits (third, second, first: raised in
/// that order) as multiples of N², so that a lab of a hundred nodes does
/// not overflow it ("neighbor table overflow!", and connections between
/// nodes failing with "No route to host" or hanging).
const NEIGHBOUR_SYSCTLS: &[(&str, u64)] = &[
    ("/proc/sys/net/ipv4/neigh/default/gc_thresh3", 4),
    ("/proc/sys/net/ipv4/neigh/default/gc_thresh2", 2),
    ("/proc/sys/net/ipv4/neigh/default/gc_thresh1", 1),
];

/// Restarts nspawn when it exits with 133 (a reboot inside the node),
/// after moving itself (and so nspawn) into the node's cgroups.
const NODE_LOOP: &str = r#"set -uf
IFS='
'
for f in $KFLAB_CGROUP_PROCS; do
  echo $$ > "$f" || { echo "kflab: cannot join cgroup $f" >&2; exit 97; }
done
while :; do
  [ -e "$KFLAB_STOP" ] && exit 0
  "$@" &
  pid=$!
  echo "$pid" > "$KFLAB_PID_FILE.new" && mv "$KFLAB_PID_FILE.new" "$KFLAB_PID_FILE"
  wait "$pid"
  rc=$?
  [ "$rc" = 133 ] || exit "$rc"
  echo "kflab: the node rebooted (nspawn exited with 133): starting it again" >&2
done
"#;

const CGROUP_RW_UNIT: &str = "[Unit]
Description=Make v1 cgroup controllers writable (kubeforge lab node)
DefaultDependencies=no
ConditionCapability=CAP_SYS_ADMIN
ConditionPathIsMountPoint=/sys/fs/cgroup/memory
Before=sysinit.target containerd.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for c in /sys/fs/cgroup/*; do mount -o remount,rw,bind \"$c\" || true; done'

[Install]
WantedBy=sysinit.target
";

// --- availability ------------------------------------------------------------

/// The programs the lab runs.
#[derive(Clone, Debug)]
struct Tools {
    ip: PathBuf,
    nspawn: PathBuf,
    ssh: PathBuf,
    ssh_keygen: PathBuf,
    flock: PathBuf,
    mount: PathBuf,
    umount: PathBuf,
    kill: PathBuf,
    journalctl: Option<PathBuf>,
}

/// A program on `PATH` or in the usual system directories (root's `PATH`
/// has them, a test runner's may not).
fn program(name: &str) -> Option<PathBuf> {
    find_tool(name, None).or_else(|| {
        ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| {
                fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    })
}

impl Tools {
    fn find() -> Result<Tools, String> {
        let mut missing = Vec::new();
        let mut need = |name: &str, package: &str| {
            program(name).unwrap_or_else(|| {
                missing.push(format!("{name} ({package})"));
                PathBuf::new()
            })
        };
        let tools = Tools {
            ip: need("ip", "iproute2"),
            nspawn: need("systemd-nspawn", "systemd-container"),
            ssh: need("ssh", "openssh-client"),
            ssh_keygen: need("ssh-keygen", "openssh-client"),
            flock: need("flock", "util-linux"),
            mount: need("mount", "mount"),
            umount: need("umount", "mount"),
            kill: need("kill", "procps"),
            journalctl: program("journalctl"),
        };
        if missing.is_empty() {
            Ok(tools)
        } else {
            Err(format!(
                "lab nodes need {} (tests/setup.sh installs them)",
                missing.join(", ")
            ))
        }
    }
}

/// Why lab nodes cannot run here, or `None` when they can.
pub fn unavailable() -> Option<String> {
    if let Err(e) = root_privileges() {
        return Some(format!("lab nodes: {e}"));
    }
    if let Err(e) = Tools::find() {
        return Some(e);
    }
    if !rootfs_current(&rootfs_dir()) {
        for tool in ["debootstrap", "chroot"] {
            if program(tool).is_none() {
                return Some(format!(
                    "the lab's root file system {} must be built, which needs {tool} (tests/setup.sh installs it)",
                    rootfs_dir().display()
                ));
            }
        }
    }
    None
}

/// True when lab nodes can run here. Otherwise [`skip`]s `test` (a notice,
/// or a panic when `CI` is set) and returns false: the test returns.
pub fn available(test: &str) -> bool {
    match unavailable() {
        None => true,
        Some(reason) => {
            skip(test, &reason);
            false
        }
    }
}

// --- small helpers -----------------------------------------------------------

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
}

fn test_tools_dir() -> PathBuf {
    workspace_dir().join("target").join("test-tools")
}

/// Where the node root file system is cached.
pub fn rootfs_dir() -> PathBuf {
    test_tools_dir().join("lab-rootfs")
}

fn rootfs_stamp() -> String {
    format!(
        "{ROOTFS_STAMP}\nsuite={SUITE}\npackages={}\n",
        PACKAGES.join(",")
    )
}

fn rootfs_current(dir: &Path) -> bool {
    fs::read_to_string(dir.join(STAMP_FILE)).is_ok_and(|s| s == rootfs_stamp())
}

/// Runs `cmd` (stdin closed) and returns its stdout, or an error with
/// everything it printed.
fn check(cmd: &mut Command, timeout: Duration) -> Result<String, String> {
    let r = run(cmd, timeout)?;
    if r.success() {
        Ok(r.stdout)
    } else {
        Err(r.describe())
    }
}

fn write_file(path: &Path, contents: impl AsRef<[u8]>, mode: u32) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    // Never write through a symlink of the node's tree into the host.
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn mkdir(path: &Path, mode: u32) -> Result<(), String> {
    fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Sends `signal` to `pids` (ignores processes that are gone).
fn kill(tools: &Tools, signal: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new(&tools.kill)
        .arg(format!("-{signal}"))
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Decodes the octal escapes of /proc/self/mountinfo (`\040` for a space).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = |c: &u8| (b'0'..=b'7').contains(c);
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(octal) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct MountEntry {
    root: String,
    mount_point: PathBuf,
    fs_type: String,
    super_options: String,
}

fn mounts() -> Vec<MountEntry> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(MountEntry {
                root: unescape_mountinfo(l.get(3)?),
                mount_point: PathBuf::from(unescape_mountinfo(l.get(4)?)),
                fs_type: (*r.first()?).to_string(),
                super_options: r.get(2).copied().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// Mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mounts()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Unmounts everything at or below `dir` (lazily when busy); an error
/// names what stays mounted.
fn unmount_all(tools: &Tools, dir: &Path) -> Result<(), String> {
    for _ in 0..5 {
        let mounted = mounts_under(dir);
        if mounted.is_empty() {
            return Ok(());
        }
        for m in &mounted {
            let ok = Command::new(&tools.umount)
                .arg(m)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                thread::sleep(Duration::from_millis(200));
                let _ = Command::new(&tools.umount)
                    .arg("--lazy")
                    .arg(m)
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
    let left = mounts_under(dir);
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("still mounted: {left:?}"))
    }
}

/// Deletes the tree `dir` after unmounting what is mounted in it; refuses
/// (and keeps it) when something stays mounted, so that nothing of the
/// host behind a mount is ever deleted.
fn remove_tree(tools: &Tools, dir: &Path) -> Result<(), String> {
    if fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    unmount_all(tools, dir).map_err(|e| format!("not deleting {}: {e}", dir.display()))?;
    fs::remove_dir_all(dir).map_err(|e| format!("deleting {}: {e}", dir.display()))
}

/// Runs `cmd` with a timeout, like `Command::output`. At the timeout the
/// command is killed (its status then says so) and a line saying so is
/// appended to its stderr.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> std::io::Result<Output> {
    let c = capture(cmd, timeout)?;
    let mut stderr = c.stderr;
    if c.timed_out {
        stderr.extend_from_slice(format!("\n(killed after {timeout:?})\n").as_bytes());
    }
    Ok(Output {
        status: c.status,
        stdout: c.stdout,
        stderr,
    })
}

fn describe_output(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

// --- root file system --------------------------------------------------------

/// The Debian mirror this machine's apt uses (never a built-in host name).
fn apt_mirror() -> Result<String, String> {
    if let Some(m) = std::env::var("KUBEFORGE_LAB_MIRROR")
        .ok()
        .filter(|m| !m.trim().is_empty())
    {
        return Ok(m.trim().to_string());
    }
    let security = |s: &str| s.contains("security");
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list.d/debian.sources") {
        let mut fallback = None;
        for stanza in text.split("\n\n") {
            let field = |key: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.trim().to_string())
            };
            let types = field("Types:").unwrap_or_default();
            let Some(uri) =
                field("URIs:").and_then(|u| u.split_whitespace().next().map(String::from))
            else {
                continue;
            };
            if !types.split_whitespace().any(|t| t == "deb") {
                continue;
            }
            let suites = field("Suites:").unwrap_or_default();
            if !security(&uri) && !security(&suites) {
                return Ok(uri);
            }
            fallback.get_or_insert(uri);
        }
        if let Some(uri) = fallback {
            return Ok(uri);
        }
    }
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list") {
        for line in text.lines() {
            let words: Vec<&str> = line
                .split_whitespace()
                .filter(|w| !w.starts_with('['))
                .collect();
            // `deb [opts] URI suite components`; options in brackets may
            // contain spaces only when quoted, which sources.list forbids.
            if words.first() == Some(&"deb") && words.len() >= 3 && !line.contains("security") {
                let uri = words.iter().skip(1).find(|w| w.contains("://"));
                if let Some(uri) = uri {
                    return Ok((*uri).to_string());
                }
            }
        }
    }
    Err("cannot find the Debian mirror of this machine's apt in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list (set KUBEFORGE_LAB_MIRROR)".into())
}

/// Builds the root file system unless the cached one is current. Returns
/// how long the build took, `None` when the cache was used.
fn ensure_rootfs(tools: &Tools) -> Result<Option<Duration>, String> {
    let dest = rootfs_dir();
    let parent = test_tools_dir();
    // Leftovers of interrupted builds: under the host lock nobody else
    // builds, so they are stale.
    if let Ok(entries) = fs::read_dir(&parent) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("lab-rootfs.tmp-") || name.starts_with("lab-rootfs.old-") {
                eprintln!("lab: deleting the unfinished build {}", e.path().display());
                // A killed test leaves its chrooted second stage running.
                kill(tools, "KILL", &processes_rooted_in(&e.path()));
                remove_tree(tools, &e.path())?;
            }
        }
    }
    if rootfs_current(&dest) {
        return Ok(None);
    }
    let started = Instant::now();
    fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let tmp = parent.join(format!("lab-rootfs.tmp-{}", std::process::id()));
    let log = parent.join("lab-rootfs.log");
    let result = build_rootfs(tools, &tmp, &log);
    if let Err(e) = result {
        let cleanup = remove_tree(tools, &tmp).err().unwrap_or_default();
        return Err(format!(
            "building the lab root file system failed: {e}\n--- last lines of {} ---\n{}\n{cleanup}",
            log.display(),
            tail(&log, 40)
        ));
    }
    if fs::symlink_metadata(&dest).is_ok() {
        let old = parent.join(format!("lab-rootfs.old-{}", std::process::id()));
        fs::rename(&dest, &old).map_err(|e| format!("{}: {e}", dest.display()))?;
        let t = Instant::now();
        remove_tree(tools, &old)?;
        eprintln!(
            "lab:   deleted the outdated root file system in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    fs::rename(&tmp, &dest).map_err(|e| format!("{} -> {}: {e}", tmp.display(), dest.display()))?;
    let took = started.elapsed();
    eprintln!(
        "lab: root file system ready in {:.1} s: {}",
        took.as_secs_f64(),
        dest.display()
    );
    Ok(Some(took))
}

/// Runs a build step, its output appended to `log`.
fn build_step(cmd: &mut Command, log: &Path, what: &str) -> Result<(), String> {
    let open = || {
        File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))
    };
    let mut f = open()?;
    let _ = writeln!(f, "\n===== {what}: {:?}", cmd);
    let err = open()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{what}: cannot start {:?}: {e}", cmd.get_program()))?;
    let deadline = Instant::now() + BUILD_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => return Err(format!("{what}: {s}")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what}: killed after {BUILD_TIMEOUT:?}"));
            }
            Ok(None) => thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
}

/// `PATH` with the system directories debootstrap needs.
fn system_path() -> String {
    let mut path = std::env::var("PATH").unwrap_or_default();
    for d in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        if !path.split(':').any(|p| p == d) {
            if !path.is_empty() {
                path.push(':');
            }
            path.push_str(d);
        }
    }
    path
}

fn chroot_command(chroot: &Path, root: &Path) -> Command {
    let mut c = Command::new(chroot);
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .env("LC_ALL", "C")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .arg(root);
    c
}

fn build_rootfs(tools: &Tools, tmp: &Path, log: &Path) -> Result<(), String> {
    let debootstrap = program("debootstrap").ok_or("debootstrap is missing")?;
    let chroot = program("chroot").ok_or("chroot is missing")?;
    let mirror = apt_mirror()?;
    let _ = fs::remove_file(log);
    eprintln!(
        "lab: building the node root file system (debootstrap {SUITE} from {mirror}, about a minute; log: {})",
        log.display()
    );
    fs::create_dir_all(tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;

    // 1. Download and unpack (runs nothing of the target).
    let t = Instant::now();
    build_step(
        Command::new(&debootstrap)
            .env("LC_ALL", "C")
            .env("PATH", system_path())
            .arg("--foreign")
            .arg("--variant=minbase")
            .arg("--components=main")
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg(SUITE)
            .arg(tmp)
            .arg(&mirror),
        log,
        "debootstrap (download)",
    )?;
    eprintln!(
        "lab:   downloaded and unpacked in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // 2. Configure the packages, starting no service.
    write_file(
        &tmp.join("usr/sbin/policy-rc.d"),
        "#!/bin/sh\n# kubeforge lab build: start no service\nexit 101\n",
        0o755,
    )?;
    // No fsync per file: a crash mid-build leaves a tmp tree, not a rootfs.
    let unsafe_io = tmp.join("etc/dpkg/dpkg.cfg.d/kubeforge-lab-unsafe-io");
    write_file(&unsafe_io, "force-unsafe-io\n", 0o644)?;
    let t = Instant::now();
    build_step(
        chroot_command(&chroot, tmp).args(["/debootstrap/debootstrap", "--second-stage"]),
        log,
        "debootstrap --second-stage (install)",
    )?;
    eprintln!(
        "lab:   packages installed in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    unmount_all(tools, tmp)?;
    fs::remove_file(&unsafe_io).map_err(|e| format!("{}: {e}", unsafe_io.display()))?;
    let started = processes_rooted_in(tmp);
    if !started.is_empty() {
        return Err(format!(
            "installing the packages started processes (pids {started:?}) despite policy-rc.d"
        ));
    }

    // 3. Make it a lab node.
    let t = Instant::now();
    let mut disable = chroot_command(&chroot, tmp);
    disable.args(["systemctl", "disable"]).args(DISABLED_UNITS);
    build_step(&mut disable, log, "disable nginx and keepalived")?;
    let mut mask = chroot_command(&chroot, tmp);
    mask.args(["systemctl", "mask"]).args(MASKED_UNITS);
    build_step(&mut mask, log, "mask noisy units")?;
    write_file(
        &tmp.join("etc/systemd/system/lab-cgroup-rw.service"),
        CGROUP_RW_UNIT,
        0o644,
    )?;
    build_step(
        chroot_command(&chroot, tmp).args(["systemctl", "enable", "lab-cgroup-rw.service"]),
        log,
        "enable lab-cgroup-rw.service",
    )?;
    // A bounded shutdown: teardown never waits 90 s for a unit.
    write_file(
        &tmp.join("etc/systemd/system.conf.d/kubeforge-lab.conf"),
        "[Manager]\nDefaultTimeoutStopSec=10s\n",
        0o644,
    )?;
    write_file(
        &tmp.join("etc/ssh/sshd_config.d/kubeforge-lab.conf"),
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n",
        0o644,
    )?;
    write_file(
        &tmp.join("etc/hosts"),
        "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
        0o644,
    )?;
    write_file(&tmp.join("etc/hostname"), "kflab\n", 0o644)?;
    // Each node gets its own machine-id and ssh host key.
    write_file(&tmp.join("etc/machine-id"), "", 0o444)?;
    let dbus_id = tmp.join("var/lib/dbus/machine-id");
    let _ = fs::remove_file(&dbus_id);
    mkdir(&tmp.join("var/lib/dbus"), 0o755)?;
    std::os::unix::fs::symlink("/etc/machine-id", &dbus_id)
        .map_err(|e| format!("{}: {e}", dbus_id.display()))?;
    if let Ok(entries) = fs::read_dir(tmp.join("etc/ssh")) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                fs::remove_file(e.path())
                    .map_err(|err| format!("{}: {err}", e.path().display()))?;
            }
        }
    }
    mkdir(&tmp.join("root/.ssh"), 0o700)?;
    // A persistent journal: readable from the host when SSH is gone.
    mkdir(&tmp.join("var/log/journal"), 0o2755)?;
    mkdir(&tmp.join("var/lib/containerd"), 0o711)?;
    mkdir(&tmp.join("var/lib/kubelet"), 0o700)?;
    // debootstrap removes its own policy-rc.d (which ours was) at the end.
    let _ = fs::remove_file(tmp.join("usr/sbin/policy-rc.d"));
    if let Ok(entries) = fs::read_dir(tmp.join("var/cache/apt/archives")) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "deb") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    for need in [
        "usr/lib/systemd/systemd",
        "usr/sbin/sshd",
        "usr/sbin/nginx",
        "usr/sbin/keepalived",
        "usr/lib/nginx/modules/ngx_stream_module.so",
        "usr/bin/curl",
    ] {
        if !tmp.join(need).exists() {
            return Err(format!("the built root file system lacks /{need}"));
        }
    }
    for unit in DISABLED_UNITS {
        let wants = tmp
            .join("etc/systemd/system/multi-user.target.wants")
            .join(unit);
        if fs::symlink_metadata(&wants).is_ok() {
            return Err(format!("{unit} is still enabled"));
        }
    }
    write_file(&tmp.join(STAMP_FILE), rootfs_stamp(), 0o644)?;
    eprintln!("lab:   configured in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// Processes whose root directory is `dir` (daemons a package started).
fn processes_rooted_in(dir: &Path) -> Vec<u32> {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|r| r == dir))
        .collect()
}

// --- cgroups -----------------------------------------------------------------

/// This process's own cgroup directory in every mounted hierarchy, and
/// whether it is the cpuset one (whose new children start without CPUs).
fn own_cgroups() -> Result<Vec<(PathBuf, bool)>, String> {
    let text =
        fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let mounts = mounts();
    let mut dirs = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let mount = mounts.iter().find(|m| {
            if controllers.is_empty() {
                m.fs_type == "cgroup2"
            } else {
                m.fs_type == "cgroup"
                    && controllers
                        .split(',')
                        .all(|c| m.super_options.split(',').any(|o| o == c))
            }
        });
        let Some(mount) = mount else { continue }; // a hierarchy nobody mounted
        let Some(rel) = Path::new(path).strip_prefix(&mount.root).ok() else {
            continue; // this process lives outside what is mounted
        };
        let cpuset = controllers.split(',').any(|c| c == "cpuset");
        dirs.push((mount.mount_point.join(rel), cpuset));
    }
    if dirs.is_empty() {
        return Err("no cgroup hierarchy is mounted".into());
    }
    Ok(dirs)
}

/// Creates `dir` below `base`, copying cpuset.cpus/mems into every new
/// level of a cpuset hierarchy.
fn make_cgroup(base: &Path, rel: &Path, cpuset: bool) -> Result<(), String> {
    let mut dir = base.to_path_buf();
    for part in rel.components() {
        let parent = dir.clone();
        dir.push(part);
        if !dir.exists() {
            fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        if cpuset {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let current = fs::read_to_string(dir.join(file)).unwrap_or_default();
                if current.trim().is_empty() {
                    let value = fs::read_to_string(parent.join(file))
                        .map_err(|e| format!("{}: {e}", parent.join(file).display()))?;
                    fs::write(dir.join(file), value.trim())
                        .map_err(|e| format!("{}: {e}", dir.join(file).display()))?;
                }
            }
        }
    }
    Ok(())
}

/// Every directory of the cgroup tree `dir`, deepest first.
fn cgroup_tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(cgroup_tree(&e.path()));
            }
        }
    }
    if dir.is_dir() {
        out.push(dir.to_path_buf());
    }
    out
}

fn cgroup_pids(dir: &Path) -> Vec<u32> {
    cgroup_tree(dir)
        .iter()
        .flat_map(|d| {
            fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Kills everything in the cgroup trees `dirs` until they are empty (or
/// `timeout` passed); true when empty.
fn kill_cgroups(tools: &Tools, dirs: &[PathBuf], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let pids: BTreeSet<u32> = dirs.iter().flat_map(|d| cgroup_pids(d)).collect();
        if pids.is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        kill(tools, "KILL", &pids.into_iter().collect::<Vec<_>>());
        thread::sleep(Duration::from_millis(50));
    }
}

/// Removes the (empty) cgroup trees `dirs`; the errors.
fn remove_cgroups(dirs: &[PathBuf]) -> Vec<String> {
    let mut errors = Vec::new();
    for d in dirs {
        for dir in cgroup_tree(d) {
            let mut result = fs::remove_dir(&dir);
            for _ in 0..20 {
                // A cgroup whose last process just died can be busy briefly.
                if result.is_ok() || !dir.exists() {
                    break;
                }
                thread::sleep(Duration::from_millis(50));
                result = fs::remove_dir(&dir);
            }
            if let Err(e) = result {
                if dir.exists() {
                    errors.push(format!("{}: {e}", dir.display()));
                }
            }
        }
    }
    errors
}

// --- the host lock -----------------------------------------------------------

/// True while a lab of this process is up.
static LAB_BUSY: Mutex<bool> = Mutex::new(false);
static LAB_FREED: Condvar = Condvar::new();

/// The process-wide half of "one lab at a time" (a guard that, unlike a
/// `MutexGuard`, may move between threads with its `Lab`).
struct ProcessLock;

impl ProcessLock {
    fn acquire() -> ProcessLock {
        let mut busy = LAB_BUSY.lock().unwrap_or_else(PoisonError::into_inner);
        while *busy {
            busy = LAB_FREED.wait(busy).unwrap_or_else(PoisonError::into_inner);
        }
        *busy = true;
        ProcessLock
    }
}

impl Drop for ProcessLock {
    fn drop(&mut self) {
        *LAB_BUSY.lock().unwrap_or_else(PoisonError::into_inner) = false;
        LAB_FREED.notify_one();
    }
}

/// `flock LOCK_FILE` held by a child process for as long as its stdin is
/// open: released on drop, and also when this process dies.
struct HostLock {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl HostLock {
    fn acquire(tools: &Tools) -> Result<HostLock, String> {
        let held = Command::new(&tools.flock)
            .args([
                "--nonblock",
                "--conflict-exit-code",
                "75",
                LOCK_FILE,
                "true",
            ])
            .status()
            .map_err(|e| format!("flock: {e}"))?;
        if held.code() == Some(75) {
            eprintln!("lab: another lab runs on this machine ({LOCK_FILE} is locked); waiting");
        }
        let mut child = Command::new(&tools.flock)
            .args([
                "--exclusive",
                "--timeout",
                &LOCK_TIMEOUT_SECS.to_string(),
                LOCK_FILE,
            ])
            .args(["sh", "-c", "echo locked; exec cat >/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("flock: {e}"))?;
        let stdin = child.stdin.take();
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        if line.trim() != "locked" {
            drop(stdin);
            let status = child.wait().map_err(|e| e.to_string())?;
            return Err(format!("cannot lock {LOCK_FILE} ({status})"));
        }
        Ok(HostLock { child, stdin })
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

// --- the lab -----------------------------------------------------------------

struct Node {
    name: String,
    address: Ipv4Addr,
    netns: String,
    veth: String,
    dir: PathBuf,
    netns_created: bool,
    mounted: bool,
    /// This node's cgroup in every hierarchy.
    cgroups: Vec<PathBuf>,
    /// The shell loop running nspawn.
    runner: Option<Child>,
}

impl Node {
    fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }
    fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    fn pid_file(&self) -> PathBuf {
        self.dir.join("nspawn.pid")
    }
    fn stop_file(&self) -> PathBuf {
        self.dir.join("stop")
    }
}

/// How long the parts of [`Lab::up`] took.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    /// Building the root file system; `None` when the cached one was used.
    pub rootfs_build: Option<Duration>,
    /// From creating the bridge until every node answered over SSH.
    pub up: Duration,
}

/// Running lab nodes; see the module documentation. Torn down on drop.
pub struct Lab {
    tools: Tools,
    dir: Option<TempDir>,
    key: PathBuf,
    nodes: Vec<Node>,
    /// `<own cgroup>/kflab` in every hierarchy, with the cpuset flag.
    cgroup_bases: Vec<(PathBuf, bool)>,
    bridge: bool,
    watched: Vec<String>,
    sysctls: Vec<(String, String)>,
    timings: Timings,
    host_lock: Option<HostLock>,
    process_lock: Option<ProcessLock>,
}

impl Lab {
    /// Boots one node per `(name, address)` (addresses in 10.77.0.0/24,
    /// not .0, .1 or .255; names are host names) and waits until SSH to
    /// every node works. Builds the root file system first when needed.
    /// Panics when anything fails, after tearing down what was set up.
    pub fn up(nodes: &[(&str, Ipv4Addr)]) -> Lab {
        match Lab::try_up(nodes) {
            Ok(lab) => lab,
            Err(e) => panic!("lab: {e}"),
        }
    }

    fn try_up(specs: &[(&str, Ipv4Addr)]) -> Result<Lab, String> {
        validate(specs)?;
        let tools = Tools::find()?;
        root_privileges()?;
        let process_lock = ProcessLock::acquire();
        let host_lock = HostLock::acquire(&tools)?;
        clean_stale(&tools);
        let rootfs_build = ensure_rootfs(&tools)?;
        let rootfs = rootfs_dir();
        if rootfs.to_string_lossy().contains([',', ':']) {
            return Err(format!(
                "{}: overlayfs cannot take a lower directory whose path holds ',' or ':'",
                rootfs.display()
            ));
        }
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("kflab-")
            .tempdir()
            .map_err(|e| format!("lab directory: {e}"))?;
        fs::write(LOCK_FILE, format!("{}\n", dir.path().display()))
            .map_err(|e| format!("{LOCK_FILE}: {e}"))?;
        let cgroup_bases: Vec<(PathBuf, bool)> = own_cgroups()?
            .into_iter()
            .map(|(d, cpuset)| (d.join("kflab"), cpuset))
            .collect();
        let mut lab = Lab {
            key: dir.path().join("id_ed25519"),
            dir: Some(dir),
            tools,
            nodes: Vec::new(),
            cgroup_bases,
            bridge: false,
            watched: Vec::new(),
            sysctls: Vec::new(),
            timings: Timings {
                rootfs_build,
                up: Duration::ZERO,
            },
            host_lock: Some(host_lock),
            process_lock: Some(process_lock),
        };
        // What a killed process must clean up (read by clean_stale).
        let bases: String = lab
            .cgroup_bases
            .iter()
            .map(|(d, _)| format!("{}\n", d.display()))
            .collect();
        write_file(&lab.dir().join("cgroups"), bases, 0o644)?;
        lab.raise_limits(specs.len())?;
        lab.bridge_up()?;
        check(
            Command::new(&lab.tools.ssh_keygen)
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "kubeforge-lab", "-f"])
                .arg(&lab.key),
            Duration::from_secs(30),
        )?;
        for (i, (name, address)) in specs.iter().enumerate() {
            lab.node_up(i, name, *address, &rootfs)?;
        }
        lab.wait_ssh()?;
        lab.timings.up = started.elapsed();
        Ok(lab)
    }

    fn dir(&self) -> &Path {
        match &self.dir {
            Some(d) => d.path(),
            None => Path::new("/nonexistent"),
        }
    }

    /// Raises the host's inotify limits, and its ARP table's for `nodes`
    /// nodes; restored when the lab goes down.
    fn raise_limits(&mut self, nodes: usize) -> Result<(), String> {
        let n2 = (nodes as u64 + 1).pow(2);
        let neighbour = NEIGHBOUR_SYSCTLS.iter().map(|(p, k)| (*p, k * n2));
        let wanted: Vec<(&str, u64)> = INOTIFY_SYSCTLS.iter().copied().chain(neighbour).collect();
        for (path, want) in &wanted {
            let old = fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
            if old.trim().parse::<u64>().is_ok_and(|v| v < *want) {
                fs::write(path, want.to_string()).map_err(|e| format!("{path}: {e}"))?;
                self.sysctls
                    .push(((*path).to_string(), old.trim().to_string()));
            }
        }
        // For clean_stale, should this process die before restoring them.
        let saved: String = self
            .sysctls
            .iter()
            .map(|(p, v)| format!("{p} {v}\n"))
            .collect();
        write_file(&self.dir().join("sysctls"), saved, 0o644)
    }

    fn ip(&self, args: &[&str]) -> Result<(), String> {
        check(
            Command::new(&self.tools.ip).args(args),
            Duration::from_secs(10),
        )
        .map(|_| ())
    }

    fn bridge_up(&mut self) -> Result<(), String> {
        self.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        self.bridge = true;
        self.ip(&[
            "addr",
            "add",
            &format!("{HOST_ADDRESS}/{PREFIX_LEN}"),
            "dev",
            BRIDGE,
        ])?;
        self.ip(&["link", "set", BRIDGE, "up"])
    }

    fn node_up(
        &mut self,
        index: usize,
        name: &str,
        address: Ipv4Addr,
        rootfs: &Path,
    ) -> Result<(), String> {
        let dir = self.dir().join("nodes").join(name);
        let cgroups: Vec<PathBuf> = self
            .cgroup_bases
            .iter()
            .map(|(b, _)| b.join(name))
            .collect();
        self.nodes.push(Node {
            name: name.to_string(),
            address,
            netns: format!("{NETNS_PREFIX}{name}"),
            veth: format!("kfveth{index}"),
            dir: dir.clone(),
            netns_created: false,
            mounted: false,
            cgroups,
            runner: None,
        });
        let i = self.nodes.len() - 1;
        let (netns, veth) = (self.nodes[i].netns.clone(), self.nodes[i].veth.clone());

        // Network: eth0 in the node's namespace, its peer in the bridge.
        self.ip(&["netns", "add", &netns])?;
        self.nodes[i].netns_created = true;
        self.ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ])?;
        self.ip(&["link", "set", &veth, "master", BRIDGE, "up"])?;
        let cidr = format!("{address}/{PREFIX_LEN}");
        self.ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        self.ip(&["-n", &netns, "addr", "add", &cidr, "dev", "eth0"])?;
        self.ip(&["-n", &netns, "link", "set", "eth0", "up"])?;

        // Root file system: an overlay of the shared one.
        for sub in ["upper", "work", "merged", "containerd", "kubelet"] {
            mkdir(&dir.join(sub), 0o755)?;
        }
        let merged = dir.join("merged");
        check(
            Command::new(&self.tools.mount)
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    rootfs.display(),
                    dir.join("upper").display(),
                    dir.join("work").display()
                ))
                .arg(&merged),
            Duration::from_secs(30),
        )?;
        self.nodes[i].mounted = true;
        write_file(&merged.join("etc/hostname"), format!("{name}\n"), 0o644)?;
        let hosts = fs::read_to_string(merged.join("etc/hosts")).unwrap_or_default();
        write_file(
            &merged.join("etc/hosts"),
            format!("{hosts}{address} {name}\n"),
            0o644,
        )?;
        let uuid = fs::read_to_string("/proc/sys/kernel/random/uuid")
            .map_err(|e| format!("machine-id: {e}"))?;
        write_file(
            &merged.join("etc/machine-id"),
            format!("{}\n", uuid.trim().replace('-', "")),
            0o444,
        )?;
        check(
            Command::new(&self.tools.ssh_keygen)
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(merged.join("etc/ssh/ssh_host_ed25519_key")),
            Duration::from_secs(30),
        )?;
        let public = fs::read_to_string(self.key.with_extension("pub"))
            .map_err(|e| format!("lab key: {e}"))?;
        mkdir(&merged.join("root/.ssh"), 0o700)?;
        write_file(&merged.join("root/.ssh/authorized_keys"), public, 0o600)?;

        // Its own cgroup in every hierarchy.
        for (base, cpuset) in &self.cgroup_bases {
            let Some(parent) = base.parent() else {
                continue;
            };
            let rel = Path::new("kflab").join(name);
            make_cgroup(parent, &rel, *cpuset)?;
        }

        self.boot(i)
    }

    /// Starts node `i` (its root file system mounted, its network and
    /// cgroups made): systemd-nspawn from [`NODE_LOOP`], the console
    /// appended to its console log.
    fn boot(&mut self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        let (name, netns, dir) = (node.name.clone(), node.netns.clone(), node.dir.clone());
        let merged = node.merged();
        let procs: String = node
            .cgroups
            .iter()
            .map(|c| format!("{}\n", c.join("cgroup.procs").display()))
            .collect();
        let console = File::options()
            .create(true)
            .append(true)
            .open(node.console())
            .map_err(|e| format!("console: {e}"))?;
        let console2 = console.try_clone().map_err(|e| format!("console: {e}"))?;
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(NODE_LOOP)
            .arg(format!("kflab-{name}"))
            .arg(&self.tools.nspawn)
            .arg("--quiet")
            .arg("-D")
            .arg(&merged)
            .arg("--boot")
            .arg(format!("--machine={name}"))
            .arg(format!("--network-namespace-path=/run/netns/{netns}"))
            .arg("--private-network")
            .arg("--register=no")
            .arg("--keep-unit")
            .arg("--link-journal=no")
            .arg("--system-call-filter=@keyring")
            .arg(format!(
                "--bind={}:/var/lib/containerd",
                dir.join("containerd").display()
            ))
            .arg(format!(
                "--bind={}:/var/lib/kubelet",
                dir.join("kubelet").display()
            ))
            .env("KFLAB_CGROUP_PROCS", procs)
            .env("KFLAB_PID_FILE", node.pid_file())
            .env("KFLAB_STOP", node.stop_file())
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console2);
        let child = cmd
            .spawn()
            .map_err(|e| format!("{name}: cannot start systemd-nspawn: {e}"))?;
        self.nodes[i].runner = Some(child);
        Ok(())
    }

    fn wait_ssh(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + SSH_READY_TIMEOUT;
        let mut waiting: Vec<usize> = (0..self.nodes.len()).collect();
        while !waiting.is_empty() {
            let mut still = Vec::new();
            for &i in &waiting {
                if let Some(r) = self.nodes[i].runner.as_mut() {
                    if let Ok(Some(status)) = r.try_wait() {
                        let node = &self.nodes[i];
                        return Err(format!(
                            "node {} stopped while booting ({status}); its console:\n{}",
                            node.name,
                            tail(&node.console(), 40)
                        ));
                    }
                }
                let out = output_with_timeout(
                    &mut self.ssh_command(self.nodes[i].address, "true"),
                    Duration::from_secs(10),
                );
                if !out.is_ok_and(|o| o.status.success()) {
                    still.push(i);
                }
            }
            waiting = still;
            if waiting.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let names: Vec<String> = waiting
                    .iter()
                    .map(|&i| {
                        let n = &self.nodes[i];
                        format!(
                            "{} ({}); its console:\n{}",
                            n.name,
                            n.address,
                            tail(&n.console(), 30)
                        )
                    })
                    .collect();
                return Err(format!(
                    "no SSH after {SSH_READY_TIMEOUT:?} to {}",
                    names.join("\n")
                ));
            }
            thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// How long [`Lab::up`] took.
    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// The lab's private ssh key (root on every node accepts it).
    pub fn key(&self) -> &Path {
        &self.key
    }

    /// A known_hosts file for the installer under test: in the lab
    /// directory, not created yet.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir().join("known_hosts")
    }

    /// The lab's temporary directory (deleted on drop).
    pub fn path(&self) -> &Path {
        self.dir()
    }

    /// The nodes' names and addresses, in the order given to [`Lab::up`].
    pub fn nodes(&self) -> Vec<(String, Ipv4Addr)> {
        self.nodes
            .iter()
            .map(|n| (n.name.clone(), n.address))
            .collect()
    }

    fn node(&self, name: &str) -> &Node {
        match self.nodes.iter().find(|n| n.name == name) {
            Some(n) => n,
            None => panic!("lab: no node {name}"),
        }
    }

    /// The address of node `name`; panics for an unknown node.
    pub fn node_address(&self, name: &str) -> Ipv4Addr {
        self.node(name).address
    }

    /// The file nspawn's output (the node's console) goes to.
    pub fn console_log(&self, name: &str) -> PathBuf {
        self.node(name).console()
    }

    /// Units whose journal is printed for every node when the test panics.
    pub fn watch_units(&mut self, units: &[&str]) {
        for u in units {
            if !self.watched.iter().any(|w| w == u) {
                self.watched.push((*u).to_string());
            }
        }
    }

    /// The arguments `ssh` gets for a node, before the remote command.
    pub fn ssh_args(&self) -> Vec<String> {
        let mut args = vec![
            "-F".to_string(),
            "/dev/null".to_string(),
            "-i".to_string(),
            self.key.display().to_string(),
        ];
        for o in [
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "ConnectTimeout=3",
            "IdentitiesOnly=yes",
            "LogLevel=ERROR",
            "ServerAliveInterval=5",
            "ServerAliveCountMax=3",
        ] {
            args.push("-o".into());
            args.push(o.into());
        }
        args
    }

    fn ssh_command(&self, address: Ipv4Addr, cmd: &str) -> Command {
        let mut c = Command::new(&self.tools.ssh);
        c.args(self.ssh_args())
            .arg(format!("root@{address}"))
            .arg("--")
            .arg(cmd);
        c
    }

    /// Runs shell command `cmd` as root on `node` over SSH (killed after
    /// two minutes).
    pub fn ssh(&self, node: &str, cmd: &str) -> Output {
        self.ssh_timeout(node, cmd, SSH_TIMEOUT)
    }

    /// [`Lab::ssh`] with another timeout.
    pub fn ssh_timeout(&self, node: &str, cmd: &str, timeout: Duration) -> Output {
        let address = self.node(node).address;
        match output_with_timeout(&mut self.ssh_command(address, cmd), timeout) {
            Ok(o) => o,
            Err(e) => panic!("lab: cannot run ssh: {e}"),
        }
    }

    /// Runs `cmd` on `node` and returns its stdout; panics with its output
    /// when it fails.
    pub fn ssh_ok(&self, node: &str, cmd: &str) -> String {
        let out = self.ssh(node, cmd);
        if !out.status.success() {
            panic!("{}", describe_output(&format!("{node}$ {cmd}"), &out));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The last `lines` lines of the journal of `unit` on `node` (over SSH;
    /// read from the node's files when SSH fails). Never panics.
    pub fn journal(&self, node: &str, unit: &str, lines: usize) -> String {
        let Some(n) = self.nodes.iter().find(|n| n.name == node) else {
            return format!("(no node {node})");
        };
        self.journal_of(n, Some(unit), lines)
    }

    fn journal_of(&self, node: &Node, unit: Option<&str>, lines: usize) -> String {
        let mut cmd = format!("journalctl --no-pager -n {lines}");
        if let Some(u) = unit {
            cmd.push_str(&format!(" -u '{}'", u.replace('\'', "")));
        }
        let out = output_with_timeout(
            &mut self.ssh_command(node.address, &cmd),
            Duration::from_secs(20),
        );
        match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                // The node's persistent journal, read from the host.
                let dir = node.merged().join("var/log/journal");
                match (&self.tools.journalctl, node.mounted && dir.is_dir()) {
                    (Some(j), true) => {
                        let mut c = Command::new(j);
                        c.arg("--no-pager")
                            .arg(format!("--directory={}", dir.display()))
                            .arg("-n")
                            .arg(lines.to_string());
                        if let Some(u) = unit {
                            c.arg("-u").arg(u);
                        }
                        match output_with_timeout(&mut c, Duration::from_secs(20)) {
                            Ok(o) => format!(
                                "(ssh failed: {why}; read from the node's files)\n{}{}",
                                String::from_utf8_lossy(&o.stdout),
                                String::from_utf8_lossy(&o.stderr)
                            ),
                            Err(e) => format!("(ssh failed: {why}; journalctl: {e})"),
                        }
                    }
                    _ => format!("(ssh failed: {why})"),
                }
            }
        }
    }

    fn print_diagnostics(&self) {
        for node in &self.nodes {
            if self.watched.is_empty() {
                eprintln!(
                    "===== lab node {} ({}): last 60 lines of its journal =====\n{}",
                    node.name,
                    node.address,
                    self.journal_of(node, None, 60).trim_end()
                );
            }
            for unit in &self.watched {
                eprintln!(
                    "===== lab node {} ({}): journalctl -u {unit} -n 60 =====\n{}",
                    node.name,
                    node.address,
                    self.journal_of(node, Some(unit), 60).trim_end()
                );
            }
            // nginx logs why it refused a connection to its own file.
            let nginx_log = node.dir.join("upper/var/log/nginx/error.log");
            if nginx_log.exists() {
                eprintln!(
                    "===== lab node {}: last 30 lines of {} =====\n{}",
                    node.name,
                    nginx_log.display(),
                    tail(&nginx_log, 30)
                );
            }
            eprintln!(
                "===== lab node {}: last 30 lines of its console ({}) =====\n{}",
                node.name,
                node.console().display(),
                tail(&node.console(), 30)
            );
        }
    }

    /// Stops every node and deletes everything the lab made; the problems.
    fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let tools = self.tools.clone();

        // 1. Power off: SIGTERM makes nspawn shut the node down.
        for node in &self.nodes {
            let _ = File::create(node.stop_file());
        }
        let mut signalled: Vec<Option<u32>> = vec![None; self.nodes.len()];
        let deadline = Instant::now() + POWEROFF_TIMEOUT;
        loop {
            let mut running = false;
            for (i, node) in self.nodes.iter_mut().enumerate() {
                let Some(r) = node.runner.as_mut() else {
                    continue;
                };
                if !matches!(r.try_wait(), Ok(None)) {
                    continue;
                }
                running = true;
                let pid = read_pid(&node.pid_file());
                if pid.is_some() && pid != signalled[i] {
                    kill(&tools, "TERM", &pid.into_iter().collect::<Vec<_>>());
                    signalled[i] = pid;
                }
            }
            if !running || Instant::now() >= deadline {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        // 2. Whatever is left, and the runners.
        let all_cgroups: Vec<PathBuf> = self.nodes.iter().flat_map(|n| n.cgroups.clone()).collect();
        for node in &mut self.nodes {
            if let Some(mut r) = node.runner.take() {
                if matches!(r.try_wait(), Ok(None)) {
                    problems.push(format!(
                        "node {} did not power off within {POWEROFF_TIMEOUT:?}: killed",
                        node.name
                    ));
                    let _ = r.kill();
                }
                let _ = r.wait();
            }
        }
        if !kill_cgroups(&tools, &all_cgroups, Duration::from_secs(10)) {
            problems.push("processes survive in the nodes' cgroups".into());
        }
        // 3. Mounts, network, cgroups.
        for node in &mut self.nodes {
            if node.mounted {
                match unmount_all(&tools, &node.merged()) {
                    Ok(()) => node.mounted = false,
                    Err(e) => problems.push(format!("node {}: {e}", node.name)),
                }
            }
            if node.netns_created {
                let _ = Command::new(&tools.ip)
                    .args(["link", "del", &node.veth])
                    .stderr(Stdio::null())
                    .status();
                match check(
                    Command::new(&tools.ip).args(["netns", "del", &node.netns]),
                    Duration::from_secs(10),
                ) {
                    Ok(_) => node.netns_created = false,
                    Err(e) => problems.push(e),
                }
            }
        }
        problems.extend(remove_cgroups(&all_cgroups));
        let bases: Vec<PathBuf> = self.cgroup_bases.iter().map(|(b, _)| b.clone()).collect();
        problems.extend(remove_cgroups(&bases));
        if self.bridge {
            match check(
                Command::new(&tools.ip).args(["link", "del", BRIDGE]),
                Duration::from_secs(10),
            ) {
                Ok(_) => self.bridge = false,
                Err(e) => problems.push(e),
            }
        }
        for (path, old) in self.sysctls.drain(..).rev() {
            if let Err(e) = fs::write(&path, &old) {
                problems.push(format!("restoring {path}={old}: {e}"));
            }
        }
        // 4. The lab directory, unless something stays mounted in it.
        if let Some(dir) = self.dir.take() {
            let path = dir.keep();
            match remove_tree(&tools, &path) {
                Ok(()) => {
                    let _ = fs::write(LOCK_FILE, "");
                }
                Err(e) => problems.push(e),
            }
        }
        problems
    }
}

impl Lab {
    /// Cuts node `name`'s power: SIGKILL to everything in its cgroups
    /// (nspawn, systemd and every service), no shutdown. What it wrote is
    /// kept (its files live on the host), its network namespace and
    /// address stay. [`Lab::power_on`] boots it again.
    pub fn power_off(&mut self, name: &str) {
        let Some(i) = self.nodes.iter().position(|n| n.name == name) else {
            panic!("lab: no node {name}");
        };
        let cgroups = self.nodes[i].cgroups.clone();
        if !kill_cgroups(&self.tools, &cgroups, Duration::from_secs(10)) {
            panic!("lab: processes survive in the cgroups of node {name}");
        }
        if let Some(mut r) = self.nodes[i].runner.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
    }

    /// Boots node `name` again after [`Lab::power_off`] and waits until
    /// SSH to it works; its enabled units start as on any boot.
    pub fn power_on(&mut self, name: &str) {
        let Some(i) = self.nodes.iter().position(|n| n.name == name) else {
            panic!("lab: no node {name}");
        };
        assert!(
            self.nodes[i].runner.is_none(),
            "lab: node {name} is running"
        );
        if let Err(e) = self.boot(i) {
            panic!("lab: {e}");
        }
        let deadline = Instant::now() + SSH_READY_TIMEOUT;
        let address = self.nodes[i].address;
        loop {
            let out = output_with_timeout(
                &mut self.ssh_command(address, "true"),
                Duration::from_secs(10),
            );
            if out.is_ok_and(|o| o.status.success()) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "lab: no SSH to {name} within {SSH_READY_TIMEOUT:?} of booting it again; its console:\n{}",
                    tail(&self.nodes[i].console(), 30)
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if thread::panicking() {
            self.print_diagnostics();
        }
        for p in self.teardown() {
            eprintln!("lab: warning: teardown: {p}");
        }
        drop(self.host_lock.take());
        drop(self.process_lock.take());
    }
}

fn validate(specs: &[(&str, Ipv4Addr)]) -> Result<(), String> {
    if specs.is_empty() {
        return Err("a lab needs at least one node".into());
    }
    let mut names = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    for (name, address) in specs {
        let valid = !name.is_empty()
            && name.len() <= 40
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            return Err(format!(
                "node name {name:?}: use 1-40 of a-z, 0-9 and '-', starting with a letter"
            ));
        }
        let o = address.octets();
        if o[..3] != HOST_ADDRESS.octets()[..3] || matches!(o[3], 0 | 1 | 255) {
            return Err(format!(
                "node {name}: address {address} is not a node address of {HOST_ADDRESS}/{PREFIX_LEN}"
            ));
        }
        if !names.insert(*name) || !addresses.insert(*address) {
            return Err(format!(
                "node {name} ({address}): duplicate name or address"
            ));
        }
    }
    Ok(())
}

/// Deletes what a lab of a killed process left behind. Runs under the host
/// lock, so everything named like a lab's is stale.
fn clean_stale(tools: &Tools) {
    let previous = fs::read_to_string(LOCK_FILE).unwrap_or_default();
    let previous = previous.trim();
    let mut bases: Vec<PathBuf> = own_cgroups()
        .unwrap_or_default()
        .into_iter()
        .map(|(d, _)| d.join("kflab"))
        .collect();
    // Only a lab directory (it holds the `cgroups` file) is ever deleted.
    let old_dir = Some(PathBuf::from(previous)).filter(|d| {
        !previous.is_empty()
            && d.join("cgroups").is_file()
            && d.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("kflab-"))
    });
    if let Some(d) = &old_dir {
        if let Ok(text) = fs::read_to_string(d.join("cgroups")) {
            bases.extend(text.lines().filter(|l| !l.is_empty()).map(PathBuf::from));
        }
    }
    bases.sort();
    bases.dedup();
    let stale_cgroups = bases.iter().any(|b| b.exists());
    let netns: Vec<String> = Command::new(&tools.ip)
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(NETNS_PREFIX))
        .map(String::from)
        .collect();
    let bridge = Path::new("/sys/class/net").join(BRIDGE).exists();
    if old_dir.is_none() && !stale_cgroups && netns.is_empty() && !bridge {
        return;
    }
    eprintln!(
        "lab: cleaning up after an earlier lab that was not torn down (directory {previous:?}, namespaces {netns:?}, bridge {bridge})"
    );
    if !kill_cgroups(tools, &bases, Duration::from_secs(10)) {
        eprintln!("lab: warning: processes survive in {bases:?}");
    }
    for ns in &netns {
        let _ = Command::new(&tools.ip)
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
    if bridge {
        let _ = Command::new(&tools.ip)
            .args(["link", "del", BRIDGE])
            .stderr(Stdio::null())
            .status();
    }
    for e in remove_cgroups(&bases) {
        eprintln!("lab: warning: {e}");
    }
    if let Some(d) = old_dir {
        let saved = fs::read_to_string(d.join("sysctls")).unwrap_or_default();
        for (path, value) in saved.lines().rev().filter_map(|l| l.split_once(' ')) {
            let raised = INOTIFY_SYSCTLS.iter().chain(NEIGHBOUR_SYSCTLS);
            if raised.map(|(p, _)| *p).any(|p| p == path) {
                let _ = fs::write(path, value);
            }
        }
        if let Err(e) = remove_tree(tools, &d) {
            eprintln!("lab: warning: {e}");
        }
    }
    let _ = fs::write(LOCK_FILE, "");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b\\c"), r"/a b\\c");
        assert_eq!(unescape_mountinfo(r"/x\011"), "/x\t");
    }

    #[test]
    fn node_specs() {
        let a = |d| Ipv4Addr::new(10, 77, 0, d);
        assert!(validate(&[("n1", a(11)), ("n2", a(12))]).is_ok());
        assert!(validate(&[]).is_err());
        assert!(validate(&[("n1", a(1))]).is_err());
        assert!(validate(&[("n1", Ipv4Addr::new(10, 78, 0, 11))]).is_err());
        assert!(validate(&[("N1", a(11))]).is_err());
        assert!(validate(&[("n1", a(11)), ("n1", a(12))]).is_err());
        assert!(validate(&[("n1", a(11)), ("n2", a(11))]).is_err());
    }

    #[test]
    fn a_lab_may_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Lab>();
    }

    #[test]
    fn stamp_names_every_package() {
        for p in PACKAGES {
            assert!(rootfs_stamp().contains(p));
        }
    }
}
