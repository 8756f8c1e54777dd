//! The table's `[[requirement]]` rows: which node needs what, by role and
//! by the cluster's settings, each name once per node.
#![allow(clippy::unwrap_used)]

use kubeforge_render::{Renderer, FILES_TOML, TEMPLATES};
use std::path::PathBuf;

/// Per node, the names of its requirements, for `ha.toml` edited by
/// `edit`.
fn needs(edit: impl Fn(&str) -> String) -> Vec<(String, Vec<String>)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../inventories/ha.toml");
    let text = edit(&std::fs::read_to_string(&path).unwrap());
    let cluster = kubeforge_inventory::parse(&path, &text).unwrap().cluster;
    let state = tempfile::tempdir().unwrap();
    let rendered = kubeforge_render::prepare(state.path(), &cluster, &Default::default())
        .unwrap()
        .rendered;
    rendered
        .nodes
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                n.requirements.iter().map(|r| r.name.clone()).collect(),
            )
        })
        .collect()
}

fn of<'a>(all: &'a [(String, Vec<String>)], node: &str) -> Vec<&'a str> {
    all.iter()
        .find(|(n, _)| n == node)
        .map(|(_, r)| r.iter().map(String::as_str).collect())
        .unwrap()
}

#[test]
fn by_role_and_proxy_mode() {
    let iptables = needs(str::to_string);
    assert_eq!(
        of(&iptables, "worker1"),
        [
            "iptables",
            "kernel module overlay",
            "kernel module br_netfilter"
        ]
    );
    assert_eq!(of(&iptables, "cp1"), of(&iptables, "worker1"));
    assert_eq!(
        of(&iptables, "lb1"),
        ["nginx", "nginx's stream module", "keepalived"]
    );

    let ipvs = needs(|t| {
        t.replace(
            "kube_proxy_mode = \"iptables\"",
            "kube_proxy_mode = \"ipvs\"",
        )
    });
    assert_eq!(
        of(&ipvs, "worker1")[..4],
        [
            "iptables",
            "ipset",
            "kernel module ip_vs",
            "kernel module ip_vs_rr"
        ]
    );
    let nft = needs(|t| {
        t.replace(
            "kube_proxy_mode = \"iptables\"",
            "kube_proxy_mode = \"nftables\"",
        )
    });
    assert_eq!(of(&nft, "worker1")[0], "nft");
    assert!(!of(&nft, "worker1").contains(&"iptables"));

    // Containers: the host owns the kernel modules.
    let container =
        needs(|t| t.replace("[cluster]\n", "[cluster]\nnode_profile = \"container\"\n"));
    assert_eq!(of(&container, "worker1"), ["iptables"]);

    // 1.35 on hosts: cgroup v2 for the kubelet.
    let v135 = needs(|t| {
        t.lines()
            .map(|l| {
                if l.starts_with("kubernetes_version") {
                    "kubernetes_version = \"1.35.0\"".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    assert!(of(&v135, "worker1").contains(&"cgroup v2"));
    assert!(!of(&iptables, "worker1").contains(&"cgroup v2"));
}

#[test]
fn the_table_refuses_rows_it_cannot_check_or_explain() {
    let names: Vec<&str> = TEMPLATES.iter().map(|(n, _)| *n).collect();
    for (row, why) in [
        (
            "name = \"x\"\non = \"all\"\ncheck = \"command\"\narg = \"a;b\"\nfor = \"t\"\npackage = \"p\"\n",
            "arg \"a;b\" may hold only",
        ),
        (
            "name = \"x\"\non = \"all\"\ncheck = \"command\"\nfor = \"t\"\npackage = \"p\"\n",
            "needs `arg`",
        ),
        (
            "name = \"x\"\non = \"all\"\ncheck = \"nginx-stream\"\narg = \"a\"\nfor = \"t\"\npackage = \"p\"\n",
            "takes no `arg`",
        ),
        (
            "name = \"x\"\non = \"all\"\ncheck = \"file\"\narg = \"/a\"\nfor = \"t\"\n",
            "give the `package`",
        ),
    ] {
        let table = format!("{FILES_TOML}\n[[requirement]]\n{row}");
        let e = match kubeforge_render::Table::parse(&table, &names) {
            Ok(_) => panic!("accepted: {row}"),
            Err(e) => e,
        };
        assert!(e.contains(why), "{e}");
    }
    assert!(Renderer::with(TEMPLATES, FILES_TOML).is_ok());
}

#[test]
fn every_check_script_is_plain_shell() {
    for need in [
        kubeforge_render::Need::Command,
        kubeforge_render::Need::Module,
        kubeforge_render::Need::File,
        kubeforge_render::Need::NginxStream,
    ] {
        let script = need.script("arg");
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{need:?}: {script}");
    }
}

/// A binary goes in with the units it restarts, unless its row names a
/// phase: etcd's tools come with the controllers, so etcd does not wait for
/// them. A phase the table does not declare, or one without nodes, is
/// refused.
#[test]
fn a_binary_is_installed_in_its_phase() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../inventories/ha.toml");
    let cluster = kubeforge_inventory::load(&path).unwrap().cluster;
    let state = tempfile::tempdir().unwrap();
    let prepared = kubeforge_render::prepare(state.path(), &cluster, &Default::default()).unwrap();
    let mut rendered = prepared.rendered.clone();
    let bundle = ["etcd", "etcdctl", "etcdutl", "kubelet"]
        .into_iter()
        .map(|b| {
            (
                b.to_string(),
                (PathBuf::from(format!("/bundle/{b}")), "0".repeat(64)),
            )
        })
        .collect();
    prepared
        .renderer
        .add_binaries(&cluster, &mut rendered, &bundle);
    let cp1 = rendered.nodes.iter().find(|n| n.name == "cp1").unwrap();
    let phase = |p: &str| cp1.files[p].phase.as_str();
    assert_eq!(
        [
            phase("/usr/local/bin/etcd"),
            phase("/usr/local/bin/etcdctl"),
            phase("/usr/local/bin/etcdutl"),
            phase("/usr/local/bin/kubelet"),
        ],
        ["etcd", "controllers", "controllers", "node"]
    );

    let names: Vec<&str> = TEMPLATES.iter().map(|(n, _)| *n).collect();
    for (phase, why) in [
        ("nope", "binary \"x\" names unknown phase \"nope\""),
        ("addons", "which has no nodes"),
    ] {
        let table =
            format!("{FILES_TOML}\n[[binary]]\nname = \"x\"\non = \"all\"\nphase = \"{phase}\"\n");
        let e = kubeforge_render::Table::parse(&table, &names).unwrap_err();
        assert!(e.contains(why), "{e}");
    }
}

#[test]
fn a_step_needs_a_check_or_a_file_and_a_key_needs_a_check() {
    let names: Vec<&str> = TEMPLATES.iter().map(|(n, _)| *n).collect();
    for (row, why) in [
        ("run = \"true\"\n", "needs either a `check` or `written`"),
        (
            "check = \"true\"\nwritten = \"/etc/x\"\nstage = \"after-files\"\nrun = \"true\"\n",
            "needs either a `check` or `written`",
        ),
        (
            "written = \"/etc/x\"\nstage = \"after-files\"\nkey = \"echo k\"\nrun = \"true\"\n",
            "has a `key` but no `check`",
        ),
        (
            "written = \"/etc/x\"\nrun = \"true\"\n",
            "give it stage \"after-files\" or \"after-units\"",
        ),
    ] {
        let table = format!("{FILES_TOML}\n[[step]]\nname = \"x\"\non = \"all\"\n{row}");
        let e = kubeforge_render::Table::parse(&table, &names).unwrap_err();
        assert!(e.contains(why), "{row}: {e}");
    }
    let table = format!(
        "{FILES_TOML}\n[[step]]\nname = \"x\"\non = \"all\"\ncheck = \"true\"\nkey = \"echo k\"\nrun = \"true\"\n"
    );
    assert!(kubeforge_render::Table::parse(&table, &names).is_ok());
}
