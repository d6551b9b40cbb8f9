#!/usr/bin/env bash
# Copies files that ship inside a Go module into a cache folder, once:
#   deploy/fetch-go-module-files.sh MODULE@VERSION OUT_DIR PATH_GLOB...
# (PATH_GLOB relative to the module's root). The Go module proxy is reachable where no other
# source of these files is; OUT_DIR/.complete marks a finished copy.
set -euo pipefail
module=$1 out=$2
shift 2
if [ -f "$out/.complete" ]; then
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  for g in /usr/local/go/bin/go /usr/lib/go/bin/go; do [ -x "$g" ] && PATH=$(dirname "$g"):$PATH && break; done
fi
command -v go >/dev/null 2>&1 || { echo "$0: the Go toolchain is required to download $module" >&2; exit 1; }

# Outside any module, so no go.mod is read or written.
dir=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "$module" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$dir" ] || { echo "$0: $module was not downloaded" >&2; exit 1; }
mkdir -p "$out"
for glob in "$@"; do
  # shellcheck disable=SC2086 # the glob is meant to expand
  cp $dir/$glob "$out/" || { echo "$0: no $glob in $dir" >&2; exit 1; }
done
chmod u+w "$out"/*
touch "$out/.complete"
echo "$out" >&2
