#!/usr/bin/env bash
# The lab benchmark at several sizes, side by side: fresh apply (and, with
# real binaries, when the last node was Ready by the API), no-op
# re-apply, adding one worker, a no-op after it, and with a load balancer
# (6 nodes or more) a rolling apiserver change with a probe through the VIP
# and nginx stopping and coming back on the VIP holder. Prints a table and
# writes target/bench/lab.csv and target/bench/lab.png (time against N),
# and each size's test output and apply log (every step with its time) as
# target/bench/lab-N.log and lab-N-apply.log.
#
#   tests/bench/lab.sh                       # N = 3 10 30 100
#   NODES="6" tests/bench/lab.sh             # only the HA lab of 6 nodes
#   RATE=1gbit tests/bench/lab.sh            # the host's bridge shaped
#   KEX=curve25519-sha256 tests/bench/lab.sh # ssh_config's KexAlgorithms
#   KEEP=60 tests/bench/lab.sh               # every apply with
#       --keep-connections 60: the next one reuses its SSH connections
#   KUBEFORGE_K8S_BIN_DIR=/path tests/bench/lab.sh   # real binaries
#   PROFILE=1 tests/bench/lab.sh             # for the fresh apply and for
#       the add: its own CPU and each node's CPU by program; and each
#       control-plane node's etcd, apiserver and controller-manager
#       journal (in lab-N.log)
#   PERF=1 tests/bench/lab.sh                # the whole machine sampled
#       (`perf record -a`, 499 Hz) while each size runs; for each apply,
#       the share of the samples by program in its window (idle is
#       `swapper`), in lab-N-perf.txt
#   FRESH_ONLY=1 tests/bench/lab.sh          # stop after the fresh apply
#   BUILD=debug tests/bench/lab.sh           # kubeforge (and the stand-ins)
#       as `cargo build` makes them; by default the release build, which
#       the README's commands run
#
# Needs root (the lab). Stand-ins are used for the Kubernetes binaries
# unless KUBEFORGE_K8S_BIN_DIR names real ones.
set -euo pipefail
cd "$(dirname "$0")/../.."
etcd_dir=$(tests/setup.sh | tail -1)
export KUBEFORGE_ETCD_DIR="${KUBEFORGE_ETCD_DIR:-$etcd_dir}"
command -v tc >/dev/null || { apt-get install -y -q iproute2 >&2; }
# The plot needs matplotlib: Debian's python3-matplotlib, for the system's
# python3 (a python3 earlier in PATH may not see it).
plot_python=
for py in python3 /usr/bin/python3; do
  if "$py" -c 'import matplotlib' 2>/dev/null; then plot_python=$py; break; fi
done
if [ -z "$plot_python" ]; then
  apt-get install -y -q --no-install-recommends python3-matplotlib >&2 || true
  /usr/bin/python3 -c 'import matplotlib' 2>/dev/null && plot_python=/usr/bin/python3
fi
# The release build by default: what `cargo run --release` and `cargo
# install` give users. The lab tests find kubeforge and the stand-ins next
# to their own test binary, so the bench's test is built the same way.
case "${BUILD:-release}" in
  release) build=(--release) ;;
  debug) build=() ;;
  *) echo "BUILD must be release or debug" >&2; exit 2 ;;
esac
cargo build "${build[@]}" --workspace --locked -q
if [ -n "${PROFILE:-}" ]; then export KUBEFORGE_BENCH_PROFILE=1; fi
if [ -n "${FRESH_ONLY:-}" ]; then export KUBEFORGE_BENCH_FRESH_ONLY=1; fi
if [ -n "${PERF:-}" ] && ! command -v perf >/dev/null; then
  apt-get install -y -q linux-perf >&2 || true
fi
# perf_start FILE: samples every CPU into FILE in the background, with
# the realtime clock (the bench prints each apply's window on it).
perf_pid=
perf_start() {
  perf_pid=
  [ -n "${PERF:-}" ] || return 0
  if ! command -v perf >/dev/null; then echo "PERF: no perf here" >&2; return 0; fi
  perf record -a -F 499 -k CLOCK_REALTIME -q -o "$1" 2>/dev/null &
  perf_pid=$!
  sleep 1
}
# perf_report DATA LOG OUT: for each `bench: window FROM TO WHAT` line of
# LOG, the programs with the most samples in that window.
perf_report() {
  [ -n "$perf_pid" ] || return 0
  kill -INT "$perf_pid" 2>/dev/null || true
  wait "$perf_pid" 2>/dev/null || true
  : > "$3"
  grep '^bench: window ' "$2" | while read -r _ _ from to what; do
    perf script -i "$1" --time "$from,$to" -F comm 2>/dev/null | awk -v what="$what" -v from="$from" -v to="$to" '
      { sub(/^ +/, ""); sub(/ +$/, ""); n[$0]++; total++ }
      END {
        printf "%s (%.1f s, %d samples; by program, %% of the samples)\n", what, to - from, total
        for (c in n) printf "%7.1f %s\n", 100 * n[c] / total, c | "sort -rn | head -20"
        close("sort -rn | head -20")
      }' >> "$3"
  done
  echo "perf: $3" >&2
}
out=target/bench
mkdir -p "$out"
csv="$out/lab.csv"
rows=()
for n in ${NODES:-3 10 30 100}; do
  log="$out/lab-$n.log"
  perf_start "$out/perf-$n.data"
  if KUBEFORGE_BENCH_NODES=$n KUBEFORGE_BENCH_RATE="${RATE:-}" KUBEFORGE_BENCH_KEX="${KEX:-}" \
     KUBEFORGE_BENCH_KEEP="${KEEP:-}" \
     KUBEFORGE_BENCH_APPLY_LOG="$PWD/$out/lab-$n-apply.log" \
     cargo test "${build[@]}" --locked -q -p kubeforge-tests --test integration lab_bench::bench \
       -- --ignored --nocapture >"$log" 2>&1; then
    rows+=("$(grep '^BENCH ' "$log" | tail -1)")
  else
    echo "N=$n failed; see $log" >&2
    tail -30 "$log" >&2
  fi
  perf_report "$out/perf-$n.data" "$log" "$out/lab-$n-perf.txt"
done
field() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
printf '%-6s %7s %7s %9s %7s %7s %9s %9s %11s %12s\n' \
  nodes boot fresh all-ready no-op add rolling "failed" "nginx-stop" "nginx-back"
echo "nodes,boot,fresh,all_ready,noop,add,noop_after_add,rolling,rolling_failed,nginx_stop_window,nginx_back_failed" > "$csv"
for r in "${rows[@]}"; do
  n=$(field "$r" nodes)
  printf '%-6s %7s %7s %9s %7s %7s %9s %9s %11s %12s\n' "$n" \
    "$(field "$r" boot)" "$(field "$r" fresh)" "$(field "$r" all_ready)" "$(field "$r" noop)" "$(field "$r" add)" \
    "$(field "$r" rolling)" "$(field "$r" rolling_probe_failed)" \
    "$(field "$r" nginx_stop_window)" "$(field "$r" nginx_back_failed)"
  echo "$n,$(field "$r" boot),$(field "$r" fresh),$(field "$r" all_ready),$(field "$r" noop),$(field "$r" add),$(field "$r" noop_after_add),$(field "$r" rolling),$(field "$r" rolling_probe_failed),$(field "$r" nginx_stop_window),$(field "$r" nginx_back_failed)" >> "$csv"
done
if [ -n "$plot_python" ]; then
  "$plot_python" - "$csv" "$out/lab.png" <<'PY'
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = list(csv.DictReader(open(sys.argv[1])))
n = [int(r["nodes"]) for r in rows]
fig, ax = plt.subplots(figsize=(7, 4.5))
for key, label in [("fresh", "fresh apply"), ("noop", "no-op re-apply"), ("add", "add one worker"), ("rolling", "rolling apiserver change")]:
    pts = [(x, float(r[key])) for x, r in zip(n, rows) if r[key]]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
ax.set_xlabel("nodes")
ax.set_ylabel("seconds")
ax.set_title("kubeforge apply on lab nodes")
ax.grid(True, alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=100)
PY
  echo "plot: $out/lab.png"
fi
echo "csv: $csv"
