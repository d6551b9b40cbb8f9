#!/usr/bin/env bash
# Builds promtool (Prometheus' rule checker) from the Go module proxy into $SRLM_CACHE/bin,
# for the chart's PrometheusRule tests (tests/helm/test_monitoring.py). The prometheus module
# has no replace directives, so a plain `go install ...@version` builds it. Rebuilt only when
# the pinned version changes (a stamp beside it). Cold: ~8 min on 2 busy cores, downloads
# included (measured: 453 s); cached: instant.
set -euo pipefail
version=v0.316.0
bin=${SRLM_CACHE:-$HOME/.cache/srlm}/bin
mkdir -p "$bin"
if [ -x "$bin/promtool" ] && [ "$(cat "$bin/.promtool.stamp" 2>/dev/null)" = "$version" ]; then
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  for g in /usr/local/go/bin/go /usr/lib/go/bin/go; do [ -x "$g" ] && PATH=$(dirname "$g"):$PATH && break; done
fi
command -v go >/dev/null 2>&1 || { echo "deploy/monitoring/build-promtool.sh: the Go toolchain (go >= 1.26) is required to build promtool" >&2; exit 1; }

echo "building promtool $version (cold: several minutes)..." >&2
start=$SECONDS
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
CGO_ENABLED=0 GOBIN=$tmp nice -n 19 go install -trimpath -ldflags "-s -w" \
  "github.com/prometheus/prometheus/cmd/promtool@$version"
mv "$tmp/promtool" "$bin/promtool"
echo "$version" > "$bin/.promtool.stamp"
echo "built promtool in $((SECONDS - start)) s" >&2
