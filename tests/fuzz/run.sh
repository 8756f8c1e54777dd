#!/usr/bin/env bash
# Fuzzes inventory parsing, validation and rendering for SECONDS (default
# 600): the `inventory` target of fuzz/ (cargo-fuzz, libFuzzer), whose
# property is tests/src/inventory_fuzz.rs: no panic, every refusal located
# at file:line:col, every accepted inventory rendered into files that parse
# as their formats.
#
#   tests/fuzz/run.sh [SECONDS]
#
# Seeds: the committed corpus fuzz/seeds/inventory, plus the example
# inventories and every bad inventory of
# crates/inventory/tests/bad_inventories.rs (tests/fuzz/seeds.py). The
# corpus grows in target/fuzz-corpus/inventory and is kept between runs; a
# crash is written to fuzz/artifacts/inventory/ and ends the run (replay it
# with `RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz -s none inventory
# FILE`). Prints the figures at the end. Not a CI step.
#
# libFuzzer needs compiler flags that only nightly Rust accepts;
# RUSTC_BOOTSTRAP=1 lets the stable toolchain take them. No sanitizer: the
# workspace forbids unsafe code; overflow checks and debug assertions are
# on.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${1:-600}"
cargo_fuzz_version=0.13.2
if [ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $cargo_fuzz_version" ]; then
  cargo install --locked cargo-fuzz --version "$cargo_fuzz_version"
fi
export RUSTC_BOOTSTRAP=1
corpus=target/fuzz-corpus/inventory
seeds=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$seeds" "$log"' EXIT
mkdir -p "$corpus"
python3 tests/fuzz/seeds.py "$seeds" >/dev/null
before=$(find "$corpus" -type f | wc -l)
mkdir -p fuzz/artifacts/inventory
crashes_before=$(find fuzz/artifacts/inventory -type f | wc -l)
start=$(date +%s)
set +e
cargo fuzz run --fuzz-dir fuzz -s none -a inventory "$corpus" fuzz/seeds/inventory "$seeds" -- \
  -max_total_time="$secs" -dict=fuzz/inventory.dict -max_len=8192 -timeout=20 \
  -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1
rc=$?
set -e
elapsed=$(( $(date +%s) - start ))
last=$( (grep -E '^#[0-9]+' "$log" || true) | tail -1)
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
crashes=$(( $(find fuzz/artifacts/inventory -type f | wc -l) - crashes_before ))
after=$(find "$corpus" -type f | wc -l)
grep -E 'panicked|^fuzz.toml|SUMMARY|Test unit written' "$log" || true
echo "fuzz inventory: ${elapsed} s, ${execs:-?} executions (${rate:-?}/s), $(echo "$last" | grep -oE 'cov: [0-9]+ ft: [0-9]+' || echo 'cov: ?'), corpus ${before} -> ${after} files, ${crashes} crashes (exit ${rc})"
exit "$rc"
