//! Health gates: each is a read-only check on a node, retried until it
//! passes or its timeout ends; a failure names the node, the gate, the
//! unit and shows the unit's last journal lines.

use crate::ApplyError;
use kubeforge_transport::{ops, Script, Transport};
use std::time::{Duration, Instant};

/// One gate: a script that exits 0 when healthy.
pub(crate) struct Gate<'a> {
    pub name: String,
    pub unit: &'a str,
    pub script: &'static str,
    pub args: Vec<String>,
}

pub(crate) const ETCD_HEALTH: &str = r#"set -eu
pki=/etc/kubernetes/pki/etcd
out=$(curl -sS --max-time 5 --cacert $pki/ca.crt --cert $pki/healthcheck-client.crt --key $pki/healthcheck-client.key https://127.0.0.1:2379/health)
case "$out" in *'"health":"true"'*) ;; *) echo "$out"; exit 1;; esac
members=$(curl -sS --max-time 5 --cacert $pki/ca.crt --cert $pki/healthcheck-client.crt --key $pki/healthcheck-client.key -X POST -d '{}' https://127.0.0.1:2379/v3/cluster/member/list)
n=$(printf '%s' "$members" | grep -o '"peerURLs"' | wc -l)
[ "$n" -eq "$1" ] || { echo "member list has $n members, want $1"; exit 1; }
started=$(printf '%s' "$members" | grep -o '"clientURLs"' | wc -l)
[ "$started" -eq "$1" ] || { echo "$started of $1 members started"; exit 1; }
"#;

/// GET an HTTPS URL with the cluster CA; the body must be "ok".
pub(crate) const HTTPS_OK: &str = r#"out=$(curl -sS --max-time 5 --cacert "$2" "$1" 2>&1) || { echo "$out"; exit 1; }
[ "$out" = ok ] || { echo "$out"; exit 1; }
"#;

/// The URL must answer 2xx over plain HTTP (node-local health endpoints).
pub(crate) const HTTP_OK: &str = r#"curl -sS -f --max-time 5 -o /dev/null "$1""#;

/// containerd answers on its socket, and its CRI plugin loaded.
pub(crate) const CONTAINERD: &str = r#"set -eu
[ -S "$1" ] || { echo "no socket $1"; exit 1; }
if command -v ctr >/dev/null 2>&1; then
  out=$(ctr --address "$1" plugins ls 2>&1) || { echo "$out"; exit 1; }
  printf '%s\n' "$out" | grep -Eq 'io\.containerd\.grpc\.v1[[:space:]]+cri[[:space:]]+.*ok' \
    || { echo "the CRI plugin is not ok:"; printf '%s\n' "$out" | grep cri; exit 1; }
fi
"#;

/// Prints `yes` if this node holds the address.
pub(crate) const HOLDS_ADDRESS: &str =
    r#"if ip -o -4 addr show | grep -q " $1/"; then echo yes; else echo no; fi"#;

pub(crate) async fn wait(
    t: &dyn Transport,
    gate: &Gate<'_>,
    timeout: Duration,
) -> Result<(), ApplyError> {
    let start = Instant::now();
    loop {
        let out = t
            .run(
                Script::new(&gate.name, gate.script)
                    .args(gate.args.clone())
                    .timeout(Duration::from_secs(15)),
            )
            .await;
        let last = match out {
            Ok(o) if o.success() => return Ok(()),
            Ok(o) => format!("{}{}", o.stdout_str(), o.stderr_str())
                .trim()
                .to_string(),
            Err(e) => e.to_string(),
        };
        if start.elapsed() >= timeout {
            return Err(ApplyError::Gate(Box::new(crate::GateFailure {
                node: t.node().to_string(),
                gate: gate.name.clone(),
                unit: gate.unit.to_string(),
                secs: timeout.as_secs(),
                detail: last,
                journal: ops::journal(t, gate.unit, 20).await,
            })));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
