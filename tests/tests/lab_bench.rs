//! The lab benchmark (`tests/bench/lab.sh` runs it; ignored otherwise): a
//! cluster of `KUBEFORGE_BENCH_NODES` lab nodes (default 6: 3
//! control-plane + etcd, 2 LB, 1 worker; below 6: one control-plane node
//! and workers) timed through a fresh apply, a no-op re-apply, adding one
//! worker, a no-op again, and with a load balancer a rolling apiserver
//! change with a probe through the VIP, and nginx stopping on the VIP
//! holder and coming back. `KUBEFORGE_BENCH_RATE` (e.g. `1gbit`) shapes
//! the host's side of the bridge (the control machine's uplink);
//! `KUBEFORGE_BENCH_KEX` sets the SSH key exchange;
//! `KUBEFORGE_BENCH_KEEP` keeps each apply's SSH connections up that many
//! seconds for the next apply;
//! `KUBEFORGE_BENCH_PROFILE` prints where the fresh apply's and the add's
//! CPU went and the control plane's journals; `KUBEFORGE_BENCH_FRESH_ONLY` stops after
//! the fresh apply. Prints one `BENCH key=value ...` line.
#![allow(clippy::print_stderr)]

use crate::lab_apply::{binaries, curl_admin, start, Kf, PAUSE_IMAGE, TEST};
use crate::probe::Probe;
use kubeforge_tests::lab::{self, Lab};
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

const VIP: &str = "10.77.0.100";

fn shape(n: usize) -> Vec<(String, Ipv4Addr)> {
    let mut nodes = Vec::new();
    if n >= 6 {
        for i in 1..=3u8 {
            nodes.push((format!("cp{i}"), Ipv4Addr::new(10, 77, 0, 10 + i)));
        }
        for i in 1..=2u8 {
            nodes.push((format!("lb{i}"), Ipv4Addr::new(10, 77, 0, 30 + i)));
        }
    } else {
        nodes.push(("cp1".into(), Ipv4Addr::new(10, 77, 0, 11)));
    }
    let workers = n.saturating_sub(nodes.len()).max(1);
    for i in 1..=workers {
        let last = u8::try_from(100 + i).expect("at most 150 workers");
        nodes.push((format!("w{i}"), Ipv4Addr::new(10, 77, 0, last)));
    }
    nodes
}

/// The inventory of `nodes` (the ones present so far), with an extra
/// apiserver SAN when asked.
fn inventory(lab: &Lab, nodes: &[(String, Ipv4Addr)], san: Option<&str>) -> String {
    let ha = nodes.iter().any(|(n, _)| n == "lb1");
    let mut s = format!(
        "[cluster]\nname = \"lab\"\nkubernetes_version = \"{}\"\nnode_cidr = \"10.77.0.0/24\"\n\
         pod_cidr = \"10.200.0.0/16\"\nnode_profile = \"container\"\ncoredns = false\nsandbox_image = \"{PAUSE_IMAGE}\"\n\n\
         [pki]\nextra_apiserver_sans = [{}]\n\n[ssh]\nkey = \"{}\"\naccept_new_host_keys = true\n",
        crate::lab_apply::k8s_version(),
        san.map(|s| format!("\"{s}\"")).unwrap_or_default(),
        lab.key().display()
    );
    if ha {
        s.push_str(&format!(
            "\n[loadbalancer]\nvip = \"{VIP}/24\"\nport = 8443\ninterface = \"eth0\"\n"
        ));
    }
    for (name, address) in nodes {
        let roles = if name.starts_with("cp") {
            r#"["etcd", "control-plane"]"#
        } else if name.starts_with("lb") {
            r#"["lb"]"#
        } else {
            r#"["worker"]"#
        };
        s.push_str(&format!(
            "\n[[nodes]]\nname = \"{name}\"\naddress = \"{address}\"\nroles = {roles}\n"
        ));
    }
    s
}

/// Runs `kubeforge apply` and returns its wall time; panics when it fails.
fn timed_apply(kf: &Kf, what: &str) -> f64 {
    // KUBEFORGE_BENCH_KEEP: each apply keeps its SSH connections up that
    // many seconds for the next one (--keep-connections).
    let keep = std::env::var("KUBEFORGE_BENCH_KEEP").unwrap_or_default();
    let extra: Vec<&str> = if keep.is_empty() {
        Vec::new()
    } else {
        vec!["--keep-connections", keep.as_str()]
    };
    let epoch = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let (t, from) = (Instant::now(), epoch());
    let out = kf.apply(&extra);
    let secs = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "{what} failed");
    eprintln!("bench: {what} {secs:.1} s");
    // When it ran, on the realtime clock (lab.sh's PERF=1 profiles it).
    eprintln!("bench: window {from:.3} {:.3} {what}", epoch());
    secs
}

/// Seconds since midnight (UTC) of an RFC 3339 time of the API
/// (`...THH:MM:SSZ`).
fn second_of_day(t: &str) -> Option<u64> {
    let hms = t.split('T').nth(1)?.trim_end_matches('Z');
    let mut p = hms.split(':').map(|x| x.parse::<u64>().ok());
    Some(p.next()?? * 3600 + p.next()?? * 60 + p.next()??)
}

/// When each node registered and became Ready, as the API says (whole
/// seconds): where a fresh apply's cluster gate spends its time. Returns
/// the seconds from `started` until the last node was Ready (rounded up
/// to the API's whole seconds), when the API keeps these times.
fn node_timeline(kf: &Kf, started: std::time::SystemTime) -> Option<u64> {
    let out = curl_admin(kf, &format!("https://{VIP}:8443/api/v1/nodes"));
    let v = serde_json::from_slice::<serde_json::Value>(&out.stdout).ok()?;
    let start = started
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs()
        % 86_400;
    let mut last: Option<u64> = None;
    for n in v["items"].as_array().into_iter().flatten() {
        // The stand-ins keep neither.
        let Some(created) = n["metadata"]["creationTimestamp"].as_str() else {
            continue;
        };
        let ready = n["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready");
        let since = ready
            .and_then(|c| c["lastTransitionTime"].as_str())
            .unwrap_or_default();
        eprintln!(
            "bench: node {} registered {} Ready since {}",
            n["metadata"]["name"].as_str().unwrap_or_default(),
            created,
            since
        );
        if let Some(at) = second_of_day(since) {
            let after = (at + 86_400 - start) % 86_400 + 1;
            last = Some(last.map_or(after, |l| l.max(after)));
        }
    }
    last
}

/// A /proc/PID/stat line's command, its parent's PID and its CPU times in
/// seconds: its own (utime, stime) and those of the children it reaped
/// (cutime, cstime), fields 4 and 14 to 17 of the line (after the
/// command's closing parenthesis, which may itself hold spaces and
/// parentheses).
fn stat_times(line: &str) -> Option<(&str, f64, [f64; 4])> {
    let open = line.find('(')?;
    let (head, rest) = line.rsplit_once(')')?;
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let t = f.get(11..15)?;
    Some((
        head.get(open + 1..)?,
        f[1],
        [t[0], t[1], t[2], t[3]].map(|x| x / 100.0),
    ))
}

/// CPU seconds of this process's children that ended (kubeforge, and
/// the ssh processes it ran).
fn children_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    stat_times(&stat).map_or(0.0, |(_, _, t)| t[2] + t[3])
}

/// CPU seconds each program of each node used so far, by (node,
/// program). Read from every process's /proc/PID/stat (its own time and
/// that of the children it reaped: sshd holds what kubeforge's sessions
/// ran, systemd what its units' helpers ran).
fn cpu_by_program(
    lab: &Lab,
    nodes: &[(String, Ipv4Addr)],
) -> std::collections::BTreeMap<(String, String), f64> {
    let script = "cat /proc/[0-9]*/stat 2>/dev/null";
    let mut by = std::collections::BTreeMap::new();
    for (node, _) in nodes {
        for (comm, ppid, t) in lab.ssh_ok(node, script).lines().filter_map(stat_times) {
            // sshd's listener (its parent is PID 1) reaps the connections
            // that ended, the bench's own included: apart from the
            // connections' processes, which reap their sessions.
            let comm = if comm == "sshd" && ppid == 1.0 {
                "sshd (listener)".to_string()
            } else {
                comm.to_string()
            };
            *by.entry((node.clone(), comm)).or_default() += t.iter().sum::<f64>();
        }
    }
    by
}

/// Prints the largest entries of `by` (CPU seconds by node and program),
/// then the same summed over nodes by program.
fn print_cpu(what: &str, by: &std::collections::BTreeMap<(String, String), f64>) {
    let mut rows: Vec<(f64, String)> = by
        .iter()
        .map(|((node, comm), s)| (*s, format!("{node} {comm}")))
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total: f64 = rows.iter().map(|r| r.0).sum();
    eprintln!("bench: CPU seconds by program, {what} (total {total:.1})");
    for (s, what) in rows.iter().take(30) {
        eprintln!("bench:   {s:7.2} {what}");
    }
    let mut programs: std::collections::BTreeMap<&str, (f64, usize)> = Default::default();
    for ((_, comm), s) in by {
        let e = programs.entry(comm.as_str()).or_default();
        e.0 += s;
        e.1 += 1;
    }
    let mut programs: Vec<_> = programs.into_iter().collect();
    programs.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    eprintln!("bench: the same by program over all nodes (seconds, nodes)");
    for (comm, (s, n)) in programs.iter().take(15) {
        eprintln!("bench:   {s:7.2} {n:4} {comm}");
    }
}

/// Where a fresh apply's CPU went on the nodes (since `before`, read
/// when they had booted), and each control-plane node's etcd, apiserver
/// and controller-manager journal.
fn cpu_profile(
    lab: &Lab,
    nodes: &[(String, Ipv4Addr)],
    before: &std::collections::BTreeMap<(String, String), f64>,
) {
    let after = cpu_by_program(lab, nodes);
    print_cpu("during the fresh apply", &cpu_delta(before, &after));
    for (node, _) in nodes.iter().filter(|(n, _)| n.starts_with("cp")) {
        for unit in ["etcd", "kube-apiserver", "kube-controller-manager"] {
            let out = lab.ssh(
                node,
                &format!("journalctl -u {unit} -o short-precise --no-pager | head -400"),
            );
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                eprintln!("bench: {node} {line}");
            }
        }
    }
}

/// The CPU each node's programs used between two [`cpu_by_program`]
/// readings (programs that ended in between count in their parent).
fn cpu_delta(
    before: &std::collections::BTreeMap<(String, String), f64>,
    after: &std::collections::BTreeMap<(String, String), f64>,
) -> std::collections::BTreeMap<(String, String), f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect()
}

fn vip_holder(lab: &Lab) -> Option<String> {
    ["lb1", "lb2"]
        .into_iter()
        .find(|n| {
            let o = lab.ssh(n, "ip -o -4 addr show dev eth0");
            String::from_utf8_lossy(&o.stdout).contains(&format!(" {VIP}/"))
        })
        .map(str::to_string)
}

#[test]
#[ignore = "a benchmark: tests/bench/lab.sh runs it"]
fn bench() {
    if !lab::available(TEST) {
        return;
    }
    let Some(b) = binaries() else { return };
    let n: usize = std::env::var("KUBEFORGE_BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let all = shape(n);
    let specs: Vec<(&str, Ipv4Addr)> = all.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    let first: Vec<(String, Ipv4Addr)> = all[..all.len() - 1].to_vec();
    let t = Instant::now();
    let (lab, mut kf) = start(&b, &specs, |lab| inventory(lab, &first, None));
    let boot = t.elapsed().as_secs_f64();
    // The pause image (and busybox) in the bundle, as a real kubelet needs.
    kf.bundle = crate::lab_nodes::bundle_with_images(&kf);
    // The SSH key exchange, when asked (ssh_config's KexAlgorithms): on
    // OpenSSH 9.2 its default, sntrup761x25519, costs the control machine
    // several times the CPU of curve25519-sha256 per connection.
    if let Some(kex) = std::env::var("KUBEFORGE_BENCH_KEX")
        .ok()
        .filter(|k| !k.is_empty())
    {
        std::fs::write(
            kf.dir.join("ssh_config"),
            format!("Host *\n  KexAlgorithms {kex}\n"),
        )
        .expect("ssh_config");
    }
    if let Some(rate) = std::env::var("KUBEFORGE_BENCH_RATE")
        .ok()
        .filter(|r| !r.is_empty())
    {
        let out = Command::new("tc")
            .args([
                "qdisc",
                "replace",
                "dev",
                lab::BRIDGE,
                "root",
                "tbf",
                "rate",
            ])
            .arg(&rate)
            .args(["burst", "4mb", "latency", "100ms"])
            .output()
            .expect("tc runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let profile = std::env::var_os("KUBEFORGE_BENCH_PROFILE").is_some();
    let nodes_before = profile.then(|| cpu_by_program(&lab, &all[..all.len() - 1]));
    let started = std::time::SystemTime::now();
    let cpu_before = children_cpu();
    let fresh = timed_apply(&kf, "fresh apply");
    let fresh_cpu = children_cpu() - cpu_before;
    let all_ready = node_timeline(&kf, started);
    if let Some(before) = nodes_before {
        eprintln!("bench: the fresh apply's own CPU (kubeforge and its ssh): {fresh_cpu:.1} s");
        cpu_profile(&lab, &all[..all.len() - 1], &before);
    }
    if std::env::var_os("KUBEFORGE_BENCH_FRESH_ONLY").is_some() {
        let ready = all_ready
            .map(|s| format!(" all_ready={s}"))
            .unwrap_or_default();
        eprintln!("BENCH nodes={n} boot={boot:.1} fresh={fresh:.1}{ready}");
        copy_apply_log(&kf);
        return;
    }
    let noop = timed_apply(&kf, "no-op apply");
    std::fs::write(kf.dir.join("inventory.toml"), inventory(&lab, &all, None)).expect("inventory");
    let before = profile.then(|| (cpu_by_program(&lab, &all), children_cpu()));
    let add = timed_apply(&kf, "add one worker");
    if let Some((before, cpu)) = before {
        eprintln!(
            "bench: the add's own CPU (kubeforge and its ssh): {:.1} s",
            children_cpu() - cpu
        );
        print_cpu(
            "during the add",
            &cpu_delta(&before, &cpu_by_program(&lab, &all)),
        );
    }
    let noop2 = timed_apply(&kf, "no-op apply after the add");
    let mut line = format!(
        "BENCH nodes={n} boot={boot:.1} fresh={fresh:.1} noop={noop:.1} add={add:.1} noop_after_add={noop2:.1}"
    );
    if let Some(s) = all_ready {
        line.push_str(&format!(" all_ready={s}"));
    }
    if n >= 6 {
        std::fs::write(
            kf.dir.join("inventory.toml"),
            inventory(&lab, &all, Some("api.bench.example")),
        )
        .expect("inventory");
        let probe = Probe::admin(&kf, &kf.dir.join("probe"));
        let rolling = timed_apply(&kf, "rolling apiserver change");
        let probed = probe.finish();
        for f in &probed.failures {
            eprintln!("bench: a request through the VIP failed during the rolling change: {f}");
        }
        let (ok, failed) = (probed.ok, probed.failed());
        line.push_str(&format!(
            " rolling={rolling:.1} rolling_probe_ok={ok} rolling_probe_failed={failed}"
        ));
        // nginx stops on the VIP holder: how long requests fail; then it
        // comes back: whether the VIP moves back (a second disruption).
        let holder = vip_holder(&lab).expect("a VIP holder");
        let probe = Probe::admin(&kf, &kf.dir.join("probe"));
        std::thread::sleep(Duration::from_secs(1));
        lab.ssh_ok(&holder, "systemctl stop nginx");
        std::thread::sleep(Duration::from_secs(8));
        let probed = probe.finish();
        let (failed, window) = (probed.failed(), probed.window);
        let moved_to = vip_holder(&lab).unwrap_or_default();
        let probe = Probe::admin(&kf, &kf.dir.join("probe"));
        lab.ssh_ok(&holder, "systemctl start nginx");
        std::thread::sleep(Duration::from_secs(8));
        let probed = probe.finish();
        let (failed_back, window_back) = (probed.failed(), probed.window);
        let after = vip_holder(&lab).unwrap_or_default();
        line.push_str(&format!(
            " nginx_stop_failed={failed} nginx_stop_window={window:.2} vip_moved_to={moved_to} nginx_back_failed={failed_back} nginx_back_window={window_back:.2} vip_after_return={after}"
        ));
        let r = curl_admin(&kf, &format!("https://{VIP}:8443/readyz"));
        assert_eq!(String::from_utf8_lossy(&r.stdout), "ok");
    }
    eprintln!("{line}");
    copy_apply_log(&kf);
}

/// The apply log (every step with its time), where lab.sh asks.
fn copy_apply_log(kf: &Kf) {
    if let Ok(to) = std::env::var("KUBEFORGE_BENCH_APPLY_LOG") {
        let state = kf.dir.join(".kubeforge");
        let logs = std::fs::read_dir(&state)
            .expect("state directories")
            .filter_map(Result::ok)
            .map(|e| e.path().join("kubeforge.log"))
            .filter(|p| p.exists());
        for log in logs {
            std::fs::copy(&log, &to).expect("apply log copied");
        }
    }
}
