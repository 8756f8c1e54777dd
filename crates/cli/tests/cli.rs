//! The kubeforge binary end to end, as an admin runs it. A failing test
//! prints the command, its working directory, stdout and stderr.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn kubeforge(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_kubeforge"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "$ kubeforge {} (in {})\n--- exit {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        dir.display(),
        run.code,
        run.stdout,
        run.stderr
    );
    run
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn init_validate_render_twice_and_plan() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let r = kubeforge(d, &["init", "--ha", "lab"]);
    assert_eq!(r.code, 0);
    assert!(d.join("lab/inventory.toml").exists());
    // init refuses to overwrite.
    let r = kubeforge(d, &["init", "lab"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("already exists") && r.stderr.contains("--force"));

    let r = kubeforge(d, &["validate", "-i", "lab/inventory.toml"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("inventory is valid"));

    let r = kubeforge(d, &["render", "-i", "lab/inventory.toml", "--out", "out"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("kubernetes CA: created"), "{}", r.stdout);
    let state = d.join("lab/.kubeforge/ha/pki");
    assert!(state.join("ca.key").exists());
    assert!(d.join("out/cp1/etc/systemd/system/etcd.service").exists());
    assert!(d.join("out/admin.conf").exists());
    let first = std::fs::read(d.join("out/cp1/etc/kubernetes/pki/apiserver.crt")).unwrap();

    // Second run: everything kept, same certificates.
    let r = kubeforge(d, &["render", "-i", "lab/inventory.toml", "--out", "out"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("every certificate kept"), "{}", r.stdout);
    let second = std::fs::read(d.join("out/cp1/etc/kubernetes/pki/apiserver.crt")).unwrap();
    assert_eq!(first, second);

    // No key material in any output.
    let key = std::fs::read_to_string(state.join("ca.key")).unwrap();
    let body: String = key.lines().nth(1).unwrap().to_string();
    for args in [
        vec!["plan", "-i", "lab/inventory.toml", "--offline"],
        vec![
            "plan",
            "-i",
            "lab/inventory.toml",
            "--offline",
            "--output",
            "json",
        ],
        vec!["certs", "-i", "lab/inventory.toml", "--local"],
        vec![
            "certs",
            "-i",
            "lab/inventory.toml",
            "--local",
            "--output",
            "json",
        ],
    ] {
        let r = kubeforge(d, &args);
        assert_eq!(r.code, 0);
        assert!(!r.stdout.contains(&body) && !r.stderr.contains(&body));
    }
    let r = kubeforge(d, &["plan", "-i", "lab/inventory.toml", "--offline"]);
    assert!(
        r.stdout.contains("Plan: 7 of 7 nodes change"),
        "{}",
        r.stdout
    );
    let r = kubeforge(
        d,
        &[
            "plan",
            "-i",
            "lab/inventory.toml",
            "--offline",
            "--output",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["plan"]["summary"]["nodes"], 7);
    let r = kubeforge(d, &["certs", "-i", "lab/inventory.toml", "--local"]);
    assert!(r.stdout.contains("etcd-peer for cp3"), "{}", r.stdout);
    assert!(r.stdout.contains("CHECK"), "{}", r.stdout);
    let r = kubeforge(
        d,
        &[
            "certs",
            "-i",
            "lab/inventory.toml",
            "--local",
            "--output",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let rows = v["state_dir"].as_array().unwrap();
    assert!(rows.iter().all(|c| c["check"]["state"] == "ok"), "{v}");
    // A renewal names what it renews; a CA is never one of them.
    let r = kubeforge(d, &["certs", "renew", "-i", "lab/inventory.toml"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("name the certificates to renew, or --all"),
        "{}",
        r.stderr
    );
    let r = kubeforge(
        d,
        &["certs", "renew", "-i", "lab/inventory.toml", "etcd-ca"],
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("etcd-ca is a CA"), "{}", r.stderr);
}

#[test]
fn bad_inventory_is_rejected_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let text = std::fs::read_to_string(repo().join("inventories/ha.toml"))
        .unwrap()
        .replace("address = \"10.77.0.12\"", "address = \"10.77.0.11\"");
    std::fs::write(d.join("bad.toml"), text).unwrap();
    for args in [
        vec!["validate", "-i", "bad.toml"],
        vec!["render", "-i", "bad.toml", "--out", "out"],
        vec!["plan", "-i", "bad.toml", "--offline"],
    ] {
        let r = kubeforge(d, &args);
        assert_eq!(r.code, 1);
        assert!(
            r.stderr.contains(
                "bad.toml:62:11: error: node \"cp2\" has address 10.77.0.11, already used by node \"cp1\" on line 57"
            ),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("help: give every node its own address"));
        assert!(r.stderr.contains("inventory rejected: 1 error"));
    }
    assert!(!d.join(".kubeforge").exists(), "state dir written");
    assert!(!d.join("out").exists(), "output written");
}

/// README and `--help` stay in step: every subcommand is documented.
#[test]
fn readme_documents_every_subcommand() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let r = kubeforge(&repo(), &["--help"]);
    assert_eq!(r.code, 0);
    let commands: Vec<&str> = r
        .stdout
        .split("Commands:")
        .nth(1)
        .unwrap()
        .lines()
        // A command starts at two spaces; wrapped descriptions are deeper.
        .filter(|l| l.starts_with("  ") && !l.starts_with("   ") || !l.starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .take_while(|w| *w != "Options:")
        .filter(|w| *w != "help")
        .collect();
    assert!(commands.len() >= 5, "{commands:?}");
    for c in commands {
        assert!(
            readme.contains(&format!("kubeforge {c}")),
            "README does not mention `kubeforge {c}`"
        );
    }
}

/// Every command, as the completions and the man page must name them.
const COMMANDS: [&str; 11] = [
    "init",
    "validate",
    "render",
    "plan",
    "apply",
    "kubeconfig",
    "certs",
    "status",
    "completions",
    "man",
    "bundle",
];

#[test]
fn completions_and_man_pages_name_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for shell in ["bash", "zsh", "fish"] {
        let r = kubeforge(d, &["completions", shell]);
        assert_eq!(r.code, 0, "{shell}");
        for c in COMMANDS {
            assert!(r.stdout.contains(c), "{shell} completions lack {c}");
        }
        // Options of a command complete too.
        assert!(r.stdout.contains("max-clock-skew"), "{shell}");
    }
    let r = kubeforge(d, &["completions", "tcsh"]);
    assert_eq!(r.code, 2);
    let r = kubeforge(d, &["man"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains(".TH kubeforge 1"), "{}", r.stdout);
    for c in COMMANDS {
        assert!(
            r.stdout.contains(&format!("kubeforge\\-{c}")),
            "the man page lacks {c}"
        );
    }
    let r = kubeforge(d, &["man", "--out", "man1"]);
    assert_eq!(r.code, 0);
    for c in COMMANDS {
        let page = d.join(format!("man1/kubeforge-{c}.1"));
        assert!(page.exists(), "{} missing: {}", page.display(), r.stdout);
    }
    let status = std::fs::read_to_string(d.join("man1/kubeforge-status.1")).unwrap();
    assert!(
        status.contains("Exit status: 0 healthy, 1 degraded"),
        "{status}"
    );
    let r = kubeforge(d, &["--help"]);
    for c in ["status", "completions", "man"] {
        assert!(r.stdout.contains(c), "--help lacks {c}");
    }
}

/// A directory with single.toml whose node is reached on this machine's
/// port 1, where nothing listens (the ssh_config sends every connection
/// there).
fn unreachable_single() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let inv = std::fs::read_to_string(repo().join("inventories/single.toml"))
        .unwrap()
        .replace("key = \"~/.ssh/id_ed25519\"", "port = 1");
    std::fs::write(tmp.path().join("inventory.toml"), inv).unwrap();
    std::fs::write(
        tmp.path().join("ssh_config"),
        "Host *\n    HostName 127.0.0.1\n",
    )
    .unwrap();
    tmp
}

/// `COMMAND -i inventory.toml` with [`unreachable_single`]'s ssh_config.
fn unreachable_args(command: &str) -> Vec<&str> {
    vec![
        command,
        "-i",
        "inventory.toml",
        "--ssh-config",
        "ssh_config",
        "--connect-timeout",
        "3",
    ]
}

/// `status` needs the PKI apply made; with it, nodes that cannot be
/// reached are a table of unreachable nodes and exit status 2. The
/// ssh_config sends every connection to this machine's port 1, where
/// nothing listens.
#[test]
fn status_of_unreachable_nodes() {
    let tmp = unreachable_single();
    let d = tmp.path();
    let r = kubeforge(d, &["status", "-i", "inventory.toml"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("holds no complete PKI"), "{}", r.stderr);
    let r = kubeforge(d, &["render", "-i", "inventory.toml", "--out", "out"]);
    assert_eq!(r.code, 0);
    let args = unreachable_args("status");
    let r = kubeforge(d, &args);
    assert_eq!(r.code, 2, "unreachable nodes are a failure");
    assert!(
        r.stdout
            .starts_with("cluster \"single\": failed (3 nodes, "),
        "{}",
        r.stdout
    );
    for n in ["cp1", "worker1", "worker2"] {
        let row = r
            .stdout
            .lines()
            .find(|l| l.starts_with(n) && l.contains(" host "))
            .unwrap_or_else(|| panic!("no host row for {n}"));
        assert!(row.contains("unreachable"), "{row}");
        assert!(
            r.stdout
                .contains(&format!("failed: {n}: unreachable: {n}: cannot connect")),
            "{}",
            r.stdout
        );
    }
    assert!(!r.stdout.contains('\x1b'), "colours only on a terminal");
    let mut json_args = args.to_vec();
    json_args.extend(["--output", "json"]);
    let r = kubeforge(d, &json_args);
    assert_eq!(r.code, 2);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["verdict"], "failed");
    assert_eq!(v["nodes"][0]["reachable"], false);
    assert_eq!(v["etcd"]["members"][0]["healthy"], false);
}

#[test]
fn a_removed_node_that_cannot_be_reached_is_named_with_unreachable() {
    let tmp = unreachable_single();
    let d = tmp.path();
    let r = kubeforge(d, &["render", "-i", "inventory.toml", "--out", "out"]);
    assert_eq!(r.code, 0);
    // worker3 had kubeforge's files; the inventory no longer names it.
    let record = serde_json::json!({
        "manifest": {
            "cluster": "single",
            "node": "worker3",
            "address": "10.77.0.23",
            "roles": ["worker"],
            "files": ["/etc/kubernetes/kubelet.conf"],
            "binaries": [],
            "units": [
                {"name": "containerd", "enabled": true, "packaged": false},
                {"name": "kubelet", "enabled": true, "packaged": false}
            ]
        },
        "ssh": {"user": "root", "port": 1}
    });
    let nodes = d.join(".kubeforge/single/nodes");
    std::fs::create_dir_all(&nodes).unwrap();
    std::fs::write(nodes.join("worker3.json"), record.to_string()).unwrap();
    let apply = |extra: &[&str]| {
        let mut args = unreachable_args("apply");
        args.extend(extra);
        kubeforge(d, &args)
    };
    // Not reached: the error names the way to remove it anyway.
    let r = apply(&["--prune"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("cannot reach every node"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("`kubeforge apply --prune --unreachable worker3` removes it"),
        "{}",
        r.stderr
    );
    // Only names of nodes being removed, refused before any connection.
    for (name, says) in [
        ("cp1", "--unreachable cp1: the inventory names cp1"),
        ("worker9", "the state directory has no record of worker9"),
    ] {
        let r = apply(&["--prune", "--unreachable", name]);
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains(says), "{}", r.stderr);
        assert!(r.stderr.contains("nothing was changed"), "{}", r.stderr);
        assert!(!r.stderr.contains("cannot reach"), "{}", r.stderr);
    }
    let r = apply(&["--unreachable", "worker3"]);
    assert_eq!(r.code, 2, "clap: --unreachable needs --prune");
    assert!(r.stderr.contains("--prune"), "{}", r.stderr);
    // The plan shows what happens to it.
    let r = kubeforge(
        d,
        &[
            "plan",
            "-i",
            "inventory.toml",
            "--offline",
            "--prune",
            "--unreachable",
            "worker3",
        ],
    );
    assert_eq!(r.code, 0);
    assert!(
        r.stdout
            .contains("worker3 (10.77.0.23): remove from the cluster (worker)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("unreachable: not drained, not torn down; its Node object is removed"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("cordon worker3, no evictions"),
        "{}",
        r.stdout
    );
}

/// plan and apply make the PKI and the files while the connections open:
/// a failure to make them (here a bundle without its SHA256SUMS) is the
/// error reported, also when no node can be reached.
#[test]
fn a_failure_to_prepare_is_reported_over_unreachable_nodes() {
    let tmp = unreachable_single();
    let d = tmp.path();
    for command in ["plan", "apply"] {
        let mut args = unreachable_args(command);
        args.extend(["--bundle", "nowhere"]);
        let r = kubeforge(d, &args);
        assert_eq!(r.code, 1, "{command}: {}", r.stderr);
        assert!(
            r.stderr.contains("bundle nowhere/SHA256SUMS") && !r.stderr.contains("cannot connect"),
            "{command}: {}",
            r.stderr
        );
    }
}
