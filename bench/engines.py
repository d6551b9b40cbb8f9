"""Generation engines head to head on the real SmolLM2-135M M0, on a service's work.

    python bench/engines.py                      # sampling: 32 prompts x n=4, T=0.7, top_p=0.9, 128 max tokens
    python bench/engines.py --work judge         # judging: 8 sets of 4 responses x k=3, 64 max tokens
    python bench/engines.py --engines transformers --prompts 8
    python bench/engines.py --work judge --records-per-call 8   # as the judge service batches (kafka.batch_records)
    python bench/engines.py --lora-rank 16       # an adapter version served unmerged vs its merged folder

``--work sample`` is the sampler's: n answers per prompt. ``--work judge`` is the judge
service's (``srlm.judge.stage.Judge.score_sets``, ``--records-per-call`` candidate sets per call,
as the service batches the records of one poll): the paper's judge prompt on AlpacaEval reference answers and bad answers to the same
prompt (another prompt's answer, a non-answer, gibberish), k judgments each with ``--max-tokens``,
and a forced verdict for every judgment without one (``judge.forced_verdict``, as the tiny and
small configs run it).

``--lora-rank R`` measures what serving an adapter version costs: a LoRA of rank R on every
linear layer of M0 (random, small, so the answers stay M0's), each engine once with the merged
full folder and once with M0 plus the adapter as the engine serves an adapter version (PEFT
unmerged on transformers, a ``LoRARequest`` on a LoRA-enabled vLLM), and adapter / merged.

Each engine runs in a child process of its own, so their memory peaks are separate. Peak
RSS is the larger of the child's own ru_maxrss (exact) and the RSS summed over its process
tree (vLLM engine processes, if any) sampled every 0.1 s. Reported per engine: start time
(imports + load), output tokens, generation time, output tok/s (judge: judgments/s too), peak
RSS; then vLLM against the transformers engine measured in the same run, as ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TOPICS = [
    "the water cycle", "black holes", "the French Revolution", "photosynthesis", "compound interest",
    "the immune system", "volcanoes", "machine learning", "the Roman Empire", "climate change",
    "plate tectonics", "the printing press", "vaccines", "the stock market", "honey bees",
    "quantum computing", "the Silk Road", "electric cars", "coral reefs", "the Renaissance",
    "sleep", "the internet", "jazz", "the Moon landing", "recycling", "earthquakes", "chess",
    "DNA", "the Great Wall of China", "solar power", "octopuses", "the Olympic Games",
]
STYLES = ["Explain {} to a ten-year-old.", "Write a short paragraph about {}.",
          "Give three surprising facts about {}.", "What are the pros and cons of {}?"]


def conversations(count: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": STYLES[i % len(STYLES)].format(TOPICS[i % len(TOPICS)])}]
            for i in range(count)]


def worker(args: argparse.Namespace) -> None:
    """Child: start one engine, generate once, print one JSON line."""
    t0 = time.perf_counter()
    from srlm.config import EngineConfig
    from srlm.models.engines import SamplingParams, create_engine

    lora = {"max_lora_rank": args.max_lora_rank} if args.max_lora_rank else {}
    engine = create_engine(EngineConfig(kind=args.worker, dtype=args.dtype, max_batch_size=args.batch_size,
                                        cpu_kv_cache_gib=args.kv_cache_gib, **lora))
    if args.adapter_dir:
        engine.load_adapter(Path(args.model_dir), "m0", Path(args.adapter_dir), "m0-lora")
    else:
        engine.load(Path(args.model_dir), "m0")
    start_s = time.perf_counter() - t0
    params = SamplingParams(n=args.n, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                            seed=1)
    t1 = time.perf_counter()
    if args.work == "judge":
        tokens, samples = judge_work(engine, args, params)
    else:
        convs, per_call = conversations(args.prompts), args.records_per_call
        # one call per record (prompt), records_per_call of them at once, as the sampler service does
        results = [r for start in range(0, len(convs), per_call)
                   for call in engine.generate_each([([c], params) for c in convs[start:start + per_call]])
                   for r in call]
        tokens = sum(c.num_tokens for r in results for c in r.completions)
        samples = sum(len(r.completions) for r in results)
    gen_s = time.perf_counter() - t1
    engine.close()
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # exact peak of this process
    print("RESULT " + json.dumps({"engine": args.worker, "start_s": start_s, "gen_s": gen_s, "output_tokens": tokens,
                                  "samples": samples, "max_rss": max_rss}), flush=True)


def candidate_sets(count: int) -> list[tuple[str, list[str]]]:
    """(prompt, 4 responses): its AlpacaEval reference answer, another prompt's, and bench/judge.py's
    non-answer and gibberish."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.judge import GIBBERISH, NON_ANSWER
    from srlm.recipe.evalsets import read_alpacaeval_heldout

    held_out = [p for p in read_alpacaeval_heldout() if p.reference]
    if count >= len(held_out):
        raise SystemExit(f"at most {len(held_out) - 1} candidate sets")
    return [(p.text, [p.reference, held_out[i + 1].reference, NON_ANSWER, GIBBERISH])
            for i, p in enumerate(held_out[:count])]


class CountingEngine:
    """An engine that counts the tokens it generates (the judge's work hides them)."""

    def __init__(self, engine) -> None:
        self.engine, self.output_tokens = engine, 0

    def generate(self, conversations, params):
        return self.generate_each([(conversations, params)])[0]

    def generate_each(self, calls):
        results = self.engine.generate_each(calls)
        self.output_tokens += sum(c.num_tokens for call in results for r in call for c in r.completions)
        return results

    def __getattr__(self, name):
        return getattr(self.engine, name)


def judge_work(engine, args: argparse.Namespace, params) -> tuple[int, int]:
    """The judge service's scoring of ``args.prompts`` candidate sets: output tokens, judgments."""
    from srlm.config import SRLMConfig
    from srlm.judge.stage import Judge
    from srlm.runtime.model_host import ModelHost

    config = SRLMConfig(judge={"forced_verdict": True})
    counting = CountingEngine(engine)
    host = ModelHost("judge", config, engine=counting)
    host.version_id = "m0"  # loaded by the caller
    judge = Judge(host, config)
    sets = candidate_sets(args.prompts)
    for start in range(0, len(sets), args.records_per_call):
        judge.score_sets([(prompt, responses, params) for prompt, responses in sets[start:start + args.records_per_call]])
    print(f"judge parse rate of the free text {judge.stats.parse_rate:.2f} ({judge.stats.total} judgments)",
          file=sys.stderr, flush=True)
    return counting.output_tokens, judge.stats.total


def make_adapter(model_dir: Path, rank: int, out: Path) -> tuple[Path, Path]:
    """A LoRA of ``rank`` on every linear layer of the model in ``model_dir`` (B random and small,
    so the merged model still answers like the base) and its merged full folder."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from srlm.models.adapters import merge_into_folder

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear",
                                            init_lora_weights=False))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.mul_(0.01)
    adapter_dir, merged_dir = out / "adapter", out / "merged"
    lora.save_pretrained(adapter_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(adapter_dir)
    merge_into_folder(model_dir, adapter_dir, merged_dir)
    return adapter_dir, merged_dir


def run_engine(kind: str, model_dir: Path, args: argparse.Namespace, adapter_dir: Path | None = None) -> dict:
    from srlm.local import tree_rss

    cmd = [sys.executable, __file__, "--worker", kind, "--model-dir", str(model_dir)] + (
        [f"--adapter-dir={adapter_dir}", f"--max-lora-rank={args.lora_rank}"] if adapter_dir else []) + [
        f"--{k.replace('_', '-')}={getattr(args, k)}"
        for k in ("work", "prompts", "records_per_call", "n", "temperature", "top_p", "max_tokens", "dtype", "batch_size", "kv_cache_gib")]
    log = open(Path(args.log_dir) / f"{kind}{'-adapter' if adapter_dir else ''}.log", "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    log.close()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{kind} engine failed (exit {proc.returncode}); see {log.name}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["peak_rss_gib"] = max(peak, result["max_rss"]) / 2**30
    result["tok_s"] = result["output_tokens"] / result["gen_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="transformers,vllm")
    parser.add_argument("--work", choices=("sample", "judge"), default="sample")
    parser.add_argument("--prompts", type=int, help="prompts (judge: candidate sets of 4); default 32 (judge: 8)")
    parser.add_argument("--records-per-call", type=int,
                        help="prompts or candidate sets per engine call, as a service's batch; default all "
                             "prompts (judge: 1 set)")
    parser.add_argument("--n", type=int, help="samples per prompt (judge: judgments per response, k); default 4 (3)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--max-tokens", type=int, help="default 128 (judge: 64, tiny's judge.max_tokens)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch-size", type=int, default=16, help="transformers engine max_batch_size")
    parser.add_argument("--kv-cache-gib", type=float, default=2, help="vLLM CPU KV cache")
    parser.add_argument("--lora-rank", type=int, help="serve a LoRA of this rank unmerged vs merged (see above)")
    parser.add_argument("--store", help="model store holding M0 (default: a temporary one)")
    parser.add_argument("--log-dir", default=tempfile.gettempdir())
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--adapter-dir", help=argparse.SUPPRESS)
    parser.add_argument("--max-lora-rank", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name, sample, judge in (("prompts", 32, 8), ("n", 4, 3), ("max_tokens", 128, 64)):
        if getattr(args, name) is None:
            setattr(args, name, judge if args.work == "judge" else sample)
    if args.records_per_call is None:
        args.records_per_call = 1 if args.work == "judge" else args.prompts
    if args.worker:
        return worker(args)

    from srlm.models.importer import import_base_model
    from srlm.models.store import ModelStore

    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(args.store or tmp)
        import_base_model(store, version_id="m0")
        model_dir = store.path("m0")
        if args.lora_rank:
            adapter_dir, merged_dir = make_adapter(model_dir, args.lora_rank, Path(tmp) / "lora")
            results = []
            for kind in args.engines.split(","):
                results += [{**run_engine(kind, merged_dir, args), "form": "merged"},
                            {**run_engine(kind, model_dir, args, adapter_dir), "form": f"adapter r{args.lora_rank}"}]
        else:
            results = [run_engine(kind, model_dir, args) for kind in args.engines.split(",")]

    unit = "candidate sets of 4 responses, judged k" if args.work == "judge" else "prompts x n"
    print(f"\n{args.work}: {args.prompts} {unit}={args.n}, T={args.temperature}, top_p={args.top_p}, "
          f"max_tokens={args.max_tokens}, {args.records_per_call} per call, {args.dtype}, {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f}\n")
    what = "judgments" if args.work == "judge" else "samples"
    print(f"{'engine':<14}{'form':<12}{'start s':>9}{'gen s':>9}{'out tok':>9}{'tok/s':>9}{what + '/s':>13}"
          f"{'peak RSS GiB':>14}")
    for r in results:
        print(f"{r['engine']:<14}{r.get('form', ''):<12}{r['start_s']:>9.1f}{r['gen_s']:>9.1f}{r['output_tokens']:>9}"
              f"{r['tok_s']:>9.1f}{r['samples'] / r['gen_s']:>13.2f}{r['peak_rss_gib']:>14.2f}")
    if args.lora_rank:
        for merged, adapter in zip(results[::2], results[1::2]):
            print(f"{merged['engine']}: adapter / merged: output tok/s x{adapter['tok_s'] / merged['tok_s']:.2f}, "
                  f"start time x{adapter['start_s'] / merged['start_s']:.2f}, "
                  f"peak RSS x{adapter['peak_rss_gib'] / merged['peak_rss_gib']:.2f}")
        return
    by_name = {r["engine"]: r for r in results}
    if {"transformers", "vllm"} <= by_name.keys():
        hf, vl = by_name["transformers"], by_name["vllm"]
        print(f"\nvllm / transformers: {what}/s x{hf['gen_s'] / vl['gen_s'] * vl['samples'] / hf['samples']:.2f}, "
              f"output tok/s x{vl['tok_s'] / hf['tok_s']:.2f}, start time x{vl['start_s'] / hf['start_s']:.2f}, "
              f"peak RSS x{vl['peak_rss_gib'] / hf['peak_rss_gib']:.2f}")


if __name__ == "__main__":
    main()
