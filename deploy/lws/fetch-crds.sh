#!/usr/bin/env bash
# Puts the LeaderWorkerSet CRD (leaderworkerset.x-k8s.io) in $SRLM_CACHE/crds/lws-<version>, for
# the tests of inference.multiNode: it is installed into the test kube-apiserver, which then
# validates the LeaderWorkerSets the chart renders and the controller patches. The YAML ships
# inside LWS's Go module (config/crd/bases/).
set -euo pipefail
version=v0.7.0
exec "$(dirname "$0")/../fetch-go-module-files.sh" "sigs.k8s.io/lws@$version" \
  "${SRLM_CACHE:-$HOME/.cache/srlm}/crds/lws-$version" \
  "config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml"
