import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PromptSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROMPT_SOURCE_UNSPECIFIED: _ClassVar[PromptSource]
    PROMPT_SOURCE_SEED: _ClassVar[PromptSource]
    PROMPT_SOURCE_GENERATED: _ClassVar[PromptSource]

class PairDecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAIR_DECISION_UNSPECIFIED: _ClassVar[PairDecision]
    PAIR_DECISION_KEPT: _ClassVar[PairDecision]
    PAIR_DECISION_DROPPED_TIE: _ClassVar[PairDecision]
    PAIR_DECISION_DROPPED_UNPARSEABLE: _ClassVar[PairDecision]
    PAIR_DECISION_DROPPED_INJECTION: _ClassVar[PairDecision]

class ModelKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_KIND_UNSPECIFIED: _ClassVar[ModelKind]
    MODEL_KIND_BASE: _ClassVar[ModelKind]
    MODEL_KIND_SFT: _ClassVar[ModelKind]
    MODEL_KIND_DPO: _ClassVar[ModelKind]
    MODEL_KIND_GRPO: _ClassVar[ModelKind]
    MODEL_KIND_REWARD_MODEL: _ClassVar[ModelKind]
    MODEL_KIND_PPO: _ClassVar[ModelKind]

class ModelStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATUS_UNSPECIFIED: _ClassVar[ModelStatus]
    MODEL_STATUS_PUBLISHED: _ClassVar[ModelStatus]
    MODEL_STATUS_PROMOTED: _ClassVar[ModelStatus]
    MODEL_STATUS_REJECTED: _ClassVar[ModelStatus]
    MODEL_STATUS_ROLLED_BACK: _ClassVar[ModelStatus]

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_PENDING: _ClassVar[Stage]
    STAGE_BASE: _ClassVar[Stage]
    STAGE_SFT: _ClassVar[Stage]
    STAGE_PROMPTS: _ClassVar[Stage]
    STAGE_CANDIDATES: _ClassVar[Stage]
    STAGE_JUDGMENTS: _ClassVar[Stage]
    STAGE_TRAINING: _ClassVar[Stage]
    STAGE_EVAL: _ClassVar[Stage]
    STAGE_PROMOTE: _ClassVar[Stage]
    STAGE_DONE: _ClassVar[Stage]
    STAGE_FAILED: _ClassVar[Stage]

class CommandKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMMAND_KIND_UNSPECIFIED: _ClassVar[CommandKind]
    COMMAND_KIND_GENERATE_PROMPTS: _ClassVar[CommandKind]
    COMMAND_KIND_TRAIN_SFT: _ClassVar[CommandKind]
    COMMAND_KIND_TRAIN_DPO: _ClassVar[CommandKind]
    COMMAND_KIND_TRAIN_GRPO: _ClassVar[CommandKind]
    COMMAND_KIND_TRAIN_PPO: _ClassVar[CommandKind]
    COMMAND_KIND_EVAL_GATE: _ClassVar[CommandKind]
PROMPT_SOURCE_UNSPECIFIED: PromptSource
PROMPT_SOURCE_SEED: PromptSource
PROMPT_SOURCE_GENERATED: PromptSource
PAIR_DECISION_UNSPECIFIED: PairDecision
PAIR_DECISION_KEPT: PairDecision
PAIR_DECISION_DROPPED_TIE: PairDecision
PAIR_DECISION_DROPPED_UNPARSEABLE: PairDecision
PAIR_DECISION_DROPPED_INJECTION: PairDecision
MODEL_KIND_UNSPECIFIED: ModelKind
MODEL_KIND_BASE: ModelKind
MODEL_KIND_SFT: ModelKind
MODEL_KIND_DPO: ModelKind
MODEL_KIND_GRPO: ModelKind
MODEL_KIND_REWARD_MODEL: ModelKind
MODEL_KIND_PPO: ModelKind
MODEL_STATUS_UNSPECIFIED: ModelStatus
MODEL_STATUS_PUBLISHED: ModelStatus
MODEL_STATUS_PROMOTED: ModelStatus
MODEL_STATUS_REJECTED: ModelStatus
MODEL_STATUS_ROLLED_BACK: ModelStatus
STAGE_UNSPECIFIED: Stage
STAGE_PENDING: Stage
STAGE_BASE: Stage
STAGE_SFT: Stage
STAGE_PROMPTS: Stage
STAGE_CANDIDATES: Stage
STAGE_JUDGMENTS: Stage
STAGE_TRAINING: Stage
STAGE_EVAL: Stage
STAGE_PROMOTE: Stage
STAGE_DONE: Stage
STAGE_FAILED: Stage
COMMAND_KIND_UNSPECIFIED: CommandKind
COMMAND_KIND_GENERATE_PROMPTS: CommandKind
COMMAND_KIND_TRAIN_SFT: CommandKind
COMMAND_KIND_TRAIN_DPO: CommandKind
COMMAND_KIND_TRAIN_GRPO: CommandKind
COMMAND_KIND_TRAIN_PPO: CommandKind
COMMAND_KIND_EVAL_GATE: CommandKind

class RecordMeta(_message.Message):
    __slots__ = ("run_id", "iteration", "model_version", "id", "created_at", "trace_id", "work")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    WORK_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    iteration: int
    model_version: str
    id: str
    created_at: _timestamp_pb2.Timestamp
    trace_id: str
    work: EngineWork
    def __init__(self, run_id: _Optional[str] = ..., iteration: _Optional[int] = ..., model_version: _Optional[str] = ..., id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trace_id: _Optional[str] = ..., work: _Optional[_Union[EngineWork, _Mapping]] = ...) -> None: ...

class EngineWork(_message.Message):
    __slots__ = ("instance", "started_at", "ended_at")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    instance: str
    started_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    def __init__(self, instance: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("n", "temperature", "top_p", "max_tokens", "stop", "seed")
    N_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    n: int
    temperature: float
    top_p: float
    max_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    def __init__(self, n: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., max_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("meta", "text", "source", "demonstration_ids", "sampling", "judging", "verification")
    META_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DEMONSTRATION_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    JUDGING_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    meta: RecordMeta
    text: str
    source: PromptSource
    demonstration_ids: _containers.RepeatedScalarFieldContainer[str]
    sampling: SamplingParams
    judging: SamplingParams
    verification: Verification
    def __init__(self, meta: _Optional[_Union[RecordMeta, _Mapping]] = ..., text: _Optional[str] = ..., source: _Optional[_Union[PromptSource, str]] = ..., demonstration_ids: _Optional[_Iterable[str]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., judging: _Optional[_Union[SamplingParams, _Mapping]] = ..., verification: _Optional[_Union[Verification, _Mapping]] = ...) -> None: ...

class Verification(_message.Message):
    __slots__ = ("instruction_ids", "instruction_kwargs_json", "label", "labels")
    INSTRUCTION_IDS_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_KWARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    instruction_ids: _containers.RepeatedScalarFieldContainer[str]
    instruction_kwargs_json: _containers.RepeatedScalarFieldContainer[str]
    label: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, instruction_ids: _Optional[_Iterable[str]] = ..., instruction_kwargs_json: _Optional[_Iterable[str]] = ..., label: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("candidate_id", "index", "text", "num_tokens", "finish_reason", "token_ids", "token_logprobs")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    index: int
    text: str
    num_tokens: int
    finish_reason: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    token_logprobs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, candidate_id: _Optional[str] = ..., index: _Optional[int] = ..., text: _Optional[str] = ..., num_tokens: _Optional[int] = ..., finish_reason: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., token_logprobs: _Optional[_Iterable[float]] = ...) -> None: ...

class CandidateSet(_message.Message):
    __slots__ = ("meta", "prompt_id", "prompt", "params", "candidates", "judging", "verification")
    META_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    JUDGING_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    meta: RecordMeta
    prompt_id: str
    prompt: str
    params: SamplingParams
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    judging: SamplingParams
    verification: Verification
    def __init__(self, meta: _Optional[_Union[RecordMeta, _Mapping]] = ..., prompt_id: _Optional[str] = ..., prompt: _Optional[str] = ..., params: _Optional[_Union[SamplingParams, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., judging: _Optional[_Union[SamplingParams, _Mapping]] = ..., verification: _Optional[_Union[Verification, _Mapping]] = ...) -> None: ...

class JudgeSample(_message.Message):
    __slots__ = ("output", "parsed", "score", "forced")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    PARSED_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    output: str
    parsed: bool
    score: float
    forced: bool
    def __init__(self, output: _Optional[str] = ..., parsed: _Optional[bool] = ..., score: _Optional[float] = ..., forced: _Optional[bool] = ...) -> None: ...

class JudgedCandidate(_message.Message):
    __slots__ = ("candidate_id", "samples", "mean_score", "num_parsed", "num_tokens", "score_statement", "rewards", "reward")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MEAN_SCORE_FIELD_NUMBER: _ClassVar[int]
    NUM_PARSED_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SCORE_STATEMENT_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    samples: _containers.RepeatedCompositeFieldContainer[JudgeSample]
    mean_score: float
    num_parsed: int
    num_tokens: int
    score_statement: bool
    rewards: _containers.RepeatedCompositeFieldContainer[RewardScore]
    reward: float
    def __init__(self, candidate_id: _Optional[str] = ..., samples: _Optional[_Iterable[_Union[JudgeSample, _Mapping]]] = ..., mean_score: _Optional[float] = ..., num_parsed: _Optional[int] = ..., num_tokens: _Optional[int] = ..., score_statement: _Optional[bool] = ..., rewards: _Optional[_Iterable[_Union[RewardScore, _Mapping]]] = ..., reward: _Optional[float] = ...) -> None: ...

class RewardScore(_message.Message):
    __slots__ = ("source", "value")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    source: str
    value: float
    def __init__(self, source: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class JudgmentSet(_message.Message):
    __slots__ = ("meta", "prompt_id", "prompt", "candidates", "decision", "reason", "pair_id")
    META_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PAIR_ID_FIELD_NUMBER: _ClassVar[int]
    meta: RecordMeta
    prompt_id: str
    prompt: str
    candidates: _containers.RepeatedCompositeFieldContainer[JudgedCandidate]
    decision: PairDecision
    reason: str
    pair_id: str
    def __init__(self, meta: _Optional[_Union[RecordMeta, _Mapping]] = ..., prompt_id: _Optional[str] = ..., prompt: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[JudgedCandidate, _Mapping]]] = ..., decision: _Optional[_Union[PairDecision, str]] = ..., reason: _Optional[str] = ..., pair_id: _Optional[str] = ...) -> None: ...

class PreferencePair(_message.Message):
    __slots__ = ("meta", "prompt_id", "prompt", "chosen", "rejected", "chosen_score", "rejected_score", "chosen_candidate_id", "rejected_candidate_id")
    META_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_SCORE_FIELD_NUMBER: _ClassVar[int]
    REJECTED_SCORE_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    REJECTED_CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    meta: RecordMeta
    prompt_id: str
    prompt: str
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float
    chosen_candidate_id: str
    rejected_candidate_id: str
    def __init__(self, meta: _Optional[_Union[RecordMeta, _Mapping]] = ..., prompt_id: _Optional[str] = ..., prompt: _Optional[str] = ..., chosen: _Optional[str] = ..., rejected: _Optional[str] = ..., chosen_score: _Optional[float] = ..., rejected_score: _Optional[float] = ..., chosen_candidate_id: _Optional[str] = ..., rejected_candidate_id: _Optional[str] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("version_id", "parent_id", "run_id", "iteration", "kind", "status", "uri", "manifest_sha256", "training_data_sha256", "metrics", "created_at", "reason")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    TRAINING_DATA_SHA256_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    version_id: str
    parent_id: str
    run_id: str
    iteration: int
    kind: ModelKind
    status: ModelStatus
    uri: str
    manifest_sha256: str
    training_data_sha256: str
    metrics: _containers.ScalarMap[str, float]
    created_at: _timestamp_pb2.Timestamp
    reason: str
    def __init__(self, version_id: _Optional[str] = ..., parent_id: _Optional[str] = ..., run_id: _Optional[str] = ..., iteration: _Optional[int] = ..., kind: _Optional[_Union[ModelKind, str]] = ..., status: _Optional[_Union[ModelStatus, str]] = ..., uri: _Optional[str] = ..., manifest_sha256: _Optional[str] = ..., training_data_sha256: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class IterationState(_message.Message):
    __slots__ = ("iteration", "stage", "prompts", "candidate_sets", "judgment_sets", "pairs", "input_version", "output_version", "promoted", "gate_reason", "metrics", "step_versions", "trained_group_ids", "sampling_version")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_SETS_FIELD_NUMBER: _ClassVar[int]
    JUDGMENT_SETS_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    INPUT_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    GATE_REASON_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    STEP_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_GROUP_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_VERSION_FIELD_NUMBER: _ClassVar[int]
    iteration: int
    stage: Stage
    prompts: int
    candidate_sets: int
    judgment_sets: int
    pairs: int
    input_version: str
    output_version: str
    promoted: bool
    gate_reason: str
    metrics: _containers.ScalarMap[str, float]
    step_versions: _containers.RepeatedScalarFieldContainer[str]
    trained_group_ids: _containers.RepeatedScalarFieldContainer[str]
    sampling_version: str
    def __init__(self, iteration: _Optional[int] = ..., stage: _Optional[_Union[Stage, str]] = ..., prompts: _Optional[int] = ..., candidate_sets: _Optional[int] = ..., judgment_sets: _Optional[int] = ..., pairs: _Optional[int] = ..., input_version: _Optional[str] = ..., output_version: _Optional[str] = ..., promoted: _Optional[bool] = ..., gate_reason: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., step_versions: _Optional[_Iterable[str]] = ..., trained_group_ids: _Optional[_Iterable[str]] = ..., sampling_version: _Optional[str] = ...) -> None: ...

class StageStart(_message.Message):
    __slots__ = ("iteration", "stage", "at")
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    iteration: int
    stage: Stage
    at: _timestamp_pb2.Timestamp
    def __init__(self, iteration: _Optional[int] = ..., stage: _Optional[_Union[Stage, str]] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RunState(_message.Message):
    __slots__ = ("run_id", "config_yaml", "stage", "iteration", "serving_version", "iterations", "error", "started_at", "updated_at", "stage_starts")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    STAGE_STARTS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    config_yaml: str
    stage: Stage
    iteration: int
    serving_version: str
    iterations: _containers.RepeatedCompositeFieldContainer[IterationState]
    error: str
    started_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    stage_starts: _containers.RepeatedCompositeFieldContainer[StageStart]
    def __init__(self, run_id: _Optional[str] = ..., config_yaml: _Optional[str] = ..., stage: _Optional[_Union[Stage, str]] = ..., iteration: _Optional[int] = ..., serving_version: _Optional[str] = ..., iterations: _Optional[_Iterable[_Union[IterationState, _Mapping]]] = ..., error: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stage_starts: _Optional[_Iterable[_Union[StageStart, _Mapping]]] = ...) -> None: ...

class IterationCommand(_message.Message):
    __slots__ = ("meta", "kind", "num_prompts", "pair_ids", "base_version", "output_version", "config_yaml", "group_ids")
    META_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    PAIR_IDS_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    GROUP_IDS_FIELD_NUMBER: _ClassVar[int]
    meta: RecordMeta
    kind: CommandKind
    num_prompts: int
    pair_ids: _containers.RepeatedScalarFieldContainer[str]
    base_version: str
    output_version: str
    config_yaml: str
    group_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, meta: _Optional[_Union[RecordMeta, _Mapping]] = ..., kind: _Optional[_Union[CommandKind, str]] = ..., num_prompts: _Optional[int] = ..., pair_ids: _Optional[_Iterable[str]] = ..., base_version: _Optional[str] = ..., output_version: _Optional[str] = ..., config_yaml: _Optional[str] = ..., group_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("source_topic", "partition", "offset", "key", "value", "headers", "error_type", "error", "attempts", "service", "failed_at")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SOURCE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    FAILED_AT_FIELD_NUMBER: _ClassVar[int]
    source_topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: _containers.ScalarMap[str, str]
    error_type: str
    error: str
    attempts: int
    service: str
    failed_at: _timestamp_pb2.Timestamp
    def __init__(self, source_topic: _Optional[str] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ..., key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., error_type: _Optional[str] = ..., error: _Optional[str] = ..., attempts: _Optional[int] = ..., service: _Optional[str] = ..., failed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("run_id", "iteration", "stage", "message", "time", "progress")
    class ProgressEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    iteration: int
    stage: Stage
    message: str
    time: _timestamp_pb2.Timestamp
    progress: _containers.ScalarMap[str, float]
    def __init__(self, run_id: _Optional[str] = ..., iteration: _Optional[int] = ..., stage: _Optional[_Union[Stage, str]] = ..., message: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., progress: _Optional[_Mapping[str, float]] = ...) -> None: ...
