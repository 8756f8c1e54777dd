//! Renewals asked for by name (`kubeforge certs renew`).
#![allow(clippy::unwrap_used)]

mod common;

use common::{fresh, ha, not_kept, now, opts_at};
use kubeforge_pki::{reconcile, Action, Options, Reason};

#[test]
fn renewal_asked_for_reissues_exactly_those_leaves() {
    let cluster = ha();
    let (dir, first) = fresh(&cluster, now());
    let r = reconcile(
        dir.path(),
        &cluster,
        &Options {
            renew: vec!["apiserver".into(), "nodes/cp2/etcd-peer".into()],
            ..opts_at(now())
        },
    )
    .unwrap();
    let asked = Action::Reissued { why: Reason::Asked };
    assert_eq!(
        not_kept(&r.events),
        vec![
            ("apiserver".to_string(), asked.clone()),
            ("etcd-peer for cp2".to_string(), asked),
        ]
    );
    assert_ne!(r.pki.leaves["apiserver"], first.pki.leaves["apiserver"]);
    assert_eq!(r.pki.cas, first.pki.cas, "never a CA");
}
