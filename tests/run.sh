#!/usr/bin/env bash
# Runs every test: installs what they need (tests/setup.sh), then the
# workspace's tests. KUBEFORGE_ETCD_DIR may point at another etcd.
set -euo pipefail
cd "$(dirname "$0")/.."
etcd_dir=$(tests/setup.sh | tail -1)
export KUBEFORGE_ETCD_DIR="${KUBEFORGE_ETCD_DIR:-$etcd_dir}"
cargo test --workspace --locked "$@"
