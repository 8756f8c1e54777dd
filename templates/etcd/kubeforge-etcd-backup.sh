#!/bin/sh
# Rendered by kubeforge for node {{ node.name }}; changes are overwritten.
# A snapshot of this etcd member over TLS, checked, kept in
# {{ etcd.backup.dir }} (the newest {{ etcd.backup.keep }}).
set -eu
dir={{ etcd.backup.dir }}
pki=/etc/kubernetes/pki/etcd
mkdir -p "$dir"
chmod 0700 "$dir"
ts=$(date -u +%Y%m%dT%H%M%SZ)
part="$dir/.{{ cluster.name }}-{{ node.name }}-$ts.part"
trap 'rm -f "$part"' EXIT
if [ -x {{ cluster.bin_dir }}/etcdctl ]; then
  ETCDCTL_API=3 {{ cluster.bin_dir }}/etcdctl --endpoints=https://127.0.0.1:2379 \
    --cacert="$pki/ca.crt" --cert="$pki/healthcheck-client.crt" --key="$pki/healthcheck-client.key" \
    snapshot save "$part" >/dev/null
else
  # etcd's JSON gateway streams the snapshot in base64 chunks.
  curl -sS -N --fail --max-time 3600 --cacert "$pki/ca.crt" \
    --cert "$pki/healthcheck-client.crt" --key "$pki/healthcheck-client.key" \
    -X POST -d '{}' https://127.0.0.1:2379/v3/maintenance/snapshot |
    grep -o '"blob":"[^"]*"' | cut -d'"' -f4 |
    while IFS= read -r chunk; do printf '%s' "$chunk" | base64 -d; done > "$part"
fi
if [ -x {{ cluster.bin_dir }}/etcdutl ]; then
  {{ cluster.bin_dir }}/etcdutl snapshot status "$part" >/dev/null
fi
chmod 0600 "$part"
mv -f "$part" "$dir/{{ cluster.name }}-{{ node.name }}-$ts.db"
trap - EXIT
ls -1t "$dir"/*.db | tail -n +{{ etcd.backup.keep + 1 }} | while IFS= read -r old; do rm -f "$old"; done
