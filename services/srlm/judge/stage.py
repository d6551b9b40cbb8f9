"""The judge's work on one candidate set, independent of Kafka and gRPC."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

from srlm.config import RewardsConfig, SRLMConfig
from srlm.models.engines import SamplingParams, in_groups
from srlm.recipe import ids
from srlm.recipe.judge import (JudgeStats, aggregate, build_judge_messages, complete_sentences, expected_score,
                               has_score_statement, parse_judgment, read_judge_template)
from srlm.recipe.pairs import ScoredCandidate, build_pair
from srlm.recipe.rewards import LabelRewards, RewardMix, Verification, verifier_reward
from srlm.runtime import metrics
from srlm.runtime.model_host import ModelHost
from srlm.runtime.records import child_meta, reward_of, seed_for
from srlm.v1 import records_pb2

DECISIONS = {
    "kept": records_pb2.PAIR_DECISION_KEPT,
    "dropped_tie": records_pb2.PAIR_DECISION_DROPPED_TIE,
    "dropped_unparseable": records_pb2.PAIR_DECISION_DROPPED_UNPARSEABLE,
    "dropped_injection": records_pb2.PAIR_DECISION_DROPPED_INJECTION,
}

# A reward model's scores of a prompt's responses (srlm.models.reward_model.RewardModelScorer.score).
RewardModelFn = Callable[[str, Sequence[str]], Sequence[float]]


class Judge:
    """Scores responses with the judge prompt (k samples each, mean of the parsed scores)."""

    def __init__(self, host: ModelHost, config: SRLMConfig) -> None:
        self.host = host
        self.config = config
        self.template = read_judge_template(config.judge.template_file)
        self.stats = JudgeStats()
        self.mix = RewardMix(config.rewards.weights)
        self._reward_model: RewardModelFn | None = None

    def reward_model(self) -> RewardModelFn | None:
        """The reward model's scorer when ``rewards.weights.reward_model`` is not 0, loaded on first
        use (the judge service loads it at start-up, so a bad version fails the start)."""
        if self._reward_model is None and self.mix.uses("reward_model"):
            from srlm.models.reward_model import RewardModelScorer

            self._reward_model = RewardModelScorer.from_store(self.host.store, self.config).score
        return self._reward_model

    def _force_verdicts(self, conversations: list[list], outputs: list[list[list[str]]], params: list[SamplingParams]
                        ) -> tuple[list[list[list[str]]], dict[tuple[int, int, int], list[float]]]:
        """Give every judgment without a verdict one: append "Score:" and let the model's own
        next-token distribution over 0..max_score choose (sampled, seeded by its set's seed).
        ``conversations[s][i]`` and ``outputs[s][i][k]``: set s, response i, judgment k; one
        engine call for all the sets. Returns the outputs and each forced verdict's distribution."""
        todo = [(s, i, k) for s, responses in enumerate(outputs) for i, texts in enumerate(responses)
                for k, text in enumerate(texts) if not parse_judgment(text, self.config.judge.max_score).parsed]
        forced: dict[tuple[int, int, int], list[float]] = {}
        if not todo:
            return outputs, forced
        convs = [conversations[s][i] for s, i, _ in todo]
        # the verdict follows the rationale's last whole sentence: an EFT target that stops
        # mid-sentence teaches a judge that never reaches its verdict
        texts = [complete_sentences(outputs[s][i][k]) + "\nScore:" for s, i, k in todo]
        probs, prefixes, points = self.host.label_probabilities(
            convs, texts, tuple(str(p) for p in range(self.config.judge.max_score + 1)))
        rngs = [random.Random(p.seed) for p in params]
        out = [[list(texts) for texts in responses] for responses in outputs]
        for (s, i, k), prefix, p in zip(todo, prefixes, probs):
            if params[s].temperature > 0:
                weights = [q ** (1.0 / params[s].temperature) for q in p]
                choice = rngs[s].choices(points, weights=weights)[0]
            else:
                choice = points[max(range(len(p)), key=p.__getitem__)]
            out[s][i][k] = prefix + choice
            forced[(s, i, k)] = p
        return out, forced

    def _verdict_distributions(self, conversations: list[list], outputs: list[list[list[str]]],
                               known: dict[tuple[int, int, int], list[float]]
                               ) -> dict[tuple[int, int, int], list[float]]:
        """The judge's distribution over 0..max_score at each parsed verdict's number, read
        after the text it wrote up to there (``known``: the forced verdicts', already read).
        One engine call for the verdicts written after a space, one for the rest."""
        points = tuple(str(p) for p in range(self.config.judge.max_score + 1))
        spaced, bare = [], []
        for s, responses in enumerate(outputs):
            for i, texts in enumerate(responses):
                for k, text in enumerate(texts):
                    j = parse_judgment(text, self.config.judge.max_score)
                    if j.parsed and (s, i, k) not in known:
                        before = text[:j.value_start]
                        (spaced if before.endswith(" ") else bare).append(((s, i, k), before))
        out = dict(known)
        if spaced:  # "Score: 4": as the forced verdict reads it (" 4" or " " then "4", by tokenizer)
            probs, _, _ = self.host.label_probabilities([conversations[s][i] for (s, i, _), _ in spaced],
                                                        [b[:-1] for _, b in spaced], points)
            out.update(zip([key for key, _ in spaced], probs))
        if bare:  # "Score:4", "**Score:**4"
            probs = self.host.choice_probabilities([conversations[s][i] for (s, i, _), _ in bare],
                                                   [b for _, b in bare], points)
            out.update(zip([key for key, _ in bare], probs))
        return out

    def params(self, judging: records_pb2.SamplingParams | None, seed: int) -> SamplingParams:
        d = self.config.judge
        j = judging or records_pb2.SamplingParams()
        return SamplingParams(
            n=j.n or d.num_judgments,
            temperature=j.temperature if j.HasField("temperature") else d.temperature,
            top_p=j.top_p if j.HasField("top_p") else d.top_p,
            max_tokens=j.max_tokens or d.max_tokens,
            seed=seed,
        )

    def score(self, prompt: str, responses: list[str], params: SamplingParams,
              version_id: str | None = None) -> tuple[str, list[records_pb2.JudgedCandidate]]:
        """k judgments of each response; the score is read from the judge's output only."""
        version, [judged] = self.score_sets([(prompt, responses, params)], version_id)
        return version, judged

    def score_sets(self, sets: list[tuple[str, list[str], SamplingParams]], version_id: str | None = None
                   ) -> tuple[str, list[list[records_pb2.JudgedCandidate]]]:
        """``score`` for several (prompt, responses, params) with one version: one engine call
        for all their judgments, one for all their forced verdicts and, with
        ``judge.verdict_readout: expected``, up to two for their verdicts' distributions."""
        conversations = [[build_judge_messages(prompt, r, self.template) for r in responses]
                         for prompt, responses, _ in sets]
        version, results = self.host.generate_each(
            [(convs, params) for convs, (_, _, params) in zip(conversations, sets)], version_id=version_id)
        outputs = [[[c.text for c in r.completions] for r in call] for call in results]
        free_text = outputs
        forced: dict[tuple[int, int, int], list[float]] = {}
        if self.config.judge.forced_verdict:
            outputs, forced = self._force_verdicts(conversations, outputs, [p for _, _, p in sets])
        expected: dict[tuple[int, int, int], float] = {}
        if self.config.judge.verdict_readout == "expected":
            expected = {key: expected_score(p)
                        for key, p in self._verdict_distributions(conversations, outputs, forced).items()}
        batch = JudgeStats()
        judged_sets = []
        for s, ((_, responses, _), set_outputs, set_free) in enumerate(zip(sets, outputs, free_text)):
            judged = []
            for i, texts in enumerate(set_outputs):
                # the judge read it neutralised (build_judge_messages); the flag keeps it from being chosen
                jc = records_pb2.JudgedCandidate(score_statement=has_score_statement(responses[i]))
                scores = []
                for k, text in enumerate(texts):
                    j = parse_judgment(text, self.config.judge.max_score)
                    was_forced = (s, i, k) in forced
                    # the parse rate is the free text's: a forced verdict counts as the miss it replaced
                    batch.add(parse_judgment(set_free[i][k], self.config.judge.max_score) if was_forced else j)
                    score = expected.get((s, i, k), j.score)
                    scores.append(score)
                    jc.samples.add(output=text, parsed=j.parsed, score=score or 0.0, forced=was_forced)
                mean, jc.num_parsed = aggregate(scores)
                jc.mean_score = mean if mean is not None else 0.0  # num_parsed == 0 says "no score"
                if mean is not None:
                    metrics.JUDGE_SCORE.observe(mean)
                judged.append(jc)
            judged_sets.append(judged)
        self.stats.merge(batch)
        metrics.JUDGMENTS.labels("true").inc(batch.parsed)
        metrics.JUDGMENTS.labels("false").inc(batch.unparsed)
        metrics.JUDGE_PARSE_RATE.set(batch.parse_rate)
        return version, judged_sets


@dataclass
class JudgeOutcome:
    judgments: records_pb2.JudgmentSet
    pair: records_pb2.PreferencePair | None


def add_rewards(cs: records_pb2.CandidateSet, judged: list[records_pb2.JudgedCandidate], mix: RewardMix,
                cfg: RewardsConfig, reward_model: RewardModelFn | None = None) -> None:
    """Each reward source's value for each candidate, and their weighted sum (``rewards``).
    ``reward_model`` scores a prompt's responses (``RewardModelScorer.score``), all in one call.

    A response that carries a score statement or a plea to the judge gets the judge's lowest
    score: it must never gain from the attempt (for DPO it is never chosen)."""
    verification = Verification.from_record(cs.verification) if cs.HasField("verification") else Verification()
    labels = LabelRewards(cfg.label_correct, cfg.label_wrong, cfg.label_unreadable)
    model_scores: Sequence[float | None] = [None] * len(cs.candidates)
    if mix.uses("reward_model"):
        if reward_model is None:
            raise ValueError("rewards.weights.reward_model is not 0 but no reward model was loaded")
        model_scores = reward_model(cs.prompt, [c.text for c in cs.candidates])
    for cand, jc, model_score in zip(cs.candidates, judged, model_scores):
        values = {"self_judge": (0.0 if jc.score_statement else jc.mean_score) if jc.num_parsed else None,
                  "reward_model": model_score}
        if mix.uses("verifier") and not verification.empty:
            values["verifier"] = verifier_reward(verification, cs.prompt, cand.text, ifeval_level=cfg.ifeval_level,
                                                 label_values=labels)
        for source, value in values.items():
            if value is not None and mix.uses(source):
                jc.rewards.add(source=source, value=value)
        reward = mix.combine(values)
        if reward is not None:
            jc.reward = reward


def judge_candidate_set(cs: records_pb2.CandidateSet, judge: Judge) -> JudgeOutcome:
    """Judge every candidate of one prompt and build its pair (or say why there is none)."""
    return judge_candidate_sets([cs], judge)[0]


def judge_candidate_sets(sets: list[records_pb2.CandidateSet], judge: Judge) -> list[JudgeOutcome]:
    """``judge_candidate_set`` for a batch: the self-judge's generations of the sets that name
    one model version run as one engine call."""

    def self_judge(group: list[records_pb2.CandidateSet]) -> list[tuple[str, list[records_pb2.JudgedCandidate]]]:
        # The candidates' model version judges them: M_t is both actor and judge.
        version, scored = judge.score_sets(
            [(cs.prompt, [c.text for c in cs.candidates], judge.params(cs.judging, seed_for("judge", cs.meta.id)))
             for cs in group], version_id=group[0].meta.model_version or None)
        return [(version, set_judged) for set_judged in scored]

    if judge.mix.uses("self_judge"):
        judged = in_groups(sets, lambda cs: cs.meta.model_version, self_judge)
    else:  # programs or a reward model alone reward them (RLVR, RLHF): no judge generation at all
        judged = [(cs.meta.model_version, [records_pb2.JudgedCandidate() for _ in cs.candidates]) for cs in sets]
    return [_outcome(cs, version, set_judged, judge) for cs, (version, set_judged) in zip(sets, judged)]


def _outcome(cs: records_pb2.CandidateSet, version: str, judged: list[records_pb2.JudgedCandidate],
             judge: Judge) -> JudgeOutcome:
    add_rewards(cs, judged, judge.mix, judge.config.rewards, judge.reward_model())
    out = records_pb2.JudgmentSet(meta=child_meta(cs.meta, cs.meta.id, version), prompt_id=cs.prompt_id,
                                  prompt=cs.prompt)
    scored = []
    for cand, jc in zip(cs.candidates, judged):
        jc.candidate_id = cand.candidate_id
        jc.num_tokens = cand.num_tokens
        out.candidates.append(jc)
        # the pair is chosen by the reward mix, as the online objectives train on it: with the
        # paper's weights the self-judge's mean score, with a verifier or a reward model theirs too
        scored.append(ScoredCandidate(cand.index, reward_of(jc), cand.num_tokens,
                                      has_score_statement=jc.score_statement))
    outcome = build_pair(scored, judge.config.pairs)
    out.decision = DECISIONS[outcome.decision]
    out.reason = outcome.reason
    if not outcome.kept:
        return JudgeOutcome(out, None)
    by_index = {c.index: (c, jc) for c, jc in zip(cs.candidates, judged)}
    (chosen, chosen_j), (rejected, rejected_j) = by_index[outcome.chosen_index], by_index[outcome.rejected_index]
    out.pair_id = ids.pair_id(cs.meta.run_id, cs.meta.iteration, cs.prompt_id)
    pair = records_pb2.PreferencePair(
        meta=child_meta(cs.meta, out.pair_id, version), prompt_id=cs.prompt_id, prompt=cs.prompt,
        chosen=chosen.text, rejected=rejected.text, chosen_score=chosen_j.reward,
        rejected_score=rejected_j.reward, chosen_candidate_id=chosen.candidate_id,
        rejected_candidate_id=rejected.candidate_id,
    )
    return JudgeOutcome(out, pair)
