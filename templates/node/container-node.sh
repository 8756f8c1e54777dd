#!/bin/sh
# Rendered by kubeforge for node {{ node.name }} (node_profile = "container").
# The kernel settings the kubelet checks belong to the host and are read-only
# in a container: bind files holding the values it expects over them, for
# this node only. The host's own values are never written.
set -eu
dir=/run/kubeforge/sysctl
mkdir -p "$dir"
want() {
  cur=$(cat "/proc/sys/$1" 2>/dev/null) || return 0
  [ "$cur" = "$2" ] && return 0
  f="$dir/$(printf '%s' "$1" | tr / .)"
  printf '%s\n' "$2" > "$f"
  mount --bind "$f" "/proc/sys/$1"
}
want vm/overcommit_memory 1
want vm/panic_on_oom 0
want kernel/panic 10
want kernel/panic_on_oops 1
want kernel/keys/root_maxkeys 1000000
want kernel/keys/root_maxbytes 25000000
# The kubelet's OOM watcher reads /dev/kmsg, which containers rarely have.
[ -e /dev/kmsg ] || ln -s /dev/console /dev/kmsg
