#!/bin/sh
# Rendered by kubeforge for node {{ node.name }}: at boot, run by
# kubeforge-pod-routes.service, the routes to the other nodes' pod subnets
# (bridge CNI) as kubeforge last set them (its step "routes to the other
# nodes' pod subnets" keeps their list in /var/lib/kubeforge/pod-routes).
set -e
list=/var/lib/kubeforge/pod-routes
[ -s "$list" ] || exit 0
exec ip -batch "$list"
