"""What would a DPO round have made with other settings? Replays a run's recorded DPO round.

Trains the round's parent (``--version``'s parent, e.g. M0 for a run without SFT) on the pairs
the round trained on (``<store>/datasets/<version>.dpo.jsonl``, as the trainer got them) with the
config's DPO settings, so ``SRLM_DPO__*`` variables (e.g. ``SRLM_DPO__DROPOUT=0``) train another
version on the same pairs; the result goes to a scratch store (with a copy of the parent, the
recorded version and their cached evaluations), never to the run's. Then the suite's IFEval part
for the parent, the recorded version and the replayed one, each against the parent, as ``srlm eval`` prints them:
prompt- and instruction-level accuracy, strict and loose, mean length, 95% bootstrap intervals,
paired tests.
``SRLM_EVALUATION__IFEVAL_PROMPTS`` sets the held-out size (541: all of IFEval).

    python bench/dpo_replay.py --config configs/rlvr-dpo.yaml --version RUN.m2 [--scratch /tmp/srlm-dpo-replay]
"""

from __future__ import annotations

import argparse
import shutil
import time

from srlm.config import load_config
from srlm.evaluation.report import table
from srlm.evaluation.suite import EvaluationSuite
from srlm.models.store import ModelStore
from srlm.runtime.model_host import ModelHost
from srlm.trainer.dpo import train_dpo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/rlvr-dpo.yaml")
    parser.add_argument("--version", required=True, help="the recorded DPO version to replay, e.g. RUN.m2")
    parser.add_argument("--scratch", default="/tmp/srlm-dpo-replay")
    args = parser.parse_args()

    config = load_config(args.config)
    store, scratch = ModelStore(config.model_store.root), ModelStore(args.scratch)
    parent = store.get(args.version).parent_id
    for version in (parent, args.version):
        for sub in (f"versions/{version}", f"evaluations/{version}"):
            if (store.root / sub).exists() and not (scratch.root / sub).exists():
                shutil.copytree(store.root / sub, scratch.root / sub)
    rows = store.get_dataset(f"{args.version}.dpo")
    dpo = config.dpo
    name = f"replay-{args.version}-lr{dpo.learning_rate:g}-e{dpo.num_epochs:g}-dropout{dpo.dropout:g}"
    start = time.perf_counter()
    if not scratch.exists(name):
        train_dpo(scratch, parent, name, rows, dpo, run_id=None, iteration=0, work_dir=scratch.root / f"work-{name}",
                  seed=config.run.seed)
    summary = scratch.get(name).metrics
    print(f"DPO {name}: {len(rows)} pairs, {dpo.num_epochs} epochs, {time.perf_counter() - start:.0f} s; {summary}")

    host = ModelHost("evaluation", config, scratch)
    suite = EvaluationSuite(config, scratch, host, base_version=parent)
    evaluations = [suite.evaluate(v, baseline=None if v == parent else parent, parts=("ifeval",))
                   for v in (parent, args.version, name)]
    print("\n" + table(evaluations))
    host.close()


if __name__ == "__main__":
    main()
