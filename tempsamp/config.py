"""One config object for the whole system.

Precedence, lowest first: defaults in these Structs < YAML file < the original's env vars
(``TIMELENS_*``, ``GTPO_*``) < dotted CLI overrides (``algorithm.name=tempsamp``).
Unknown keys and wrong types are errors naming the key and where it came from.
Every knob of the original's YAML / shell scripts has one home here; defaults follow RECIPE.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

__all__ = [
    "Config",
    "ConfigError",
    "load_config",
    "apply_overrides",
    "config_to_dict",
    "ENV_VARS",
]


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong type; the message names key and source."""


class _S(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ModelConfig(_S):
    path: str = ""  # HF folder (env TIMELENS_MODEL_PATH); empty = build a tiny model (demo/tests)
    family: Literal["auto", "qwen2_5_vl", "qwen3_vl", "qwen3_5"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"
    tiny_family: Literal["qwen2_5_vl", "qwen3_vl", "qwen3_5"] = "qwen2_5_vl"  # used when path is empty


class DataConfig(_S):
    train_files: list[str] = []  # trainer JSONL (env TIMELENS_TRAIN_FILES, comma separated)
    val_files: list[str] = []
    # train_files empty + synthetic_dir set: generate the built-in synthetic set there (deterministic,
    # reused when present) and train on it — the demo config uses this, so it runs verbatim as a Ray job
    synthetic_dir: str = ""
    synthetic_n_train: int = 16
    video_root: str = ""  # resolves relative `videos` paths
    use_preprocessed: bool = False  # env TIMELENS_USE_PREPROCESSED
    video_source_mode: Literal["prefer_preprocessed", "preprocessed_only", "realtime_only"] = "prefer_preprocessed"
    preprocessed_video_dir: str = ""  # Stage B cache dir (env TIMELENS_PREPROCESSED_VIDEO_DIR)
    rebuild_cache: bool = False  # rebuild a cache entry whose decode parameters differ, instead of failing
    prompts_per_step: int = 16  # rollout_batch_size of the original (16 prompts x n=8 = 128 rows)
    shuffle: bool = True
    seed: int = 1
    max_prompt_length: int = 20480
    on_bad_sample: Literal["skip", "stop"] = "stop"


class VideoConfig(_S):
    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    min_pixels: int = 4096
    max_pixels: int = 786432
    total_pixels: int = 14_680_064
    patch_size: int = 0  # 0 = from the model family (16 for Qwen3.x, 14 for Qwen2.x)
    merge_size: int = 2


class RewardConfig(_S):
    format_weight: float = 0.1  # score = iou + format_weight * format
    strict_format: bool = False  # require the whole response to be one <answer> a to b </answer>
    shaping: bool = False  # non-linear reward shaping (env GTPO_REWARD_SHAPING)
    shaping_threshold: float = 0.8  # env GTPO_REWARD_SHAPING_THRESHOLD
    shaping_alpha: float = 1.0  # env GTPO_REWARD_SHAPING_ALPHA


class AlgorithmConfig(_S):
    name: Literal["grpo", "tempsamp"] = "grpo"
    # None = follow `name` (tempsamp -> on). Set explicitly to ablate one component.
    use_gt_injection: bool | None = None
    gt_index: int = -1  # slot replaced by the GT response in each group (-1 = last, n-1)
    adv_eps: float = 1e-6
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.28
    clip_ratio_dual: float = 3.0
    loss_agg_mode: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] = "token-mean"
    use_kl: bool = False
    kl_coef: float = 0.01
    kl_type: Literal["low_var_kl", "k1", "k2"] = "low_var_kl"
    exclude_gt_from_metrics: bool = True  # reward metrics are logged with and without GT rows

    def gt_injection_enabled(self) -> bool:
        return self.name == "tempsamp" if self.use_gt_injection is None else self.use_gt_injection


class RolloutConfig(_S):
    backend: Literal["vllm", "hf"] = "vllm"
    n: int = 8
    temperature: float = 1.0
    top_p: float = 0.85
    top_k: int = -1
    max_new_tokens: int = 256
    num_engines: int = 4
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.6
    max_model_len: int = 22528
    enforce_eager: bool = False
    cpu_kvcache_gib: int = 1
    seed: int = 0


class LearnerConfig(_S):
    num_ranks: int = 4
    lr: float = 1e-6
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.05
    lr_schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float = 1.0
    ppo_epochs: int = 1
    mini_batches_per_step: int = 1  # optimizer steps per rollout step
    micro_batch_tokens: int = 32768  # token budget of one forward/backward micro-batch
    freeze_vision_tower: bool = True
    gradient_checkpointing: bool = True
    fsdp: bool = True  # FSDP2 fully_shard across ranks
    timeout_s: float = 1800.0


class PlacementConfig(_S):
    num_nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_node: int = 64
    gpu_memory_gb: float = 96.0  # H20
    learner_gpus: int = 4
    decode_actors: int = 4
    reward_actors: int = 1
    cpus_per_decode_actor: float = 2.0
    cpus_per_reward_actor: float = 1.0
    cpus_per_gpu_actor: float = 1.0
    colocate: bool = False  # learner and rollout share GPUs (time-sliced)
    use_gpus: bool = True  # False = CPU-only plan (demo, tests)


class SyncConfig(_S):
    bucket_mb: int = 256
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    timeout_s: float = 600.0  # group init and every broadcast; a sync that does not finish is a failure
    checksum: bool = True
    max_retries: int = 2  # re-syncs after a corrupted bucket / version mismatch / dead or stuck engine


class CheckpointConfig(_S):
    output_dir: str = "checkpoints/tempsamp"
    save_freq: int = 20
    save_limit: int = 3
    resume: str = "auto"  # auto | never | path to a global_step_N folder
    export_hf: bool = True


class EvalConfig(_S):
    bench_dir: str = ""
    datasets: list[str] = msgspec.field(
        default_factory=lambda: ["charades-timelens", "activitynet-timelens", "qvhighlights-timelens"]
    )
    fps: float = 2.0
    min_pixels: int = 65_536
    max_pixels: int = 786432
    total_pixels: int = 14_680_064
    max_frames: int = 0  # 0 = no cap other than qwen-vl-utils' default (768)
    max_new_tokens: int = 512
    parse_mode: Literal["eval", "training"] = "eval"
    val_freq: int = 0  # 0 = no eval during training (else every N steps, with the rollout engines)
    val_max_samples: int = 0  # cap per dataset for in-training eval (0 = all)
    num_engines: int = 1
    num_decoders: int = 1
    cpus_per_actor: float = 1.0
    queries_per_call: int = 8  # queries of one video sent to an engine in one call
    backend: Literal["auto", "vllm", "hf"] = "auto"  # auto: vllm on GPU, hf on CPU
    skip_missing_videos: bool = False
    call_timeout_s: float = 1800.0


class TrainerConfig(_S):
    run_name: str = "tempsamp"
    total_epochs: int = 1
    max_steps: int = 0  # 0 = epochs decide
    max_staleness: int = 0  # 0 = original synchronous schedule, 1 = overlap rollout k+1 with learn k
    log_dir: str = "outputs/logs"
    seed: int = 1
    step_timeout_s: float = 3600.0  # learner step (and a whole stage at most)
    call_timeout_s: float = 900.0  # one decode / reward call; a stuck actor is replaced after this
    rollout_timeout_s: float = 1800.0  # one engine's generate call
    actor_start_timeout_s: float = 900.0  # a replacement actor must answer ping within this
    max_retries: int = 2  # per stage and step, after replacing dead/stuck actors; then the run stops
    spill_dir: str = ""  # Ray object spilling for a local Ray ("" = <tmp>/tempsamp-spill)


class Config(_S):
    model: ModelConfig = msgspec.field(default_factory=ModelConfig)
    data: DataConfig = msgspec.field(default_factory=DataConfig)
    video: VideoConfig = msgspec.field(default_factory=VideoConfig)
    reward: RewardConfig = msgspec.field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = msgspec.field(default_factory=AlgorithmConfig)
    rollout: RolloutConfig = msgspec.field(default_factory=RolloutConfig)
    learner: LearnerConfig = msgspec.field(default_factory=LearnerConfig)
    placement: PlacementConfig = msgspec.field(default_factory=PlacementConfig)
    sync: SyncConfig = msgspec.field(default_factory=SyncConfig)
    checkpoint: CheckpointConfig = msgspec.field(default_factory=CheckpointConfig)
    eval: EvalConfig = msgspec.field(default_factory=EvalConfig)
    trainer: TrainerConfig = msgspec.field(default_factory=TrainerConfig)


# env var -> (dotted key, parser). The original's shell scripts read these.
def _csv(v: str) -> list[str]:
    return [p for p in (s.strip() for s in v.split(",")) if p]


def _bool(v: str) -> bool:
    s = v.strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean (true/false/1/0), got {v!r}")


def _datasets(v: str) -> list[str]:
    from .evaluation.bench import parse_dataset_list

    return parse_dataset_list(v)


ENV_VARS: dict[str, tuple[str, Any]] = {
    "TIMELENS_MODEL_PATH": ("model.path", str),
    "TIMELENS_TRAIN_FILES": ("data.train_files", _csv),
    "TIMELENS_USE_PREPROCESSED": ("data.use_preprocessed", _bool),
    "TIMELENS_VIDEO_SOURCE_MODE": ("data.video_source_mode", str),
    "TIMELENS_PREPROCESSED_VIDEO_DIR": ("data.preprocessed_video_dir", str),
    "BENCH_DIR": ("eval.bench_dir", str),  # as the original's eval script
    "DATASETS": ("eval.datasets", _datasets),
    "GTPO_REWARD_SHAPING": ("reward.shaping", _bool),
    "GTPO_REWARD_SHAPING_THRESHOLD": ("reward.shaping_threshold", float),
    "GTPO_REWARD_SHAPING_ALPHA": ("reward.shaping_alpha", float),
}


def _validate(raw: dict, source: str) -> Config:
    try:
        return msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as e:
        # msgspec says e.g. "Object contains unknown field `foo` - at `$.data`"
        msg = str(e).replace("$.", "").replace("`$`", "top level")
        raise ConfigError(f"{source}: {msg}") from None


def _set_dotted(raw: dict, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node = raw
    struct_type: Any = Config
    for i, part in enumerate(parts):
        by_name = {f.name: f for f in msgspec.structs.fields(struct_type)}
        names = set(by_name)
        if part not in names:
            where = ".".join(parts[:i]) or "top level"
            raise ConfigError(f"{source}: unknown key `{key}` (no `{part}` in {where}; known: {', '.join(sorted(names))})")
        f = by_name[part]
        if i == len(parts) - 1:
            node[part] = value
            return
        if not (isinstance(f.type, type) and issubclass(f.type, msgspec.Struct)):
            raise ConfigError(f"{source}: `{'.'.join(parts[: i + 1])}` is a value, not a section")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: `{'.'.join(parts[: i + 1])}` must be a mapping")
        struct_type = f.type


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML scalars/lists) onto a raw dict."""
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected key.sub=value")
        key, text = ov.split("=", 1)
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {ov!r}: value is not valid YAML ({e})") from None
        _set_dotted(raw, key.strip(), value, f"override {ov!r}")
    return raw


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Config:
    env = os.environ if env is None else env
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping, got {type(loaded).__name__}")
        raw = loaded
        _validate(raw, str(p))  # report file errors against the file
    for var, (key, parse) in ENV_VARS.items():
        if var in env:
            try:
                value = parse(env[var])
            except ValueError as e:
                raise ConfigError(f"env {var}: {e}") from None
            _set_dotted(raw, key, value, f"env {var}")
    apply_overrides(raw, list(overrides or []))
    return _validate(raw, f"{path or 'defaults'} + env/overrides")


def config_to_dict(cfg: Config) -> dict:
    return msgspec.to_builtins(cfg)
