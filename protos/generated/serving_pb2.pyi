from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_STOP: FinishReason

class SamplingParams(_message.Message):
    __slots__ = ("max_new_tokens", "temperature", "top_p", "seed", "stop_ids")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_IDS_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompt_ids", "text", "sampling")
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    prompt_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    sampling: SamplingParams
    def __init__(self, prompt_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ...) -> None: ...

class Finished(_message.Message):
    __slots__ = ("reason", "prompt_tokens", "generated_tokens", "time_to_first_token_seconds", "total_seconds", "engine", "node")
    REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    reason: FinishReason
    prompt_tokens: int
    generated_tokens: int
    time_to_first_token_seconds: float
    total_seconds: float
    engine: int
    node: int
    def __init__(self, reason: _Optional[_Union[FinishReason, str]] = ..., prompt_tokens: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., time_to_first_token_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ..., engine: _Optional[int] = ..., node: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("tokens", "finished")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    tokens: TokenChunk
    finished: Finished
    def __init__(self, tokens: _Optional[_Union[TokenChunk, _Mapping]] = ..., finished: _Optional[_Union[Finished, _Mapping]] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("token_ids", "text")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ...) -> None: ...

class GenerateBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[GenerateRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[GenerateRequest, _Mapping]]] = ...) -> None: ...

class GenerateResult(_message.Message):
    __slots__ = ("token_ids", "text", "finished")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    finished: Finished
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., finished: _Optional[_Union[Finished, _Mapping]] = ...) -> None: ...

class GenerateBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[GenerateResult]
    def __init__(self, results: _Optional[_Iterable[_Union[GenerateResult, _Mapping]]] = ...) -> None: ...

class GetPlacementRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPlacementResponse(_message.Message):
    __slots__ = ("epoch", "plan_json", "num_layers", "num_physical_experts", "num_nodes", "gpus_per_node", "engine_epochs")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PLAN_JSON_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_PHYSICAL_EXPERTS_FIELD_NUMBER: _ClassVar[int]
    NUM_NODES_FIELD_NUMBER: _ClassVar[int]
    GPUS_PER_NODE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    plan_json: str
    num_layers: int
    num_physical_experts: int
    num_nodes: int
    gpus_per_node: int
    engine_epochs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, epoch: _Optional[int] = ..., plan_json: _Optional[str] = ..., num_layers: _Optional[int] = ..., num_physical_experts: _Optional[int] = ..., num_nodes: _Optional[int] = ..., gpus_per_node: _Optional[int] = ..., engine_epochs: _Optional[_Iterable[int]] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LayerLoad(_message.Message):
    __slots__ = ("expert_load",)
    EXPERT_LOAD_FIELD_NUMBER: _ClassVar[int]
    expert_load: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, expert_load: _Optional[_Iterable[float]] = ...) -> None: ...

class TrafficCounters(_message.Message):
    __slots__ = ("tokens_per_worker", "bytes_per_worker", "same_node_bytes", "cross_node_bytes", "same_node_tokens", "cross_node_tokens", "engines")
    TOKENS_PER_WORKER_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_WORKER_FIELD_NUMBER: _ClassVar[int]
    SAME_NODE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CROSS_NODE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SAME_NODE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CROSS_NODE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    tokens_per_worker: _containers.RepeatedScalarFieldContainer[int]
    bytes_per_worker: _containers.RepeatedScalarFieldContainer[int]
    same_node_bytes: int
    cross_node_bytes: int
    same_node_tokens: int
    cross_node_tokens: int
    engines: _containers.RepeatedCompositeFieldContainer[EngineTraffic]
    def __init__(self, tokens_per_worker: _Optional[_Iterable[int]] = ..., bytes_per_worker: _Optional[_Iterable[int]] = ..., same_node_bytes: _Optional[int] = ..., cross_node_bytes: _Optional[int] = ..., same_node_tokens: _Optional[int] = ..., cross_node_tokens: _Optional[int] = ..., engines: _Optional[_Iterable[_Union[EngineTraffic, _Mapping]]] = ...) -> None: ...

class EngineTraffic(_message.Message):
    __slots__ = ("home_node", "bytes_per_worker", "tokens_per_worker")
    HOME_NODE_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_WORKER_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_WORKER_FIELD_NUMBER: _ClassVar[int]
    home_node: int
    bytes_per_worker: _containers.RepeatedScalarFieldContainer[int]
    tokens_per_worker: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, home_node: _Optional[int] = ..., bytes_per_worker: _Optional[_Iterable[int]] = ..., tokens_per_worker: _Optional[_Iterable[int]] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("num_tokens", "layers", "balancedness", "traffic", "window_seconds", "window_tokens")
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    BALANCEDNESS_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    num_tokens: float
    layers: _containers.RepeatedCompositeFieldContainer[LayerLoad]
    balancedness: float
    traffic: TrafficCounters
    window_seconds: float
    window_tokens: float
    def __init__(self, num_tokens: _Optional[float] = ..., layers: _Optional[_Iterable[_Union[LayerLoad, _Mapping]]] = ..., balancedness: _Optional[float] = ..., traffic: _Optional[_Union[TrafficCounters, _Mapping]] = ..., window_seconds: _Optional[float] = ..., window_tokens: _Optional[float] = ...) -> None: ...

class ClusterInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_dir", "family", "num_layers", "num_experts", "top_k", "vocab_size", "max_context", "has_tokenizer")
    MODEL_DIR_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_EXPERTS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    HAS_TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    model_dir: str
    family: str
    num_layers: int
    num_experts: int
    top_k: int
    vocab_size: int
    max_context: int
    has_tokenizer: bool
    def __init__(self, model_dir: _Optional[str] = ..., family: _Optional[str] = ..., num_layers: _Optional[int] = ..., num_experts: _Optional[int] = ..., top_k: _Optional[int] = ..., vocab_size: _Optional[int] = ..., max_context: _Optional[int] = ..., has_tokenizer: _Optional[bool] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("index", "ray_node_id", "address")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RAY_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    index: int
    ray_node_id: str
    address: str
    def __init__(self, index: _Optional[int] = ..., ray_node_id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class EngineInfo(_message.Message):
    __slots__ = ("index", "node", "queue_depth", "active_batch")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_BATCH_FIELD_NUMBER: _ClassVar[int]
    index: int
    node: int
    queue_depth: int
    active_batch: int
    def __init__(self, index: _Optional[int] = ..., node: _Optional[int] = ..., queue_depth: _Optional[int] = ..., active_batch: _Optional[int] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("index", "node")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    index: int
    node: int
    def __init__(self, index: _Optional[int] = ..., node: _Optional[int] = ...) -> None: ...

class ClusterInfoResponse(_message.Message):
    __slots__ = ("model", "nodes", "engines", "workers", "device")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    engines: _containers.RepeatedCompositeFieldContainer[EngineInfo]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    device: str
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ..., nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ..., engines: _Optional[_Iterable[_Union[EngineInfo, _Mapping]]] = ..., workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ..., device: _Optional[str] = ...) -> None: ...

class RebalanceRequest(_message.Message):
    __slots__ = ("apply", "policy", "max_moves", "plan_json", "expected_epoch")
    APPLY_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    MAX_MOVES_FIELD_NUMBER: _ClassVar[int]
    PLAN_JSON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_EPOCH_FIELD_NUMBER: _ClassVar[int]
    apply: bool
    policy: str
    max_moves: int
    plan_json: str
    expected_epoch: int
    def __init__(self, apply: _Optional[bool] = ..., policy: _Optional[str] = ..., max_moves: _Optional[int] = ..., plan_json: _Optional[str] = ..., expected_epoch: _Optional[int] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("apply",)
    APPLY_FIELD_NUMBER: _ClassVar[int]
    apply: bool
    def __init__(self, apply: _Optional[bool] = ...) -> None: ...

class PlanMetrics(_message.Message):
    __slots__ = ("balancedness", "gpus_per_token", "remote_nodes_per_token", "layer_time_s")
    BALANCEDNESS_FIELD_NUMBER: _ClassVar[int]
    GPUS_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REMOTE_NODES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LAYER_TIME_S_FIELD_NUMBER: _ClassVar[int]
    balancedness: float
    gpus_per_token: float
    remote_nodes_per_token: float
    layer_time_s: float
    def __init__(self, balancedness: _Optional[float] = ..., gpus_per_token: _Optional[float] = ..., remote_nodes_per_token: _Optional[float] = ..., layer_time_s: _Optional[float] = ...) -> None: ...

class RebalanceResponse(_message.Message):
    __slots__ = ("epoch", "applied", "plan_json", "balancedness_before", "balancedness_after", "policy", "replicas_moved", "replicas_moved_per_layer", "bytes_to_copy", "current", "proposed", "window_tokens", "evaluated_tokens", "applied_epoch", "bytes_copied", "apply_seconds", "steps_during_switch", "planned_windows", "planned_decay", "resampled_windows", "resampled_run_tokens", "feedback_level")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    PLAN_JSON_FIELD_NUMBER: _ClassVar[int]
    BALANCEDNESS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    BALANCEDNESS_AFTER_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_MOVED_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_MOVED_PER_LAYER_FIELD_NUMBER: _ClassVar[int]
    BYTES_TO_COPY_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    PROPOSED_FIELD_NUMBER: _ClassVar[int]
    WINDOW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_EPOCH_FIELD_NUMBER: _ClassVar[int]
    BYTES_COPIED_FIELD_NUMBER: _ClassVar[int]
    APPLY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STEPS_DURING_SWITCH_FIELD_NUMBER: _ClassVar[int]
    PLANNED_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    PLANNED_DECAY_FIELD_NUMBER: _ClassVar[int]
    RESAMPLED_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    RESAMPLED_RUN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_LEVEL_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    applied: bool
    plan_json: str
    balancedness_before: float
    balancedness_after: float
    policy: str
    replicas_moved: int
    replicas_moved_per_layer: _containers.RepeatedScalarFieldContainer[int]
    bytes_to_copy: int
    current: PlanMetrics
    proposed: PlanMetrics
    window_tokens: float
    evaluated_tokens: int
    applied_epoch: int
    bytes_copied: int
    apply_seconds: float
    steps_during_switch: int
    planned_windows: int
    planned_decay: float
    resampled_windows: int
    resampled_run_tokens: float
    feedback_level: int
    def __init__(self, epoch: _Optional[int] = ..., applied: _Optional[bool] = ..., plan_json: _Optional[str] = ..., balancedness_before: _Optional[float] = ..., balancedness_after: _Optional[float] = ..., policy: _Optional[str] = ..., replicas_moved: _Optional[int] = ..., replicas_moved_per_layer: _Optional[_Iterable[int]] = ..., bytes_to_copy: _Optional[int] = ..., current: _Optional[_Union[PlanMetrics, _Mapping]] = ..., proposed: _Optional[_Union[PlanMetrics, _Mapping]] = ..., window_tokens: _Optional[float] = ..., evaluated_tokens: _Optional[int] = ..., applied_epoch: _Optional[int] = ..., bytes_copied: _Optional[int] = ..., apply_seconds: _Optional[float] = ..., steps_during_switch: _Optional[int] = ..., planned_windows: _Optional[int] = ..., planned_decay: _Optional[float] = ..., resampled_windows: _Optional[int] = ..., resampled_run_tokens: _Optional[float] = ..., feedback_level: _Optional[int] = ...) -> None: ...

class GetEventsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class GetEventsResponse(_message.Message):
    __slots__ = ("event_json",)
    EVENT_JSON_FIELD_NUMBER: _ClassVar[int]
    event_json: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, event_json: _Optional[_Iterable[str]] = ...) -> None: ...

class GetRequestMetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Histogram(_message.Message):
    __slots__ = ("upper_bounds", "cumulative_counts", "sum")
    UPPER_BOUNDS_FIELD_NUMBER: _ClassVar[int]
    CUMULATIVE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    SUM_FIELD_NUMBER: _ClassVar[int]
    upper_bounds: _containers.RepeatedScalarFieldContainer[float]
    cumulative_counts: _containers.RepeatedScalarFieldContainer[int]
    sum: float
    def __init__(self, upper_bounds: _Optional[_Iterable[float]] = ..., cumulative_counts: _Optional[_Iterable[int]] = ..., sum: _Optional[float] = ...) -> None: ...

class RequestMetrics(_message.Message):
    __slots__ = ("started", "finished", "failed", "generated_tokens", "time_to_first_token", "inter_token")
    class FinishedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class FailedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    STARTED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INTER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    started: int
    finished: _containers.ScalarMap[str, int]
    failed: _containers.ScalarMap[str, int]
    generated_tokens: int
    time_to_first_token: Histogram
    inter_token: Histogram
    def __init__(self, started: _Optional[int] = ..., finished: _Optional[_Mapping[str, int]] = ..., failed: _Optional[_Mapping[str, int]] = ..., generated_tokens: _Optional[int] = ..., time_to_first_token: _Optional[_Union[Histogram, _Mapping]] = ..., inter_token: _Optional[_Union[Histogram, _Mapping]] = ...) -> None: ...
