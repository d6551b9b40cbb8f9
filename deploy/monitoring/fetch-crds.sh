#!/usr/bin/env bash
# Puts the Prometheus Operator's CRDs (ServiceMonitor, PrometheusRule, ...) in
# $SRLM_CACHE/crds/prometheus-operator-<version>, for the chart's monitoring tests: they are
# installed into the test kube-apiserver, which then validates the chart's objects. The CRD
# YAMLs ship inside the operator's Go module (example/prometheus-operator-crd/).
set -euo pipefail
version=v0.85.0
exec "$(dirname "$0")/../fetch-go-module-files.sh" "github.com/prometheus-operator/prometheus-operator@$version" \
  "${SRLM_CACHE:-$HOME/.cache/srlm}/crds/prometheus-operator-$version" \
  "example/prometheus-operator-crd/monitoring.coreos.com_*.yaml"
