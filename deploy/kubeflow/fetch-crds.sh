#!/usr/bin/env bash
# Puts Kubeflow Trainer v2's CRDs (TrainJob, TrainingRuntime, ClusterTrainingRuntime) and its
# torch-distributed ClusterTrainingRuntime in $SRLM_CACHE/crds/kubeflow-trainer-<version>, for
# the tests of trainingJob.launcher=trainjob: they are installed into the test kube-apiserver,
# which then validates the TrainJobs the chart and the controller make. The YAMLs ship inside
# Kubeflow Trainer's Go module (manifests/base/).
set -euo pipefail
version=v2.0.0
exec "$(dirname "$0")/../fetch-go-module-files.sh" "github.com/kubeflow/trainer/v2@$version" \
  "${SRLM_CACHE:-$HOME/.cache/srlm}/crds/kubeflow-trainer-$version" \
  "manifests/base/crds/trainer.kubeflow.org_*.yaml" "manifests/base/runtimes/torch_distributed.yaml"
