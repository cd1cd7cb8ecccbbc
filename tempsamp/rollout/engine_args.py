"""Config -> rollout engine: the one adapter from `Config` to an engine's constructor arguments, and
the constructor by backend name (used by training, evaluation and re-framing alike)."""

from __future__ import annotations


def engine_args(cfg, backend: str, family: str) -> tuple[dict, dict]:
    """Constructor kwargs and Ray runtime_env of an engine of `backend` serving a `family` model."""
    r = cfg.rollout
    if backend == "vllm":
        from .vllm_engine import scheduling_settings

        kw = dict(max_model_len=r.max_model_len, dtype=cfg.model.dtype, gpu_memory_utilization=r.gpu_memory_utilization,
                  enforce_eager=r.enforce_eager or not cfg.placement.use_gpus,
                  tensor_parallel_size=r.tensor_parallel_size, seed=r.seed, cpu_kvcache_gib=r.cpu_kvcache_gib,
                  scheduling=scheduling_settings(family, cfg.placement.use_gpus, r.max_model_len),
                  keep_prepack=r.vllm_keep_prepack)
    elif backend == "hf":
        kw = dict(dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                  device="cuda" if cfg.placement.use_gpus else "cpu")
    else:
        raise ValueError(f"unknown rollout backend {backend!r} (vllm | hf)")
    return kw, {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": str(r.cpu_kvcache_gib)}}


def make_engine(backend: str, model_dir: str, name: str, kwargs: dict):
    """A VLLMEngine or HFEngine (same interface: generate, weight-group join, receive, named_weights)."""
    if backend == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(model_dir, name=name, **kwargs)
    if backend == "hf":
        from .hf import HFEngine

        return HFEngine(model_dir, name=name, **kwargs)
    raise ValueError(f"unknown rollout backend {backend!r} (vllm | hf)")
