//! PKI and render times for clusters of 10, 100 and 1000 nodes, printed
//! side by side. Run with `cargo bench -p kubeforge-render`.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// 3 control-plane + etcd nodes, 2 LB nodes, the rest workers.
fn inventory(nodes: usize) -> String {
    let mut s = String::from(
        "[cluster]\nname = \"bench\"\nkubernetes_version = \"1.31.4\"\n\
         node_cidr = \"10.0.0.0/16\"\npod_cidr = \"10.128.0.0/9\"\n\n\
         [loadbalancer]\nvip = \"10.0.255.250/16\"\n\n",
    );
    for i in 0..nodes {
        let (name, roles) = match i {
            0..=2 => (format!("cp{i}"), "[\"etcd\", \"control-plane\"]"),
            3..=4 => (format!("lb{i}"), "[\"lb\"]"),
            _ => (format!("worker{i}"), "[\"worker\"]"),
        };
        let _ = writeln!(
            s,
            "[[nodes]]\nname = \"{name}\"\naddress = \"10.0.{}.{}\"\nroles = {roles}\n",
            i / 250,
            i % 250 + 1
        );
    }
    s
}

struct Row {
    nodes: usize,
    validate: Duration,
    pki_fresh: Duration,
    pki_write: Duration,
    pki_rerun: Duration,
    render: Duration,
    files: usize,
}

fn measure(nodes: usize) -> Row {
    let text = inventory(nodes);
    let t = Instant::now();
    let loaded = kubeforge_inventory::parse(std::path::Path::new("bench.toml"), &text).unwrap();
    let validate = t.elapsed();
    let state = tempfile::tempdir().unwrap();

    let t = Instant::now();
    let first =
        kubeforge_pki::reconcile(state.path(), &loaded.cluster, &Default::default()).unwrap();
    let pki_fresh = t.elapsed();
    let t = Instant::now();
    first.persist(state.path()).unwrap();
    let pki_write = t.elapsed();

    let t = Instant::now();
    let again =
        kubeforge_pki::reconcile(state.path(), &loaded.cluster, &Default::default()).unwrap();
    let pki_rerun = t.elapsed();
    assert!(again.is_clean());

    let alloc = kubeforge_render::allocate_pod_subnets(state.path(), &loaded.cluster).unwrap();
    let renderer = kubeforge_render::Renderer::new().unwrap();
    let t = Instant::now();
    let rendered = renderer
        .render(&loaded.cluster, &again.pki, &alloc.subnets)
        .unwrap();
    let render = t.elapsed();
    let files = rendered.nodes.iter().map(|n| n.files.len()).sum();
    Row {
        nodes,
        validate,
        pki_fresh,
        pki_write,
        pki_rerun,
        render,
        files,
    }
}

fn main() {
    // `cargo test --benches` runs this with --bench absent: keep it quick.
    let sizes: &[usize] = if std::env::args().any(|a| a == "--bench") {
        &[10, 100, 1000]
    } else {
        &[10]
    };
    println!(
        "{:>6} {:>10} {:>11} {:>13} {:>11} {:>10} {:>7}",
        "nodes", "validate", "PKI issue", "PKI persist", "PKI re-run", "render", "files"
    );
    for &n in sizes {
        let r = measure(n);
        println!(
            "{:>6} {:>10.1?} {:>11.1?} {:>13.1?} {:>11.1?} {:>10.1?} {:>7}",
            r.nodes, r.validate, r.pki_fresh, r.pki_write, r.pki_rerun, r.render, r.files
        );
    }
}
