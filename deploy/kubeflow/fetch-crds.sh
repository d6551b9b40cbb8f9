#!/usr/bin/env bash
# Puts Kubeflow Trainer v2's CRDs (TrainJob, TrainingRuntime, ClusterTrainingRuntime) and its
# torch-distributed ClusterTrainingRuntime in $SRLM_CACHE/crds/kubeflow-trainer-<version>, for
# the tests of trainingJob.launcher=trainjob: they are installed into the test kube-apiserver,
# which then validates the TrainJobs the chart and the controller make. The YAMLs ship inside
# Kubeflow Trainer's Go module (manifests/base/).
set -euo pipefail
version=v2.0.0
out=${SRLM_CACHE:-$HOME/.cache/srlm}/crds/kubeflow-trainer-$version
if [ -f "$out/.complete" ]; then
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  for g in /usr/local/go/bin/go /usr/lib/go/bin/go; do [ -x "$g" ] && PATH=$(dirname "$g"):$PATH && break; done
fi
command -v go >/dev/null 2>&1 || { echo "deploy/kubeflow/fetch-crds.sh: the Go toolchain is required to download the CRDs" >&2; exit 1; }

# Outside any module, so no go.mod is read or written.
dir=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "github.com/kubeflow/trainer/v2@$version" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$dir/manifests/base/crds" ] || { echo "fetch-crds.sh: no CRDs in $dir" >&2; exit 1; }
mkdir -p "$out"
cp "$dir"/manifests/base/crds/trainer.kubeflow.org_*.yaml "$dir/manifests/base/runtimes/torch_distributed.yaml" "$out/"
chmod u+w "$out"/*.yaml
touch "$out/.complete"
echo "$out" >&2
