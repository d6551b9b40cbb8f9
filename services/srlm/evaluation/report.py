"""The suite's figures as a table (``srlm eval``, the README) and a plot with error bars (the run report)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from srlm.evaluation.suite import VersionEvaluation
from srlm.runtime import metrics as prom

# Rows of the table, in order; a figure a version lacks is left blank.
ROWS = (
    "ifeval.prompt_strict", "ifeval.prompt_loose", "ifeval.instruction_strict", "ifeval.instruction_loose",
    "win_rate.vs_baseline", "win_rate.vs_baseline_lc", "win_rate.vs_reference", "win_rate.vs_reference_lc",
    "judge.parse_rate", "judge.forced_share", "judge.pairwise_accuracy", "judge.spearman", "judge.kendall",
    "judge.mean_score", "robustness.injected_score_lift", "robustness.plea_lift", "length.mean_tokens",
    "classification.accuracy", "classification.unreadable",
)
PLOTTED = ("ifeval.prompt_strict", "ifeval.instruction_strict", "win_rate.vs_baseline", "win_rate.vs_reference",
           "judge.parse_rate", "judge.pairwise_accuracy", "classification.accuracy")


def _cell(ev: VersionEvaluation, name: str) -> str:
    e = ev.metrics.get(name)
    if e is None:
        return ""
    text = f"{e['value']:.3f}"
    if not (math.isnan(e["low"]) or math.isnan(e["high"])):
        text += f" [{e['low']:.3f}, {e['high']:.3f}]"
    test = ev.tests.get(name)
    if test is not None:
        text += f" p={test['p_value']:.3f}"
    return text


def table(evaluations: Sequence[VersionEvaluation]) -> str:
    """A Markdown table: a row per figure, a column per version; ``value [95% interval]``, and
    ``p=`` of the paired test against the version's baseline where there is one."""
    header = ["metric"] + [f"{ev.version}" + (f" (vs {ev.baseline})" if ev.baseline else "") for ev in evaluations]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in ROWS:
        cells = [_cell(ev, name) for ev in evaluations]
        if any(cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    n = {ev.version: int(ev.metrics["length.mean_tokens"]["n"]) for ev in evaluations if "length.mean_tokens" in ev.metrics}
    judges = sorted({ev.judge for ev in evaluations if ev.judge})
    lines.append("")
    lines.append(f"held-out prompts per version: {n}; fixed judge: {', '.join(judges) or '-'}")
    return "\n".join(lines)


def plot(evaluations: Sequence[VersionEvaluation], path: Path) -> str:
    """Every plotted figure per version with its 95% interval as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = list(range(len(evaluations)))
    for k, name in enumerate(PLOTTED):
        pts = [(x, ev.metrics[name]) for x, ev in zip(xs, evaluations) if name in ev.metrics]
        if not pts:
            continue
        offset = (k - len(PLOTTED) / 2) * 0.05
        ax.errorbar([x + offset for x, _ in pts], [e["value"] for _, e in pts],
                    yerr=[[e["value"] - e["low"] for _, e in pts], [e["high"] - e["value"] for _, e in pts]],
                    marker="o", capsize=3, label=name)
    ax.set_xticks(xs, [ev.version for ev in evaluations], rotation=15)
    ax.set(title="Evaluation per version (95% intervals)", ylim=(-0.02, 1.02))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path).name


def export_gauges(ev: VersionEvaluation) -> None:
    """The figures as Prometheus gauges ``srlm_eval_metric{version, metric, bound}``."""
    for name, e in ev.metrics.items():
        for bound in ("value", "low", "high"):
            if not math.isnan(e[bound]):
                prom.EVAL_METRIC.labels(ev.version, name, bound).set(e[bound])


def evaluate_run(config, run_id: str, run_config=None, parts=None) -> list[VersionEvaluation]:
    """Every version of a run through the suite (cached parts are reused), each against its parent.
    ``run_config``: the run's own config (its evaluation sizes); the store is ``config``'s."""
    from srlm.evaluation.suite import EvaluationSuite
    from srlm.models.store import ModelStore
    from srlm.runtime.model_host import ModelHost

    cfg = (run_config or config).model_copy(update={"model_store": config.model_store})
    store = ModelStore(cfg.model_store.root)
    manifests = store.list(run_id)
    base = next((m.version_id for m in manifests if m.kind == "base"), None)
    if base is None:
        return []
    host = ModelHost("evaluation", cfg, store)
    try:
        suite = EvaluationSuite(cfg, store, host, base_version=base)
        return [suite.evaluate(m.version_id, baseline=m.parent_id if m.parent_id and store.exists(m.parent_id)
                               else None, parts=parts) for m in manifests]
    finally:
        host.close()
