//! An inventory with tens of thousands of findings: every one still names
//! its own line and column, also after non-ASCII text on its line.

use kubeforge_inventory::{parse, Severity};
use std::path::Path;

const NODES: usize = 20_000;

#[test]
fn every_finding_of_20000_bad_nodes_has_its_own_location() {
    // A pod range with room for a subnet for each of the nodes.
    let mut text = String::from(
        "[cluster]\nname = \"many\"\nkubernetes_version = \"1.31.4\"\n\
         pod_cidr = \"10.128.0.0/9\"\npod_subnet_prefix = 26\n\n\
         [[nodes]]\nname = \"cp1\"\naddress = \"10.0.0.11\"\nroles = [\"etcd\", \"control-plane\"]\n",
    );
    // (line, column, message) of every error, in file order.
    let mut expected = Vec::new();
    let mut line = text.lines().count();
    for i in 0..NODES {
        let name = format!("Bad{i}");
        let address = format!("10.1.{}.{}", i / 256, i % 256);
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"{name}\"\naddress = \"{address}\"\nroles = [\"worker\"]\n\
             taints = [\"\u{e4}=b:NoSchedule\", \"x:Sometimes\"]\n"
        ));
        // The blank line, then [[nodes]] at line + 2 and name at line + 3.
        expected.push((
            line + 3,
            8,
            format!("node name \"{name}\" is not a DNS label"),
        ));
        // `taints = [` is 10 characters; the first taint is 16 characters
        // (the 'ä' is one character but two bytes), then ", ".
        expected.push((
            line + 6,
            11,
            format!("taint \"\u{e4}=b:NoSchedule\" on node \"{name}\" is not valid"),
        ));
        expected.push((
            line + 6,
            29,
            format!("taint \"x:Sometimes\" on node \"{name}\" is not valid"),
        ));
        line += 6;
    }
    assert_eq!(text.lines().count(), line);

    let err = match parse(Path::new("many.toml"), &text) {
        Ok(_) => panic!("an inventory with {NODES} bad nodes was accepted"),
        Err(e) => e,
    };
    assert!(err
        .diagnostics
        .iter()
        .all(|d| d.severity == Severity::Error && d.file == Path::new("many.toml")));
    let actual: Vec<(usize, usize, String)> = err
        .diagnostics
        .iter()
        .map(|d| (d.line, d.column, d.message.clone()))
        .collect();
    assert_eq!(actual.len(), expected.len(), "number of findings");
    if let Some(i) = (0..actual.len()).find(|&i| actual[i] != expected[i]) {
        panic!(
            "finding {i} of {}: expected {:?}, got {:?}",
            actual.len(),
            expected[i],
            actual[i]
        );
    }
}
