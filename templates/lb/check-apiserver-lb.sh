#!/bin/bash
# Rendered by kubeforge. keepalived gives up the VIP while this fails:
# nginx must be running and accept connections on the load-balancer port.
set -u
pidof nginx >/dev/null || exit 1
timeout 1 bash -c '</dev/tcp/127.0.0.1/{{ lb.port }}' 2>/dev/null || exit 1
exit 0
