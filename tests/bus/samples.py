"""One filled-in message per record type, for round trips through their topics."""

from __future__ import annotations

from google.protobuf.message import Message

from srlm.v1 import records_pb2 as pb


def meta(rid: str, trace: str = "trace-1") -> pb.RecordMeta:
    m = pb.RecordMeta(run_id="run-1", iteration=2, model_version="run-1/m2", id=rid, trace_id=trace)
    m.created_at.FromSeconds(1_700_000_000)
    return m


def prompt(i: int, text: str | None = None) -> pb.Prompt:
    return pb.Prompt(meta=meta(f"prompt-{i}"), text=text if text is not None else f"Explain idea number {i}.",
                     source=pb.PROMPT_SOURCE_GENERATED, demonstration_ids=["seed-1", "seed-2"])


def samples() -> dict[str, Message]:
    """Topic short name -> a message of that topic's type with most fields set."""
    params = pb.SamplingParams(n=4, temperature=0.7, top_p=0.9, max_tokens=256, stop=["</s>"], seed=7)
    judged = pb.JudgedCandidate(candidate_id="c-1", mean_score=4.0, num_parsed=3, num_tokens=42,
                                samples=[pb.JudgeSample(output="... Score: 4", parsed=True, score=4.0)] * 3)
    model = pb.ModelVersion(version_id="run-1/m2", parent_id="run-1/m1", run_id="run-1", iteration=2,
                            kind=pb.MODEL_KIND_DPO, status=pb.MODEL_STATUS_PUBLISHED, uri="/models/run-1/m2",
                            manifest_sha256="ab" * 32, metrics={"win_rate": 0.55})
    run = pb.RunState(run_id="run-1", config_yaml="run: {}\n", stage=pb.STAGE_JUDGMENTS, iteration=2,
                      serving_version="run-1/m1",
                      iterations=[pb.IterationState(iteration=2, stage=pb.STAGE_JUDGMENTS, prompts=32)])
    return {
        "commands": pb.IterationCommand(meta=meta("cmd-1"), kind=pb.COMMAND_KIND_TRAIN_DPO, num_prompts=32,
                                        pair_ids=["pair-1", "pair-2"], base_version="run-1/m1",
                                        output_version="run-1/m2"),
        "prompts": prompt(1),
        "candidates": pb.CandidateSet(meta=meta("cands-1"), prompt_id="prompt-1", prompt="Explain.", params=params,
                                      candidates=[pb.Candidate(candidate_id=f"c-{k}", index=k, text=f"answer {k}",
                                                               num_tokens=10 + k, finish_reason="stop")
                                                  for k in range(4)]),
        "judgments": pb.JudgmentSet(meta=meta("judg-1"), prompt_id="prompt-1", prompt="Explain.",
                                    candidates=[judged], decision=pb.PAIR_DECISION_KEPT, pair_id="pair-1"),
        "pairs": pb.PreferencePair(meta=meta("pair-1"), prompt_id="prompt-1", prompt="Explain.", chosen="good",
                                   rejected="bad", chosen_score=4.5, rejected_score=1.0,
                                   chosen_candidate_id="c-0", rejected_candidate_id="c-3"),
        "models": model,
        "runs": run,
        "events": pb.RunEvent(run_id="run-1", iteration=2, stage=pb.STAGE_CANDIDATES, message="sampling",
                              progress={"prompts": 12, "prompts_total": 32}),
        "deadletter": pb.DeadLetter(source_topic="srlm.prompts", partition=1, offset=42, key=b"k", value=b"\xff",
                                    headers={"srlm-schema": "srlm.v1.Prompt"}, error_type="decode",
                                    error="bad bytes", attempts=0, service="sampler"),
    }
