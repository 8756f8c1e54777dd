#!/usr/bin/env bash
# Fault injection on the HA lab: runs the ignored lab test
# lab_fault::faults_during_apply_leave_no_half_written_file_and_converge
# (tests/tests/lab_fault.rs) and prints its `fault:` lines: per fault what
# was done, the files found new / old / drained / half-written, the
# converging re-apply and the "No changes" apply after it, and a summary.
# Needs root (the lab); runs tests/setup.sh first. Not a CI step: about two
# minutes of lab time per fault.
#
#   tests/fault/run.sh [KILLS]      # kill -9 points of a fresh apply (20)
#
# KUBEFORGE_FAULT_CHAIN=0 leaves out the faults on a running cluster (ssh
# upload and master killed, etcd member stopped, power cut, kill while
# drained); KUBEFORGE_K8S_BIN_DIR=/path runs with the real Kubernetes
# binaries instead of the stand-ins. The whole log goes to
# target/fault-run.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
etcd_dir=$(tests/setup.sh | tail -1)
export KUBEFORGE_ETCD_DIR="${KUBEFORGE_ETCD_DIR:-$etcd_dir}"
export KUBEFORGE_FAULT_KILLS="${1:-${KUBEFORGE_FAULT_KILLS:-20}}"
log=target/fault-run.log
start=$(date +%s)
set +e
cargo test --locked -p kubeforge-tests --test integration \
  lab_fault:: -- --ignored --nocapture --test-threads=1 >"$log" 2>&1
rc=$?
set -e
grep '^fault: ' "$log" || true
echo "fault injection: $(( $(date +%s) - start )) s in all, test exit $rc (log: $log)"
[ "$rc" = 0 ] || tail -40 "$log"
exit "$rc"
