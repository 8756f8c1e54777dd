//! Health gates: one poller for every wait of an apply. A gate is a
//! read-only probe retried until it passes or the gate timeout ends; a
//! failure names the node, the gate and the unit, and shows the unit's
//! last journal lines.

use crate::{ApplyError, GateFailure, Options};
use kubeforge_render::{Check, Gate};
use kubeforge_transport::{ops, Script, Transport};
use std::future::Future;
use std::time::{Duration, Instant};

/// The script of each check; its positional arguments are the gate's
/// `args` (see [`Check`]).
fn script(check: Check) -> &'static str {
    match check {
        Check::HttpsOk => HTTPS_OK,
        Check::HttpOk => HTTP_OK,
        Check::EtcdMembers => ETCD_MEMBERS,
        Check::Containerd => CONTAINERD,
    }
}

/// $1 URL, $2 CA, $3 client certificate, $4 its key, $5 member count.
const ETCD_MEMBERS: &str = r#"set -eu
out=$(curl -sS --max-time 5 --cacert "$2" --cert "$3" --key "$4" "$1/health")
case "$out" in *'"health":"true"'*) ;; *) echo "$out"; exit 1;; esac
members=$(curl -sS --max-time 5 --cacert "$2" --cert "$3" --key "$4" -X POST -d '{}' "$1/v3/cluster/member/list")
n=$(printf '%s' "$members" | grep -o '"peerURLs"' | wc -l)
[ "$n" -eq "$5" ] || { echo "member list has $n members, want $5"; exit 1; }
started=$(printf '%s' "$members" | grep -o '"clientURLs"' | wc -l)
[ "$started" -eq "$5" ] || { echo "$started of $5 members started"; exit 1; }
"#;

/// GET an HTTPS URL with a CA; the body must be "ok".
const HTTPS_OK: &str = r#"out=$(curl -sS --max-time 5 --cacert "$2" "$1" 2>&1) || { echo "$out"; exit 1; }
[ "$out" = ok ] || { echo "$out"; exit 1; }
"#;

/// The URL must answer 2xx over plain HTTP (node-local health endpoints).
const HTTP_OK: &str = r#"curl -sS -f --max-time 5 -o /dev/null "$1""#;

/// containerd answers on its socket, and its CRI plugin loaded.
const CONTAINERD: &str = r#"set -eu
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

/// What one probe found.
pub(crate) enum Probe<T, W = String> {
    Pass(T),
    /// Not yet, and why.
    Wait(W),
}

/// Runs `probe` until it passes or `opts.gate_timeout` ends (it always
/// runs at least once); then the last reason it gave.
pub(crate) async fn poll<T, W, F, Fut>(opts: &Options, mut probe: F) -> Result<T, W>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Probe<T, W>>,
{
    let start = Instant::now();
    loop {
        match probe().await {
            Probe::Pass(v) => return Ok(v),
            Probe::Wait(why) if start.elapsed() >= opts.gate_timeout => return Err(why),
            Probe::Wait(_) => tokio::time::sleep(opts.poll_interval).await,
        }
    }
}

/// A gate that did not pass on the node of `t` within `secs`, with
/// `unit`'s journal there.
pub(crate) async fn failure(
    t: &dyn Transport,
    gate: &str,
    unit: &str,
    secs: u64,
    detail: String,
) -> ApplyError {
    ApplyError::Gate(Box::new(GateFailure {
        node: t.node().to_string(),
        gate: gate.to_string(),
        unit: unit.to_string(),
        secs,
        detail,
        journal: ops::journal(t, unit, 20).await,
    }))
}

/// Runs a check (`$2`, with the arguments after it) on the node again
/// while it fails, for up to `$1` milliseconds; then prints its last
/// failure. It pauses 0.1 s between the tries of the first second, then
/// 0.25 s: a gate passes soon after its unit is ready, without a round
/// trip per try, and a unit that takes its time to start (an apiserver)
/// is not slowed by checks (each a TLS handshake) ten times a second.
const RETRIED: &str = r#"window="$1"; s="$2"; shift 2
now() { echo $(( $(date +%s%N) / 1000000 )); }
end=$(( $(now) + window ))
pause=0.1; n=0
while :; do
  if out=$(sh -c "$s" sh "$@" 2>&1); then exit 0; fi
  [ "$(now)" -lt "$end" ] || { printf '%s\n' "$out"; exit 1; }
  sleep "$pause"
  n=$((n + 1))
  [ "$n" -ne 10 ] || pause=0.25
done
"#;

/// How long one round trip of a gate retries its check on the node.
const RETRY_WINDOW: Duration = Duration::from_secs(2);

/// Runs a gate's check on the node, retried there for up to
/// [`RETRY_WINDOW`] (no longer than the gate's timeout).
async fn probe(t: &dyn Transport, gate: &Gate, opts: &Options) -> Probe<()> {
    let window = RETRY_WINDOW.min(opts.gate_timeout);
    let mut args = vec![
        window.as_millis().to_string(),
        script(gate.check).to_string(),
    ];
    args.extend(gate.args.iter().cloned());
    let out = t
        .run(
            Script::new(&gate.name, RETRIED)
                .args(args)
                .timeout(Duration::from_secs(15) + window),
        )
        .await;
    match out {
        Ok(o) if o.success() => Probe::Pass(()),
        Ok(o) => Probe::Wait(
            format!("{}{}", o.stdout_str(), o.stderr_str())
                .trim()
                .to_string(),
        ),
        Err(e) => Probe::Wait(e.to_string()),
    }
}

/// Waits until `gate` passes on the node of `t`.
pub(crate) async fn wait(t: &dyn Transport, gate: &Gate, opts: &Options) -> Result<(), ApplyError> {
    match poll(opts, || probe(t, gate, opts)).await {
        Ok(()) => Ok(()),
        Err(why) => Err(failure(t, &gate.name, &gate.unit, opts.gate_timeout.as_secs(), why).await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check runs again on the node until it passes, in one round
    /// trip; one that keeps failing ends with its last words.
    #[tokio::test]
    async fn a_check_is_retried_on_the_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let count = dir.path().join("tries");
        let t = kubeforge_transport::LocalTransport::new("n1");
        // Passes on the third try.
        let third = r#"n=$(cat "$1" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "$1"; [ "$n" -ge 3 ] || { echo "try $n"; exit 1; }"#;
        let run = |window: &str, check: &str| {
            Script::new("check", RETRIED).args([
                window.to_string(),
                check.to_string(),
                count.display().to_string(),
            ])
        };
        let o = t.run(run("5000", third)).await.expect("runs");
        assert!(o.success(), "{}", o.stderr_str());
        assert_eq!(std::fs::read_to_string(&count).expect("tries").trim(), "3");
        let o = t
            .run(run("300", r#"echo "not yet: $1"; exit 1"#))
            .await
            .expect("runs");
        assert!(!o.success());
        assert_eq!(
            o.stdout_str().trim(),
            format!("not yet: {}", count.display())
        );
    }

    #[test]
    fn every_check_script_takes_the_arguments_the_table_gives() {
        for check in [
            Check::HttpsOk,
            Check::HttpOk,
            Check::EtcdMembers,
            Check::Containerd,
        ] {
            let s = script(check);
            let top = (1..=9)
                .filter(|i| s.contains(&format!("${i}")) || s.contains(&format!("\"${i}")))
                .max()
                .unwrap_or(0);
            assert_eq!(top, check.arity(), "{check:?}");
        }
    }
}
