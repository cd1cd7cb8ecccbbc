"""Our vLLM plugin (tempsamp/rollout/vllm_plugin.py): registered where vLLM looks for general plugins,
and its tokenizer-pool patch makes transformers' defensive deep copies of a vLLM tokenizer free."""

import copy
import time

import pytest

pytestmark = pytest.mark.vllm


def test_vllm_finds_and_loads_our_plugin():
    """vLLM's own loader (the one each engine process runs) finds the entry point of the installed
    package and it resolves to our register()."""
    from vllm.plugins import DEFAULT_PLUGINS_GROUP, load_plugins_by_group

    from tempsamp.rollout.vllm_plugin import register

    plugins = load_plugins_by_group(DEFAULT_PLUGINS_GROUP)
    assert plugins.get("tempsamp") is register, f"{DEFAULT_PLUGINS_GROUP}: {sorted(plugins)} (pip install -e . ?)"


def test_a_deep_copied_tokenizer_pool_is_the_pool_and_still_tokenizes():
    """What transformers does to vLLM's tokenizer while vLLM loads a processor: deep-copy kwargs that
    hold it. Unpatched, every copy rebuilds the pool from a deep copy of the whole vocabulary (2.2 s for
    the Qwen vocabulary here, several per engine start); patched, it is the same pool."""
    from transformers import AutoTokenizer
    from vllm.tokenizers.hf import ThreadSafeHFTokenizerMixin, get_cached_tokenizer, maybe_make_thread_pool

    from tempsamp.models.tiny import tokenizer_dir
    from tempsamp.rollout.vllm_plugin import share_tokenizer_pools_on_deepcopy

    pool = maybe_make_thread_pool(get_cached_tokenizer(AutoTokenizer.from_pretrained(str(tokenizer_dir()))))
    assert isinstance(pool, ThreadSafeHFTokenizerMixin)
    assert share_tokenizer_pools_on_deepcopy()
    t = time.perf_counter()
    kwargs = copy.deepcopy({"tokenizer": pool, "videos_kwargs": {"fps": 2.0}})
    took = time.perf_counter() - t
    assert kwargs["tokenizer"] is pool and kwargs["videos_kwargs"] == {"fps": 2.0}
    assert took < 0.05, f"deep copy took {took:.3f} s"
    text = "<answer> 1.5 to 3.25 </answer>"
    assert kwargs["tokenizer"].decode(kwargs["tokenizer"].encode(text)) == text
    # the patch is on the mixin every pool class derives from: a pool built afterwards is covered too
    later = maybe_make_thread_pool(get_cached_tokenizer(AutoTokenizer.from_pretrained(str(tokenizer_dir()))))
    assert copy.deepcopy(later) is later
