#!/usr/bin/env bash
# Installs what the tests need, from Debian's packages:
#   openssl, iproute2  - certificate checks and the network namespaces of the
#                        real-TLS tests
#   openssh            - the SSH transport against a real sshd on loopback
#   vagrant            - `vagrant validate` of vagrant/Vagrantfile
#   etcd 3.5           - the newest 3.5.x that Debian offers (bookworm has
#                        only 3.4), unpacked from its .deb into
#                        target/test-tools/etcd without being installed
#   kubectl            - Debian's kubectl package (from trixie: bookworm's
#                        is 1.20), unpacked into target/test-tools/kubectl:
#                        the lab tests read the API with it through the
#                        admin kubeconfig
#   containerd, runc,  - for the lab's nodes (bundled by the lab tests),
#   CNI plugins          unpacked into target/test-tools/node
#   systemd-container, - the lab nodes (tests/src/lab.rs): systemd-nspawn
#   debootstrap,         boots them, debootstrap builds their root file
#   openssh-client,      system, ssh reaches them, busybox-static fills the
#   busybox-static       container images the lab tests build themselves
#                        (tests/src/oci.rs). Only installed as root:
#                        the lab needs root anyway, so a non-root run just
#                        skips the lab tests. The node root file system
#                        itself is built lazily by the first lab test (into
#                        target/test-tools/lab-rootfs, ~1 min, then cached),
#                        which keeps this script fast.
# Idempotent; needs root for apt. Prints the etcd directory on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="$PWD/target/test-tools"
etcd_dir="$tools/etcd/usr/bin"

need_apt=()
command -v openssl >/dev/null || need_apt+=(openssl)
command -v ip >/dev/null || need_apt+=(iproute2)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh >/dev/null || need_apt+=(openssh-client)
command -v vagrant >/dev/null || need_apt+=(vagrant)
# The lab's tools: wanted, but not worth failing a non-root run for.
lab_apt=()
command -v systemd-nspawn >/dev/null || lab_apt+=(systemd-container)
command -v debootstrap >/dev/null || lab_apt+=(debootstrap)
{ command -v ssh >/dev/null && command -v ssh-keygen >/dev/null; } || lab_apt+=(openssh-client)
dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' \
  || lab_apt+=(busybox-static)
if [ "${#lab_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    need_apt+=("${lab_apt[@]}")
  else
    echo "tests/setup.sh: note: not root, so the lab tests will be skipped (missing: ${lab_apt[*]})" >&2
  fi
fi
if [ ! -x "$etcd_dir/etcd" ] || [ ! -x "$etcd_dir/etcdctl" ]; then
  need_etcd=1
else
  need_etcd=0
fi
kubectl_dir="$tools/kubectl"
if [ ! -x "$kubectl_dir/usr/bin/kubectl" ]; then
  need_kubectl=1
else
  need_kubectl=0
fi
# containerd, runc and the CNI plugins for the lab's nodes: Debian's packages
# of this machine's release (the nodes run it too), unpacked like etcd.
node_dir="$tools/node"
if [ ! -x "$node_dir/usr/bin/containerd" ] || [ ! -x "$node_dir/usr/sbin/runc" ] \
   || [ ! -x "$node_dir/usr/lib/cni/bridge" ]; then
  need_node=1
else
  need_node=0
fi

if [ "${#need_apt[@]}" -gt 0 ] || [ "$need_etcd" = 1 ] || [ "$need_node" = 1 ] \
   || [ "$need_kubectl" = 1 ]; then
  if [ "$(id -u)" != 0 ]; then
    missing="${need_apt[*]}"
    [ "$need_etcd" = 1 ] && missing="$missing etcd"
    echo "tests/setup.sh: run as root to install:$missing" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if { [ "$need_etcd" = 1 ] || [ "$need_kubectl" = 1 ]; } \
     && [ ! -f /etc/apt/sources.list.d/kubeforge-newer.sources ]; then
    # Add Debian's newer suites with a low pin, so nothing on this machine
    # is upgraded by them; only single packages are taken from them.
    src=/etc/apt/sources.list.d/kubeforge-newer.sources
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
      awk 'BEGIN{RS="";ORS="\n\n"} NR==1' /etc/apt/sources.list.d/debian.sources \
        | sed 's/^Suites:.*/Suites: trixie sid/' > "$src"
    else
      uri=$(awk '$1=="deb" {print $2; exit}' /etc/apt/sources.list)
      printf 'Types: deb\nURIs: %s\nSuites: trixie sid\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" > "$src"
    fi
    printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n\nPackage: *\nPin: release n=sid\nPin-Priority: 50\n' \
      > /etc/apt/preferences.d/kubeforge-newer-low
  fi
  apt-get update -q >&2
  if [ "${#need_apt[@]}" -gt 0 ]; then
    apt-get install -y -q --no-install-recommends "${need_apt[@]}" >&2
  fi
  if [ "$need_etcd" = 1 ]; then
    version=$(apt-cache madison etcd-server | awk '{print $3}' | grep '^3\.5\.' | sort -V | tail -1)
    if [ -z "$version" ]; then
      echo "tests/setup.sh: no etcd-server 3.5.x in Debian's package lists" >&2
      exit 1
    fi
    work=$(mktemp -d)
    chmod 755 "$work"
    (cd "$work" && apt-get download -q "etcd-server=$version" "etcd-client=$version" >&2)
    rm -rf "$tools/etcd"
    mkdir -p "$tools/etcd"
    for deb in "$work"/*.deb; do dpkg -x "$deb" "$tools/etcd"; done
    rm -rf "$work"
  fi
  if [ "$need_kubectl" = 1 ]; then
    version=$(apt-cache madison kubectl | awk '{print $3}' | grep '^1\.3[0-9]\.' | sort -V | head -1)
    if [ -z "$version" ]; then
      echo "tests/setup.sh: no kubectl 1.3x in Debian's package lists" >&2
      exit 1
    fi
    work=$(mktemp -d)
    chmod 755 "$work"
    (cd "$work" && apt-get download -q "kubectl=$version" >&2)
    rm -rf "$kubectl_dir"
    mkdir -p "$kubectl_dir"
    for deb in "$work"/*.deb; do dpkg -x "$deb" "$kubectl_dir"; done
    rm -rf "$work"
  fi
  if [ "$need_node" = 1 ]; then
    work=$(mktemp -d)
    chmod 755 "$work"
    (cd "$work" && apt-get download -q containerd runc containernetworking-plugins >&2)
    rm -rf "$node_dir"
    mkdir -p "$node_dir"
    for deb in "$work"/*.deb; do dpkg -x "$deb" "$node_dir"; done
    rm -rf "$work"
  fi
fi
"$etcd_dir/etcd" --version | sed -n 1p >&2
echo "$etcd_dir"
