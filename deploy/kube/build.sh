#!/usr/bin/env bash
# Builds a real kube-apiserver and etcd from the Go module proxy (the wrapper modules in
# deploy/kube/kube-apiserver and deploy/kube/etcd) into $SRLM_CACHE/kube/bin, for the Kubernetes
# tests. A binary is rebuilt only when its wrapper module changed (a stamp of go.mod, go.sum
# and main.go sits beside it). Cold: 10-20 min on 2 cores; cached: instant.
# Prints the bin folder on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${SRLM_CACHE:-$HOME/.cache/srlm}/kube
bin=$cache/bin
mkdir -p "$bin"

if ! command -v go >/dev/null 2>&1; then
  for g in /usr/local/go/bin/go /usr/lib/go/bin/go; do [ -x "$g" ] && PATH=$(dirname "$g"):$PATH && break; done
fi
command -v go >/dev/null 2>&1 || { echo "deploy/kube/build.sh: the Go toolchain (go >= 1.26) is required to build kube-apiserver and etcd" >&2; exit 1; }

# The go.sum files are committed: a build never resolves new versions.
export GOFLAGS=-mod=readonly
export CGO_ENABLED=0

build() {  # build <name> <ldflags>
  local name=$1 ldflags=$2 src=$here/$1
  local stamp=$bin/.$name.stamp
  local want
  want=$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" <(echo "$ldflags") | sha256sum | cut -c1-16)
  if [ -x "$bin/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return
  fi
  echo "building $name (cold: several minutes)..." >&2
  local start=$SECONDS
  (cd "$src" && nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$bin/$name.tmp" .)
  mv "$bin/$name.tmp" "$bin/$name"
  echo "$want" > "$stamp"
  echo "built $name in $((SECONDS - start)) s" >&2
}

build etcd "-s -w"
# The version it reports (and its metrics registry requires) is the k8s.io/kubernetes it builds.
kv=$(awk '$1 == "k8s.io/kubernetes" {print $2} $1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' \
  "$here/kube-apiserver/go.mod")
[[ $kv =~ ^v1\.[0-9]+\.[0-9]+$ ]] || { echo "build.sh: no k8s.io/kubernetes version in kube-apiserver/go.mod" >&2; exit 1; }
minor=$(echo "$kv" | cut -d. -f2)
build kube-apiserver "-s -w \
 -X k8s.io/component-base/version.gitVersion=$kv \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean"
echo "$bin"
