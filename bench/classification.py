"""SFT vs PPO with LoRA on the classification task (movie-review sentiment): held-out accuracy.

    python bench/classification.py [--train 64] [--eval 200] [--iterations 2] [--n 4]
                                   [--lr 1e-4] [--ppo-epochs 2] [--sft-epochs 2] [--scratch /tmp/srlm-classification]

From M0 (SmolLM2-135M-Instruct, imported into a scratch store), on the same ``--train`` sentences of
the task's train split (``srlm/recipe/classification.py``):
- **SFT with LoRA**: the gold label word as the answer, ``--sft-epochs`` epochs;
- **PPO with LoRA** (the literature's setup: LoRA r 16, alpha 32, dropout 0.05, KL coefficient
  0.2, adaptive; rewards +1 right, -1 wrong, -3 unreadable), ``--iterations`` rounds: the
  current adapter version samples ``--n`` answers per sentence (T 0.7, top-p 0.9, 16 tokens),
  the label verifier scores them, one PPO round publishes the next adapter version on M0.
Then the evaluation suite's ``classification`` part on ``--eval`` held-out sentences (greedy):
accuracy and the share of unreadable answers with 95% bootstrap intervals, paired tests against
M0, and PPO's last version against SFT. PPO versions already in the scratch store are reused. The same library the services run, in one process (the
e2e test runs PPO with LoRA through the services). Both learn at ``--lr``: the literature's
9e-6 was for a 7B model over thousands of steps; at a few dozen steps on 135M it moves nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from srlm.config import SRLMConfig
from srlm.evaluation.suite import EvaluationSuite
from srlm.models.engines import SamplingParams
from srlm.models.importer import import_base_model
from srlm.models.store import ModelStore
from srlm.recipe import classification as C
from srlm.recipe.rewards import Verification, label_reward
from srlm.runtime.model_host import ModelHost
from srlm.trainer.ppo import train_ppo
from srlm.trainer.sft import train_sft

LORA = {"use_lora": True, "lora_publish": "adapter", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
        "gradient_checkpointing": False}


def sample_and_score(host: ModelHost, version: str, examples: list[C.LabeledText], n: int, seed: int) -> list[dict]:
    """PPO's rollouts: n answers per sentence by ``version``, each scored by the label verifier."""
    params = SamplingParams(n=n, temperature=0.7, top_p=0.9, max_tokens=16, seed=seed)
    _, results = host.generate([[{"role": "user", "content": C.prompt_text(e)}] for e in examples], params,
                               version_id=version)
    rows = []
    for e, result in zip(examples, results):
        check = Verification(label=e.label, labels=C.LABELS)
        rows.append({"group_id": e.example_id, "prompt": C.prompt_text(e), "temperature": 0.7, "candidates": [
            {"text": c.text, "token_ids": c.token_ids, "logprobs": c.logprobs, "reward": label_reward(check, c.text)}
            for c in result.completions]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--eval", type=int, default=200)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--ppo-epochs", type=float, default=2.0)
    ap.add_argument("--sft-epochs", type=float, default=2.0)
    ap.add_argument("--scratch", default="/tmp/srlm-classification")
    args = ap.parse_args()

    config = SRLMConfig.model_validate({
        "model_store": {"root": args.scratch}, "run": {"task": "classification"},
        "classification": {"eval_prompts": args.eval, "max_tokens": 6}})
    store = ModelStore(config.model_store.root)
    m0 = import_base_model(store, version_id="m0").version_id
    train, _ = C.load_split(None, config.classification.held_out_fraction)
    examples = train[:args.train]
    work = Path(args.scratch) / "work"
    timings = {}

    start = time.perf_counter()
    sft = f"sft-e{args.sft_epochs:g}"
    sft_rows = [{"prompt": C.prompt_text(e), "completion": e.label} for e in examples]
    sft_cfg = config.sft.model_copy(update={**LORA, "learning_rate": args.lr, "final_learning_rate": args.lr / 10,
                                            "num_epochs": args.sft_epochs, "batch_size": 8, "per_device_batch_size": 8,
                                            "max_length": 256})
    train_sft(store, m0, sft, sft_rows, sft_cfg, run_id=None, work_dir=work / sft, seed=0)
    timings["sft_s"] = time.perf_counter() - start

    host = ModelHost("bench", config, store)
    ppo_cfg = config.ppo.model_copy(update={**LORA, "learning_rate": args.lr, "final_learning_rate": args.lr / 10,
                                            "num_epochs": args.ppo_epochs, "kl_coef": 0.2, "target_kl": 6.0,
                                            "batch_size": 16, "per_device_batch_size": 8})
    version, rounds = m0, []
    for t in range(1, args.iterations + 1):
        start = time.perf_counter()
        if store.exists(f"ppo{t}"):  # from an earlier run of the bench in this scratch store
            manifest = store.get(f"ppo{t}")
            rounds.append({"version": manifest.version_id, "mean_reward": manifest.metrics.get("score"),
                           "kl": manifest.metrics.get("kl"), "kl_coef": manifest.metrics.get("kl_coef")})
            version = manifest.version_id
            continue
        rows = sample_and_score(host, version, examples, args.n, seed=t)
        rewards = [c["reward"] for r in rows for c in r["candidates"]]
        manifest = train_ppo(store, version, f"ppo{t}", rows, ppo_cfg, run_id=None, iteration=t,
                             work_dir=work / f"ppo{t}", seed=t)
        rounds.append({"version": manifest.version_id, "mean_reward": sum(rewards) / len(rewards),
                       "right": rewards.count(1.0) / len(rewards), "unreadable": rewards.count(-3.0) / len(rewards),
                       "kl": manifest.metrics.get("kl"), "kl_coef": manifest.metrics.get("kl_coef"),
                       "seconds": time.perf_counter() - start})
        print(json.dumps(rounds[-1]), flush=True)
        version = manifest.version_id

    suite = EvaluationSuite(config, store, host, base_version=m0)
    rows = [("M0", suite.evaluate(m0, parts=("classification",))),
            (f"SFT + LoRA ({args.sft_epochs:g} epochs)", suite.evaluate(sft, baseline=m0, parts=("classification",))),
            (f"PPO + LoRA ({args.iterations} rounds)", suite.evaluate(version, baseline=m0, parts=("classification",)))]
    ppo_vs_sft = suite.evaluate(version, baseline=sft, parts=("classification",)).tests["classification.accuracy"]
    host.close()

    def cell(ev, name):
        e = ev.metrics[name]
        return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"

    print(f"\n{args.train} training sentences, {args.eval} held-out; lr {args.lr}; SFT {timings['sft_s']:.0f} s\n")
    print("| version | accuracy | unreadable | vs M0 |")
    print("|---|---|---|---|")
    for label, ev in rows:
        test = ev.tests.get("classification.accuracy")
        vs = f"{test['diff']:+.3f}, p={test['p_value']:.3f}" if test else ""
        print(f"| {label} | {cell(ev, 'classification.accuracy')} | {cell(ev, 'classification.unreadable')} | {vs} |")
    print(f"\nPPO vs SFT: accuracy {ppo_vs_sft['diff']:+.3f} [{ppo_vs_sft['low']:+.3f}, {ppo_vs_sft['high']:+.3f}], "
          f"p={ppo_vs_sft['p_value']:.3f}")
    print("PPO rounds: " + json.dumps(rounds))


if __name__ == "__main__":
    main()
