"""The ``srlm`` command.

    srlm up --config configs/tiny.yaml          # local broker + the five services
    srlm run --config configs/tiny.yaml [--up]  # start a run, show its progress, write the report
    srlm serve sampler --config ...              # one service (what a container runs)
    srlm status [RUN_ID] | srlm models [--run RUN_ID]
    srlm models import-smollm2                    # M0 into the model store
    srlm eval --versions V1 V2 ... [--suite ifeval,head_to_head,judge,robustness,classification]   # 95% intervals
    srlm inspect pair PAIR_ID                     # provenance of a preference pair
    srlm inspect group GROUP_ID                   # a scored candidate group: rewards by source, GRPO advantages
    srlm train sft|dpo|grpo|ppo --run-id R --iteration I --base-version V --out-version W   # a training Job
    srlm train-reward-model --pairs FILE.jsonl | --run RUN_ID --base-version V --out-version W
    srlm kafka-acls [--format strimzi]            # each service's Kafka ACLs, for a secured cluster
"""

from __future__ import annotations

import argparse
import logging
import sys

from srlm.config import ConfigError, SRLMConfig, load_config

SERVICES = ("controller", "promptgen", "sampler", "judge", "trainer")


def _config(args: argparse.Namespace) -> SRLMConfig:
    return load_config(getattr(args, "config", None))


def cmd_serve(args: argparse.Namespace) -> int:
    import importlib

    from srlm.runtime.server import run_until_signal

    config = _config(args)
    handle = importlib.import_module(f"srlm.{args.name}.service").start(config)
    run_until_signal(handle, config.services.shutdown_deadline_s)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from srlm.local import LocalStack

    with LocalStack(_config(args), args.config, work_dir=args.work_dir) as stack:
        stack.supervise()
        print(f"srlm is up: broker {stack.bootstrap_servers}, controller {stack.controller_address}. Ctrl-C stops it.\n"
              f"For srlm status / inspect in another shell: export SRLM_KAFKA__BOOTSTRAP_SERVERS='[{stack.bootstrap_servers}]'")
        stack.wait()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from srlm.console import run_with_progress

    return run_with_progress(_config(args), args.config, up=args.up, work_dir=args.work_dir,
                             report_dir=args.report_dir, evaluate=args.evaluate)


def cmd_status(args: argparse.Namespace) -> int:
    from srlm.console import print_status

    return print_status(_config(args), args.run_id)


def cmd_cancel(args: argparse.Namespace) -> int:
    from srlm.console import cancel_run

    return cancel_run(_config(args), args.run_id, args.reason)


def cmd_models(args: argparse.Namespace) -> int:
    from srlm.models.store import ModelStore

    config = _config(args)
    store = ModelStore(config.model_store.root)
    if args.action == "import-smollm2":
        from srlm.models.importer import import_base_model

        manifest = import_base_model(store, source=args.source or config.base_model.source,
                                     version_id=args.version_id, gguf_file=config.base_model.gguf_file)
        print(f"{manifest.version_id}: {store.path(manifest.version_id)}")
        return 0
    from srlm.evaluation.suite import EvalCache

    evaluations = EvalCache(store)
    for m in store.list(args.run):
        status, reason = store.status(m.version_id)
        metrics = ", ".join(f"{k}={v:.3g}" for k, v in sorted(m.metrics.items())[:6])
        kind = f"{m.kind} (adapter on {m.extra['adapter_base']})" if m.extra.get("adapter_base") else m.kind
        print(f"{m.version_id:24} {kind:5} parent={m.parent_id or '-':20} {status:11} {metrics} {reason}")
        summary = evaluations.latest_summary(m.version_id)
        if summary:  # the last evaluation's headline figures (srlm eval shows them all)
            shown = [f"{k}={e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]" for k, e in summary["metrics"].items()
                     if k in ("ifeval.prompt_strict", "win_rate.vs_baseline", "judge.parse_rate")]
            print(f"{'':24} evaluation: {', '.join(shown)}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from srlm.evaluation import report
    from srlm.evaluation.suite import PARTS, EvaluationSuite, default_parts
    from srlm.models.store import ModelStore
    from srlm.runtime.model_host import ModelHost

    config = _config(args)
    store = ModelStore(config.model_store.root)
    if args.run:
        run = args.run
        if run == "latest":
            runs = [m.run_id for m in store.list() if m.run_id]
            if not runs:
                print(f"srlm eval: no run in {store.root}", file=sys.stderr)
                return 2
            run = runs[-1]
        args.versions = [m.version_id for m in store.list(run)]
        if not args.versions:
            print(f"srlm eval: run {run!r} has no model version in {store.root}", file=sys.stderr)
            return 2
    for v in [*args.versions, args.baseline, args.base]:
        if v and not store.exists(v):
            print(f"srlm eval: no model version {v!r} in {store.root}", file=sys.stderr)
            return 2
    parts = tuple(p for p in args.suite.split(",") if p) if args.suite else default_parts(config)
    unknown = set(parts) - set(PARTS)
    if unknown:
        print(f"srlm eval: --suite: unknown parts {sorted(unknown)}; known: {','.join(PARTS)}", file=sys.stderr)
        return 2

    def base_of(version: str) -> str:
        m = store.get(version)
        while m.parent_id and store.exists(m.parent_id):
            m = store.get(m.parent_id)
        return m.version_id

    base = args.base or base_of(args.versions[0])
    suite = EvaluationSuite(config, store, ModelHost("evaluation", config, store), base_version=base)
    results = []
    for v in args.versions:
        parent = store.get(v).parent_id
        baseline = args.baseline if args.baseline != v else None
        if baseline is None and parent and parent != v and store.exists(parent) and not args.baseline:
            baseline = parent
        ev = suite.evaluate(v, baseline=baseline, parts=parts)
        report.export_gauges(ev)
        results.append(ev)
        print(f"evaluated {v}" + (f" against {baseline}" if baseline else ""), file=sys.stderr)
    print(report.table(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([ev.as_dict() for ev in results], fh, indent=2)
    if args.plot:
        report.plot(results, args.plot)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from srlm.console import inspect_group, inspect_pair

    return (inspect_pair if args.what == "pair" else inspect_group)(_config(args), args.id)


def cmd_train(args: argparse.Namespace) -> int:
    if args.kind == "gate":
        from srlm.controller.gate import gate_from_command_line

        return gate_from_command_line(_config(args), args)
    from srlm.trainer.service import train_from_command_line

    return train_from_command_line(_config(args), args)


def cmd_train_reward_model(args: argparse.Namespace) -> int:
    from srlm.models.store import ModelStoreError
    from srlm.trainer.data import TrainingDataError
    from srlm.trainer.service import train_reward_model_from_command_line

    try:
        return train_reward_model_from_command_line(_config(args), args)
    except (TrainingDataError, ModelStoreError, OSError) as err:
        print(f"srlm train-reward-model: {err}", file=sys.stderr)
        return 2


def cmd_kafka_acls(args: argparse.Namespace) -> int:
    from srlm.bus.acls import format_kafka_acls, format_strimzi, service_acls

    acls = service_acls(args.prefix or _config(args).kafka.topic_prefix)
    print(format_strimzi(acls) if args.format == "strimzi" else format_kafka_acls(acls, args.bootstrap), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srlm", description="Self-Rewarding Language Models as services.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", help="YAML config (default: $SRLM_CONFIG); SRLM_A__B variables override it")
        return p

    p = with_config(sub.add_parser("serve", help="run one service"))
    p.add_argument("name", choices=SERVICES)
    p.set_defaults(func=cmd_serve)

    p = with_config(sub.add_parser("up", help="local broker and all services"))
    p.add_argument("--work-dir", default="runs/local", help="broker data and service logs")
    p.set_defaults(func=cmd_up)

    p = with_config(sub.add_parser("run", help="start a run and follow it to the end"))
    p.add_argument("--up", action="store_true", help="start the local broker and services first")
    p.add_argument("--work-dir", default="runs/local")
    p.add_argument("--report-dir", default=None, help="default: runs/reports/<run id>")
    p.add_argument("--no-evaluation", dest="evaluate", action="store_false",
                   help="report the run's own figures without evaluating its versions (`srlm eval --run` does later)")
    p.set_defaults(func=cmd_run)

    p = with_config(sub.add_parser("status", help="runs and their stages"))
    p.add_argument("run_id", nargs="?")
    p.set_defaults(func=cmd_status)

    p = with_config(sub.add_parser("cancel", help="end a run that is still going (as failed: cancelled)"))
    p.add_argument("run_id")
    p.add_argument("--reason", default="", help="recorded in the run's error")
    p.set_defaults(func=cmd_cancel)

    p = with_config(sub.add_parser("models", help="model versions; import-smollm2 imports M0"))
    p.add_argument("action", nargs="?", choices=["list", "import-smollm2"], default="list")
    p.add_argument("--run", default=None)
    p.add_argument("--source", default=None, help="hub id or local folder (default: base_model.source)")
    p.add_argument("--version-id", default="m0")
    p.set_defaults(func=cmd_models)

    p = with_config(sub.add_parser("eval", help="the evaluation suite for model versions, with intervals"))
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--versions", nargs="+")
    which.add_argument("--run", help="every version of this run ('latest': the newest run in the store)")
    p.add_argument("--suite", default=None,
                   help="comma-separated parts: ifeval, head_to_head, judge, robustness, classification (default: all; "
                        "classification only with run.task: classification)")
    p.add_argument("--baseline", default=None, help="compare every version with this one (default: its parent)")
    p.add_argument("--base", default=None, help="the base model (M0) for the fixed judge and the judge set "
                                                "(default: the first version's oldest ancestor)")
    p.add_argument("--json", default=None, help="write the figures to this file")
    p.add_argument("--plot", default=None, help="write the plot with error bars to this PNG")
    p.set_defaults(func=cmd_eval)

    p = with_config(sub.add_parser("inspect", help="provenance of a record"))
    p.add_argument("what", choices=["pair", "group"], help="a preference pair (DPO) or a scored candidate "
                                                          "group (GRPO: rewards by source, advantages)")
    p.add_argument("id", help="the pair id, or the group's (candidate set's) id")
    p.set_defaults(func=cmd_inspect)

    p = with_config(sub.add_parser("train", help="one training round or eval gate (what a Kubernetes Job runs)"))
    p.add_argument("kind", choices=["sft", "dpo", "grpo", "ppo", "gate"])
    p.add_argument("--run-id", required=True)
    p.add_argument("--iteration", type=int, required=True)
    p.add_argument("--base-version", required=True)
    p.add_argument("--out-version", required=True)
    p.set_defaults(func=cmd_train)

    p = with_config(sub.add_parser("train-reward-model", help="a Bradley-Terry reward model on preference pairs "
                                                              "(the reward_model reward source)"))
    pairs = p.add_mutually_exclusive_group(required=True)
    pairs.add_argument("--pairs", help="JSONL file of pairs: {pair_id, prompt, chosen, rejected} a line")
    pairs.add_argument("--run", help="every pair this run kept (read from the srlm.pairs topic)")
    p.add_argument("--base-version", required=True, help="the model version to start from (e.g. m0, m1)")
    p.add_argument("--out-version", required=True, help="the reward model's version id")
    p.set_defaults(func=cmd_train_reward_model)

    p = with_config(sub.add_parser("kafka-acls", help="the Kafka ACLs of each service's principal, for a cluster"))
    p.add_argument("--prefix", default=None, help="topic prefix (default: kafka.topic_prefix of the config)")
    p.add_argument("--format", choices=["kafka-acls", "strimzi"], default="kafka-acls",
                   help="kafka-acls.sh commands, or Strimzi KafkaUser authorization blocks")
    p.add_argument("--bootstrap", default="$BOOTSTRAP", help="for the kafka-acls.sh commands")
    p.set_defaults(func=cmd_kafka_acls)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"srlm: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP while a stack was up: it has been stopped
        return 130


if __name__ == "__main__":
    sys.exit(main())
