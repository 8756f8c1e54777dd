#!/bin/sh
# Rendered by kubeforge for node {{ node.name }}: routes to the pod subnets
# of the other nodes (bridge CNI). Run at boot by kubeforge-pod-routes.service.
set -e
ip -batch - <<'KUBEFORGE_ROUTES'
{%- for r in pod_routes %}
route replace {{ r.subnet }} via {{ r.via }} # {{ r.node }}
{%- endfor %}
KUBEFORGE_ROUTES
