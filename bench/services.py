"""The sampler service's overhead and promotion latency, on the real broker and model.

    python bench/services.py [--prompts 16] [--n 4] [--max-tokens 64]

1. Raw engine: the same prompts, one generate call per prompt (n samples each, seeded per
   prompt, as the sampler does), output tokens/s.
2. Sampler service: the prompts as records on srlm.prompts, a real sampler worker
   (Kafka transactions, protobuf, metrics), time until every candidate set is on
   srlm.candidates; output tokens/s. The ratio service/raw is the service's efficiency.
3. Promotion: LoadModel of a new version on promptgen, sampler and judge at once (hot
   reload), the time until all three serve it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from srlm.bus import TopicRegistry, ensure_topics, read_to_end
from srlm.bus.local_broker import LocalKafkaBroker
from srlm.bus.producer import RecordProducer
from srlm.config import SRLMConfig
from srlm.controller.promoter import HotReloadPromoter
from srlm.models.importer import import_base_model
from srlm.models.store import ModelStore
from srlm.recipe.ids import prompt_id
from srlm.runtime.model_host import ModelHost
from srlm.runtime.records import meta
from srlm.sampler.stage import candidate_params
from srlm.v1 import records_pb2

PROMPTS = ["Write a haiku about the sea.", "Explain what a CPU cache is.", "Give three tips for learning a language.",
           "What is the difference between a list and a tuple in Python?", "Describe a sunset in two sentences.",
           "How do vaccines work?", "Suggest a name for a bakery.", "Summarize the plot of Hamlet briefly."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="srlm-bench-services-"))
    store = ModelStore(work / "models")
    import_base_model(store, version_id="m0")
    import_base_model(store, version_id="m0b")  # a second version to promote to

    with LocalKafkaBroker(work / "kafka") as broker:
        config = SRLMConfig.model_validate({
            "kafka": {"bootstrap_servers": [broker.bootstrap_servers]},
            "model_store": {"root": str(store.root)},
            "sampling": {"n": args.n, "max_tokens": args.max_tokens},
        })
        prompts = []
        for i in range(args.prompts):
            text = f"{PROMPTS[i % len(PROMPTS)]} (#{i})"
            pid = prompt_id("bench", 1, text)
            prompts.append(records_pb2.Prompt(meta=meta("bench", 1, "m0", pid), text=text))

        # 1. the raw engine, the same calls the sampler makes
        host = ModelHost("bench", config, store)
        host.load("m0")
        host.generate([[{"role": "user", "content": "warm up"}]], candidate_params(prompts[0], config))
        start = time.perf_counter()
        raw_tokens = 0
        for p in prompts:
            _, [r] = host.generate([[{"role": "user", "content": p.text}]], candidate_params(p, config))
            raw_tokens += sum(c.num_tokens for c in r.completions)
        raw_s = time.perf_counter() - start
        host.close()

        # 2. the sampler service
        from srlm.judge import service as judge_service
        from srlm.promptgen import service as promptgen_service
        from srlm.sampler import service as sampler_service

        sampler = sampler_service.start(config, grpc_port=0, metrics_port=0, version_id="m0")
        topics = TopicRegistry.from_config(config.kafka)
        ensure_topics(config.kafka, topics)
        producer = RecordProducer(config.kafka, topics)
        warm = records_pb2.Prompt(meta=meta("bench", 0, "m0", "warm"), text="warm up")
        producer.send(topics.prompts, warm)
        producer.flush()
        while not read_to_end(config.kafka, topics.candidates):
            time.sleep(0.2)
        start = time.perf_counter()
        for p in prompts:
            producer.send(topics.prompts, p)
        producer.flush()
        while True:
            out = [r.value for r in read_to_end(config.kafka, topics.candidates) if r.value.meta.iteration == 1]
            if len({c.meta.id for c in out}) >= len(prompts):
                break
            time.sleep(0.1)
        service_s = time.perf_counter() - start
        service_tokens = sum(c.num_tokens for cs in out for c in cs.candidates)

        # 3. promotion to another version on the three inference services
        others = [m.start(config, grpc_port=0, metrics_port=0, version_id="m0")
                  for m in (promptgen_service, judge_service)]
        config.services.sampler.grpc = sampler.grpc_port
        config.services.promptgen.grpc, config.services.judge.grpc = (h.grpc_port for h in others)
        promote_s = HotReloadPromoter(config).promote("m0b")
        for h in [sampler, *others]:
            h.stop(grace_s=1)
        producer.close()

    raw_tps, service_tps = raw_tokens / raw_s, service_tokens / service_s
    print(f"{args.prompts} prompts x n={args.n}, max {args.max_tokens} tokens, transformers engine on CPU")
    print(f"{'':28}{'tokens':>8}{'seconds':>9}{'tok/s':>8}")
    print(f"{'raw engine':28}{raw_tokens:>8}{raw_s:>9.1f}{raw_tps:>8.1f}")
    print(f"{'sampler service (Kafka)':28}{service_tokens:>8}{service_s:>9.1f}{service_tps:>8.1f}")
    print(f"service / raw tok/s ratio: {service_tps / raw_tps:.3f} (goal >= 0.95)")
    print(f"promotion to a new version on promptgen+sampler+judge: {promote_s:.1f} s (goal <= 10 s)")


if __name__ == "__main__":
    main()
