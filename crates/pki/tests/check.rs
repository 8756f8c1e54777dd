//! The CHECK states `kubeforge certs` shows.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ha, now, opts_at};
use kubeforge_pki::San;
use kubeforge_pki::{judge, judge_ca, reconcile, CaId, CertState};
use std::net::{IpAddr, Ipv4Addr};
use time::{Duration, OffsetDateTime};

fn ca() -> kubeforge_pki::KeyCert {
    let cluster = ha();
    let dir = tempfile::tempdir().unwrap();
    let r = reconcile(dir.path(), &cluster, &opts_at(now())).unwrap();
    r.pki.cas[&CaId::Kubernetes].clone()
}

/// CHECK states, from the same certificate judged at different times,
/// against different CAs and names.
#[test]
fn check_states() {
    let cluster = ha();
    let dir = tempfile::tempdir().unwrap();
    let t0 = now();
    let r = reconcile(dir.path(), &cluster, &opts_at(t0)).unwrap();
    let cert = &r.pki.leaves["apiserver"].cert_pem;
    let signer = &r.pki.cas[&CaId::Kubernetes].cert_pem;
    let other = ca().cert_pem;
    let vip = San::Ip(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 100)));
    let absent = San::Dns("api.example.com".into());
    let days = |d: i64| t0 + Duration::days(d);
    let cases: [(&str, &str, Vec<San>, OffsetDateTime, CertState); 7] = [
        ("fresh", signer, vec![vip.clone()], t0, CertState::Ok),
        (
            "in the window",
            signer,
            vec![],
            days(340),
            CertState::RenewSoon,
        ),
        (
            "past its end",
            signer,
            vec![],
            days(400),
            CertState::Expired,
        ),
        (
            "another CA",
            &other,
            vec![],
            t0,
            CertState::NotSignedByCurrentCa,
        ),
        (
            "a name missing",
            signer,
            vec![vip.clone(), absent],
            t0,
            CertState::SanMismatch(vec!["DNS:api.example.com".into()]),
        ),
        // Expired wins over the rest.
        (
            "expired, other CA",
            &other,
            vec![],
            days(400),
            CertState::Expired,
        ),
        (
            "not a certificate",
            signer,
            vec![],
            t0,
            CertState::Invalid("not a PEM certificate".into()),
        ),
    ];
    for (what, ca, sans, at, want) in cases {
        let pem = if what == "not a certificate" {
            "junk"
        } else {
            cert.as_str()
        };
        assert_eq!(judge(pem, ca, &sans, 30, at), want, "{what}");
    }
    assert_eq!(judge_ca(signer, 30, t0), CertState::Ok);
    assert_eq!(judge_ca(signer, 30, days(3640)), CertState::RenewSoon);
    assert_eq!(judge_ca(signer, 30, days(3651)), CertState::Expired);
    // What the CHECK column says.
    for (state, text) in [
        (CertState::Ok, "ok"),
        (CertState::RenewSoon, "renew soon"),
        (CertState::Expired, "expired"),
        (
            CertState::NotSignedByCurrentCa,
            "not signed by the current CA",
        ),
        (
            CertState::SanMismatch(vec!["IP:10.0.0.1".into()]),
            "SAN mismatch (lacks IP:10.0.0.1)",
        ),
        (CertState::Differs, "differs from the state directory"),
    ] {
        assert_eq!(state.to_string(), text);
    }
    assert_eq!(
        CertState::RenewSoon.worst(CertState::Differs),
        CertState::Differs
    );
    assert_eq!(
        CertState::Expired.worst(CertState::Differs),
        CertState::Expired
    );
}
