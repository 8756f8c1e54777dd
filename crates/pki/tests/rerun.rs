//! Re-running reconcile against an existing state directory: what is kept,
//! what is reissued and why, and what is never touched.
#![allow(clippy::unwrap_used)]

mod common;

use common::{action_of, fresh, ha, ha_text, not_kept, now, opts_at, pki, snapshot};
use common::{CA_SUBJECTS, HA_LEAVES};
use kubeforge_pki::{reconcile, Action, CaId, Options, PkiError, Reason};
use std::path::{Path, PathBuf};
use time::Duration;

const CA_FILES: [&str; 6] = [
    "ca.crt",
    "ca.key",
    "etcd/ca.crt",
    "etcd/ca.key",
    "front-proxy-ca.crt",
    "front-proxy-ca.key",
];

fn read(dir: &Path, rel: &str) -> Vec<u8> {
    std::fs::read(pki(dir).join(rel)).unwrap()
}

fn reissued(why: Reason) -> Action {
    Action::Reissued { why }
}

/// Every leaf of ha.toml except those named is `Kept`, as are the CAs,
/// the service-account key and the encryption key.
fn assert_only_changed(events: &[kubeforge_pki::Event], changed: &[(&str, Action)]) {
    let mut want: Vec<(String, Action)> = changed
        .iter()
        .map(|(s, a)| (s.to_string(), a.clone()))
        .collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(not_kept(events), want);
    for ca in CA_SUBJECTS {
        if !changed.iter().any(|(s, _)| *s == ca) {
            assert_eq!(action_of(events, ca), &Action::Kept, "{ca}");
        }
    }
    assert_eq!(action_of(events, "service-account key"), &Action::Kept);
    assert_eq!(action_of(events, "secrets encryption key"), &Action::Kept);
    assert_eq!(events.len(), 3 + 2 + HA_LEAVES.len(), "{events:#?}");
}

#[test]
fn first_run_creates_everything() {
    let cluster = ha();
    let dir = tempfile::tempdir().unwrap();
    let r = reconcile(dir.path(), &cluster, &opts_at(now())).unwrap();
    assert!(!r.is_clean());
    assert!(
        !pki(dir.path()).exists(),
        "reconcile must not write anything"
    );
    for e in &r.events {
        assert_eq!(e.action, Action::Created, "{e}");
    }
    let subjects: Vec<&str> = r.events.iter().map(|e| e.subject.as_str()).collect();
    for s in CA_SUBJECTS
        .iter()
        .chain(&["service-account key", "secrets encryption key"])
        .chain(HA_LEAVES.iter().map(|(s, _)| s))
    {
        assert!(subjects.contains(s), "no event for {s}");
    }
    assert_eq!(r.events.len(), 3 + 2 + HA_LEAVES.len());
}

#[test]
fn second_run_keeps_everything_and_writes_nothing() {
    let cluster = ha();
    let (dir, _) = fresh(&cluster, now());
    let before = snapshot(dir.path());
    let r = reconcile(dir.path(), &cluster, &Options::default()).unwrap();
    for e in &r.events {
        assert_eq!(e.action, Action::Kept, "{e}");
    }
    assert_eq!(r.events.len(), 3 + 2 + HA_LEAVES.len());
    assert!(r.is_clean());
    assert!(r.persist(dir.path()).unwrap().is_empty());
    assert!(snapshot(dir.path()) == before, "the state dir changed");
    // The PKI handed out is what is on disk.
    assert_eq!(
        r.pki.leaf("apiserver", None).unwrap().cert_pem.as_bytes(),
        read(dir.path(), "apiserver.crt")
    );
}

#[test]
fn adding_a_control_plane_node_reissues_the_apiserver_and_creates_its_certs() {
    let cluster = ha();
    let (dir, _) = fresh(&cluster, now());
    let before = snapshot(dir.path());

    let text = format!(
        "{}\n[[nodes]]\nname = \"cp4\"\naddress = \"10.77.0.14\"\nroles = [\"etcd\", \"control-plane\"]\n",
        ha_text()
    );
    let grown = kubeforge_inventory::parse(&common::inventory_path("ha.toml"), &text)
        .unwrap()
        .cluster;
    let r = reconcile(dir.path(), &grown, &Options::default()).unwrap();
    let sans = Reason::MissingSans(vec!["DNS:cp4".into(), "IP:10.77.0.14".into()]);
    assert_eq!(
        not_kept(&r.events),
        vec![
            ("apiserver".to_string(), reissued(sans)),
            ("etcd-peer for cp4".to_string(), Action::Created),
            ("etcd-server for cp4".to_string(), Action::Created),
            (
                "kube-controller-manager-server for cp4".to_string(),
                Action::Created
            ),
            ("kube-scheduler-server for cp4".to_string(), Action::Created),
            ("kubelet-client for cp4".to_string(), Action::Created),
            ("kubelet-server for cp4".to_string(), Action::Created),
        ]
    );
    for ca in CA_SUBJECTS {
        assert_eq!(action_of(&r.events, ca), &Action::Kept, "{ca}");
    }
    for (leaf, _) in HA_LEAVES.iter().filter(|(s, _)| *s != "apiserver") {
        assert_eq!(action_of(&r.events, leaf), &Action::Kept, "{leaf}");
    }
    assert_eq!(r.events.len(), 3 + 2 + HA_LEAVES.len() + 6);

    let written = r.persist(dir.path()).unwrap();
    let after = snapshot(dir.path());
    for rel in CA_FILES {
        assert!(
            after[Path::new(rel)] == before[Path::new(rel)],
            "{rel} changed"
        );
    }
    // Only the apiserver pair and the six new pairs were written.
    let mut written: Vec<PathBuf> = written
        .iter()
        .map(|p| p.strip_prefix(pki(dir.path())).unwrap().to_path_buf())
        .collect();
    written.sort();
    let mut want: Vec<PathBuf> = ["apiserver"]
        .iter()
        .map(|s| s.to_string())
        .chain(
            [
                "etcd-server",
                "etcd-peer",
                "kube-controller-manager-server",
                "kube-scheduler-server",
                "kubelet-client",
                "kubelet-server",
            ]
            .iter()
            .map(|id| format!("nodes/cp4/{id}")),
        )
        .flat_map(|stem| [format!("{stem}.crt"), format!("{stem}.key")])
        .map(PathBuf::from)
        .collect();
    want.sort();
    assert_eq!(written, want);
    for (rel, bytes) in &before {
        if rel != Path::new("apiserver.crt") && rel != Path::new("apiserver.key") {
            assert!(&after[rel] == bytes, "{} changed", rel.display());
        }
    }
    // And the run after that is clean.
    let again = reconcile(dir.path(), &grown, &Options::default()).unwrap();
    assert!(again.is_clean(), "{:#?}", not_kept(&again.events));
}

#[test]
fn leaf_signed_by_another_ca_is_reissued() {
    let cluster = ha();
    let t0 = now();
    let (dir, _) = fresh(&cluster, t0);
    let (other, _) = fresh(&cluster, t0);
    for ext in ["crt", "key"] {
        let rel = format!("nodes/cp1/etcd-server.{ext}");
        std::fs::copy(pki(other.path()).join(&rel), pki(dir.path()).join(&rel)).unwrap();
    }
    let r = reconcile(dir.path(), &cluster, &Options::default()).unwrap();
    assert_only_changed(
        &r.events,
        &[("etcd-server for cp1", reissued(Reason::NotSignedByCa))],
    );
    r.persist(dir.path()).unwrap();
    assert!(reconcile(dir.path(), &cluster, &Options::default())
        .unwrap()
        .is_clean());
}

#[test]
fn leaf_with_a_swapped_key_is_reissued() {
    let cluster = ha();
    let (dir, _) = fresh(&cluster, now());
    let admin = read(dir.path(), "admin.key");
    let proxy = read(dir.path(), "kube-proxy.key");
    std::fs::write(pki(dir.path()).join("admin.key"), proxy).unwrap();
    std::fs::write(pki(dir.path()).join("kube-proxy.key"), admin).unwrap();
    let r = reconcile(dir.path(), &cluster, &Options::default()).unwrap();
    assert_only_changed(
        &r.events,
        &[
            ("admin", reissued(Reason::KeyMismatch)),
            ("kube-proxy", reissued(Reason::KeyMismatch)),
        ],
    );
}

#[test]
fn corrupted_leaf_is_unreadable() {
    let cluster = ha();
    let (dir, _) = fresh(&cluster, now());
    std::fs::write(
        pki(dir.path()).join("nodes/worker1/kubelet-client.crt"),
        "garbage",
    )
    .unwrap();
    let r = reconcile(dir.path(), &cluster, &Options::default()).unwrap();
    assert!(
        matches!(
            action_of(&r.events, "kubelet-client for worker1"),
            Action::Reissued {
                why: Reason::Unreadable(_)
            }
        ),
        "{:#?}",
        r.events
    );
    let changed = not_kept(&r.events);
    assert_eq!(changed.len(), 1, "{changed:#?}");
}

#[test]
fn leaves_near_expiry_are_renewed_and_cas_kept() {
    let cluster = ha();
    let t0 = now();
    let (dir, _) = fresh(&cluster, t0);
    let before = snapshot(dir.path());
    let later = t0 + Duration::days(365 - 29);
    let r = reconcile(dir.path(), &cluster, &opts_at(later)).unwrap();
    for (leaf, _) in HA_LEAVES {
        assert!(
            matches!(
                action_of(&r.events, leaf),
                Action::Reissued {
                    why: Reason::ExpiresSoon(_)
                }
            ),
            "{leaf}: {:?}",
            action_of(&r.events, leaf)
        );
    }
    for ca in CA_SUBJECTS {
        assert_eq!(action_of(&r.events, ca), &Action::Kept, "{ca}");
    }
    assert_eq!(action_of(&r.events, "service-account key"), &Action::Kept);
    assert_eq!(
        action_of(&r.events, "secrets encryption key"),
        &Action::Kept
    );
    r.persist(dir.path()).unwrap();
    let after = snapshot(dir.path());
    for rel in CA_FILES
        .iter()
        .chain(&["sa.key", "sa.pub", "encryption-key"])
    {
        assert!(
            after[Path::new(rel)] == before[Path::new(rel)],
            "{rel} changed"
        );
    }
    assert!(after[Path::new("apiserver.crt")] != before[Path::new("apiserver.crt")]);
    // The renewed leaves are good for another year from `later`.
    let info = kubeforge_pki::inspect(&r.pki.leaf("apiserver", None).unwrap().cert_pem).unwrap();
    assert!(info.not_after >= later + Duration::days(364));
    assert!(reconcile(dir.path(), &cluster, &opts_at(later))
        .unwrap()
        .is_clean());

    // One day outside the window nothing happens.
    let (dir, _) = fresh(&cluster, t0);
    let r = reconcile(
        dir.path(),
        &cluster,
        &opts_at(t0 + Duration::days(365 - 31)),
    )
    .unwrap();
    assert!(r.is_clean(), "{:#?}", not_kept(&r.events));
}

#[test]
fn ca_near_expiry_is_only_reported() {
    let cluster = ha();
    let t0 = now();
    let (dir, _) = fresh(&cluster, t0);
    let before = snapshot(dir.path());
    let later = t0 + Duration::days(3650 - 10);
    let r = reconcile(dir.path(), &cluster, &opts_at(later)).unwrap();
    for ca in CA_SUBJECTS {
        assert!(
            matches!(action_of(&r.events, ca), Action::CaExpiresSoon { .. }),
            "{ca}: {:?}",
            action_of(&r.events, ca)
        );
    }
    for e in &r.events {
        assert!(
            !matches!(e.action, Action::CaRegenerated | Action::Created),
            "{e}"
        );
    }
    r.persist(dir.path()).unwrap();
    let after = snapshot(dir.path());
    for rel in CA_FILES {
        assert!(
            after[Path::new(rel)] == before[Path::new(rel)],
            "{rel} changed"
        );
    }
    assert!(
        !after.keys().any(|p| p.to_string_lossy().ends_with(".bak")),
        "no CA was replaced"
    );
    // Leaves issued now never outlive their CA.
    for (id, ca) in [
        ("apiserver", CaId::Kubernetes),
        ("front-proxy-client", CaId::FrontProxy),
    ] {
        let leaf = kubeforge_pki::inspect(&r.pki.leaf(id, None).unwrap().cert_pem).unwrap();
        let ca = kubeforge_pki::inspect(&r.pki.cas[&ca].cert_pem).unwrap();
        assert!(leaf.not_after <= ca.not_after, "{id}");
    }
    // Leaves already valid until their CA's end are not reissued again on
    // the next run inside the CA's last days: no reissue loop.
    let next = reconcile(dir.path(), &cluster, &opts_at(later + Duration::days(1))).unwrap();
    assert!(next.is_clean(), "{:#?}", not_kept(&next.events));
}

#[test]
fn new_etcd_ca_regenerates_it_and_reissues_only_its_leaves() {
    let cluster = ha();
    let (dir, _) = fresh(&cluster, now());
    let before = snapshot(dir.path());
    let r = reconcile(
        dir.path(),
        &cluster,
        &Options {
            new_cas: vec![CaId::Etcd],
            ..Options::default()
        },
    )
    .unwrap();
    let etcd_leaves = [
        "apiserver-etcd-client",
        "etcd-server for cp1",
        "etcd-server for cp2",
        "etcd-server for cp3",
        "etcd-peer for cp1",
        "etcd-peer for cp2",
        "etcd-peer for cp3",
        "etcd-healthcheck-client",
    ];
    // The list above is the etcd column of the shared leaf table.
    let mut from_table: Vec<&str> = HA_LEAVES
        .iter()
        .filter(|(_, ca)| *ca == "etcd")
        .map(|(s, _)| *s)
        .collect();
    from_table.sort();
    let mut sorted = etcd_leaves.to_vec();
    sorted.sort();
    assert_eq!(sorted, from_table);

    let mut changed: Vec<(&str, Action)> = vec![("etcd CA", Action::CaRegenerated)];
    changed.extend(
        etcd_leaves
            .iter()
            .map(|s| (*s, reissued(Reason::NotSignedByCa))),
    );
    assert_only_changed(&r.events, &changed);

    r.persist(dir.path()).unwrap();
    let after = snapshot(dir.path());
    for rel in [
        "ca.crt",
        "ca.key",
        "front-proxy-ca.crt",
        "front-proxy-ca.key",
    ] {
        assert!(
            after[Path::new(rel)] == before[Path::new(rel)],
            "{rel} changed"
        );
    }
    assert!(after[Path::new("etcd/ca.crt")] != before[Path::new("etcd/ca.crt")]);
    assert!(after[Path::new("etcd/ca.key")] != before[Path::new("etcd/ca.key")]);

    // The old CA is kept aside, cert and key with the same timestamp.
    let baks: Vec<String> = std::fs::read_dir(pki(dir.path()).join("etcd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bak"))
        .collect();
    assert_eq!(baks.len(), 2, "{baks:?}");
    let crt_bak = baks
        .iter()
        .find(|n| n.starts_with("ca.crt."))
        .expect("ca.crt.<ts>.bak");
    let ts = crt_bak
        .strip_prefix("ca.crt.")
        .unwrap()
        .strip_suffix(".bak")
        .unwrap();
    assert!(ts.parse::<i64>().is_ok(), "timestamp {ts}");
    let key_bak = format!("ca.key.{ts}.bak");
    assert!(baks.contains(&key_bak), "{baks:?}");
    assert!(after[&Path::new("etcd").join(crt_bak)] == before[Path::new("etcd/ca.crt")]);
    assert!(after[&Path::new("etcd").join(&key_bak)] == before[Path::new("etcd/ca.key")]);
    assert!(
        !after
            .keys()
            .any(|p| !p.starts_with("etcd") && p.to_string_lossy().ends_with(".bak")),
        "only the etcd CA is backed up"
    );

    // Everything fits the new CA: the next run keeps it all.
    let again = reconcile(dir.path(), &cluster, &Options::default()).unwrap();
    assert!(again.is_clean(), "{:#?}", not_kept(&again.events));
}

fn expect_ca_key_error(dir: &Path, ca: CaId, rel: &str) {
    let cluster = ha();
    let err = reconcile(dir, &cluster, &Options::default()).unwrap_err();
    let path = pki(dir).join(rel);
    match &err {
        PkiError::CaKey {
            ca: got, path: p, ..
        } => {
            assert_eq!(*got, ca);
            assert_eq!(p, &path);
        }
        other => panic!("want a CaKey error, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("restore"), "{msg}");
}

#[test]
fn ca_with_missing_key_is_an_error() {
    let cluster = ha();
    let (dir, _) = fresh(&cluster, now());
    std::fs::remove_file(pki(dir.path()).join("ca.key")).unwrap();
    let before = snapshot(dir.path());
    expect_ca_key_error(dir.path(), CaId::Kubernetes, "ca.key");
    assert!(snapshot(dir.path()) == before, "the state dir changed");
}

#[test]
fn ca_with_a_foreign_key_is_an_error() {
    let cluster = ha();
    let (dir, _) = fresh(&cluster, now());
    std::fs::copy(
        pki(dir.path()).join("front-proxy-ca.key"),
        pki(dir.path()).join("etcd/ca.key"),
    )
    .unwrap();
    expect_ca_key_error(dir.path(), CaId::Etcd, "etcd/ca.key");
}

#[test]
fn ca_with_an_unreadable_key_is_an_error() {
    let cluster = ha();
    let (dir, _) = fresh(&cluster, now());
    std::fs::write(pki(dir.path()).join("front-proxy-ca.key"), "garbage").unwrap();
    expect_ca_key_error(dir.path(), CaId::FrontProxy, "front-proxy-ca.key");
}

#[test]
fn missing_ca_files_are_created() {
    let cluster = ha();
    let (dir, _) = fresh(&cluster, now());
    for rel in ["front-proxy-ca.crt", "front-proxy-ca.key"] {
        std::fs::remove_file(pki(dir.path()).join(rel)).unwrap();
    }
    let r = reconcile(dir.path(), &cluster, &Options::default()).unwrap();
    assert_only_changed(
        &r.events,
        &[
            ("front-proxy CA", Action::Created),
            ("front-proxy-client", reissued(Reason::NotSignedByCa)),
        ],
    );
    r.persist(dir.path()).unwrap();
    assert!(pki(dir.path()).join("front-proxy-ca.crt").exists());
    assert!(reconcile(dir.path(), &cluster, &Options::default())
        .unwrap()
        .is_clean());
}

#[test]
fn service_account_half_missing_is_an_error() {
    let cluster = ha();
    for gone in ["sa.key", "sa.pub"] {
        let (dir, _) = fresh(&cluster, now());
        std::fs::remove_file(pki(dir.path()).join(gone)).unwrap();
        let err = reconcile(dir.path(), &cluster, &Options::default()).unwrap_err();
        match &err {
            PkiError::ServiceAccount { path, .. } => {
                assert_eq!(path, &pki(dir.path()).join(gone), "{err}");
            }
            other => panic!("{gone} missing: want a ServiceAccount error, got {other:?}"),
        }
        assert!(err.to_string().contains("restore"), "{err}");
    }
}

#[test]
fn ca_key_without_its_certificate_is_an_error() {
    let cluster = ha();
    let (dir, _) = fresh(&cluster, now());
    std::fs::remove_file(pki(dir.path()).join("etcd/ca.crt")).unwrap();
    expect_ca_key_error(dir.path(), CaId::Etcd, "etcd/ca.crt");
}

#[test]
fn lost_keys_of_an_established_cluster_are_errors_not_regenerated() {
    let cluster = ha();
    // Both service-account files gone while the cluster CA exists.
    let (dir, _) = fresh(&cluster, now());
    for gone in ["sa.key", "sa.pub"] {
        std::fs::remove_file(pki(dir.path()).join(gone)).unwrap();
    }
    let err = reconcile(dir.path(), &cluster, &Options::default()).unwrap_err();
    assert!(matches!(err, PkiError::ServiceAccount { .. }), "{err}");

    // The secrets encryption key gone, empty or not 32 bytes of base64.
    for (content, want) in [
        (None, "missing"),
        (Some(""), "0 bytes"),
        (Some("c2hvcnQ=\n"), "5 bytes"),
        (Some("not base64!"), "not base64"),
    ] {
        let (dir, _) = fresh(&cluster, now());
        let path = pki(dir.path()).join("encryption-key");
        match content {
            None => std::fs::remove_file(&path).unwrap(),
            Some(c) => std::fs::write(&path, c).unwrap(),
        }
        let err = reconcile(dir.path(), &cluster, &Options::default()).unwrap_err();
        match &err {
            PkiError::EncryptionKey { path: p, detail } => {
                assert_eq!(p, &path);
                assert!(detail.contains(want), "{detail}");
            }
            other => panic!("want an EncryptionKey error, got {other:?}"),
        }
        assert!(err.to_string().contains("restore"), "{err}");
    }
}

#[test]
fn bootstrap_token_join_issues_no_kubelet_certificates_and_keeps_its_token() {
    let text = ha_text().replace(
        "[cluster]\n",
        "[cluster]\nkubelet_join = \"bootstrap-token\"\n",
    );
    let cluster = kubeforge_inventory::parse(&common::inventory_path("ha.toml"), &text)
        .unwrap()
        .cluster;
    let t0 = now();
    let (dir, first) = fresh(&cluster, t0);
    assert_eq!(
        action_of(&first.events, "kubelet bootstrap token"),
        &Action::Created
    );
    for id in ["kubelet-client", "kubelet-server"] {
        assert!(
            first.pki.leaf(id, Some("worker1")).is_none(),
            "{id} issued although kubelets bootstrap"
        );
    }
    let token = first.pki.bootstrap_token.as_ref().unwrap().0.clone();
    let (id, secret) = token.split_once('.').unwrap();
    assert!(id.len() == 6 && secret.len() == 16, "{token}");
    let on_disk = std::fs::read_to_string(pki(dir.path()).join("bootstrap-token")).unwrap();
    let expires = t0 + Duration::hours(24);
    assert_eq!(
        on_disk,
        format!("{token}\nexpiration={}\n", rfc3339(expires))
    );
    assert_eq!(
        first.pki.bootstrap_token_expiration.as_deref(),
        Some(rfc3339(expires).as_str())
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(pki(dir.path()).join("bootstrap-token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let again = reconcile(dir.path(), &cluster, &Options::default()).unwrap();
    assert_eq!(
        action_of(&again.events, "kubelet bootstrap token"),
        &Action::Kept
    );
    assert_eq!(again.pki.bootstrap_token.as_ref().unwrap().0, token);
    assert!(again.is_clean());

    std::fs::write(pki(dir.path()).join("bootstrap-token"), "not-a-token\n").unwrap();
    let err = reconcile(dir.path(), &cluster, &Options::default()).unwrap_err();
    assert!(err.to_string().contains("not a bootstrap token"), "{err}");
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn bootstrap_cluster(extra_pki: &str) -> kubeforge_inventory::Cluster {
    let text = ha_text()
        .replace(
            "[cluster]\n",
            "[cluster]\nkubelet_join = \"bootstrap-token\"\n",
        )
        .replace("[pki]\n", &format!("[pki]\n{extra_pki}"));
    kubeforge_inventory::parse(&common::inventory_path("ha.toml"), &text)
        .unwrap()
        .cluster
}

fn token_of(r: &kubeforge_pki::Reconciled) -> (String, String) {
    let t = r.pki.bootstrap_token.as_ref().unwrap().0.clone();
    let (id, secret) = t.split_once('.').unwrap();
    (id.to_string(), secret.to_string())
}

/// The token is kept while more than half its TTL is left; nearer to or
/// past its expiry it gets a new secret and expiration under the same id
/// (the Secret is updated in place, the old secret stops working), and the
/// new one is written to the state directory.
#[test]
fn bootstrap_token_is_replaced_near_or_past_its_expiry() {
    let cluster = bootstrap_cluster("");
    let t0 = now();
    let (dir, first) = fresh(&cluster, t0);
    let (id, secret) = token_of(&first);

    // 11 h later (13 h of 24 left): kept, nothing to write.
    let r = reconcile(dir.path(), &cluster, &opts_at(t0 + Duration::hours(11))).unwrap();
    assert_eq!(
        action_of(&r.events, "kubelet bootstrap token"),
        &Action::Kept
    );
    assert_eq!(token_of(&r), (id.clone(), secret.clone()));
    assert!(r.is_clean());

    // 13 h later (11 h left): replaced.
    let t1 = t0 + Duration::hours(13);
    let r = reconcile(dir.path(), &cluster, &opts_at(t1)).unwrap();
    assert_eq!(
        action_of(&r.events, "kubelet bootstrap token"),
        &reissued(Reason::ExpiresSoon(rfc3339(t0 + Duration::hours(24))))
    );
    let (id1, secret1) = token_of(&r);
    assert_eq!(id1, id, "the token id (the Secret's name) stays");
    assert_ne!(secret1, secret);
    assert_eq!(
        r.pki.bootstrap_token_expiration.as_deref(),
        Some(rfc3339(t1 + Duration::hours(24)).as_str())
    );
    r.persist(dir.path()).unwrap();
    let on_disk = std::fs::read_to_string(pki(dir.path()).join("bootstrap-token")).unwrap();
    assert!(
        on_disk.starts_with(&format!("{id}.{secret1}\n")),
        "{on_disk}"
    );

    // Past its expiry: replaced too.
    let r = reconcile(dir.path(), &cluster, &opts_at(t1 + Duration::hours(30))).unwrap();
    assert!(matches!(
        action_of(&r.events, "kubelet bootstrap token"),
        Action::Reissued {
            why: Reason::ExpiresSoon(_)
        }
    ));
    assert_ne!(token_of(&r).1, secret1);
}

/// A token file from before expirations were recorded, and a token valid
/// for longer than a lowered TTL, are replaced; a TTL out of range is
/// refused by validation.
#[test]
fn bootstrap_token_without_expiration_or_beyond_the_ttl_is_replaced() {
    let cluster = bootstrap_cluster("");
    let t0 = now();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(pki(dir.path())).unwrap();
    std::fs::write(
        pki(dir.path()).join("bootstrap-token"),
        "abcdef.0123456789abcdef\n",
    )
    .unwrap();
    let r = reconcile(dir.path(), &cluster, &opts_at(t0)).unwrap();
    assert_eq!(
        action_of(&r.events, "kubelet bootstrap token"),
        &reissued(Reason::NoExpiration)
    );
    let (id, secret) = token_of(&r);
    assert_eq!(id, "abcdef");
    assert_ne!(secret, "0123456789abcdef");
    r.persist(dir.path()).unwrap();

    let short = bootstrap_cluster("bootstrap_token_ttl_hours = 2\n");
    assert_eq!(short.pki.bootstrap_token_ttl_hours, 2);
    let r = reconcile(dir.path(), &short, &opts_at(t0)).unwrap();
    assert_eq!(
        action_of(&r.events, "kubelet bootstrap token"),
        &reissued(Reason::OutlivesTtl(rfc3339(t0 + Duration::hours(24))))
    );
    assert_eq!(
        r.pki.bootstrap_token_expiration.as_deref(),
        Some(rfc3339(t0 + Duration::hours(2)).as_str())
    );

    let text = ha_text().replace("[pki]\n", "[pki]\nbootstrap_token_ttl_hours = 0\n");
    let err = kubeforge_inventory::parse(&common::inventory_path("ha.toml"), &text).unwrap_err();
    assert!(
        err.to_string()
            .contains("bootstrap_token_ttl_hours 0 is out of range"),
        "{err}"
    );
}

/// The check that decides whether a kubelet holds its own client
/// certificate: signed by the cluster CA, for its node name, a client
/// certificate, valid now.
#[test]
fn a_kubelets_own_client_certificate_is_recognized() {
    let cluster = ha();
    let t0 = now();
    let (_dir, r) = fresh(&cluster, t0);
    let cert = &r
        .pki
        .leaf("kubelet-client", Some("worker1"))
        .unwrap()
        .cert_pem;
    let ca = &r.pki.cas[&CaId::Kubernetes].cert_pem;
    let etcd_ca = &r.pki.cas[&CaId::Etcd].cert_pem;
    let at = |t: time::OffsetDateTime| std::time::SystemTime::from(t);
    let check = kubeforge_pki::client_certificate_valid;
    assert_eq!(check(cert, ca, "system:node:worker1", at(t0)), Ok(()));
    assert_eq!(
        check(cert, ca, "system:node:worker2", at(t0)),
        Err("issued to system:node:worker1, not system:node:worker2".into())
    );
    assert_eq!(
        check(cert, etcd_ca, "system:node:worker1", at(t0)),
        Err("not signed by the cluster CA".into())
    );
    assert!(check(
        cert,
        ca,
        "system:node:worker1",
        at(t0 + Duration::days(400))
    )
    .unwrap_err()
    .contains("not now"));
    let server = &r.pki.leaf("apiserver", None).unwrap().cert_pem;
    assert!(check(server, ca, "kube-apiserver", at(t0)).is_err());
    assert!(check("garbage", ca, "x", at(t0)).is_err());
}
