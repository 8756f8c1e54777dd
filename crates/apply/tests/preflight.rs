//! Pre-flight over the local transport: two "nodes" that are really this
//! one machine share a hostname and a machine-id, which must be refused
//! with every problem named, before anything changes.
#![allow(clippy::unwrap_used)]

use kubeforge_apply::{gather, preflight, ApplyError, Options, Transports};
use kubeforge_plan::Facts;
use kubeforge_transport::{LocalTransport, Transport};
use std::sync::Arc;

const INVENTORY: &str = r#"
[cluster]
name = "t"
kubernetes_version = "1.31.4"

[[nodes]]
name = "a"
address = "10.77.0.11"
roles = ["etcd", "control-plane"]

[[nodes]]
name = "b"
address = "10.77.0.12"
roles = ["worker"]
"#;

/// The inventory text rendered (the PKI in a temporary directory).
fn rendered(text: &str) -> kubeforge_render::Rendered {
    let cluster = kubeforge_inventory::parse(std::path::Path::new("t.toml"), text)
        .unwrap()
        .cluster;
    let state = tempfile::tempdir().unwrap();
    kubeforge_render::prepare(state.path(), &cluster, &Default::default())
        .unwrap()
        .rendered
}

#[tokio::test]
async fn cloned_hosts_are_refused() {
    let rendered = rendered(INVENTORY);
    let mut transports: Transports = Transports::new();
    for n in ["a", "b"] {
        transports.insert(
            n.into(),
            Arc::new(LocalTransport::new(n)) as Arc<dyn Transport>,
        );
    }
    // The local transport gathers this one machine's facts for both.
    let g = gather(&transports, &rendered, 2, false).await.unwrap();
    let err = preflight(&rendered, &g.hosts, &g.facts, &Options::default()).unwrap_err();
    let ApplyError::Preflight(problems) = &err else {
        panic!("{err}");
    };
    let text = err.to_string();
    assert!(
        text.starts_with("pre-flight checks failed; nothing was changed:"),
        "{text}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("nodes a, b share the hostname")),
        "{text}"
    );
    // A container may have no machine-id; when it has one it is shared too.
    if std::fs::read_to_string("/etc/machine-id").is_ok_and(|m| !m.trim().is_empty()) {
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("nodes a, b share the machine-id")),
            "{text}"
        );
    }
}

#[tokio::test]
async fn clock_skew_bound_is_checked() {
    let rendered = rendered(&INVENTORY.replace(
        "[[nodes]]\nname = \"b\"\naddress = \"10.77.0.12\"\nroles = [\"worker\"]\n",
        "",
    ));
    assert_eq!(rendered.nodes.len(), 1);
    let mut transports: Transports = Transports::new();
    transports.insert(
        "a".into(),
        Arc::new(LocalTransport::new("a")) as Arc<dyn Transport>,
    );
    // The same machine: no skew, and (unless a tool is missing) no problem.
    let g = gather(&transports, &rendered, 2, false).await.unwrap();
    assert_eq!(g.hosts.len(), 1);
    match preflight(&rendered, &g.hosts, &Facts::Offline, &Options::default()) {
        Ok(()) => {}
        Err(e) => {
            let text = e.to_string();
            assert!(!text.contains("clock differs"), "{text}");
        }
    }
}

#[test]
fn unsynchronized_clocks_are_a_warning() {
    use kubeforge_transport::ops::HostFacts;
    let mut hosts = std::collections::BTreeMap::new();
    for (name, ntp) in [("a", Some(true)), ("b", Some(false)), ("c", None)] {
        hosts.insert(
            name.to_string(),
            HostFacts {
                ntp_synchronized: ntp,
                ..HostFacts::default()
            },
        );
    }
    assert_eq!(
        kubeforge_apply::preflight_warnings(&hosts),
        ["b: the clock is not synchronized (timedatectl: NTPSynchronized=no); enable chrony or systemd-timesyncd"]
    );
}
