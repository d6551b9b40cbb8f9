from srlm.v1 import records_pb2 as _records_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LoadModelRequest(_message.Message):
    __slots__ = ("version_id",)
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    version_id: str
    def __init__(self, version_id: _Optional[str] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("version_id", "load_seconds")
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    version_id: str
    load_seconds: float
    def __init__(self, version_id: _Optional[str] = ..., load_seconds: _Optional[float] = ...) -> None: ...

class GeneratePromptsRequest(_message.Message):
    __slots__ = ("run_id", "iteration", "num_prompts", "seed")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    iteration: int
    num_prompts: int
    seed: int
    def __init__(self, run_id: _Optional[str] = ..., iteration: _Optional[int] = ..., num_prompts: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class GeneratePromptsResponse(_message.Message):
    __slots__ = ("prompts", "generated", "rejected")
    class RejectedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[_records_pb2.Prompt]
    generated: int
    rejected: _containers.ScalarMap[str, int]
    def __init__(self, prompts: _Optional[_Iterable[_Union[_records_pb2.Prompt, _Mapping]]] = ..., generated: _Optional[int] = ..., rejected: _Optional[_Mapping[str, int]] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("messages", "params")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_records_pb2.ChatMessage]
    params: _records_pb2.SamplingParams
    def __init__(self, messages: _Optional[_Iterable[_Union[_records_pb2.ChatMessage, _Mapping]]] = ..., params: _Optional[_Union[_records_pb2.SamplingParams, _Mapping]] = ...) -> None: ...

class SampleResponse(_message.Message):
    __slots__ = ("model_version", "candidates")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    candidates: _containers.RepeatedCompositeFieldContainer[_records_pb2.Candidate]
    def __init__(self, model_version: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[_records_pb2.Candidate, _Mapping]]] = ...) -> None: ...

class GenerateChunk(_message.Message):
    __slots__ = ("index", "text", "finish_reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    text: str
    finish_reason: str
    def __init__(self, index: _Optional[int] = ..., text: _Optional[str] = ..., finish_reason: _Optional[str] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("prompt", "response", "num_judgments", "seed")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    NUM_JUDGMENTS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    response: str
    num_judgments: int
    seed: int
    def __init__(self, prompt: _Optional[str] = ..., response: _Optional[str] = ..., num_judgments: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("model_version", "judgment")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    JUDGMENT_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    judgment: _records_pb2.JudgedCandidate
    def __init__(self, model_version: _Optional[str] = ..., judgment: _Optional[_Union[_records_pb2.JudgedCandidate, _Mapping]] = ...) -> None: ...

class TrainStatusRequest(_message.Message):
    __slots__ = ("run_id", "iteration")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    iteration: int
    def __init__(self, run_id: _Optional[str] = ..., iteration: _Optional[int] = ...) -> None: ...

class TrainStatus(_message.Message):
    __slots__ = ("run_id", "iteration", "state", "pairs", "step", "total_steps", "metrics", "output_version", "error")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    iteration: int
    state: str
    pairs: int
    step: int
    total_steps: int
    metrics: _containers.ScalarMap[str, float]
    output_version: str
    error: str
    def __init__(self, run_id: _Optional[str] = ..., iteration: _Optional[int] = ..., state: _Optional[str] = ..., pairs: _Optional[int] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., output_version: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class StartRunRequest(_message.Message):
    __slots__ = ("config_yaml", "run_id")
    CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    config_yaml: str
    run_id: str
    def __init__(self, config_yaml: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[_records_pb2.ModelVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[_records_pb2.ModelVersion, _Mapping]]] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("version_id", "reason")
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    version_id: str
    reason: str
    def __init__(self, version_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("run_id", "version_id", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    version_id: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., version_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("run_id", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
