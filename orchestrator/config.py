"""Structured (typed) configs for ``conf/``: a typo or a wrong type fails at composition time.

Every config group in ``conf/`` has a dataclass here and the root ``config.yaml`` starts from
``schedlab_schema``, so Hydra/OmegaConf reject ``policy.nmae=sjf`` or ``engine.max_num_seqs=abc``
with an error naming the key before any server starts. Free-form ``args`` dicts (policy,
allocator and loader parameters) are checked against the target's signature by
``orchestrator.experiment.prepare``. The ``engine`` node is ``serving.engine.EngineConfig`` itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from serving.engine import EngineConfig


@dataclass
class PolicyConfig:
    """A request-scheduling policy from the ``policies`` registry (``fcfs``, ``sjf``, ...)."""

    name: str = MISSING
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class AllocatorConfig:
    """A KV-block allocation policy from the ``policies`` registry (``default`` = vLLM's LRU)."""

    name: str = "default"
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelArchConfig:
    """Model architecture preset (``serving.models``); the engine's settings are the ``engine`` group."""

    preset: str = MISSING  # tiny | llama3_8b | qwen2_5_7b
    arch_overrides: Dict[str, Any] = field(default_factory=dict)  # config.json keys to replace
    # Keys that moved to ``engine``: typed loosely so that an old config reaches ``moved_keys``,
    # which names the new key, instead of a bare "key not in ModelArchConfig".
    tensor_parallel_size: Any = None
    max_num_seqs: Any = None
    max_num_batched_tokens: Any = None
    max_model_len: Any = None
    block_size: Any = None
    enable_prefix_caching: Any = None
    enable_chunked_prefill: Any = None
    long_prefill_token_threshold: Any = None
    enforce_eager: Any = None
    dtype: Any = None
    extra_args: Any = None
    num_gpu_blocks_override: Any = None


# Old key -> new key, for configs written before the ``engine`` group: every placeholder field above.
MOVED_KEYS = {
    f"model.{k}": "engine." + {"num_gpu_blocks_override": "num_gpu_blocks"}.get(k, k)
    for k in ModelArchConfig.__dataclass_fields__ if k not in ("preset", "arch_overrides")
}


class ConfigError(ValueError):
    """A cell config that cannot run; raised before any server starts."""


@dataclass
class WorkloadConfig:
    """A workload: a synthetic generator or a trace file, shaped by the ``workloads`` transforms."""

    loader: str = MISSING  # "synthetic" or a trace format of workloads.LOADERS (azure, mooncake, ...)
    path: Optional[str] = None  # trace file; None: the bundled sample (workloads.SAMPLES)
    num_requests: Optional[int] = None  # keep the first N requests
    duration_s: Optional[float] = None  # keep requests arriving in the first duration_s seconds
    rate: Optional[float] = None  # mean request rate (req/s); None: as traced
    arrival: Optional[str] = None  # with rate: None rescales the trace's timestamps; poisson|gamma: new ones
    cv: float = 1.0  # gamma arrivals: coefficient of variation (burstiness)
    time_scale: Optional[float] = None  # replay this many times faster
    max_prompt_len: Optional[int] = None  # clip prompt lengths (tokens)
    max_output_len: Optional[int] = None  # clip output lengths (tokens)
    args: Dict[str, Any] = field(default_factory=dict)  # synthetic() / loader keyword arguments


@dataclass
class BackendConfig:
    """Where each cell runs (``conf/backend/<name>.yaml``; each option has its own node below)."""

    name: str = MISSING


@dataclass
class VLLMLocalBackendConfig(BackendConfig):
    """``vllm_local``: one real ``vllm serve`` child process per cell, cells one after another."""

    startup_timeout_s: float = 300.0
    cell_timeout_s: float = 1800.0  # whole cell: start + replay + scrape
    request_timeout_s: float = 300.0
    warmup_requests: int = 0
    # Before measuring, replay the workload once with fresh prompts of the same lengths (same batch
    # shapes, no prefix-cache hits with the measured requests): a cold CPU server builds kernels per
    # batch shape during its first replay. A CPU cell without it is invalid (orchestrator.validity).
    warmup_replay: bool = True
    metrics_interval_s: float = 0.5  # /metrics scrape period for the time series
    env: Dict[str, str] = field(default_factory=dict)  # extra environment of each vLLM server


@dataclass
class VLLMRayBackendConfig(VLLMLocalBackendConfig):
    """``vllm_ray``: each cell's server in a Ray actor, cells in parallel."""

    ray_address: Optional[str] = None  # "auto" joins an existing cluster, null starts a local one
    ray_num_cpus: Optional[int] = None  # only for a local Ray instance
    num_cpus_per_cell: float = 1.0
    max_parallel: Optional[int] = None  # cap on concurrent cells (None: cluster capacity)
    ray_ship_code: bool = True  # remote cluster: upload this repo as the Ray runtime_env working_dir


@dataclass
class SimBackendConfig(BackendConfig):
    """``sim``: vLLM's real Scheduler on a virtual clock (``simulator``)."""

    step_model: str = "roofline:h100"  # e.g. "linear:cpu_tiny" (simulator/profiles/)
    scheduling_cost: bool = False  # add the measured CPU time of the scheduler to each step
    # As a real cell's warm-up replay: a step model with a first-run cost per step shape
    # (linear:cpu_tiny) then models a warm server, the one real cells measure. No effect on rooflines.
    warmup_replay: bool = True


BACKEND_SCHEMAS = {"vllm_local": VLLMLocalBackendConfig, "vllm_ray": VLLMRayBackendConfig, "sim": SimBackendConfig}


@dataclass
class ValidityConfig:
    """Bounds of a valid cell (orchestrator.validity); invalid cells leave the table, resume re-runs them."""

    max_failed_fraction: float = 0.0  # failed requests allowed, as a fraction of the measured ones
    max_client_stalled_fraction: float = 0.1  # completed requests a load-generator pause lengthened by > 10%
    max_send_lag_ms_p99: float = 1000.0  # how late the load generator sent requests (p99)
    retries: int = 2  # runs again, at once, a cell invalid only because the machine disturbed it


@dataclass
class MlflowConfig:
    tracking_uri: Optional[str] = None  # None: sqlite:///<results_dir>/mlflow.db
    artifact_location: Optional[str] = None  # None: <results_dir>/mlartifacts


@dataclass
class SchedlabConfig:
    experiment_name: str = "default"
    seed: int = 0
    force: bool = False  # re-run cells already FINISHED in MLflow
    results_dir: str = "results"
    compare_by: str = "policy"  # the grid key compared side by side in the comparison table
    baseline: str = "fcfs"  # the value of compare_by that deltas are relative to
    slo_ttft_ms: Optional[float] = None  # goodput counts requests within both SLOs
    slo_tpot_ms: Optional[float] = None
    check_invariants: bool = False  # policies re-check vLLM invariants every step (slow)
    progress: bool = True
    validity: ValidityConfig = field(default_factory=ValidityConfig)
    invalid_ok: bool = False  # keep invalid cells in the comparison (marked) and reuse them on resume
    # Dotted path of a function (cells, cfg, exp_dir) -> list of files, run after the comparison
    # table; its files go to the parent run (e.g. orchestrator.reproductions.sarathi).
    analysis: Optional[str] = None
    # Grid: key -> list of values, each a Hydra override (`policy: [fcfs, sjf]` -> policy=fcfs,
    # policy=sjf); the cartesian product of all keys, times every entry of `cells`.
    grid: Dict[str, Any] = field(default_factory=dict)
    # Explicit cells: {override key: value} dicts, each x the grid keys it does not set; they replace the
    # plain grid product (an entry {} brings it back).
    cells: List[Dict[str, Any]] = field(default_factory=list)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    allocator: AllocatorConfig = field(default_factory=AllocatorConfig)
    model: ModelArchConfig = field(default_factory=ModelArchConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    backend: Any = MISSING  # one of BACKEND_SCHEMAS, typed by its group file's defaults
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


def unknown_keys(cfg: DictConfig, prefix: str = "") -> dict[str, list[str]]:
    """Keys of typed (dataclass) nodes that are not fields of the dataclass -> the fields it has.

    Hydra's ``+key=value`` adds a key even to a typed node, so ``+workload.num_requestz=20`` would
    compose, run and be recorded while nothing reads it; free-form ``args`` dicts are not typed."""
    out: dict[str, list[str]] = {}
    typ = OmegaConf.get_type(cfg)
    known = [f.name for f in dataclasses.fields(typ)] if dataclasses.is_dataclass(typ) else None
    for key in cfg.keys():
        if known is not None and key not in known:
            out[f"{prefix}{key}"] = known
        elif not OmegaConf.is_missing(cfg, key) and isinstance(cfg[key], DictConfig):
            out.update(unknown_keys(cfg[key], f"{prefix}{key}."))
    return out


def register_configs() -> None:
    # The root schema types every group node, so group files need no schema of their own; backend
    # options differ in their fields, so each backend file starts from its own node.
    cs = ConfigStore.instance()
    cs.store(name="schedlab_schema", node=SchedlabConfig)
    for name, node in BACKEND_SCHEMAS.items():
        cs.store(group="backend", name=f"{name}_schema", node=node)


register_configs()
