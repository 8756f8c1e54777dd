#!/usr/bin/env bash
# Wall times of `kubeforge apply` on the HA lab (3 control-plane + etcd,
# 2 LB, 1 worker; lab nodes as in tests/src/lab.rs): fresh apply, no-op
# re-apply, and a rolling change of every apiserver, printed side by side.
# Needs root (the lab); runs tests/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/../.."
etcd_dir=$(tests/setup.sh | tail -1)
export KUBEFORGE_ETCD_DIR="${KUBEFORGE_ETCD_DIR:-$etcd_dir}"
cargo build --release --workspace --locked -q
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release -q -p kubeforge-tests --test integration --locked \
  lab_apply::ha_control_plane -- --nocapture >"$log" 2>&1 || {
  tail -50 "$log" >&2
  exit 1
}
fresh=$(sed -n 's/^lab_apply timings: fresh apply \([0-9.]*\) s.*/\1/p' "$log")
noop=$(sed -n 's/^lab_apply timings: .*no-op re-apply \([0-9.]*\) s.*/\1/p' "$log")
rolling=$(grep -o 'Applied: 0 steps run, 6 files written, 0 units started, 3 restarted, 0 reloaded in [0-9.]* s' "$log" \
  | sed -n 's/.* in \([0-9.]*\) s/\1/p' | sed -n 1p)
probes=$(sed -n 's/^probe through the VIP during the rolling change: //p' "$log")
printf '%-34s %8s\n' "kubeforge apply on the HA lab" "seconds"
printf '%-34s %8s\n' "fresh apply (6 nodes)" "$fresh"
printf '%-34s %8s\n' "no-op re-apply" "$noop"
printf '%-34s %8s   (%s)\n' "rolling apiserver change" "$rolling" "$probes"
