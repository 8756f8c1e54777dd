//! Helpers shared by the integration tests of `kubeforge-pki`.
#![allow(dead_code, clippy::unwrap_used)]

use kubeforge_inventory::Cluster;
use kubeforge_pki::{reconcile, Action, Event, Options, Reconciled};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

pub fn inventory_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../inventories")
        .join(name)
}

/// The cluster of `inventories/ha.toml`.
pub fn ha() -> Cluster {
    kubeforge_inventory::load(&inventory_path("ha.toml"))
        .expect("ha.toml is valid")
        .cluster
}

/// The text of `inventories/ha.toml`.
pub fn ha_text() -> String {
    std::fs::read_to_string(inventory_path("ha.toml")).unwrap()
}

/// `now` truncated to whole seconds, as certificates store it.
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(0).unwrap()
}

pub fn opts_at(now: OffsetDateTime) -> Options {
    Options {
        now,
        ..Options::default()
    }
}

/// A fresh state directory with the PKI of `cluster` reconciled (at `now`)
/// and persisted.
pub fn fresh(cluster: &Cluster, now: OffsetDateTime) -> (tempfile::TempDir, Reconciled) {
    let dir = tempfile::tempdir().unwrap();
    let r = reconcile(dir.path(), cluster, &opts_at(now)).unwrap();
    r.persist(dir.path()).unwrap();
    (dir, r)
}

pub fn pki(dir: &Path) -> PathBuf {
    dir.join("pki")
}

/// Every file under `dir/pki`, by path relative to it, with its bytes.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, at: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(at).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let root = pki(dir);
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

/// The events that are not `Kept`, sorted by subject.
pub fn not_kept(events: &[Event]) -> Vec<(String, Action)> {
    let mut v: Vec<(String, Action)> = events
        .iter()
        .filter(|e| e.action != Action::Kept)
        .map(|e| (e.subject.clone(), e.action.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The action reconcile reported for `subject`.
pub fn action_of<'a>(events: &'a [Event], subject: &str) -> &'a Action {
    let found: Vec<&Event> = events.iter().filter(|e| e.subject == subject).collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one event for {subject}: {events:#?}"
    );
    &found[0].action
}

/// The subjects the three CAs are reported under.
pub const CA_SUBJECTS: [&str; 3] = ["kubernetes CA", "etcd CA", "front-proxy CA"];

/// Every leaf of ha.toml as `(subject, CA)`, spelled out.
pub const HA_LEAVES: &[(&str, &str)] = &[
    ("apiserver", "kubernetes"),
    ("apiserver-kubelet-client", "kubernetes"),
    ("apiserver-etcd-client", "etcd"),
    ("front-proxy-client", "front-proxy"),
    ("etcd-server for cp1", "etcd"),
    ("etcd-server for cp2", "etcd"),
    ("etcd-server for cp3", "etcd"),
    ("etcd-peer for cp1", "etcd"),
    ("etcd-peer for cp2", "etcd"),
    ("etcd-peer for cp3", "etcd"),
    ("etcd-healthcheck-client", "etcd"),
    ("kube-controller-manager", "kubernetes"),
    ("kube-controller-manager-server for cp1", "kubernetes"),
    ("kube-controller-manager-server for cp2", "kubernetes"),
    ("kube-controller-manager-server for cp3", "kubernetes"),
    ("kube-scheduler", "kubernetes"),
    ("kube-scheduler-server for cp1", "kubernetes"),
    ("kube-scheduler-server for cp2", "kubernetes"),
    ("kube-scheduler-server for cp3", "kubernetes"),
    ("kubelet-client for cp1", "kubernetes"),
    ("kubelet-client for cp2", "kubernetes"),
    ("kubelet-client for cp3", "kubernetes"),
    ("kubelet-client for worker1", "kubernetes"),
    ("kubelet-client for worker2", "kubernetes"),
    ("kubelet-server for cp1", "kubernetes"),
    ("kubelet-server for cp2", "kubernetes"),
    ("kubelet-server for cp3", "kubernetes"),
    ("kubelet-server for worker1", "kubernetes"),
    ("kubelet-server for worker2", "kubernetes"),
    ("kube-proxy", "kubernetes"),
    ("admin", "kubernetes"),
    ("super-admin", "kubernetes"),
];
