import os
import sys

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers share the 2 cores: torch's OpenMP pool in each (and in the Ray workers and subprocesses
    # they start, which inherit this) gets one thread, so in-process compute does not oversubscribe the
    # CPU and spin in OpenMP barriers while the other worker runs
    os.environ.setdefault("OMP_NUM_THREADS", "1")


# `make test` runs the suite on 2 pytest-xdist workers. Measured on this 2-core machine, nothing else
# running: 1249 s in one process (which leaves ~30 % of the CPU idle while it waits on process starts, Ray
# and vLLM engine start-ups), 969 s on 2 workers, 849 s on 2 workers with one OpenMP thread each (above);
# 731-768 s after the CPU cuts of stop 29, 683 s after stop 30's (both cores ~95 % busy: the suite's time
# is its CPU work).
# `--dist loadfile` hands out whole files, so a file's module fixtures (test_reliability's uninterrupted
# run, test_learner's Ray) are built once. Files go out in this order (`--no-loadscope-reorder` keeps it;
# xdist would sort them by number of tests): the longest first, so the many short files fill in behind.
HEAVY_FIRST = ["test_reliability.py", "test_trainer_vllm.py", "test_vllm_families.py", "test_ops.py",
               "test_learner.py", "test_demo.py", "test_recipe_check.py", "test_eval.py", "test_ablation.py",
               "test_reframe.py"]


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
