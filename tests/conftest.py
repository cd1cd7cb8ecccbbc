import os
import sys

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")

# `make test` runs the suite on 2 pytest-xdist workers, one test file per worker at a time
# (--dist loadfile: a file's module fixtures, e.g. test_reliability's uninterrupted run, are built once).
# Files are handed out in collection order (--no-loadscope-reorder: xdist would otherwise sort them by
# their number of tests), so the longest files go first and the many short ones fill
# in behind them (longest first; seconds measured on 2 cores with --durations=0). xdist hands a worker
# its next file when its current one has 2 tests or fewer left, so the one-test vLLM file goes first:
# the other worker starts on test_reliability instead of queueing it behind.
HEAVY_FIRST = ["test_trainer_vllm.py", "test_reliability.py", "test_vllm_families.py", "test_ops.py",
               "test_learner.py", "test_demo.py", "test_eval.py", "test_recipe_check.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda it: rank.get(it.path.name, len(HEAVY_FIRST)))  # stable: order within a file kept


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
