"""How a promoted version reaches the inference services.

Locally: gRPC ``LoadModel`` on promptgen, sampler and judge (hot reload, no restart).
On Kubernetes: a rollout of their Deployments to the new version (see ``kube.py``).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from srlm.config import SRLMConfig
from srlm.runtime import security
from srlm.v1 import services_pb2, services_pb2_grpc

INFERENCE_SERVICES = {
    "promptgen": services_pb2_grpc.PromptGenStub,
    "sampler": services_pb2_grpc.SamplerStub,
    "judge": services_pb2_grpc.JudgeStub,
}


class HotReloadPromoter:
    def __init__(self, config: SRLMConfig, timeout_s: float = 300.0) -> None:
        self.addresses = {}
        for name in INFERENCE_SERVICES:
            ports = getattr(config.services, name)
            self.addresses[name] = f"{ports.host or config.services.host}:{ports.grpc}"
        self.timeout_s = timeout_s
        self.config = config  # its services.security: how to dial them

    def promote(self, version_id: str) -> float:
        """LoadModel on every inference service at once; returns when all serve ``version_id``."""
        start = time.perf_counter()

        def load(name: str) -> None:
            with security.channel(self.addresses[name], self.config) as channel:
                stub = INFERENCE_SERVICES[name](channel)
                stub.LoadModel(services_pb2.LoadModelRequest(version_id=version_id), timeout=self.timeout_s,
                               wait_for_ready=True)

        with ThreadPoolExecutor(len(INFERENCE_SERVICES)) as pool:
            for f in [pool.submit(load, name) for name in INFERENCE_SERVICES]:
                f.result()
        return time.perf_counter() - start
