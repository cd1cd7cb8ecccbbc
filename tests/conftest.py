import os
import sys

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """Synthetic bundle shared by the whole session (videos, raw/trainer JSONL, bench)."""
    from tempsamp.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth"), n_train=8, n_bench=3, seed=0)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    from tempsamp.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("models")
    cache = {}

    def get(family="qwen2_5_vl"):
        if family not in cache:
            cache[family] = str(build_tiny_model(root / family, family))
        return cache[family]

    return get
