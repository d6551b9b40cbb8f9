"""Generate the Python gRPC/protobuf code of protos/ into services/ (package srlm.v1).

    python protos/generate.py            # writes services/srlm/v1/*_pb2*.py(i)
    python protos/generate.py --out DIR  # writes elsewhere (the staleness test)
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

PROTOS = Path(__file__).resolve().parent
REPO = PROTOS.parent


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc

    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "srlm" / "v1").glob("*.proto"))
    include = str(resources.files("grpc_tools") / "_proto")
    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *sources]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return sorted((out / "srlm" / "v1").glob("*_pb2*.py*"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "services")
    for path in generate(parser.parse_args().out):
        print(path)
    sys.exit(0)
