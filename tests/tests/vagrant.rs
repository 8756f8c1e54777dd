//! The Vagrant lab: its Vagrantfile is valid, and it describes exactly the
//! nodes of `inventories/vagrant/inventory.toml`.

use kubeforge_tests::find_tool;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `name -> ip` from the Vagrantfile's NODES table.
fn vagrantfile_nodes() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(repo().join("vagrant/Vagrantfile")).expect("Vagrantfile");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        let (Some(n), Some(i)) = (line.find("name: \""), line.find("ip: \"")) else {
            continue;
        };
        let field = |at: usize, key: &str| {
            let rest = &line[at + key.len()..];
            rest[..rest.find('"').unwrap_or(0)].to_string()
        };
        out.insert(field(n, "name: \""), field(i, "ip: \""));
    }
    out
}

#[test]
fn vagrant_lab_matches_its_inventory() {
    let loaded = kubeforge_inventory::load(&repo().join("inventories/vagrant/inventory.toml"))
        .expect("the vagrant inventory is valid");
    let inventory: BTreeMap<String, String> = loaded
        .cluster
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.address.to_string()))
        .collect();
    assert_eq!(vagrantfile_nodes(), inventory);
}

#[test]
fn vagrant_validate() {
    let test = "vagrant_validate";
    let Some(vagrant) = find_tool("vagrant", None) else {
        kubeforge_tests::skip(test, "vagrant not found (apt-get install vagrant)");
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let out = Command::new(vagrant)
        .args(["validate", "--ignore-provider"])
        .current_dir(repo().join("vagrant"))
        .env("VAGRANT_HOME", home.path().join("home"))
        .env("VAGRANT_DOTFILE_PATH", home.path().join("dot"))
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .env("VAGRANT_BOX_UPDATE_CHECK_DISABLE", "1")
        .output()
        .expect("vagrant runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("Vagrantfile validated successfully"),
        "{text}"
    );
}
