//! A CA rotation's three steps in the state directory.
#![allow(clippy::unwrap_used)]

mod common;

use common::{fresh, ha, not_kept, now, opts_at, pki, snapshot, HA_LEAVES};
use kubeforge_pki::rotation::{self, Rotation, Step};
use kubeforge_pki::{reconcile, Action, CaId, Options, Reason};
use std::path::Path;

fn at_step(step: Step) -> Options {
    Options {
        rotation: Some(Rotation {
            ca: CaId::Kubernetes,
            step,
            done: false,
        }),
        ..opts_at(now())
    }
}

/// The certificates of a PEM bundle, as their subjects' serial-free DER.
fn certs_in(pem: &str) -> Vec<String> {
    pem.split("-----END CERTIFICATE-----")
        .filter(|c| c.contains("-----BEGIN CERTIFICATE-----"))
        .map(|c| c.trim().to_string())
        .collect()
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(pki(dir).join(rel)).unwrap()
}

fn kubernetes_leaves() -> Vec<(String, Action)> {
    let mut v: Vec<(String, Action)> = HA_LEAVES
        .iter()
        .filter(|(_, ca)| *ca == "kubernetes")
        .map(|(s, _)| {
            (
                s.to_string(),
                Action::Reissued {
                    why: Reason::NotSignedByCa,
                },
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn a_rotation_trusts_both_then_reissues_then_drops_the_old_ca() {
    let cluster = ha();
    let (dir, first) = fresh(&cluster, now());
    let old_ca = read(dir.path(), "ca.crt");
    let before = snapshot(dir.path());

    // Step 1: a new CA beside the old one, which still signs; nothing
    // else changes.
    let r = reconcile(dir.path(), &cluster, &at_step(Step::Trust)).unwrap();
    assert_eq!(
        not_kept(&r.events),
        vec![(
            "kubernetes CA (new)".to_string(),
            Action::CaRotation {
                what: "created, trusted beside the current one".into()
            }
        )]
    );
    assert_eq!(
        r.pki.cas[&CaId::Kubernetes],
        first.pki.cas[&CaId::Kubernetes]
    );
    let trusted = certs_in(&r.pki.trust[&CaId::Kubernetes]);
    assert_eq!(trusted.len(), 2);
    assert_eq!(trusted[0], certs_in(&old_ca)[0], "the old CA first");
    assert_eq!(
        certs_in(&r.pki.trust[&CaId::Etcd]).len(),
        1,
        "only the rotated CA's bundle grows"
    );
    assert_eq!(r.pki.leaves, first.pki.leaves);
    assert_eq!(snapshot(dir.path()), before, "reconcile writes nothing");
    r.persist(dir.path()).unwrap();
    assert_eq!(
        rotation::recorded(dir.path()).unwrap(),
        Some(Rotation {
            ca: CaId::Kubernetes,
            step: Step::Trust,
            done: false
        })
    );
    assert_eq!(read(dir.path(), "ca.crt"), old_ca, "the old CA still signs");
    let new_ca = read(dir.path(), "ca.next.crt");
    assert_eq!(certs_in(&new_ca)[0], trusted[1]);
    // The same step again (an apply in between, an interrupted step run
    // again) keeps the new CA and changes nothing.
    let again = reconcile(dir.path(), &cluster, &opts_at(now())).unwrap();
    assert!(again.is_clean(), "{:#?}", not_kept(&again.events));
    assert_eq!(again.pki.trust, r.pki.trust);
    rotation::finish_step(dir.path(), r.pki.rotation.unwrap()).unwrap();

    // Step 2: the new CA signs; every leaf it signs is reissued, the
    // others kept; both stay trusted.
    let r = reconcile(dir.path(), &cluster, &at_step(Step::Reissue)).unwrap();
    let mut want = kubernetes_leaves();
    want.push((
        "kubernetes CA".into(),
        Action::CaRotation {
            what: "the new CA signs from now on; the old one stays trusted".into(),
        },
    ));
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(not_kept(&r.events), want);
    assert_eq!(r.pki.cas[&CaId::Kubernetes].cert_pem, new_ca);
    assert_eq!(certs_in(&r.pki.trust[&CaId::Kubernetes]), trusted);
    r.persist(dir.path()).unwrap();
    assert_eq!(read(dir.path(), "ca.crt"), new_ca);
    assert_eq!(read(dir.path(), "ca.previous.crt"), old_ca);
    assert!(!pki(dir.path()).join("ca.next.crt").exists());
    assert!(!pki(dir.path()).join("ca.next.key").exists());
    let baks = snapshot(dir.path())
        .into_keys()
        .filter(|p| p.to_string_lossy().ends_with(".bak"))
        .count();
    assert_eq!(baks, 2, "the old pair is kept aside");
    // Run again (interrupted after the state was written): the same.
    let again = reconcile(dir.path(), &cluster, &at_step(Step::Reissue)).unwrap();
    assert!(again.is_clean(), "{:#?}", not_kept(&again.events));
    assert_eq!(again.pki.trust, r.pki.trust);
    rotation::finish_step(dir.path(), r.pki.rotation.unwrap()).unwrap();

    // Step 3: only the new CA is trusted; the record goes once the step
    // reached every node.
    let r = reconcile(dir.path(), &cluster, &at_step(Step::Drop)).unwrap();
    assert_eq!(
        not_kept(&r.events),
        vec![(
            "kubernetes CA (old)".to_string(),
            Action::CaRotation {
                what: "no longer trusted".into()
            }
        )]
    );
    assert_eq!(r.pki.trust[&CaId::Kubernetes], new_ca);
    r.persist(dir.path()).unwrap();
    assert!(!pki(dir.path()).join("ca.previous.crt").exists());
    rotation::finish_step(dir.path(), r.pki.rotation.unwrap()).unwrap();
    assert_eq!(rotation::recorded(dir.path()).unwrap(), None);
    let done = reconcile(dir.path(), &cluster, &Options::default()).unwrap();
    assert!(done.is_clean(), "{:#?}", not_kept(&done.events));
    assert_eq!(done.pki.rotation, None);
    // The service-account key is no CA: it never changed.
    assert_eq!(done.pki.sa_private, first.pki.sa_private);
    assert_eq!(done.pki.sa_public_pem, first.pki.sa_public_pem);
}

#[test]
fn new_ca_at_once_is_refused_during_a_rotation() {
    let cluster = ha();
    let (dir, _) = fresh(&cluster, now());
    reconcile(dir.path(), &cluster, &at_step(Step::Trust))
        .unwrap()
        .persist(dir.path())
        .unwrap();
    let e = reconcile(
        dir.path(),
        &cluster,
        &Options {
            new_cas: vec![CaId::Etcd],
            ..Options::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("a rotation of the kubernetes CA is under way (step 1 of 3"),
        "{e}"
    );
    assert!(e.contains("--new-ca etcd"), "{e}");
}

#[test]
fn step_three_before_step_two_is_refused() {
    let cluster = ha();
    let (dir, _) = fresh(&cluster, now());
    reconcile(dir.path(), &cluster, &at_step(Step::Trust))
        .unwrap()
        .persist(dir.path())
        .unwrap();
    let e = reconcile(dir.path(), &cluster, &at_step(Step::Drop))
        .unwrap_err()
        .to_string();
    assert!(e.contains("step 2 has not run"), "{e}");
}
