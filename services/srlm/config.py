"""One configuration for every srlm process: a YAML file plus ``SRLM_*`` overrides.

Every number of the paper (Yuan et al. 2024, arXiv 2401.10020) is a field here with the
paper's value as its default. ``load_config`` validates at start-up; a wrong value raises
``ConfigError`` naming the field (e.g. ``sampling.temperature``), and ``srlm`` exits with it.

Environment overrides use ``__`` between levels: ``SRLM_KAFKA__BOOTSTRAP_SERVERS=host:9092``,
``SRLM_SAMPLING__N=2``. Values are parsed as YAML scalars/lists (``[a, b]``, ``true``, ``0.5``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "SRLM_"


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the field."""


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


# --------------------------------------------------------------------------- Kafka


class KafkaConfig(Section):
    """Connection to the Kafka cluster. Security settings are passed to kafka-python as is."""

    bootstrap_servers: list[str] = Field(default_factory=lambda: ["127.0.0.1:9092"])
    client_id: str = "srlm"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    # Topic defaults, applied by the topic registry when it creates topics.
    topic_prefix: str = Field("srlm", pattern=r"^[A-Za-z0-9._-]+$", description="topics are named <prefix>.<what>")
    partitions: int = Field(4, ge=1, description="partitions of the data topics")
    replication_factor: int = Field(1, ge=1)
    retention_ms: int = Field(7 * 24 * 3600 * 1000, ge=-1, description="data topics; -1 keeps forever")
    max_record_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="larger records go to the dead-letter topic")
    # Consumer worker behaviour.
    max_attempts: int = Field(3, ge=1, description="handler attempts before a record is dead-lettered")
    retry_backoff_s: float = Field(0.5, ge=0)
    poll_timeout_ms: int = Field(500, ge=1)
    max_poll_records: int = Field(1000, ge=1, description="records fetched per poll; those dead-lettered before "
                                  "any handler (no srlm schema header, undecodable, unknown run) cost next to "
                                  "nothing, so a poison flood clears in a few large transactions")
    batch_records: int = Field(16, ge=1, description="records handed to the handler per batch (one transaction)")
    session_timeout_ms: int = Field(10_000, ge=1000)
    max_poll_interval_ms: int = Field(1_800_000, ge=1000, description="a batch of generation may take long on CPU")
    # Delivery: read-process-write in one Kafka transaction (outputs + input offsets).
    exactly_once: bool = Field(True, description="transactions; False: at-least-once, consumers dedupe by id")
    transaction_timeout_ms: int = Field(60_000, ge=1000, description="broker aborts a transaction left open longer")
    linger_ms: int = Field(5, ge=0, description="producer batching delay")
    batch_bytes: int = Field(256 * 1024, ge=1024, description="producer batch per partition (records are ~2 KB)")

    def client_kwargs(self) -> dict[str, Any]:
        """Connection and security keywords shared by kafka-python's clients."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        optional = {
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_plain_username,
            "sasl_plain_password": self.sasl_plain_password,
            "ssl_cafile": self.ssl_cafile,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        if self.security_protocol in ("SSL", "SASL_SSL"):
            kwargs["ssl_check_hostname"] = self.ssl_check_hostname
        return kwargs

    @model_validator(mode="after")
    def _sasl_needs_mechanism(self) -> "KafkaConfig":
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism is None:
            raise ValueError("sasl_mechanism is required when security_protocol is SASL_*")
        # Caught here, at start-up, rather than as a refused (or hanging) connection later.
        if self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and self.security_protocol.startswith("SASL"):
            for name in ("sasl_plain_username", "sasl_plain_password"):
                if not getattr(self, name):
                    raise ValueError(f"{name} is required for sasl_mechanism {self.sasl_mechanism}")
        if self.security_protocol in ("SSL", "SASL_SSL") and not self.ssl_cafile:
            raise ValueError(f"ssl_cafile is required when security_protocol is {self.security_protocol}: the CA "
                             f"that signed the broker's certificate (a public CA: the system bundle, e.g. "
                             f"/etc/ssl/certs/ca-certificates.crt)")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            missing = "ssl_keyfile" if self.ssl_certfile else "ssl_certfile"
            raise ValueError(f"{missing} is required: a client certificate (mutual TLS) needs both ssl_certfile "
                             f"and ssl_keyfile")
        return self


# --------------------------------------------------------------------------- models


class ModelStoreConfig(Section):
    """Where model versions live: a local directory, or a shared volume on Kubernetes."""

    root: Path = Path("runs/models")


class EngineChoice(Section):
    """What one inference service may choose differently from ``engine``: the engine and its
    settings within the same devices. Parallelism and context length stay the section's, so the
    chart's GPU requests and the request limits hold for every service."""

    kind: Literal["transformers", "vllm"] | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = None
    max_batch_size: int | None = Field(None, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    cpu_kv_cache_gib: float | None = Field(None, gt=0)
    enforce_eager: bool | None = None
    vllm_multiprocessing: bool | None = None


class EngineConfig(Section):
    """Generation engine used for prompt generation, sampling and judging (and by the evaluation
    suite: the eval gate, the report); ``services`` changes it for one of them."""

    kind: Literal["transformers", "vllm"] = "transformers"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: bfloat16 on a GPU and on a CPU with AMX, float32 on other CPUs, where bf16 is "
                            "slower (a forward x6 where it is emulated, x1.4 with AVX512-BF16 alone: "
                            "bench/precision.py)")
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:N]' (transformers engine)")
    max_batch_size: int = Field(16, ge=1, description="sequences generated together (transformers engine)")
    max_model_len: int = Field(2048, ge=128)
    # vLLM only
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    cpu_kv_cache_gib: float = Field(2, gt=0, description="vLLM's KV cache on CPU, GiB (kv_cache_memory_bytes; "
                                                         "fractions allowed)")
    enforce_eager: bool = True
    max_lora_rank: int = Field(
        64, ge=1, description="vLLM's largest adapter rank (started with LoRA when it serves an adapter version): "
                              "an adapter version's rank is the sum of its rounds' lora_r")
    seed: int = Field(0, description="vLLM engine seed (on CPU vLLM takes no per-request seed)")
    sampled_logprobs: bool = Field(
        False, description="vLLM: return each sampled token's log-prob at the sampling temperature (its "
                           "processed_logprobs mode, 3-9% of sampling speed on CPU even for requests that "
                           "ask none); set by srlm on the sampler of a GRPO or PPO run with importance_correction "
                           "(SRLMConfig.engine_for). The transformers engine always returns them")
    vllm_multiprocessing: bool | None = Field(
        None, description="vLLM engine core in a process of its own; None: on GPU only (a reload then surely "
                          "frees GPU memory), in-process on CPU (starts and reloads ~3x faster)")
    # Parallel inference (vLLM only; the transformers engine runs one device). One engine uses
    # tensor_parallel_size x pipeline_parallel_size devices; the chart requests that many GPUs
    # per inference pod from these fields (one source of truth).
    tensor_parallel_size: int = Field(
        1, ge=1, description="vLLM tensor parallelism: devices each layer is sharded over, within a node "
                             "(Llama-2-70B in bf16, ~140 GB of weights: 8 on 8 x 80 GB). On a CPU each rank "
                             "is bound to a NUMA node (or to a list of VLLM_CPU_OMP_THREADS_BIND)")
    pipeline_parallel_size: int = Field(
        1, ge=1, description="vLLM pipeline parallelism: stages of consecutive layers, each a tensor-parallel "
                             "group (on one node; across nodes with Ray, the chart's inference.multiNode)")
    data_parallel_size: int = Field(
        1, ge=1, description="engine copies inside one process: vLLM's offline LLM (what srlm runs) refuses "
                             "more than 1 ('not supported for single-process usage and may hang'). srlm's data "
                             "parallelism is replicas: sampler and judge pods are consumer-group members (Helm: "
                             "<component>.replicas or autoscaling)")
    distributed_executor_backend: Literal["mp", "ray"] | None = Field(
        None, description="how vLLM starts its workers when TP x PP > 1: None lets vLLM choose (mp, processes on "
                          "this node); mp (the only one vLLM's CPU build runs); ray: a running Ray cluster, which "
                          "may span nodes (the chart's inference.multiNode starts one per LeaderWorkerSet group)")

    services: dict[Literal["promptgen", "sampler", "judge", "trainer", "evaluation"], EngineChoice] = Field(
        default_factory=dict, description="per inference service (and the trainer's EFT judging before SFT, and "
                                          "evaluation: the evaluation suite's engine in the controller's eval gate, "
                                          "the run report and srlm eval), what differs from this section (e.g. the "
                                          "sampler on vLLM, the judge on transformers); the shipped configs say why "
                                          "each engine was chosen")

    @property
    def world_size(self) -> int:
        """Devices one engine uses: tensor x pipeline parallel."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def for_service(self, service: str) -> "EngineConfig":
        """The engine ``service`` runs: this section with the service's choices."""
        choice = self.services.get(service)
        if choice is None:
            return self
        return EngineConfig.model_validate({**self.model_dump(exclude={"services"}),
                                            **choice.model_dump(exclude_none=True)})

    @model_validator(mode="after")
    def _service_choices(self) -> "EngineConfig":
        for service in self.services:
            try:
                self.for_service(service)
            except ValidationError as err:
                raise ValueError(f"engine.services.{service}: "
                                 + "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())) from None
        return self

    @model_validator(mode="after")
    def _parallelism(self) -> "EngineConfig":
        if self.data_parallel_size > 1:
            raise ValueError(f"engine.data_parallel_size: {self.data_parallel_size}, but vLLM's offline engine "
                             f"refuses more than 1 in one process; scale data-parallel inference with replicas "
                             f"(sampler/judge pods are consumer-group members; Helm: <component>.replicas)")
        if self.kind == "transformers":
            for name in ("tensor_parallel_size", "pipeline_parallel_size"):
                if getattr(self, name) > 1:
                    raise ValueError(f"engine.{name}: {getattr(self, name)} needs engine.kind 'vllm'; the "
                                     f"transformers engine runs one device (no tensor/pipeline parallelism)")
        return self


class BaseModelConfig(Section):
    """M0: a pretrained base model. ``source`` is a hub id, a local folder, or 'smollm2-wheel'."""

    source: str = "smollm2-wheel"
    gguf_file: str | None = None


# --------------------------------------------------------------------------- recipe


class SelfInstructConfig(Section):
    """Generation of new prompts (paper section 2.3, after Self-Instruct / Wang et al. 2023)."""

    num_prompts: int = Field(32, ge=1, description="new prompts per iteration")
    num_seed_demonstrations: int = Field(6, ge=0, description="paper: 6 seed IFT prompts")
    num_generated_demonstrations: int = Field(2, ge=0, description="paper: 2 model-written prompts")
    temperature: float = Field(0.6, ge=0, description="paper: T=0.6")
    top_p: float = Field(0.9, gt=0, le=1, description="paper: top_p=0.9")
    max_tokens: int = Field(128, ge=1)
    max_rounds: int = Field(8, ge=1, description="generation rounds before giving up on num_prompts")
    oversample: float = Field(
        2.0, ge=1, description="most generations a round asks for per missing prompt (the generations per accepted "
                               "prompt so far, this until one passes the filters); 1: as many as are missing")
    rouge_l_threshold: float = Field(0.7, ge=0, le=1, description="Self-Instruct: drop if ROUGE-L > 0.7 to any existing prompt")
    min_words: int = Field(3, ge=1)
    max_words: int = Field(150, ge=1)
    blacklist: list[str] = Field(
        default_factory=lambda: ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
                                 "map", "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram"],
        description="Self-Instruct's keyword filter: instructions a text model cannot answer",
    )
    prompt_model: str = Field("current", description="'current' (M_t) or a model version id / source")
    verifiable_instructions: int = Field(
        0, ge=0, le=10, description="IFEval-style instructions appended to each new prompt, checked by the verifier "
                                    "reward source (RL with verifiable rewards); 0: the paper's plain prompts")


class SamplingConfig(Section):
    """Candidate responses (paper: N=4, T=0.7, top_p=0.9)."""

    n: int = Field(4, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)


class JudgeConfig(Section):
    """LLM-as-a-Judge (paper figure 2): k samples per response at T=0.7, scores averaged."""

    num_judgments: int = Field(3, ge=1, description="paper: 3")
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    max_score: int = Field(5, ge=1, description="additive 5-point scale")
    template_file: Path | None = Field(None, description="None: the paper's prompt, verbatim")
    forced_verdict: bool = Field(
        False, description="paper: False (a judgment without 'Score: N' is unparsed). True: such a judgment "
        "gets 'Score:' appended after its last whole sentence and the model's own next-token distribution over "
        "0..max_score picks the verdict (sampled at the judge temperature): small models that rarely end with a "
        "score still judge")
    verdict_readout: Literal["text", "expected"] = Field(
        "text", description="paper: 'text' (the score is the number the judge wrote). 'expected': the mean of the "
        "judge's own distribution over 0..max_score where it wrote that number (G-Eval's probability-weighted score, "
        "Liu et al. 2023), forced verdicts included: a small judge's uncertainty between two points becomes a "
        "score between them instead of a tie or a coin flip")


class PairsConfig(Section):
    """Preference pairs: chosen = highest reward, rejected = lowest; ties dropped. The reward is
    ``rewards.weights``' mix: the self-judge's mean score under the paper's weights."""

    min_scored_candidates: int = Field(2, ge=2)
    tie_epsilon: float = Field(0.0, ge=0, description="best - worst <= epsilon counts as a tie")
    length_control: bool = Field(False, description="Meta-Rewarding: among near-top scores choose the shortest")
    length_control_margin: float = Field(0.25, ge=0, description="score margin that counts as near-top")


class TrainingSection(Section):
    """Fields shared by SFT and DPO: batching, checkpoints, dropout, LoRA, precision.

    The paper (section 3.2) trains both stages with batch size 16 and dropout 0.1, decaying the
    learning rate from ``learning_rate`` to ``final_learning_rate`` by the end of training.
    """

    learning_rate: float = Field(gt=0)
    final_learning_rate: float = Field(ge=0)
    lr_schedule: Literal["cosine", "linear"] = Field(description="decay from learning_rate to final_learning_rate")
    batch_size: int = Field(16, ge=1, description="paper: 16 (effective: per-device batch x accumulation x devices)")
    per_device_batch_size: int = Field(2, ge=1)
    num_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="-1: use num_epochs")
    max_length: int = Field(1024, ge=16)
    dropout: float = Field(0.1, ge=0, lt=1, description="paper: 0.1; set on the model's dropout fields while training")
    save_steps: int = Field(50, ge=1, description="optimizer steps between checkpoints; a restart resumes from one")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept in the work dir")
    keep_checkpoints: bool = Field(False, description="keep the work dir after publishing (default: removed)")
    logging_steps: int = Field(1, ge=1, description="optimizer steps between progress reports")
    gradient_checkpointing: bool = Field(True, description="recompute activations in backward: less memory, slower")
    gradient_checkpointing_every_n_layers: int = Field(
        2, ge=1, description="checkpoint only every n-th decoder layer (transformers' every_n_layers): 2 pays "
                             "half the recomputation for half the memory saved (bench/dpo.py: x1.13 the step "
                             "speed of 1 at TRL's memory); 1 where memory is tight")
    logprob_tile: int = Field(8192, ge=256, description="vocabulary columns TRL's fused LM head scores at once "
                                                        "(TRL: 32768); smaller: less memory, log-probs equal "
                                                        "to float rounding")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="bf16: fp32 weights, bf16 autocast; fp32: no autocast; auto: bf16 on a GPU and on a CPU "
                            "with AMX, fp32 on other CPUs (a step x26 slower where bf16 is emulated, x1.7 with "
                            "AVX512-BF16 alone)")
    use_lora: bool = False
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_modules: list[str] | Literal["all-linear"] = "all-linear"
    lora_publish: Literal["merged", "adapter"] = Field(
        "merged", description="with use_lora: 'merged', a full folder; 'adapter', the adapter alone, a version whose "
                              "manifest names its full base version; engines switch between adapters of one base "
                              "without reloading it (its rank grows by lora_r a round: vLLM's engine.max_lora_rank)")

    @model_validator(mode="after")
    def _check_schedule_and_batch(self) -> "TrainingSection":
        if self.lora_publish == "adapter" and not self.use_lora:
            raise ValueError("lora_publish: 'adapter' needs use_lora: true")
        if self.final_learning_rate >= self.learning_rate:
            raise ValueError(f"final_learning_rate ({self.final_learning_rate}) must be below "
                             f"learning_rate ({self.learning_rate})")
        if self.batch_size % self.per_device_batch_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of "
                             f"per_device_batch_size ({self.per_device_batch_size})")
        return self


class SFTConfig(TrainingSection):
    """M0 -> M1 on IFT + EFT (paper: lr 5.5e-6 cosine to 1.1e-6, batch 16, loss on targets only)."""

    learning_rate: float = Field(5.5e-6, gt=0)
    final_learning_rate: float = Field(1.1e-6, ge=0)
    lr_schedule: Literal["cosine", "linear"] = Field("cosine", description="paper: cosine")


class DPOConfig(TrainingSection):
    """M_t -> M_{t+1} with reference M_t (paper: beta 0.1, lr 1e-6 decaying to 1e-7, batch 16)."""

    beta: float = Field(0.1, gt=0)
    learning_rate: float = Field(1e-6, gt=0)
    final_learning_rate: float = Field(1e-7, ge=0)
    lr_schedule: Literal["cosine", "linear"] = Field("linear", description="the paper names no shape: linear")
    loss_type: Literal["sigmoid", "ipo", "sigmoid+nll"] = "sigmoid"
    nll_weight: float = Field(1.0, ge=0, description="weight of the NLL term for sigmoid+nll (RPO)")
    precompute_ref_log_probs: bool = Field(
        True, description="score the pairs with M_t once before training instead of keeping a reference copy in memory")


class GRPOConfig(TrainingSection):
    """M_t -> M_{t+1} by GRPO on the iteration's scored candidate groups (``run.objective: grpo``),
    with TRL's GRPOTrainer; defaults are TRL's. The candidates were sampled by the serving version:
    with ``importance_correction`` the clipped ratio is taken against the log-probabilities the
    sampler recorded (the behaviour policy), as asynchronous RL systems do, instead of against
    the trainer's own copy of M_t."""

    learning_rate: float = Field(1e-6, gt=0, description="TRL's default")
    final_learning_rate: float = Field(1e-7, ge=0)
    lr_schedule: Literal["cosine", "linear"] = "linear"
    batch_size: int = Field(16, ge=1, description="candidates per optimizer step (a multiple of sampling.n)")
    per_device_batch_size: int = Field(4, ge=1, description="candidates per forward pass")
    dropout: float = Field(0.0, ge=0, lt=1, description="0: with dropout the trainer's log-probs would not be "
                                                        "the sampler's, and the ratio would be noise")
    beta: float = Field(0.0, ge=0, description="KL to M_t (TRL's default 0: no reference model)")
    epsilon: float = Field(0.2, gt=0, description="ratio clipping, lower bound 1 - epsilon")
    epsilon_high: float | None = Field(None, gt=0, description="upper bound 1 + epsilon_high (DAPO: 0.28); None: epsilon")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = Field("dapo", description="token aggregation (TRL)")
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="advantage = (r - group mean) / "
                                                             "std of the group, of the batch, or not scaled")
    num_iterations: int = Field(1, ge=1, description="optimisation passes over each generation batch (mu)")
    importance_correction: bool = Field(True, description="ratio against the sampler's recorded log-probs")
    drop_uniform_groups: bool = Field(True, description="leave out groups whose rewards are all equal: their "
                                                        "advantages are zero, they only cost compute (DAPO)")


class PPOConfig(TrainingSection):
    """M_t -> M_{t+1} by PPO on the iteration's scored candidates (``run.objective: ppo``): a value
    head on the policy, GAE advantages, the clipped surrogate and value losses. Defaults are TRL's
    PPOConfig (TRL <= 1.14); the literature's PPO-with-LoRA for classification (RL4GLUE) uses
    use_lora, lora_r 16, learning_rate 9e-6, kl_coef 0.2 with target_kl (adaptive)."""

    learning_rate: float = Field(3e-6, gt=0, description="TRL's default")
    final_learning_rate: float = Field(0.0, ge=0, description="TRL's default: linear decay to 0")
    lr_schedule: Literal["cosine", "linear"] = "linear"
    batch_size: int = Field(16, ge=1, description="candidates per optimizer step (a minibatch)")
    per_device_batch_size: int = Field(4, ge=1, description="candidates per forward pass")
    num_epochs: float = Field(4.0, gt=0, description="PPO epochs over the round's rollouts (TRL: num_ppo_epochs 4)")
    dropout: float = Field(0.0, ge=0, lt=1, description="0: with dropout the ratio to the rollout log-probs is noise")
    kl_coef: float = Field(0.05, ge=0, description="KL penalty in the per-token rewards (TRL: 0.05)")
    target_kl: float | None = Field(None, gt=0, description="adaptive KL (Ziegler et al.): the coefficient moves "
                                                            "towards this KL from round to round; None: fixed")
    kl_horizon: int = Field(10000, ge=1, description="the adaptive controller's horizon, in samples")
    cliprange: float = Field(0.2, gt=0, description="policy ratio clipping")
    cliprange_value: float = Field(0.2, gt=0, description="value clipping around the rollout values")
    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss")
    gamma: float = Field(1.0, ge=0, le=1, description="discount")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    importance_correction: bool = Field(True, description="ratio against the sampler's recorded log-probs (the "
                                                          "behaviour policy) rather than the trainer's M_t")


class RewardModelConfig(TrainingSection):
    """A Bradley-Terry reward model (``srlm train-reward-model``): a model version with a one-output
    sequence-classification head, trained by TRL's RewardTrainer on preference pairs to score
    chosen above rejected; the ``reward_model`` reward source. Defaults are TRL's RewardConfig."""

    learning_rate: float = Field(1e-4, gt=0, description="TRL's default")
    final_learning_rate: float = Field(0.0, ge=0, description="TRL's default: linear decay to 0")
    lr_schedule: Literal["cosine", "linear"] = "linear"
    batch_size: int = Field(8, ge=1, description="pairs per optimizer step (TRL: 8 per device)")
    per_device_batch_size: int = Field(8, ge=1, description="pairs per forward pass (TRL's default)")
    dropout: float = Field(0.0, ge=0, lt=1, description="TRL's default: dropout disabled")
    center_rewards_coefficient: float | None = Field(
        None, ge=0, description="push the rewards towards mean zero (Eisenstein et al. 2023; TRL suggests 0.01); "
                                "None: off (TRL's default)")
    held_out_fraction: float = Field(
        0.1, ge=0, lt=1, description="pairs held out of training (chosen by a hash of pair id and seed); the "
                                     "model's pairwise accuracy on them goes in its manifest (held_out_accuracy)")
    score_batch_size: int = Field(16, ge=1, description="sequences scored together (held-out pairs; the judge)")
    lora_publish: Literal["merged"] = Field("merged", description="always merged: the new head is trained in full")


class RewardsConfig(Section):
    """Reward sources of the online objectives and their weights (reward = weighted sum of the
    sources that scored a candidate). ``self_judge`` is the paper's LLM-as-a-Judge mean score
    (0-5); ``verifier`` checks prompts that carry a verification (IFEval instructions, a label);
    ``reward_model`` is a trained reward model's score (``reward_model_version``)."""

    weights: dict[Literal["self_judge", "verifier", "reward_model"], float] = Field(
        default_factory=lambda: {"self_judge": 1.0, "verifier": 1.0, "reward_model": 0.0})
    reward_model_version: str | None = Field(
        None, description="the model store's reward_model version that scores every candidate when "
                          "weights.reward_model is not 0 (srlm train-reward-model publishes one)")
    ifeval_level: Literal["instruction", "prompt"] = Field(
        "instruction", description="IFEval reward: fraction of instructions followed, or 1 only if all are")
    label_correct: float = Field(1.0, description="classification: the right label")
    label_wrong: float = Field(-1.0, description="classification: a wrong label")
    label_unreadable: float = Field(-3.0, description="classification: no single label can be read")

    @model_validator(mode="after")
    def _reward_model_named(self) -> "RewardsConfig":
        if self.weights.get("reward_model", 0.0) != 0.0 and not self.reward_model_version:
            raise ValueError("rewards.reward_model_version: weights.reward_model is not 0, so name the reward_model "
                             "version that scores the candidates")
        return self


# AlpacaEval subsets kept for evaluation (eval gate); never seed/training data.
HELDOUT_ALPACAEVAL_SUBSETS = ("vicuna", "selfinstruct")


class DistributedConfig(Section):
    """How a training round (SFT or DPO) is spread over processes: accelerate's launcher
    (torchrun underneath) with one of the accelerate config files shipped in
    ``srlm/trainer/accelerate/``. The global batch stays ``batch_size`` at any world size
    (gradient accumulation shrinks as processes are added); rank 0 writes the published version.

    A process started without torchrun's variables (the trainer service) runs its rounds on its
    own node with ``num_processes``. A DPO round on Kubernetes takes its topology from the pod:
    ``PET_NNODES``, ``PET_NODE_RANK``, ``PET_NPROC_PER_NODE``, ``PET_MASTER_ADDR``,
    ``PET_MASTER_PORT``, which the chart's Indexed Job sets from ``trainingJob.nodes`` and
    ``.gpusPerNode`` and Kubeflow Trainer injects."""

    strategy: Literal["none", "ddp", "fsdp", "deepspeed"] = Field(
        "none", description="none: one process, in the trainer's own; ddp: data parallel (the CPU too, over gloo); "
                            "fsdp: FSDP2, fully sharded (GPU); deepspeed: ZeRO-3 (GPU)")
    num_processes: int = Field(1, ge=1, description="processes (one per GPU) of a round run by the trainer service")
    main_process_port: int = Field(29500, ge=1, le=65535, description="rendezvous port of rank 0")
    config_file: Path | None = Field(None, description="an accelerate config file of your own instead of the "
                                                       "shipped one for strategy")

    @model_validator(mode="after")
    def _consistent(self) -> "DistributedConfig":
        if self.strategy == "none" and self.num_processes > 1:
            raise ValueError("distributed.strategy: 'none' runs one process; choose ddp, fsdp or deepspeed for "
                             f"{self.num_processes} processes")
        return self


class SeedDataConfig(Section):
    """Seed IFT/EFT data: the paper used OpenAssistant (3,200 IFT, 1,630 train EFT)."""

    source: Literal["alpacaeval", "oasst"] = "alpacaeval"
    oasst_path: Path | None = None
    alpacaeval_subsets: list[str] = Field(default_factory=lambda: ["oasst", "helpful_base", "koala"])
    max_ift: int = Field(3200, ge=1)
    max_eft: int = Field(1630, ge=0)
    language: str = Field("en", description="paper: English first-turn prompts only (oasst 'lang')")
    eft_eval_fraction: float = Field(0.25, ge=0, lt=1,
                                     description="EFT prompts held out for judge evaluation (paper: 531 eval vs 1,630 train)")
    eft_balance_scores: bool = Field(True, description="paper: down-sample the most common EFT scores so scores are evenly represented")
    eft_judge_attempts: int = Field(3, ge=1, description="judge samples tried per EFT answer set before it is dropped")
    eft_answer_max_tokens: int = Field(256, ge=1, description="length of the model answers EFT compares with the reference")
    eft_rationale_max_tokens: int | None = Field(
        None, ge=1, description="None: judge.max_tokens. The base model's judgments that become EFT targets are cut "
        "here (back to their last whole sentence when the verdict is forced); below judge.max_tokens, the SFT model "
        "learns rationales short enough to reach its verdict")
    eft_max_answer_words: int | None = Field(
        None, ge=1, description="paper: no limit. EFT prompts with a longer answer are left out (train and eval "
        "split alike): a judge prompt longer than sft.max_length would lose its target, the verdict, to truncation")

    @field_validator("alpacaeval_subsets")
    @classmethod
    def _heldout_subsets_stay_out(cls, subsets: list[str]) -> list[str]:
        heldout = sorted(set(HELDOUT_ALPACAEVAL_SUBSETS) & set(subsets))
        if heldout:
            raise ValueError(f"{heldout} are held out for evaluation and cannot be seed data")
        return subsets


class EvaluationConfig(Section):
    """The evaluation suite (``srlm eval``, the eval gate, the run report), on held-out data only.

    Defaults are the full benchmarks; small CPU configs set sizes and say why. Every metric
    comes with a ``confidence`` interval (bootstrap over prompts) and, against a baseline
    version, a paired test.
    """

    judge: str = Field("base", description="FIXED judge of head-to-head comparisons, never the candidate: 'base' "
                                           "(the run's M0, never trained), a model version id, or the base URL of "
                                           "an OpenAI-compatible server (e.g. a vLLM server: http://host:8000/v1)")
    judge_method: Literal["pairwise", "pointwise"] = Field(
        "pairwise", description="a version judge: 'pairwise' (both responses in one prompt, asked in both orders) or "
        "'pointwise' (each response alone with the paper's prompt, the expected verdict; no position bias). An "
        "endpoint judge is always pairwise")
    judge_model: str | None = Field(None, description="model name at the judge endpoint (None: its first model)")
    judge_api_key_env: str = Field("OPENAI_API_KEY", description="environment variable with the endpoint's key")
    judge_timeout_s: float = Field(120, gt=0)
    ifeval_prompts: int = Field(541, ge=0, description="IFEval prompts (all 541 by default)")
    alpacaeval_prompts: int = Field(332, ge=0, description="AlpacaEval held-out prompts (vicuna 80 + selfinstruct "
                                                           "252), compared with the reference answers")
    max_tokens: int = Field(1024, ge=1, description="response length budget (greedy decoding)")
    preference_eft_pairs: int = Field(200, ge=0, description="held-out judge set: EFT eval split, reference answer "
                                                             "vs the base model's answer")
    preference_ifeval_pairs: int = Field(100, ge=0, description="held-out judge set: IFEval prompts whose checker "
                                                                "passes one base-model sample and fails another")
    preference_ifeval_samples: int = Field(4, ge=2, description="base-model samples per IFEval prompt for that set")
    preference_max_tokens: int = Field(256, ge=1, description="length of the base model's answers in the judge set")
    robustness_responses: int = Field(50, ge=0, description="responses scored again with an injected verdict / plea")
    judge_samples: int | None = Field(None, ge=1, description="judgments per response when a version is evaluated "
                                                              "as the self-judge; None: judge.num_judgments")
    confidence: float = Field(0.95, gt=0, lt=1)
    bootstrap_resamples: int = Field(2000, ge=100)
    seed: int = 0


class EvalGateConfig(Section):
    """Promotion of M_{t+1} over the serving M_t, decided on the evaluation suite's evidence.

    A candidate is rejected when it is SIGNIFICANTLY worse (paired test at ``alpha``) than
    the serving version on IFEval prompt-level strict accuracy or on the head-to-head win
    rate judged by the fixed judge (``evaluation.judge``), or when its length grows too much.
    """

    enabled: bool = True
    min_prompts: int = Field(100, ge=1, description="fewer held-out prompts than this cannot decide (one verdict "
                                                    "must not flip a decision): the gate stops with an error")
    alpha: float = Field(0.05, gt=0, lt=1, description="significance level of the paired tests")
    max_ifeval_drop: float = Field(0.0, ge=0, le=1, description="a significant IFEval drop larger than this rejects")
    min_win_rate: float = Field(0.5, ge=0, le=1, description="a win rate significantly below this rejects "
                                                             "(soft preferences of the fixed judge, both orders)")
    max_length_growth: float = Field(1.2, gt=0, description="mean length ratio candidate / serving allowed")


class ClassificationConfig(Section):
    """The language-understanding task (``run.task: classification``, ``srlm/recipe/classification.py``):
    movie-review sentiment, prompts from the train split with their label check, the evaluation
    suite's ``classification`` part on the held-out split."""

    data: str | None = Field(
        None, description="GLUE SST-2 TSV ('sentence<TAB>label', 0/1) or VADER ground truth ('id<TAB>rating<TAB>text'); "
                          "None: the Rotten Tomatoes snippets (the sentences of SST) of the vaderSentiment sdist on "
                          "PyPI, fetched once into $SRLM_CACHE/data")
    held_out_fraction: float = Field(0.2, gt=0, lt=1, description="share of the sentences held out (by id hash)")
    eval_prompts: int = Field(200, ge=1, description="held-out sentences the evaluation answers")
    max_tokens: int = Field(8, ge=1, description="answer budget in the evaluation (greedy): a label word")


class RunConfig(Section):
    """The loop: M0 -> M1 (SFT) -> M2 -> M3 (two DPO rounds)."""

    run_id: str | None = None
    iterations: int = Field(2, ge=0, description="DPO iterations after SFT (paper: M2, M3)")
    seed: int = 1234
    skip_sft: bool = False
    task: Literal["instructions", "classification"] = Field(
        "instructions", description="instructions: self-instruct prompts (the paper); classification: the "
                                    "classification task's training sentences, checked by the label verifier")
    objective: Literal["dpo", "grpo", "ppo"] = Field(
        "dpo", description="how an iteration trains M_t: DPO on best-vs-worst pairs (the paper), GRPO on every "
                           "candidate group whose rewards (the `rewards` sources) differ, or PPO on every scored "
                           "candidate")
    groups_per_version: int = Field(
        0, ge=0, description="grpo and ppo: train a new version on every K scored groups as they arrive and serve "
                             "it at once, so the rest of the iteration samples from it (asynchronous RL, the "
                             "sampler's log-probs correct the lag); the iteration's last round trains M_{t+1} on "
                             "what is left and the eval gate decides on it against M_t (rejected: M_t serves "
                             "again). 0: one version per iteration")


class MlflowTrackingConfig(Section):
    """Where ``report_to: [mlflow]`` sends a run: one MLflow run per srlm run, tagged ``srlm.run_id``,
    which the controller and every trainer process (local or a Kubernetes Job pod) find and share."""

    tracking_uri: str | None = Field(None, description="MLflow tracking server or store (http://mlflow:5000, "
                                                       "sqlite:///<path>); None: MLflow's own MLFLOW_TRACKING_URI "
                                                       "(unset: ./mlflow.db of the process)")
    experiment: str = Field("srlm", min_length=1, description="experiment the runs live in (created when absent)")


class WandbTrackingConfig(Section):
    """Where ``report_to: [wandb]`` sends a run: one W&B run per srlm run, its id derived from the srlm
    run id so every process resumes the same run. Credentials and mode (``WANDB_API_KEY``,
    ``WANDB_MODE=offline``, ``WANDB_DIR``) come from W&B's own environment variables."""

    project: str = Field("srlm", min_length=1)
    entity: str | None = Field(None, description="team or user; None: the API key's default entity")


class TrackingConfig(Section):
    """Experiment tracking: every training round's per-step losses and DPO rewards, and the run's
    stage counts, judge statistics, gate results and stage times, written live as TensorBoard
    event files (a local folder, no server): ``<dir>/<run_id>/controller`` and
    ``<dir>/<run_id>/<version>`` for each trained version; the same, with the run's config and
    model lineage, to MLflow and/or Weights & Biases when ``report_to`` names them."""

    tensorboard: bool = True
    dir: Path | None = Field(None, description="None: <model_store.root>/tensorboard (on the store's volume)")
    report_to: list[Literal["mlflow", "wandb"]] = Field(
        default_factory=list, description="also log each srlm run to these trackers (tracking.mlflow, tracking.wandb); "
                                          "pip install 'srlm[tracking]'")
    mlflow: MlflowTrackingConfig = MlflowTrackingConfig()
    wandb: WandbTrackingConfig = WandbTrackingConfig()

    @field_validator("report_to")
    @classmethod
    def _installed(cls, names: list[str]) -> list[str]:
        # Refused at start-up, not halfway through a run when the first round would log.
        import importlib.util

        missing = [name for name in names if importlib.util.find_spec(name) is None]
        if missing:
            raise ValueError(f"{' and '.join(missing)} not installed: pip install 'srlm[tracking]'")
        return names

    def run_dir(self, model_store_root: Path, run_id: str | None) -> Path:
        return (self.dir or Path(model_store_root) / "tensorboard") / (run_id or "no-run")


# --------------------------------------------------------------------------- services


class ServicePorts(Section):
    grpc: int = Field(ge=0, le=65535)
    metrics: int = Field(ge=0, le=65535)
    host: str | None = Field(None, description="address clients dial for this service (Kubernetes: its Service name); None: services.host")


class GrpcSecurityConfig(Section):
    """Transport security and authorisation of srlm's gRPC servers and clients (services.security).

    One set of files serves both roles, as in a cluster where every pod mounts the same Secret:
    a server presents tls_cert_file and verifies client certificates against tls_ca_file; a
    client verifies servers against tls_ca_file and offers tls_cert_file for mutual TLS. The
    certificate files are re-read when they change on disk (a rotated Secret), the token file
    at every call. Control RPCs (StartRun, CancelRun, Promote, Rollback, LoadModel) need a bearer token or
    an allowed client certificate once token_file or allowed_identities is set."""

    tls: bool = Field(False, description="serve and dial gRPC over TLS; False: plaintext")
    tls_cert_file: Path | None = Field(None, description="PEM certificate (chain) of this process: server certificate, "
                                                         "and client certificate for mutual TLS")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file")
    tls_ca_file: Path | None = Field(None, description="PEM CA bundle that verifies servers (clients) and client "
                                                       "certificates (servers); None on a client: the system roots")
    require_client_cert: bool = Field(False, description="mutual TLS: servers refuse clients without a certificate "
                                                         "signed by tls_ca_file")
    token_file: Path | None = Field(None, description="bearer tokens, one a line: clients send the first, servers "
                                                      "accept any (rotation with overlap)")
    allowed_identities: list[str] = Field(default_factory=list,
                                          description="client certificate CNs or SANs allowed to call control RPCs")
    allow_plaintext_non_loopback: bool = Field(False, description="serve plaintext on a non-loopback services.host "
                                                                  "(a network that is otherwise protected)")
    server_name_override: str | None = Field(None, description="name clients expect in server certificates instead "
                                                               "of the dialled host")
    health_port: int | None = Field(None, ge=0, le=65535,
                                    description="also serve grpc.health.v1 alone in plaintext on this port: "
                                                "kubelet's gRPC probes cannot speak TLS")

    @model_validator(mode="after")
    def _consistent(self) -> "GrpcSecurityConfig":
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            missing = "tls_key_file" if self.tls_key_file is None else "tls_cert_file"
            raise ValueError(f"services.security.{missing}: tls_cert_file and tls_key_file go together")
        if not self.tls:
            for name in ("tls_cert_file", "tls_ca_file"):
                if getattr(self, name) is not None:  # never fall back to plaintext silently
                    raise ValueError(f"services.security.{name}: set, but services.security.tls is false")
        if self.require_client_cert and (not self.tls or self.tls_ca_file is None):
            raise ValueError("services.security.require_client_cert: needs tls: true and tls_ca_file")
        if self.allowed_identities and not self.require_client_cert:
            raise ValueError("services.security.allowed_identities: needs require_client_cert (servers ask for "
                             "client certificates only with mutual TLS)")
        return self


class ServicesConfig(Section):
    host: str = "127.0.0.1"
    promptgen: ServicePorts = ServicePorts(grpc=50051, metrics=9101)
    sampler: ServicePorts = ServicePorts(grpc=50052, metrics=9102)
    judge: ServicePorts = ServicePorts(grpc=50053, metrics=9103)
    trainer: ServicePorts = ServicePorts(grpc=50054, metrics=9104)
    controller: ServicePorts = ServicePorts(grpc=50050, metrics=9100)
    grpc_max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_prompt_chars: int = Field(32_000, ge=1, description="longer gRPC inputs get INVALID_ARGUMENT")
    max_n: int = Field(64, ge=1)
    mode: Literal["local", "kubernetes"] = "local"
    security: GrpcSecurityConfig = GrpcSecurityConfig()
    shutdown_deadline_s: float = Field(30.0, gt=0, description="after SIGTERM a service finishes its in-flight "
                                       "batch for at most this long, then exits without committing it (it is "
                                       "consumed again); the chart's terminationGracePeriodSeconds exceeds it")
    broker_lost_after_s: float = Field(60.0, gt=0, description="a stage that cannot reach Kafka for this long "
                                       "reports NOT_SERVING (and SERVING again once it can)")


class KubernetesConfig(Section):
    """The controller's Kubernetes mode (services.mode: kubernetes): DPO rounds as Jobs from the
    chart's template, promotions as rollouts of the inference Deployments. The Helm chart fills
    this section; with no api_server/kubeconfig the in-cluster ServiceAccount is used."""

    namespace: str | None = Field(None, description="None: the pod's own namespace (in-cluster)")
    kubeconfig: Path | None = Field(None, description="a kubeconfig file instead of the in-cluster config")
    api_server: str | None = Field(None, description="API server URL, used with token_file")
    token_file: Path | None = Field(None, description="bearer token (e.g. a ServiceAccount token) for api_server")
    ca_file: Path | None = Field(None, description="CA bundle for api_server; None: no TLS verification")
    inference_deployments: list[str] = Field(default_factory=list,
                                             description="Deployments whose SRLM_MODEL_VERSION a promotion advances")
    inference_leaderworkersets: list[str] = Field(
        default_factory=list, description="LeaderWorkerSets (leaderworkerset.x-k8s.io/v1; the chart's "
                                          "inference.multiNode) whose leader pods' SRLM_MODEL_VERSION a promotion "
                                          "advances")
    controller_deployment: str | None = Field(None, description="owner of the training Jobs (garbage-collected with it)")
    job_template_configmap: str = Field("srlm-dpo-job", description="ConfigMap holding the DPO Job template")
    job_template_key: str = Field("job.yaml", description="key of the template in that ConfigMap")
    training_launcher: Literal["job", "trainjob"] = Field(
        "job", description="what a DPO round runs as: job (an Indexed batch/v1 Job + headless Service) or trainjob "
                           "(a Kubeflow Trainer TrainJob); the template's kind must match, and so does the Role")
    job_timeout_s: float = Field(24 * 3600, gt=0, description="a DPO round that runs longer is failed")
    rollout_timeout_s: float = Field(1800, gt=0, description="a rollout not complete by then is rolled back")
    poll_interval_s: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _one_kind_per_workload(self) -> "KubernetesConfig":
        both = sorted(set(self.inference_deployments) & set(self.inference_leaderworkersets))
        if both:
            raise ValueError(f"kubernetes.inference_leaderworkersets: {both} also listed in inference_deployments; "
                             f"an inference service is one or the other")
        return self


class SRLMConfig(Section):
    kafka: KafkaConfig = KafkaConfig()
    model_store: ModelStoreConfig = ModelStoreConfig()
    engine: EngineConfig = EngineConfig()
    base_model: BaseModelConfig = BaseModelConfig()
    seed_data: SeedDataConfig = SeedDataConfig()
    self_instruct: SelfInstructConfig = SelfInstructConfig()
    sampling: SamplingConfig = SamplingConfig()
    judge: JudgeConfig = JudgeConfig()
    pairs: PairsConfig = PairsConfig()
    sft: SFTConfig = SFTConfig()
    dpo: DPOConfig = DPOConfig()
    grpo: GRPOConfig = GRPOConfig()
    ppo: PPOConfig = PPOConfig()
    classification: ClassificationConfig = ClassificationConfig()
    reward_model: RewardModelConfig = RewardModelConfig()
    rewards: RewardsConfig = RewardsConfig()
    distributed: DistributedConfig = DistributedConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    eval_gate: EvalGateConfig = EvalGateConfig()
    run: RunConfig = RunConfig()
    tracking: TrackingConfig = TrackingConfig()
    services: ServicesConfig = ServicesConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()

    @property
    def trainer_reads_sampling_logprobs(self) -> bool:
        """Whether the trainer reads the sampler's log-probs (the online objectives' importance
        correction)."""
        return self.run.objective in ("grpo", "ppo") and getattr(self, self.run.objective).importance_correction

    def engine_for(self, service: str) -> EngineConfig:
        """The engine ``service`` runs: its ``engine.services`` choice, and log-probs on the
        sampler when the trainer reads them."""
        engine = self.engine.for_service(service)
        if service == "sampler" and self.trainer_reads_sampling_logprobs:
            engine = engine.model_copy(update={"sampled_logprobs": True})
        return engine

    @model_validator(mode="after")
    def _gate_has_enough_prompts(self) -> "SRLMConfig":
        held_out = self.evaluation.ifeval_prompts + self.evaluation.alpacaeval_prompts
        if self.eval_gate.enabled and held_out < self.eval_gate.min_prompts:
            raise ValueError(f"eval_gate.min_prompts: the gate needs {self.eval_gate.min_prompts} held-out prompts "
                             f"but evaluation.ifeval_prompts + alpacaeval_prompts is {held_out}")
        if self.run.objective == "grpo" and self.grpo.batch_size % self.sampling.n:
            raise ValueError(f"grpo.batch_size: {self.grpo.batch_size} candidates per step must be whole groups of "
                             f"sampling.n = {self.sampling.n}")
        if self.run.groups_per_version and self.run.objective == "dpo":
            raise ValueError("run.groups_per_version: versions within an iteration are for the online objectives "
                             "(run.objective grpo or ppo); DPO trains on the iteration's pairs once")
        if self.run.groups_per_version and self.services.mode == "kubernetes":
            raise ValueError("run.groups_per_version: not in Kubernetes mode, whose training rounds are one Job "
                             "per iteration; use 0 there")
        from srlm.models.engines.vllm import whole_vocabulary_logprobs  # the engine's rule, stated once

        if self.trainer_reads_sampling_logprobs and self.engine.for_service("sampler").kind == "vllm" \
                and not whole_vocabulary_logprobs(self.sampling.temperature, self.sampling.top_p):
            raise ValueError(f"{self.run.objective}.importance_correction: its ratio needs the sampler's recorded "
                             f"log-probs at the sampling temperature, which vLLM gives only without a nucleus "
                             f"(sampling.top_p is {self.sampling.top_p}); set sampling.top_p: 1.0 (TRL's GRPO "
                             f"default), run the sampler on transformers (engine.services.sampler.kind), or set "
                             f"importance_correction false")
        if self.run.objective == "ppo" and self.distributed.strategy != "none":
            raise ValueError(f"run.objective: PPO rounds run on one process (its value head is outside the "
                             f"model that {self.distributed.strategy} shards); use distributed.strategy none")
        for name in ("sft", "dpo", "grpo", "ppo", "reward_model"):
            if getattr(self, name).use_lora and self.distributed.strategy in ("fsdp", "deepspeed"):
                raise ValueError(f"{name}.use_lora: LoRA rounds are merged on one process before publishing; run "
                                 f"them with distributed.strategy none or ddp, not {self.distributed.strategy}")
        return self


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``SRLM_A__B=v`` -> ``{"a": {"b": v}}`` with ``v`` parsed as a YAML scalar."""
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue  # SRLM_CONFIG, SRLM_HOME, ... are not config fields
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        _set_path(tree, path, value)
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"{field}: {e['msg']} (got {e.get('input')!r})")
    return "invalid srlm config:\n  " + "\n  ".join(lines)


def parse_config(data: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> SRLMConfig:
    """Validate a config mapping merged with environment overrides."""
    merged = _merge(dict(data or {}), env_overrides(os.environ if environ is None else environ))
    try:
        return SRLMConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> SRLMConfig:
    """Load ``path`` (or ``$SRLM_CONFIG``), apply ``overrides`` then ``SRLM_*`` variables."""
    env = os.environ if environ is None else environ
    path = path or env.get("SRLM_CONFIG")
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {p} is not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        data = loaded
    if overrides:
        data = _merge(data, overrides)
    return parse_config(data, env)


def dump_config(config: SRLMConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
