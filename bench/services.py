"""The sampler service's overhead and promotion latency, on the real broker and model.

    python bench/services.py [--prompts 16] [--n 4] [--max-tokens 64]

Starts the local stack (broker + the five services as processes, as ``srlm up`` does), then:

1. Promotion: LoadModel of a new version on promptgen, sampler and judge at once (hot
   reload), the time until all three serve it.
2. Sampler service: the prompts as records on srlm.prompts, the sampler process (Kafka
   transactions, protobuf, metrics), time until every candidate set is on srlm.candidates
   (one consumer follows the topic); output tokens/s. The judge service is stopped meanwhile:
   it would start judging those candidates on the same cores.
3. Raw engine, the baseline in the same run: the same prompts in this process, one generate
   call per prompt (n samples, seeded per prompt, as the sampler does), while the stack is
   still up and idle, so both see the same background. The ratio service/raw is the
   service's efficiency (the outputs are identical, so are the tokens). Also reported: the
   CPU seconds the other services and the broker used meanwhile.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import psutil

from srlm.bus import TopicRegistry
from srlm.bus.producer import RecordProducer
from srlm.config import SRLMConfig
from srlm.controller.promoter import HotReloadPromoter
from srlm.local import LocalStack
from srlm.models.importer import import_base_model
from srlm.models.store import ModelStore
from srlm.recipe.ids import prompt_id
from srlm.runtime.model_host import ModelHost
from srlm.runtime.pipeline import TopicFollower
from srlm.runtime.records import meta
from srlm.sampler.stage import candidate_params
from srlm.v1 import records_pb2

PROMPTS = ["Write a haiku about the sea.", "Explain what a CPU cache is.", "Give three tips for learning a language.",
           "What is the difference between a list and a tuple in Python?", "Describe a sunset in two sentences.",
           "How do vaccines work?", "Suggest a name for a bakery.", "Summarize the plot of Hamlet briefly."]


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


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

    config = SRLMConfig.model_validate({"model_store": {"root": str(store.root)}})
    sampling = records_pb2.SamplingParams(n=args.n, temperature=0.7, top_p=0.9, max_tokens=args.max_tokens)
    prompts = []
    for i in range(args.prompts):
        text = f"{PROMPTS[i % len(PROMPTS)]} (#{i})"
        prompts.append(records_pb2.Prompt(meta=meta("bench", 1, "m0", prompt_id("bench", 1, text)), text=text,
                                          sampling=sampling))

    with LocalStack(config, None, work / "local", free_ports=True) as stack:
        config = stack.client_config()
        topics = TopicRegistry.from_config(config.kafka)
        producer = RecordProducer(config.kafka, topics)
        arrived: dict[int, dict[str, records_pb2.CandidateSet]] = {0: {}, 1: {}}
        complete = {0: threading.Event(), 1: threading.Event()}
        wanted = {0: 1, 1: len(prompts)}

        def on_candidates(_what: str, cs: records_pb2.CandidateSet) -> None:
            it = cs.meta.iteration
            if it in arrived:
                arrived[it][cs.meta.id] = cs
                if len(arrived[it]) >= wanted[it]:
                    complete[it].set()

        # 1. promotion on the three inference service processes
        HotReloadPromoter(config).promote("m0b")  # every service holds a model first
        promote_s = HotReloadPromoter(config).promote("m0")

        follower = TopicFollower("bench", config, ["candidates"], on_candidates)
        follower.start()
        stack.stop_service("judge")

        # 2. the sampler service (warmed up with one record: its model loads on the first). Stages
        # work only on records of a run the controller announced, in its current iteration.
        def announce(iteration: int) -> None:
            producer.send(topics.runs, records_pb2.RunState(run_id="bench", stage=records_pb2.STAGE_CANDIDATES,
                                                            iteration=iteration))
            producer.flush()

        announce(0)
        producer.send(topics.prompts, records_pb2.Prompt(meta=meta("bench", 0, "m0", "warm"), text="warm up",
                                                         sampling=sampling))
        producer.flush()
        complete[0].wait()
        others = [psutil.Process(p.pid) for name, p in stack.procs.items() if name not in ("sampler", "judge")]
        others.append(psutil.Process(stack.broker.pid))
        cpu_before = sum(cpu_seconds(p) for p in others)
        announce(1)
        start = time.perf_counter()
        for p in prompts:
            producer.send(topics.prompts, p)
        producer.flush()
        complete[1].wait()
        service_s = time.perf_counter() - start
        others_cpu = sum(cpu_seconds(p) for p in others) - cpu_before
        service_tokens = sum(c.num_tokens for cs in arrived[1].values() for c in cs.candidates)
        follower.stop()
        producer.close()

        # 3. the raw engine, the same calls the sampler made, beside the idle stack
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

    raw_tps, service_tps = raw_tokens / raw_s, service_tokens / service_s
    print(f"{args.prompts} prompts x n={args.n}, max {args.max_tokens} tokens, transformers engine on CPU")
    print(f"{'':28}{'tokens':>8}{'seconds':>9}{'tok/s':>8}")
    print(f"{'raw engine':28}{raw_tokens:>8}{raw_s:>9.1f}{raw_tps:>8.1f}")
    print(f"{'sampler service (Kafka)':28}{service_tokens:>8}{service_s:>9.1f}{service_tps:>8.1f}")
    print(f"service / raw tok/s ratio: {service_tps / raw_tps:.3f} (goal >= 0.95)")
    print(f"meanwhile the other services and the broker used {others_cpu:.1f} CPU-s "
          f"({others_cpu / service_s:.2f} cores)")
    print(f"promotion to a new version on promptgen+sampler+judge: {promote_s:.1f} s (goal <= 10 s)")


if __name__ == "__main__":
    main()
