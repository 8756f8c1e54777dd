//! Fault injection on the HA lab (3 control-plane + etcd, 2 LB with a
//! VIP, 1 worker): `kubeforge apply` is cut short in the ways a real run
//! can be, and after each fault
//!
//! - no managed file on any node is half-written: each is the version
//!   the apply was writing (the rendered manifest: every node's files and
//!   binaries with their sha256, as `kubeforge render` lists them in
//!   manifest.json, computed from the state directory after the fault),
//!   the version it had before the apply, or for nginx.conf a rendered
//!   "drained" version (a node taken out of the load balancer); a
//!   temporary upload file left next to a managed file is counted too;
//! - the next apply converges (exit 0, every file as rendered);
//! - the apply after it says "No changes".
//!
//! The faults: kill -9 of kubeforge at `KUBEFORGE_FAULT_KILLS` (default
//! 20) points of a fresh apply, each on freshly booted nodes, chosen from
//! a reference apply's progress lines (evenly spread over them, plus two
//! points in time before the first line); and, on the reference's
//! cluster, one after the other: the ssh process of an upload killed, a
//! node's ssh master connection killed mid-upload, one etcd member
//! stopped during a rolling etcd change, a control-plane node's power cut
//! during its rolling apiserver restart (booted again 10 s later), and
//! kill -9 while a node is drained from the load balancer
//! (`KUBEFORGE_FAULT_CHAIN=0` leaves these out).
//!
//! Minutes of lab time per fault: not part of the test suite (ignored),
//! run by `tests/fault/run.sh`, which prints the `fault:` lines and the
//! summary. The stand-ins are used unless `KUBEFORGE_K8S_BIN_DIR` names
//! the real binaries.
#![allow(clippy::print_stderr)]

use crate::lab_apply::{binaries, inventory, start, Kf};
use kubeforge_tests::lab::{self, Lab};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const TEST: &str = "lab_fault";
/// The longest a single apply may take before it counts as hung.
const APPLY_DEADLINE: Duration = Duration::from_secs(600);

fn ha_nodes() -> [(&'static str, Ipv4Addr); 6] {
    [
        ("cp1", Ipv4Addr::new(10, 77, 0, 11)),
        ("cp2", Ipv4Addr::new(10, 77, 0, 12)),
        ("cp3", Ipv4Addr::new(10, 77, 0, 13)),
        ("lb1", Ipv4Addr::new(10, 77, 0, 31)),
        ("lb2", Ipv4Addr::new(10, 77, 0, 32)),
        ("worker1", Ipv4Addr::new(10, 77, 0, 21)),
    ]
}

// --- what the nodes must hold --------------------------------------------------

/// Every managed file of every node as rendered, and the drained
/// versions of the load balancer files.
struct Expected {
    /// node -> path -> sha256
    files: BTreeMap<String, BTreeMap<String, String>>,
    /// LB node -> path -> sha256 of each drained version
    drained: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

/// The bundle's SHA256SUMS as `add_binaries` takes it.
fn bundle_files(bundle: &Path) -> BTreeMap<String, (PathBuf, String)> {
    let sums = std::fs::read_to_string(bundle.join("SHA256SUMS")).expect("SHA256SUMS");
    sums.lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(sha, name)| (name.to_string(), (bundle.join(name), sha.to_string())))
        .collect()
}

/// The rendered manifest for the control directory's inventory, state
/// directory and bundle (nothing is written but `manifest.json` and the
/// tree, below `out`).
fn expected(kf: &Kf, out: &Path) -> Expected {
    match try_expected(kf, out) {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    }
}

fn try_expected(kf: &Kf, out: &Path) -> Result<Expected, String> {
    let loaded = kubeforge_inventory::load(&kf.dir.join("inventory.toml"))
        .map_err(|e| format!("inventory: {e}"))?;
    let state = kf.dir.join(".kubeforge/lab");
    let mut prepared = kubeforge_render::prepare(&state, &loaded.cluster, &Default::default())
        .map_err(|e| {
            format!(
                "rendering from the state directory {}: {e}",
                state.display()
            )
        })?;
    prepared.renderer.add_binaries(
        &loaded.cluster,
        &mut prepared.rendered,
        &bundle_files(&kf.bundle),
    );
    let rendered = &prepared.rendered;
    let _ = std::fs::remove_dir_all(out);
    kubeforge_render::write_tree(rendered, out).map_err(|e| format!("rendered tree: {e}"))?;
    let files = rendered
        .nodes
        .iter()
        .map(|t| {
            let files = t
                .files
                .values()
                .map(|f| (f.path.clone(), f.sha256.clone()))
                .collect();
            (t.name.clone(), files)
        })
        .collect();
    let mut drained: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for d in rendered.drains.values().flatten() {
        drained
            .entry(d.lb.clone())
            .or_default()
            .entry(d.file.path.clone())
            .or_default()
            .insert(d.file.sha256.clone());
    }
    Ok(Expected { files, drained })
}

/// node -> path -> sha256 (None: missing), and the temporary upload
/// files found next to managed files.
struct Snapshot {
    files: BTreeMap<String, BTreeMap<String, Option<String>>>,
    leftovers: Vec<String>,
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The sha256 of every managed file on every node, in one ssh per node.
fn snapshot(lab: &Lab, exp: &Expected) -> Snapshot {
    let mut files = BTreeMap::new();
    let mut leftovers = Vec::new();
    for (node, wanted) in &exp.files {
        let paths: Vec<&String> = wanted.keys().collect();
        let dirs: BTreeSet<&str> = paths
            .iter()
            .filter_map(|p| p.rsplit_once('/').map(|(d, _)| d))
            .collect();
        let quoted = |v: Vec<&str>| {
            v.iter()
                .map(|p| shell_quote(p))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let script = format!(
            "for p in {}; do if [ -f \"$p\" ]; then echo \"F $(sha256sum < \"$p\" | cut -d' ' -f1) $p\"; else echo \"M - $p\"; fi; done; \
             for d in {}; do [ -d \"$d\" ] && find \"$d\" -maxdepth 1 -name '.kubeforge-tmp.*' -printf 'T - %p\\n'; done; true",
            quoted(paths.iter().map(|s| s.as_str()).collect()),
            quoted(dirs.into_iter().collect()),
        );
        let text = lab.ssh_ok(node, &script);
        let mut on_node = BTreeMap::new();
        for line in text.lines() {
            let mut parts = line.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("F"), Some(sha), Some(p)) => {
                    on_node.insert(p.to_string(), Some(sha.to_string()));
                }
                (Some("M"), _, Some(p)) => {
                    on_node.insert(p.to_string(), None);
                }
                (Some("T"), _, Some(p)) => leftovers.push(format!("{node}:{p}")),
                _ => {}
            }
        }
        files.insert(node.clone(), on_node);
    }
    Snapshot { files, leftovers }
}

/// What a fault left on the nodes.
#[derive(Default, Debug)]
struct FileCheck {
    new: usize,
    old: usize,
    drained: usize,
    /// Neither the new, the old nor a drained version: must stay empty.
    half_written: Vec<String>,
    leftovers: Vec<String>,
}

fn check_after_fault(before: &Snapshot, now: &Snapshot, exp: &Expected) -> FileCheck {
    let mut c = FileCheck {
        leftovers: now.leftovers.clone(),
        ..FileCheck::default()
    };
    let short = |s: &Option<String>| match s {
        Some(s) => s.get(..12).unwrap_or(s).to_string(),
        None => "missing".to_string(),
    };
    for (node, wanted) in &exp.files {
        for (path, sha) in wanted {
            let is = now
                .files
                .get(node)
                .and_then(|f| f.get(path))
                .cloned()
                .flatten();
            let was = before
                .files
                .get(node)
                .and_then(|f| f.get(path))
                .cloned()
                .flatten();
            let drained = exp
                .drained
                .get(node)
                .and_then(|d| d.get(path))
                .is_some_and(|d| is.as_ref().is_some_and(|s| d.contains(s)));
            if is.as_ref() == Some(sha) {
                c.new += 1;
            } else if is == was {
                c.old += 1;
            } else if drained {
                c.drained += 1;
            } else {
                c.half_written.push(format!(
                    "{node}:{path} is {} (rendered {}, before the apply {})",
                    short(&is),
                    short(&Some(sha.clone())),
                    short(&was)
                ));
            }
        }
    }
    c
}

/// Files that differ from the rendered manifest.
fn differences(now: &Snapshot, exp: &Expected) -> Vec<String> {
    let mut out = Vec::new();
    for (node, wanted) in &exp.files {
        for (path, sha) in wanted {
            let is = now
                .files
                .get(node)
                .and_then(|f| f.get(path))
                .cloned()
                .flatten();
            if is.as_ref() != Some(sha) {
                out.push(format!("{node}:{path}"));
            }
        }
    }
    out
}

// --- running kubeforge ---------------------------------------------------------

/// A `kubeforge apply` running in the background; its progress lines
/// (stderr) arrive on a channel as they are printed.
struct Running {
    child: Child,
    started: Instant,
    lines: Receiver<(Duration, String)>,
    seen: Vec<(Duration, String)>,
    stdout: JoinHandle<String>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: JoinHandle<()>,
}

struct Finished {
    code: Option<i32>,
    secs: f64,
    stdout: String,
    stderr: String,
    lines: Vec<(Duration, String)>,
}

fn spawn_apply(kf: &Kf) -> Running {
    let mut child = Command::new(&kf.bin)
        .current_dir(&kf.dir)
        .args(["apply", "-i", "inventory.toml", "--bundle"])
        .arg(&kf.bundle)
        .args(["--ssh-config", "ssh_config", "--gate-timeout", "90"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubeforge runs");
    let started = Instant::now();
    let mut out = child.stdout.take().expect("stdout");
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    let stderr = Arc::new(Mutex::new(String::new()));
    let all = Arc::clone(&stderr);
    let stderr_thread = std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut a) = all.lock() {
                a.push_str(&line);
                a.push('\n');
            }
            let _ = tx.send((started.elapsed(), line));
        }
    });
    Running {
        child,
        started,
        lines: rx,
        seen: Vec::new(),
        stdout,
        stderr,
        stderr_thread,
    }
}

impl Running {
    /// Waits for the `nth` (1-based) progress line that `pred` accepts;
    /// None when the apply ended first.
    fn wait_line(&mut self, nth: usize, pred: impl Fn(&str) -> bool) -> Option<String> {
        let mut count = self.seen.iter().filter(|(_, l)| pred(l)).count();
        if count >= nth {
            return self
                .seen
                .iter()
                .filter(|(_, l)| pred(l))
                .nth(nth - 1)
                .map(|(_, l)| l.clone());
        }
        loop {
            match self.lines.recv_timeout(Duration::from_secs(1)) {
                Ok((t, l)) => {
                    self.seen.push((t, l.clone()));
                    if pred(&l) {
                        count += 1;
                        if count == nth {
                            return Some(l);
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.started.elapsed() > APPLY_DEADLINE {
                        return None;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Waits until `at` after the start; false when the apply ended first.
    fn wait_until(&mut self, at: Duration) -> bool {
        while self.started.elapsed() < at {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            let left = at.saturating_sub(self.started.elapsed());
            std::thread::sleep(left.min(Duration::from_millis(5)));
        }
        matches!(self.child.try_wait(), Ok(None))
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
    }

    fn finish(mut self) -> Finished {
        let deadline = self.started + APPLY_DEADLINE;
        let code = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s.code().or(Some(-9)),
                Ok(None) if Instant::now() > deadline => {
                    eprintln!("fault: the apply hung for {APPLY_DEADLINE:?}: killed");
                    let _ = self.child.kill();
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let secs = self.started.elapsed().as_secs_f64();
        let _ = self.stderr_thread.join();
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        let stdout = self.stdout.join().unwrap_or_default();
        let stderr = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        Finished {
            code,
            secs,
            stdout,
            stderr,
            lines: self.seen,
        }
    }
}

fn apply(kf: &Kf) -> Finished {
    spawn_apply(kf).finish()
}

fn tail_of(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Processes whose command line holds every one of `needles`.
fn processes_with(needles: &[&str]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c).replace('\0', " ");
                needles.iter().all(|n| c.contains(n))
            })
        })
        .collect()
}

fn kill9(pids: &[u32]) {
    for p in pids {
        let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
    }
}

/// Appends bytes to a bundle binary (a new build, as far as sha256 goes)
/// and rewrites SHA256SUMS.
fn bump_binary(kf: &Kf, name: &str, tag: &str) {
    use std::io::Write as _;
    let path = kf.bundle.join(name);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("bundle binary");
    f.write_all(format!("\nkubeforge-fault {tag}\n").as_bytes())
        .expect("append");
    drop(f);
    let mut sums = String::new();
    for (n, (p, _)) in bundle_files(&kf.bundle) {
        let out = Command::new("sha256sum")
            .arg(&p)
            .output()
            .expect("sha256sum");
        let sha = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        sums.push_str(&format!("{sha}  {n}\n"));
    }
    std::fs::write(kf.bundle.join("SHA256SUMS"), sums).expect("SHA256SUMS");
}

// --- one fault, checked --------------------------------------------------------

/// The figures of every fault.
#[derive(Default)]
struct Tally {
    injected: usize,
    missed: usize,
    converged: usize,
    no_changes: usize,
    half_written: Vec<String>,
    leftovers: usize,
    locks_left: usize,
    problems: Vec<String>,
    lines: Vec<String>,
}

impl Tally {
    fn report(&mut self, line: String) {
        eprintln!("fault: {line}");
        self.lines.push(line);
    }
}

/// After a fault: the files checked against the rendered manifest and
/// the state before, then an apply that must converge and one that must
/// change nothing.
#[allow(clippy::too_many_arguments)]
fn after_fault(
    tally: &mut Tally,
    lab: &Lab,
    kf: &Kf,
    name: &str,
    what: &str,
    faulted: &Finished,
    before: &Snapshot,
    out: &Path,
) {
    tally.injected += 1;
    // A state directory the fault left unreadable is a finding, and the
    // files are then checked against the state after the next apply.
    let exp = match try_expected(kf, out) {
        Ok(e) => Some(e),
        Err(e) => {
            tally.problems.push(format!("{name}: after the fault: {e}"));
            tally.report(format!("{name}: STATE UNREADABLE after the fault: {e}"));
            None
        }
    };
    let c = match &exp {
        Some(exp) => check_after_fault(before, &snapshot(lab, exp), exp),
        None => FileCheck::default(),
    };
    tally
        .half_written
        .extend(c.half_written.iter().map(|h| format!("{name}: {h}")));
    tally.leftovers += c.leftovers.len();
    // What the faulted apply said last: its error line, else its last line.
    let faulted_err = faulted
        .stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("error"))
        .or_else(|| faulted.stderr.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("")
        .to_string();

    let mut reapply = apply(kf);
    let mut waited_for_lock = 0.0;
    if reapply.code != Some(0) && reapply.stderr.contains("another kubeforge apply holds it") {
        tally.locks_left += 1;
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(20));
        waited_for_lock = t.elapsed().as_secs_f64();
        reapply = apply(kf);
    }
    let converged_exp = expected(kf, out);
    let diffs = differences(&snapshot(lab, &converged_exp), &converged_exp);
    let converged = reapply.code == Some(0) && diffs.is_empty();
    if converged {
        tally.converged += 1;
    } else {
        tally.problems.push(format!(
            "{name}: the apply after the fault did not converge (exit {:?}; {} files differ: {:?})\n{}",
            reapply.code,
            diffs.len(),
            diffs.iter().take(5).collect::<Vec<_>>(),
            tail_of(&reapply.stderr, 15)
        ));
    }
    let noop = apply(kf);
    let no_changes = noop.code == Some(0) && noop.stdout.contains("No changes");
    if no_changes {
        tally.no_changes += 1;
    } else {
        tally.problems.push(format!(
            "{name}: the second apply after the fault changed something (exit {:?})\n{}",
            noop.code,
            tail_of(&noop.stdout, 30)
        ));
    }
    tally.report(format!(
        "{name}: {what}; faulted apply exit {:?} after {:.1} s ({}); files: {} new, {} old, {} drained, {} half-written, {} temporary left; re-apply exit {:?} in {:.1} s{}; then {} in {:.1} s",
        faulted.code,
        faulted.secs,
        if faulted_err.is_empty() { "no message".to_string() } else { faulted_err.trim().chars().take(160).collect::<String>() },
        c.new,
        c.old,
        c.drained,
        c.half_written.len(),
        c.leftovers.len(),
        reapply.code,
        reapply.secs,
        if waited_for_lock > 0.0 { format!(" (after waiting {waited_for_lock:.0} s for a lock left behind)") } else { String::new() },
        if no_changes { "\"No changes\"" } else { "CHANGES" },
        noop.secs,
    ));
    for h in &c.half_written {
        tally.report(format!("{name}: HALF-WRITTEN {h}"));
    }
    for l in &c.leftovers {
        tally.report(format!("{name}: temporary file left {l}"));
    }
}

/// What kind of work a progress line announces.
fn kind_of(line: &str) -> &'static str {
    let l = line.trim();
    if l.contains(": write ") {
        "upload"
    } else if l.contains("restart ") || l.contains("enable and start") || l.contains("reload ") {
        "restart"
    } else if l.contains("waiting for") {
        "gate"
    } else if l.contains("load balancer") {
        "lb drain"
    } else if l.contains("run: ") {
        "step"
    } else if l.starts_with("==") {
        "phase"
    } else {
        "other"
    }
}

/// Where a fresh apply is killed.
enum Point {
    /// This long after it started (before its first progress line).
    At(Duration),
    /// Right after its n-th progress line.
    AfterLine(usize),
}

// --- the test ------------------------------------------------------------------

#[test]
#[ignore = "fault injection: an hour of lab time; run by tests/fault/run.sh"]
fn faults_during_apply_leave_no_half_written_file_and_converge() {
    if !lab::available(TEST) {
        return;
    }
    let Some(b) = binaries() else { return };
    let kills: usize = std::env::var("KUBEFORGE_FAULT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let chain = std::env::var("KUBEFORGE_FAULT_CHAIN").map_or(true, |v| v != "0");
    let mut tally = Tally::default();
    let real = crate::lab_apply::real_k8s();
    eprintln!(
        "fault: {} binaries, {kills} kill points, chain {}",
        if real { "real Kubernetes" } else { "stand-in" },
        if chain { "on" } else { "off" }
    );

    // 1. The reference: a fresh apply, uninterrupted, then the faults
    //    that need a running cluster.
    let t = Instant::now();
    let (mut lab, kf) = start(&b, &ha_nodes(), |lab| inventory(lab, None));
    let up = t.elapsed();
    let out = lab.path().join("rendered");
    let fresh = apply(&kf);
    assert_eq!(
        fresh.code,
        Some(0),
        "the reference apply failed:\n{}",
        fresh.stderr
    );
    let noop = apply(&kf);
    assert!(noop.stdout.contains("No changes"), "{}", noop.stdout);
    let reference: Vec<(Duration, String)> = fresh.lines.clone();
    tally.report(format!(
        "reference: lab up {:.1} s, fresh apply {:.1} s ({} progress lines, first at {:.1} s), no-op apply {:.1} s",
        up.as_secs_f64(),
        fresh.secs,
        reference.len(),
        reference.first().map_or(0.0, |(t, _)| t.as_secs_f64()),
        noop.secs
    ));

    if chain {
        chain_faults(&mut tally, &mut lab, &kf, &out);
    }
    drop(lab);

    // 2. kill -9 at points of a fresh apply, each on fresh nodes.
    let first = reference
        .first()
        .map_or(Duration::from_secs(2), |(t, _)| *t);
    let mut points = Vec::new();
    if kills >= 1 {
        points.push(Point::At(Duration::from_millis(300)));
    }
    if kills >= 2 {
        points.push(Point::At(first.mul_f64(0.6)));
    }
    let by_line = kills.saturating_sub(2);
    for k in 1..=by_line {
        points.push(Point::AfterLine(
            (reference.len() * k / (by_line + 1)).max(1),
        ));
    }
    for (i, p) in points.iter().enumerate() {
        let name = format!("kill {}/{}", i + 1, points.len());
        let t = Instant::now();
        let (lab, kf) = start(&b, &ha_nodes(), |lab| inventory(lab, None));
        let out = lab.path().join("rendered");
        let before = snapshot(&lab, &expected(&kf, &out));
        let mut run = spawn_apply(&kf);
        let (hit, what) = match p {
            Point::At(at) => (
                run.wait_until(*at),
                format!(
                    "kill -9 at {:.2} s (before any progress line)",
                    at.as_secs_f64()
                ),
            ),
            Point::AfterLine(n) => match run.wait_line(*n, |_| true) {
                Some(l) => (
                    true,
                    format!(
                        "kill -9 after progress line {n} ({}: {:?})",
                        kind_of(&l),
                        l.trim()
                    ),
                ),
                None => (false, format!("line {n} never came")),
            },
        };
        if hit {
            run.kill9();
        }
        let faulted = run.finish();
        if !hit {
            tally.missed += 1;
            tally.report(format!(
                "{name}: missed: {what}; apply exit {:?}",
                faulted.code
            ));
            continue;
        }
        after_fault(&mut tally, &lab, &kf, &name, &what, &faulted, &before, &out);
        eprintln!(
            "fault: {name}: {:.1} s with the lab",
            t.elapsed().as_secs_f64()
        );
    }

    tally.report(format!(
        "summary: {} faults injected ({} missed), {} converged on the next apply, {} \"No changes\" after, {} files half-written, {} temporary files left, {} locks left behind",
        tally.injected,
        tally.missed,
        tally.converged,
        tally.no_changes,
        tally.half_written.len(),
        tally.leftovers,
        tally.locks_left
    ));
    assert!(
        tally.half_written.is_empty() && tally.problems.is_empty(),
        "half-written: {:#?}\nproblems:\n{}",
        tally.half_written,
        tally.problems.join("\n\n")
    );
}

/// The faults that need a converged cluster, one after the other on it.
fn chain_faults(tally: &mut Tally, lab: &mut Lab, kf: &Kf, out: &Path) {
    // a. The ssh process of an upload killed: a new kube-apiserver build,
    //    its upload to cp1 cut off.
    bump_binary(kf, "kube-apiserver", "a");
    let before = snapshot(lab, &expected(kf, out));
    let mut run = spawn_apply(kf);
    let path = "/usr/local/bin/kube-apiserver";
    let mut what = "no upload of kube-apiserver seen".to_string();
    if run
        .wait_line(1, |l| {
            l.contains("cp1: write /usr/local/bin/kube-apiserver")
        })
        .is_some()
    {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids: Vec<u32> = processes_with(&["kubeforge-tmp", path, "ssh"]);
            if !pids.is_empty() {
                kill9(&pids);
                what = format!("the ssh process uploading {path} to cp1 killed");
                break;
            }
            if Instant::now() > deadline {
                what =
                    format!("the upload of {path} to cp1 ended before its ssh process was found");
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let faulted = run.finish();
    after_fault(
        tally,
        lab,
        kf,
        "ssh upload killed",
        &what,
        &faulted,
        &before,
        out,
    );

    // b. cp2's ssh master connection killed mid-upload (a new
    //    kube-scheduler build).
    bump_binary(kf, "kube-scheduler", "b");
    let before = snapshot(lab, &expected(kf, out));
    let mut run = spawn_apply(kf);
    let mut what = "no upload of kube-scheduler to cp2 seen".to_string();
    if run
        .wait_line(1, |l| {
            l.contains("cp2: write /usr/local/bin/kube-scheduler")
        })
        .is_some()
    {
        let masters = processes_with(&["ssh", "-M", "10.77.0.12"]);
        kill9(&masters);
        what = format!(
            "cp2's ssh master connection killed ({} process) during the upload of kube-scheduler",
            masters.len()
        );
    }
    let faulted = run.finish();
    after_fault(
        tally,
        lab,
        kf,
        "ssh master killed",
        &what,
        &faulted,
        &before,
        out,
    );

    // c. One etcd member stopped during a rolling etcd change (a new etcd
    //    build): the rolling restart must stop rather than take a second
    //    member down.
    bump_binary(kf, "etcd", "c");
    let before = snapshot(lab, &expected(kf, out));
    let mut run = spawn_apply(kf);
    let mut what = "no etcd restart seen".to_string();
    if let Some(l) = run.wait_line(1, |l| l.contains(": restart etcd")) {
        let first = l
            .trim()
            .split(']')
            .nth(1)
            .and_then(|s| s.split(':').next())
            .unwrap_or("")
            .trim()
            .to_string();
        let victim = ["cp3", "cp2", "cp1"]
            .into_iter()
            .find(|n| *n != first)
            .unwrap_or("cp3");
        lab.ssh_ok(victim, "systemctl stop etcd");
        what = format!("etcd stopped on {victim} while {first} restarted etcd");
    }
    let faulted = run.finish();
    after_fault(
        tally,
        lab,
        kf,
        "etcd member stopped",
        &what,
        &faulted,
        &before,
        out,
    );

    // d. A control-plane node's power cut during its rolling apiserver
    //    restart (a new SAN), booted again 10 s later.
    std::fs::write(
        kf.dir.join("inventory.toml"),
        inventory(lab, Some("fault-d.lab.example")),
    )
    .expect("inventory");
    let before = snapshot(lab, &expected(kf, out));
    let mut run = spawn_apply(kf);
    let mut what = "no apiserver restart on cp2 seen".to_string();
    if run
        .wait_line(1, |l| l.contains("cp2: restart kube-apiserver"))
        .is_some()
    {
        lab.power_off("cp2");
        std::thread::sleep(Duration::from_secs(10));
        lab.power_on("cp2");
        what = "cp2 powered off during its kube-apiserver restart, on again 10 s later".into();
    }
    let faulted = run.finish();
    after_fault(
        tally,
        lab,
        kf,
        "node power cut",
        &what,
        &faulted,
        &before,
        out,
    );

    // e. kill -9 while cp2 is drained from the load balancer (another
    //    SAN): nginx.conf stays drained until the next apply.
    std::fs::write(
        kf.dir.join("inventory.toml"),
        inventory(lab, Some("fault-e.lab.example")),
    )
    .expect("inventory");
    let before = snapshot(lab, &expected(kf, out));
    let mut run = spawn_apply(kf);
    let mut what = "cp2 never taken out of the load balancer".to_string();
    if run
        .wait_line(1, |l| l.contains("take cp2 out of the load balancer"))
        .is_some()
        && run
            .wait_line(1, |l| l.contains("cp2: restart kube-apiserver"))
            .is_some()
    {
        run.kill9();
        what = "kill -9 while cp2 was drained from the load balancer".into();
    }
    let faulted = run.finish();
    after_fault(
        tally,
        lab,
        kf,
        "kill while drained",
        &what,
        &faulted,
        &before,
        out,
    );
}
