//! The rendered etcd configuration and the generated certificates, proven
//! with real etcd: the HA inventory's three members run with the argv of
//! their rendered `etcd.service` (only the binary, the PKI directory and the
//! data directory moved into temporary places) and the environment of their
//! rendered `initial-cluster.env`, each in its own network namespace on a
//! private bridge. Then: the cluster forms over peer TLS, the healthcheck
//! and apiserver client certificates work, and clients with a certificate
//! of another CA, with none, or over plain http are refused.
//!
//! Needs root (network namespaces), `ip`, and `etcd` and `etcdctl` from
//! `KUBEFORGE_ETCD_DIR` or `PATH`; skipped without them unless `CI` is set.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use kubeforge_tests::{
    environment_files, exec_start_argv, find_tool, inventory, parse_environment_file,
    render_inventory, require, root_privileges, run, Lan, LogCursor, Procs, RenderedCluster, Run,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

const TEST: &str = "etcd_tls";
const ETCD_DIR_VAR: &str = "KUBEFORGE_ETCD_DIR";
const UNIT: &str = "/etc/systemd/system/etcd.service";
const PKI: &str = "/etc/kubernetes/pki";
const DATA_DIR_FLAG: &str = "--data-dir=/var/lib/etcd";
/// The "control machine" on the private LAN: in the node subnet, no node's.
const HUB_ADDRESS: &str = "10.77.0.254";
const HEALTH_DEADLINE: Duration = Duration::from_secs(30);

/// Client credentials for etcdctl.
#[derive(Clone, Copy)]
struct Creds<'a> {
    cacert: &'a Path,
    cert: Option<(&'a Path, &'a Path)>,
}

/// etcdctl, run from the hub namespace.
struct Ctl<'a> {
    bin: &'a Path,
    lan: &'a Lan,
}

impl Ctl<'_> {
    fn run(&self, endpoints: &str, creds: Creds, timeout: &str, args: &[&str]) -> Run {
        let mut cmd = self.lan.hub().command(self.bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCDCTL_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg(format!("--endpoints={endpoints}"))
            .arg(format!("--dial-timeout={timeout}"))
            .arg(format!("--command-timeout={timeout}"))
            .arg("--cacert")
            .arg(creds.cacert);
        if let Some((cert, key)) = creds.cert {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        run(cmd.args(args), Duration::from_secs(30)).unwrap()
    }
}

/// The rendered ExecStart of `node`, runnable here: only the binary, the
/// PKI directory and the data directory are moved.
fn member_argv(rc: &RenderedCluster, node: &str, etcd: &Path, data_dir: &Path) -> Vec<String> {
    let unit = rc.read_node_file(node, UNIT).unwrap();
    let mut argv = exec_start_argv(&unit).unwrap();
    assert!(
        argv[0].ends_with("/etcd"),
        "{node}: ExecStart runs {}, not etcd",
        argv[0]
    );
    argv[0] = etcd.display().to_string();
    assert_eq!(
        argv.iter().filter(|a| *a == DATA_DIR_FLAG).count(),
        1,
        "{node}: ExecStart must pass {DATA_DIR_FLAG} once: {argv:?}"
    );
    let pki = rc.node_path(node, PKI).display().to_string();
    for a in &mut argv[1..] {
        *a = if a == DATA_DIR_FLAG {
            format!("--data-dir={}", data_dir.display())
        } else {
            a.replace(PKI, &pki)
        };
    }
    // Whatever else names a file of the node would silently point at this
    // machine's files: every path must now lie in the test's directories.
    for a in &argv[1..] {
        if let Some((_, v)) = a.split_once('=') {
            if v.starts_with('/') {
                assert!(
                    v.starts_with(&*rc.out.path().to_string_lossy())
                        || v.starts_with(&*data_dir.to_string_lossy()),
                    "{node}: {a} names a path the test does not relocate"
                );
            }
        }
    }
    argv
}

/// The environment systemd would give `node`'s etcd from its rendered
/// EnvironmentFile=.
fn member_env(rc: &RenderedCluster, node: &str) -> Vec<(String, String)> {
    let unit = rc.read_node_file(node, UNIT).unwrap();
    let files = environment_files(&unit);
    assert_eq!(
        files,
        ["/etc/etcd/initial-cluster.env"],
        "{node}: EnvironmentFile="
    );
    let text = rc.read_node_file(node, &files[0]).unwrap();
    parse_environment_file(&text).unwrap()
}

fn healthy_endpoints(r: &Run) -> BTreeSet<String> {
    // etcdctl prints healthy endpoints to stdout, unhealthy ones to stderr.
    r.stdout
        .lines()
        .filter_map(|l| {
            l.split_once(" is healthy:")
                .map(|(e, _)| e.trim().to_string())
        })
        .collect()
}

/// Asserts that etcdctl failed by itself (not killed at the harness
/// timeout) and that the member it talked to logged, since `log`, that it
/// rejected a connection from the hub with an error containing `reason`.
///
/// The member's log is the evidence, not etcdctl's stderr: etcdctl 3.5
/// names the TLS alert it got only when its dial happened to complete
/// before the alert arrived; otherwise it says just "context deadline
/// exceeded".
fn assert_refused(r: &Run, what: &str, log: &LogCursor, reason: &str) {
    assert!(
        r.status.is_some() && !r.success(),
        "{what}: etcdctl must fail (and exit by itself), but:\n{}",
        r.describe()
    );
    let from = format!("\"remote-addr\":\"{HUB_ADDRESS}:");
    let rejected = log.wait_for_line(Duration::from_secs(5), |l| {
        l.contains("\"msg\":\"rejected connection") && l.contains(&from) && l.contains(reason)
    });
    assert!(
        rejected.is_some(),
        "{what}: etcdctl failed, but the member did not log that it rejected the connection with \"{reason}\"\n{}\n--- member log since the call ---\n{}",
        r.describe(),
        log.appended().trim_end()
    );
}

#[test]
fn etcd_tls() {
    let started = Instant::now();
    if let Err(why) = root_privileges() {
        kubeforge_tests::skip(TEST, &why);
        return;
    }
    let ip = require!(
        TEST,
        find_tool("ip", None),
        "`ip` (iproute2) is not on PATH"
    );
    let etcd = require!(
        TEST,
        find_tool("etcd", Some(ETCD_DIR_VAR)),
        "etcd not found: set {ETCD_DIR_VAR} to the directory holding etcd and etcdctl, or put them on PATH"
    );
    let etcdctl = require!(
        TEST,
        find_tool("etcdctl", Some(ETCD_DIR_VAR)),
        "etcdctl not found: set {ETCD_DIR_VAR} to the directory holding etcd and etcdctl, or put them on PATH"
    );

    // Render the HA cluster as `kubeforge render` would.
    let rc = render_inventory(&inventory("ha.toml")).unwrap();
    let members: Vec<(String, String)> = rc
        .rendered
        .nodes
        .iter()
        .filter(|n| n.units.iter().any(|u| u.name == "etcd"))
        .map(|n| (n.name.clone(), n.address.clone()))
        .collect();
    let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["cp1", "cp2", "cp3"], "etcd members of ha.toml");
    assert!(
        rc.rendered.nodes.iter().all(|n| n.address != HUB_ADDRESS),
        "{HUB_ADDRESS} belongs to a node of ha.toml; pick another hub address"
    );
    let prefix_len = rc.cluster.node_cidr.map_or(24, |n| n.prefix_len());
    let addr = |n: usize| members[n].1.as_str();

    // Declared before the guards so that they outlive every process.
    let work = tempfile::tempdir().unwrap();

    let hosts: Vec<(&str, String)> = members
        .iter()
        .map(|(n, a)| (n.as_str(), format!("{a}/{prefix_len}")))
        .collect();
    let lan = Lan::create(
        &ip,
        &format!("kf-etcd-{}", std::process::id()),
        &format!("{HUB_ADDRESS}/{prefix_len}"),
        &hosts,
    )
    .unwrap();
    // Dropped before the LAN: killed (logs printed on panic), then the
    // namespaces go.
    let mut procs = Procs::new();
    let mut logs = Vec::new();

    for (node, _) in &members {
        let data_dir = work.path().join(format!("data-{node}"));
        let argv = member_argv(&rc, node, &etcd, &data_dir);
        let env = member_env(&rc, node);
        let mut cmd = lan.host(node).command(&argv[0]);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD") {
                cmd.env_remove(k);
            }
        }
        cmd.args(&argv[1..]).envs(env);
        let log = work.path().join(format!("{node}.log"));
        procs.spawn(&format!("etcd {node}"), cmd, &log).unwrap();
        logs.push(log);
    }

    let pki = |node: &str, rel: &str| -> PathBuf { rc.node_path(node, &format!("{PKI}/{rel}")) };
    let etcd_ca = pki("cp1", "etcd/ca.crt");
    let health_crt = pki("cp1", "etcd/healthcheck-client.crt");
    let health_key = pki("cp1", "etcd/healthcheck-client.key");
    let api_crt = pki("cp1", "apiserver-etcd-client.crt");
    let api_key = pki("cp1", "apiserver-etcd-client.key");
    let admin_crt = rc.state_pki("admin.crt");
    let admin_key = rc.state_pki("admin.key");
    for f in [
        &etcd_ca,
        &health_crt,
        &health_key,
        &api_crt,
        &api_key,
        &admin_crt,
        &admin_key,
    ] {
        assert!(f.is_file(), "{} was not written", f.display());
    }
    let healthcheck = Creds {
        cacert: &etcd_ca,
        cert: Some((&health_crt, &health_key)),
    };
    let apiserver = Creds {
        cacert: &etcd_ca,
        cert: Some((&api_crt, &api_key)),
    };
    let ctl = Ctl {
        bin: &etcdctl,
        lan: &lan,
    };
    let ep = |n: usize| format!("https://{}:2379", addr(n));
    let all: BTreeSet<String> = (0..members.len()).map(ep).collect();

    // Wait for the cluster to form.
    let deadline = Instant::now() + HEALTH_DEADLINE;
    let health = loop {
        if let Err(e) = procs.check_running() {
            panic!("{e}");
        }
        let r = ctl.run(
            &ep(0),
            healthcheck,
            "2s",
            &["endpoint", "health", "--cluster"],
        );
        if r.success() && healthy_endpoints(&r) == all {
            break r;
        }
        if Instant::now() > deadline {
            panic!(
                "the cluster was not healthy within {HEALTH_DEADLINE:?}; last check:\n{}",
                r.describe()
            );
        }
        thread::sleep(Duration::from_millis(500));
    };
    eprintln!("{TEST}: 3 members healthy after {:.1?}", started.elapsed());

    // 1. Health of every member with the healthcheck client certificate.
    assert_eq!(healthy_endpoints(&health), all, "{}", health.describe());
    let r = ctl.run(
        &ep(0),
        healthcheck,
        "5s",
        &["endpoint", "health", "--cluster"],
    );
    assert!(r.success(), "{}", r.describe());
    assert_eq!(healthy_endpoints(&r), all, "{}", r.describe());

    // 2. The members found each other over peer TLS.
    let r = ctl.run(&ep(0), healthcheck, "5s", &["member", "list"]);
    assert!(r.success(), "{}", r.describe());
    let mut listed: Vec<(String, String, String)> = r
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            assert_eq!(f.len(), 6, "member list line `{l}`");
            (f[2].to_string(), f[1].to_string(), f[3].to_string())
        })
        .collect();
    listed.sort();
    let want: Vec<(String, String, String)> = members
        .iter()
        .map(|(n, a)| {
            (
                n.clone(),
                "started".to_string(),
                format!("https://{a}:2380"),
            )
        })
        .collect();
    assert_eq!(listed, want, "{}", r.describe());

    // 3. The apiserver's client certificate writes through one member and
    //    reads back (linearizably) from another.
    let key = "/kubeforge-test/etcd-tls";
    let value = format!("written-through-{}", addr(1));
    let r = ctl.run(&ep(1), apiserver, "5s", &["put", key, &value]);
    assert!(r.success(), "{}", r.describe());
    assert_eq!(r.stdout.trim(), "OK", "{}", r.describe());
    let r = ctl.run(&ep(2), apiserver, "5s", &["get", key, "--print-value-only"]);
    assert!(r.success(), "{}", r.describe());
    assert_eq!(r.stdout.trim(), value, "{}", r.describe());

    // 4. Client certificates of another CA, or none, are refused by the
    //    member itself (etcdctl trusts the member's certificate throughout).
    let admin = Creds {
        cacert: &etcd_ca,
        cert: Some((&admin_crt, &admin_key)),
    };
    let log = LogCursor::at_end(&logs[0]);
    let r = ctl.run(&ep(0), admin, "5s", &["get", key]);
    assert_refused(
        &r,
        "admin certificate (kubernetes CA)",
        &log,
        "x509: certificate signed by unknown authority",
    );
    assert!(!r.stdout.contains(&value), "{}", r.describe());
    let anonymous = Creds {
        cacert: &etcd_ca,
        cert: None,
    };
    let log = LogCursor::at_end(&logs[0]);
    let r = ctl.run(&ep(0), anonymous, "5s", &["get", key]);
    assert_refused(
        &r,
        "no client certificate",
        &log,
        "didn't provide a certificate",
    );
    assert!(!r.stdout.contains(&value), "{}", r.describe());

    // 5. Plain http is not served: the client port speaks only TLS.
    let log = LogCursor::at_end(&logs[0]);
    let r = ctl.run(
        &format!("http://{}:2379", addr(0)),
        healthcheck,
        "5s",
        &["get", key],
    );
    assert_refused(
        &r,
        "plain http",
        &log,
        "first record does not look like a TLS handshake",
    );
    assert!(!r.stdout.contains(&value), "{}", r.describe());

    // Every member is still running (nothing above crashed one).
    if let Err(e) = procs.check_running() {
        panic!("{e}");
    }
    eprintln!("{TEST}: passed in {:.1?}", started.elapsed());
}
