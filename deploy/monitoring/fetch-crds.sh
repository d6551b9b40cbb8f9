#!/usr/bin/env bash
# Puts the Prometheus Operator's CRDs (ServiceMonitor, PrometheusRule, ...) in
# $SRLM_CACHE/crds/prometheus-operator-<version>, for the chart's monitoring tests: they are
# installed into the test kube-apiserver, which then validates the chart's objects. The CRD
# YAMLs ship inside the operator's Go module (example/prometheus-operator-crd/).
set -euo pipefail
version=v0.85.0
out=${SRLM_CACHE:-$HOME/.cache/srlm}/crds/prometheus-operator-$version
if [ -f "$out/.complete" ]; then
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  for g in /usr/local/go/bin/go /usr/lib/go/bin/go; do [ -x "$g" ] && PATH=$(dirname "$g"):$PATH && break; done
fi
command -v go >/dev/null 2>&1 || { echo "deploy/monitoring/fetch-crds.sh: the Go toolchain is required to download the CRDs" >&2; exit 1; }

# Outside any module, so no go.mod is read or written.
dir=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "github.com/prometheus-operator/prometheus-operator@$version" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$dir/example/prometheus-operator-crd" ] || { echo "fetch-crds.sh: no CRDs in $dir" >&2; exit 1; }
mkdir -p "$out"
cp "$dir"/example/prometheus-operator-crd/monitoring.coreos.com_*.yaml "$out/"
chmod u+w "$out"/*.yaml
touch "$out/.complete"
echo "$out" >&2
