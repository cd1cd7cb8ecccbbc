"""Preflight (pure, no Ray): every failure one line naming the path or address, all reported together."""

import os
import socket
import stat

import pytest

from tempsamp.config import load_config
from tempsamp.preflight import (
    PreflightError, check_cache, check_checkpoint_space, check_eval, check_ray_address, checkpoint_bytes,
    model_parameters, parse_ray_address, train_failures)

root_only = pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")


def _tiny_weights(d, dtype="float32"):
    import torch
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text("{}")
    t = getattr(torch, dtype)
    save_file({"model.embed_tokens.weight": torch.zeros(10, 4, dtype=t), "lm_head.weight": torch.zeros(10, 4, dtype=t),
               "model.visual.blocks.0.attn.qkv.weight": torch.zeros(3, 5, dtype=t)}, str(d / "model.safetensors"))
    return d


def _cfg(tmp_path, *extra):
    train = tmp_path / "train.jsonl"
    if not train.exists():
        train.write_text("{}\n")
    return load_config(None, [f"data.train_files=[{train}]", f"trainer.log_dir={tmp_path / 'logs'}",
                              f"checkpoint.output_dir={tmp_path / 'ck'}", "checkpoint.resume=never", *extra], env={})


def test_a_good_setup_passes_and_creates_nothing_but_the_folders(tmp_path):
    model = _tiny_weights(tmp_path / "m")
    assert train_failures(_cfg(tmp_path, f"model.path={model}"), env={}) == []
    assert (tmp_path / "logs").is_dir() and list((tmp_path / "logs").iterdir()) == []


def test_every_failure_is_one_line_naming_the_path_and_all_come_together(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where a folder must go: not writable as a folder, even for root
    cfg = _cfg(tmp_path, f"trainer.log_dir={blocker / 'logs'}", f"checkpoint.output_dir={blocker / 'ck'}",
               "checkpoint.save_freq=5", f"model.path={tmp_path / 'no-model'}",
               f"data.train_files=[{tmp_path / 'missing.jsonl'}, {tmp_path}]", f"data.video_root={tmp_path / 'vids'}",
               "checkpoint.resume=" + str(tmp_path / "ck" / "global_step_9"))
    fails = train_failures(cfg, env={"RAY_ADDRESS": "127.0.0.1:1"})
    assert len(fails) == 8, fails
    assert all("\n" not in f for f in fails)
    expect = [f"trainer.log_dir {blocker / 'logs'}: not writable", f"checkpoint.output_dir {blocker / 'ck'}: not writable",
              f"checkpoint.resume {tmp_path / 'ck' / 'global_step_9'}: not found",
              f"model.path {tmp_path / 'no-model'}: not found", f"data.train_files {tmp_path / 'missing.jsonl'}: not found",
              f"data.train_files {tmp_path}: not a file", f"data.video_root {tmp_path / 'vids'}: not found",
              "RAY_ADDRESS 127.0.0.1:1: not reachable"]
    for line, want in zip(fails, expect):
        assert line.startswith(want), (line, want)
    with pytest.raises(PreflightError) as e:
        from tempsamp.preflight import _finish

        _finish(fails)
    assert str(e.value).count("\n  - ") == 8 and "nothing was started" in str(e.value)


def test_validation_on_the_synthetic_bench_that_training_generates(tmp_path):
    """The demo config + eval.val_freq: the bench folder under data.synthetic_dir is written by the run
    itself, so it is not missing yet; any other missing bench folder is."""
    synth = [f"trainer.log_dir={tmp_path / 'logs'}", "checkpoint.resume=never", f"data.synthetic_dir={tmp_path / 's'}",
             "eval.val_freq=2"]
    cfg = load_config(None, [*synth, f"eval.bench_dir={tmp_path / 's' / 'bench'}"], env={})
    assert train_failures(cfg, env={}) == []
    cfg = load_config(None, [*synth, f"eval.bench_dir={tmp_path / 'other'}"], env={})
    assert train_failures(cfg, env={}) == [f"eval.bench_dir {tmp_path / 'other'}: not found"]


def test_model_folder_without_config_or_weights(tmp_path):
    m = tmp_path / "m"
    m.mkdir()
    fails = train_failures(_cfg(tmp_path, f"model.path={m}"), env={})
    assert fails == [f"model.path (config.json) {m / 'config.json'}: not found",
                     f"model.path {m}: no weights (*.safetensors or *.bin)"]


@root_only
def test_unreadable_file_and_unwritable_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    train = tmp_path / "secret.jsonl"
    train.write_text("{}\n")
    train.chmod(0)
    fails = train_failures(_cfg(tmp_path, f"trainer.log_dir={ro}", f"data.train_files=[{train}]"), env={})
    assert fails[0].startswith(f"trainer.log_dir {ro}: not writable (Permission denied)")
    assert fails[1].startswith(f"data.train_files {train}: not readable (Permission denied)")


def test_checkpoint_space_is_estimated_from_the_model_size(tmp_path):
    model = _tiny_weights(tmp_path / "m", "bfloat16")
    assert model_parameters(model) == (95, 80)  # the vision tower (15) is frozen
    assert model_parameters(model, None) == (95, 95)
    per = checkpoint_bytes(95, 80, "bfloat16", export_hf=True)
    assert per == 95 * 2 + 2 * 80 * 2 + 95 * 2
    assert checkpoint_bytes(95, 80, "float32", export_hf=False) == 95 * 4 + 2 * 80 * 4
    cfg = _cfg(tmp_path, f"model.path={model}", "model.dtype=bfloat16", "checkpoint.save_freq=10",
               "checkpoint.save_limit=3")
    assert train_failures(cfg, env={}, free_bytes=4 * per) == []
    fails = train_failures(cfg, env={}, free_bytes=4 * per - 1)
    assert len(fails) == 1 and fails[0].startswith(f"checkpoint.output_dir {tmp_path / 'ck'}: 0.0 GB free, "
                                                   "4 checkpoints (checkpoint.save_limit + the one being written)")
    assert "95 B" not in fails[0] and "bfloat16" in fails[0] and "HF export" in fails[0]
    # complete checkpoints already there are rotated out: their bytes count as available
    done = tmp_path / "ck" / "global_step_10"
    done.mkdir(parents=True)
    (done / "COMPLETE").write_text("1")
    (done / "rank0.safetensors").write_bytes(b"\0" * per)
    assert check_checkpoint_space(tmp_path / "ck", per, 4, "x", free_bytes=3 * per) == []
    assert check_checkpoint_space(tmp_path / "ck", per, 4, "x", free_bytes=2 * per)[0].startswith(
        f"checkpoint.output_dir {tmp_path / 'ck'}: 0.0 GB free (+ 0.0 GB of checkpoints there)")
    assert train_failures(_cfg(tmp_path, f"model.path={model}", "checkpoint.save_freq=0"), env={}, free_bytes=0) == []


def test_ray_address_forms_and_reachability():
    assert parse_ray_address("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert parse_ray_address("ray://head:10001") == ("head", 10001)
    assert parse_ray_address("ray://head") == ("head", 10001)
    assert parse_ray_address("http://127.0.0.1:8265") == ("127.0.0.1", 8265)
    assert parse_ray_address("auto") is None and parse_ray_address("local") is None
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    try:
        assert check_ray_address(f"127.0.0.1:{port}") == []
    finally:
        srv.close()
    (line,) = check_ray_address(f"127.0.0.1:{port}", timeout_s=2)
    assert line.startswith(f"RAY_ADDRESS 127.0.0.1:{port}: not reachable (Connection refused")
    assert check_ray_address("ray://:99")[0].startswith("RAY_ADDRESS ray://:99: not an address")


def test_eval_and_cache_preflight(tmp_path):
    with pytest.raises(PreflightError) as e:
        check_eval(_cfg(tmp_path, f"eval.bench_dir={tmp_path / 'bench'}"), str(tmp_path / "ckpt"),
                   str(tmp_path / "out"), env={"RAY_ADDRESS": "127.0.0.1:1"})
    assert e.value.failures[:2] == [f"--model {tmp_path / 'ckpt'}: not found",
                                    f"eval.bench_dir {tmp_path / 'bench'}: not found"]
    assert e.value.failures[2].startswith("RAY_ADDRESS 127.0.0.1:1: not reachable") and len(e.value.failures) == 3
    (tmp_path / "blk").write_text("x")
    with pytest.raises(PreflightError) as e:
        check_cache(str(tmp_path / "in.jsonl"), str(tmp_path / "blk" / "cache"), str(tmp_path / "blk" / "o.jsonl"))
    assert [f.split(":")[0] for f in e.value.failures] == [
        f"--input {tmp_path / 'in.jsonl'}", f"--output-dir {tmp_path / 'blk' / 'cache'}",
        f"--output (folder) {tmp_path / 'blk'}"]


def test_save_limit_below_one_is_refused():
    from tempsamp.config import ConfigError

    with pytest.raises(ConfigError, match=r"checkpoint\.save_limit must be >= 1 \(got 0\)"):
        load_config(None, ["checkpoint.save_limit=0"], env={})
