"""Fault injection on the real actor system (local Ray, CPU, HF rollout backend): dead and stuck actors,
corrupted and hung weight broadcasts, a learner rank that dies (restarted in-job) or a step that outlasts
a preemption's grace, a SIGTERMed and a SIGKILLed training job, bad samples, object-store memory.
Every test checks that no sample is lost (rows per step = prompts x n unless a sample was bad and
skipped — then it is counted and logged). Runs that are interrupted and continue are compared step by
step with one uninterrupted run of the same config (`uninterrupted`, shared by the module)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from tempsamp.config import load_config
from tempsamp.algo.staleness import check_staleness
from tempsamp.data.dataset import load_dataset
from tempsamp.errors import BadSampleError, StepFailed

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "jobs" / "configs" / "demo.yaml"
PROMPTS, N = 2, 2


def _cfg(synth, tmp_path, run, *extra, train_file=None):
    return load_config(DEMO, [f"data.train_files=[{train_file or synth['train_jsonl']}]", f"trainer.run_name={run}",
                              f"trainer.log_dir={tmp_path / 'logs'}", "rollout.backend=hf",
                              "rollout.max_new_tokens=6", f"data.prompts_per_step={PROMPTS}", f"rollout.n={N}",
                              f"checkpoint.output_dir={tmp_path / run}", "checkpoint.resume=never",
                              "video.max_frames=4", *extra], env={})


def _rows(tmp_path, run):
    return [json.loads(x) for x in (tmp_path / "logs" / run / "steps.jsonl").read_text().splitlines()]


def _step(t, n=1):
    t.total_steps = t.step + n
    return t.run()["last"]


# the config of every run compared with the uninterrupted one: 8 steps (the cosine lr spans them),
# a checkpoint every 2
RESUMABLE = ("trainer.max_steps=8", "checkpoint.save_freq=2", "checkpoint.export_hf=false")
WEIGHTS = ["model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_models, synth, tmp_path_factory):
    """The RESUMABLE config run start to end without a fault: its rows by step, and some learner
    weights after step 6."""
    import ray

    from tempsamp.cluster import init_ray
    from tempsamp.trainer import Trainer

    tmp = tmp_path_factory.mktemp("uninterrupted")
    init_ray(num_cpus=2)
    try:
        t = Trainer(_cfg(synth, tmp, "base", *RESUMABLE), model_dir=tiny_models("qwen2_5_vl"))
        try:
            _step(t, 6)
            weights = ray.get(t.pools.learners[0].named_weights.remote(WEIGHTS))
            _step(t, 2)
        finally:
            t.shutdown()
    finally:
        ray.shutdown()
    rows = {r["step"]: r for r in _rows(tmp, "base")}
    assert sorted(rows) == list(range(1, 9))
    return rows, weights


def _as_uninterrupted(rows: list[dict], base: dict) -> float:
    """Every row has the uninterrupted run's batch, reward, lr (the schedule is not stepped twice) and
    loss (within 1e-5) for its step; returns the largest loss difference."""
    worst = 0.0
    for r in rows:
        b = base[r["step"]]
        assert r["batch/indices"] == b["batch/indices"], r["step"]
        assert r["reward/score_mean"] == pytest.approx(b["reward/score_mean"], abs=1e-9), r["step"]
        assert r["learn/lr"] == pytest.approx(b["learn/lr"], rel=1e-9, abs=1e-15), r["step"]
        worst = max(worst, abs(r["learn/loss"] - b["learn/loss"]))
        assert abs(r["learn/loss"] - b["learn/loss"]) <= 1e-5, (r["step"], r["learn/loss"], b["learn/loss"])
    return worst


def test_staleness_beyond_the_limit_is_rejected_loudly():
    assert check_staleness(3, learner_version=2, rollout_version=1, max_staleness=1) == 1
    with pytest.raises(StepFailed, match=r"step 3: rollouts sampled with weight version 0, learner at 2: lag 2 > "
                                         r"trainer.max_staleness=1"):
        check_staleness(3, 2, 0, 1)
    with pytest.raises(StepFailed, match="newer than the learner"):
        check_staleness(3, 2, 5, 1)


@pytest.mark.slow
@pytest.mark.ray
def test_dead_and_stuck_actors_are_replaced_and_weights_resynced(tiny_models, synth, tmp_path):
    import ray
    import torch

    from tempsamp.cluster import init_ray
    from tempsamp.trainer import Trainer

    # timeouts well above a normal call on a loaded 2-core machine (a generate or a sync of this tiny model takes
    # well under 2 s even while another process competes for the 2 cores); the two hangs below each wait them out
    # (a stuck broadcast twice: the receivers, then the sender's group timeout). The checks below are
    # relations (at least one replacement where a fault was injected), so one slow normal call cannot fail
    # the test
    cfg = _cfg(synth, tmp_path, "chaos", "trainer.rollout_timeout_s=12", "trainer.call_timeout_s=60",
               "sync.timeout_s=12", "trainer.max_learner_restarts=0")
    init_ray(num_cpus=2)
    t = Trainer(cfg, model_dir=tiny_models("qwen2_5_vl"))
    table = []
    try:
        _step(t)

        def fault(role, i, kind, method, check=None):
            ray.get(t.pools.actors(role)[i].arm_fault.remote(kind, method))
            before = dict(t.fault_metrics())
            row = _step(t)
            assert row["batch/rows"] == PROMPTS * N, f"{role} {kind}: samples lost"
            after = t.fault_metrics()
            table.append((f"{role} {method} {kind}", row["step"], after["faults/restarts"] - before["faults/restarts"],
                          after["faults/resyncs"] - before["faults/resyncs"]))
            if check:
                check(before, after, row)
            return row

        fault("decode", 0, "exit", "decode",
              lambda b, a, r: a["faults/restarts_decode"] >= b["faults/restarts_decode"] + 1 or pytest.fail("no restart"))
        fault("rollout", 0, "exit", "generate",
              lambda b, a, r: a["faults/restarts_rollout"] >= b["faults/restarts_rollout"] + 1 or pytest.fail("no restart"))
        # the replacement engine serves the current weights: its version equals the learner's
        assert ray.get(t.pools.engines[0].weight_version.remote()) == t.version
        fault("reward", 0, "exit", "score",
              lambda b, a, r: a["faults/restarts_reward"] >= b["faults/restarts_reward"] + 1 or pytest.fail("no restart"))
        fault("rollout", 0, "hang:300", "generate",  # a stuck engine: detected after rollout_timeout_s
              lambda b, a, r: a["faults/restarts_rollout"] >= b["faults/restarts_rollout"] + 1 or pytest.fail("no restart"))
        fault("learner", 0, "corrupt", "send_sync",  # one flipped byte: checksum catches it, re-sync
              lambda b, a, r: (a["faults/resyncs"] >= b["faults/resyncs"] + 1 and r["sync/resyncs"] >= 1)
              or pytest.fail("no resync"))
        fault("rollout", 0, "hang:300", "receive_weights",  # a broadcast that never completes
              lambda b, a, r: a["faults/restarts_rollout"] >= b["faults/restarts_rollout"] + 1 or pytest.fail("no restart"))
        # after all that, every engine holds exactly the learner's weights, at the learner's version
        names = ["model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight",
                 "model.layers.1.mlp.down_proj.weight"]
        ref = ray.get(t.pools.learners[0].named_weights.remote(names))
        for e in t.pools.engines:
            assert ray.get(e.weight_version.remote()) == t.version
            got = ray.get(e.named_weights.remote(names))
            assert set(got) == set(names)
            for n in ref:
                assert torch.equal(got[n], ref[n]), n
        rows = _rows(tmp_path, "chaos")
        assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
        assert rows[-1]["faults/restarts"] >= 5 and rows[-1]["faults/retried_calls"] >= 4
        # no learner restarts allowed (trainer.max_learner_restarts=0): the run stops and says how to resume
        ray.get(t.pools.learners[0].arm_fault.remote("exit", "train_step"))
        with pytest.raises(StepFailed, match=r"step 8: a learner rank died .*max_learner_restarts=0.* "
                                             r"checkpoint.resume=auto"):
            _step(t)
        print("\nfault | step | replaced | resyncs | samples lost")
        for name, step, rs, sy in table:
            print(f"{name} | {step} | {rs:.0f} | {sy:.0f} | 0")
    finally:
        t.shutdown()
        ray.shutdown()


def _write_bad_dataset(synth, tmp_path):
    """Three good records plus: zero-length video, corrupt video, missing video, span beyond the
    duration, a malformed line and a non-UTF-8 line."""
    good = [json.loads(x) for x in Path(synth["train_jsonl"]).read_text().splitlines()][:3]
    zero = tmp_path / "zero.mp4"
    zero.write_bytes(b"")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(4096))
    lines = [json.dumps(good[0]), json.dumps({**good[1], "videos": [str(zero)]}),
             json.dumps({**good[1], "videos": [str(corrupt)]}),
             json.dumps({**good[1], "videos": [str(tmp_path / "missing.mp4")]}),
             json.dumps({**good[2], "answer": "<answer> 1.0 to 999.0 </answer>"}),
             '{"problem": "broken', json.dumps(good[1]), json.dumps(good[2])]
    path = tmp_path / "bad.jsonl"
    path.write_bytes("\n".join(lines).encode() + b"\n" + b'{"problem": "\xff\xfe"}\n')
    return path, zero, corrupt


def test_bad_records_are_skipped_with_file_and_line_or_stop(synth, tmp_path):
    path, _, _ = _write_bad_dataset(synth, tmp_path)
    cfg = _cfg(synth, tmp_path, "bad", "data.on_bad_sample=skip", "data.max_bad_fraction=0.5", train_file=path)
    recs, skipped = load_dataset(cfg)
    assert len(recs) == 5  # 3 good + zero-length + corrupt (only decoding can tell those)
    text = "\n".join(b.detail for b in skipped)
    assert f"{path}:4: video not found" in text
    assert f"{path}:5: answer span ends at 999 s, " in text and "beyond the video's duration" in text
    assert f"{path}:6:" in text and f"{path}:9:" in text  # malformed JSON, non-UTF-8
    assert len(skipped) == 4
    from tempsamp.data.records import RecordError

    with pytest.raises(RecordError, match=r"subset.jsonl:2: video not found"):
        load_dataset(_cfg(synth, tmp_path, "bad", "data.on_bad_sample=stop", train_file=_only_lines(path, [0, 3])))


def _only_lines(path, keep):
    lines = path.read_bytes().splitlines()
    out = path.with_name("subset.jsonl")
    out.write_bytes(b"\n".join(lines[i] for i in keep) + b"\n")
    return out


@pytest.mark.slow
@pytest.mark.ray
def test_undecodable_videos_are_skipped_and_counted_or_stop_the_run(tiny_models, synth, tmp_path):
    import ray

    from tempsamp.cluster import init_ray
    from tempsamp.trainer import Trainer

    path, zero, corrupt = _write_bad_dataset(synth, tmp_path)
    subset = _only_lines(path, [0, 1, 2])  # good, zero-length, corrupt: one batch of 3
    init_ray(num_cpus=2)
    try:
        t = Trainer(_cfg(synth, tmp_path, "skip", "data.on_bad_sample=skip", "data.prompts_per_step=3",
                         "data.shuffle=false", "data.max_bad_fraction=1", train_file=subset),
                    model_dir=tiny_models("qwen2_5_vl"))
        try:
            row = _step(t)
            assert row["batch/rows"] == 1 * N and row["faults/skipped_samples"] == 2
            assert {x["video"] for x in t.skip_log} == {str(zero), str(corrupt)}
            assert all(x["source"].startswith(str(subset)) and x["reason"] for x in t.skip_log)
            report = [json.loads(x) for x in (tmp_path / "logs" / "skip" / "bad_samples.jsonl").read_text().splitlines()]
            assert {(r["video"], r["reason"], r["step"]) for r in report} == \
                {(str(zero), "undecodable_video", 1), (str(corrupt), "undecodable_video", 1)}
            assert all(r["where"].startswith(f"{subset}:") for r in report)
            # policy `skip`, but more than data.max_bad_fraction of the records cannot be decoded: the run stops
            t.cfg = t.steps.cfg = msgspec.structs.replace(t.cfg, data=msgspec.structs.replace(t.cfg.data,
                                                                                               max_bad_fraction=0.5))
            with pytest.raises(BadSampleError, match=r"step 2: the videos of 2 of 3 records could not be decoded "
                                                     r"\(66.7 % > data.max_bad_fraction 50 %\)"):
                _step(t)
            # same trainer, policy `stop`: the next epoch draws the same batch and the run stops on it
            t.cfg = t.steps.cfg = msgspec.structs.replace(t.cfg, data=msgspec.structs.replace(t.cfg.data,
                                                                                               on_bad_sample="stop"))
            with pytest.raises(BadSampleError, match=r"step 2: video .*(zero|corrupt)\.mp4 \(.*subset.jsonl:\d\)"):
                _step(t)
        finally:
            t.shutdown()
    finally:
        ray.shutdown()


def test_absurd_model_output_never_breaks_the_reward_stage():
    from tempsamp.algo.batch import build_train_batch
    from tempsamp.rollout.base import RolloutGroup

    texts = ["", "x" * 100_000, "\x00\xff\x01 binary", "<answer> 1 to 2 </answer>"]
    ids = [[], [5] * 300, [7, 8], [1, 2, 3]]
    g = RolloutGroup(key=0, response_ids=ids, texts=texts, logprobs=[[0.0] * len(x) for x in ids], weight_version=0)
    b = build_train_batch([g], [(1.0, 2.0)], ["p"], [None], n=4, step=1, encode=lambda s: [9] * len(s.split()),
                          eos_id=2, pad_id=0, gt_injection=True, gt_index=-1, format_weight=0.1,
                          strict_format=False, shaping=True, shaping_threshold=0.8, shaping_alpha=1.0)
    assert b.metrics["batch/rows"] == 4 and all(v == v for k, v in b.metrics.items() if isinstance(v, float))


@pytest.mark.slow
@pytest.mark.ray
def test_learner_rank_killed_at_step_4_is_restarted_and_a_stop_mid_step_is_graceful(uninterrupted, tiny_models,
                                                                                     synth, tmp_path):
    """Learner rank 0 dies in step 4 (checkpoints every 2 steps): the group and the broadcast group are
    rebuilt, global_step_2 restored, steps 3.. redone as in the uninterrupted run. Then a SIGTERM during
    the learner step 7: the step ends, a checkpoint is written; one during a step that outlasts
    trainer.preempt_grace_s: stopped mid-step, no new checkpoint."""
    import ray
    import torch

    from tempsamp.cluster import init_ray
    from tempsamp.preemption import PreemptionGuard
    from tempsamp.trainer import Trainer

    base, base_weights = uninterrupted
    init_ray(num_cpus=2)
    t = Trainer(_cfg(synth, tmp_path, "heal", *RESUMABLE), model_dir=tiny_models("qwen2_5_vl"))
    try:
        ray.get(t.pools.learners[0].arm_fault.remote("exit", "train_step", after=3))  # the process dies in step 4
        t0 = time.time()
        _run_to(t, 6)
        heal_s = time.time() - t0
        rows = _rows(tmp_path, "heal")
        assert [r["step"] for r in rows] == [1, 2, 3, 3, 4, 5, 6]  # 3 and 4 redone from global_step_2
        worst = _as_uninterrupted(rows, base)
        assert rows[-1]["faults/learner_restarts"] == 1 and rows[-1]["faults/restarts_learner"] == 1
        assert rows[-1]["batch/rows"] == PROMPTS * N and t.pools.name("learner", 0).endswith("-learner-0.r1")
        got = ray.get(t.pools.learners[0].named_weights.remote(WEIGHTS))
        for name, w in base_weights.items():  # the healed learner holds the uninterrupted run's weights
            assert torch.allclose(got[name], w, rtol=0, atol=1e-6), name
        for e in t.pools.engines:  # every engine was re-synced to it
            assert ray.get(e.weight_version.remote()) == t.version == 6
            assert all(torch.equal(v, got[k]) for k, v in ray.get(e.named_weights.remote(WEIGHTS)).items())

        finish = t.learners.finish_step

        def sigterm_then_finish(step, calls):  # the signal arrives while the learner trains
            os.kill(os.getpid(), signal.SIGTERM)
            return finish(step, calls)

        t.learners.finish_step = sigterm_then_finish
        with PreemptionGuard(grace_s=60) as t.preempt:
            out = _run_to(t, 8)
        assert out["preempted"] == tmp_path / "heal" / "global_step_7" and t.step == 7
        assert (out["preempted"] / "COMPLETE").is_file() and _rows(tmp_path, "heal")[-1]["step"] == 7
        worst = max(worst, _as_uninterrupted(_rows(tmp_path, "heal")[-1:], base))

        ray.get(t.pools.learners[0].arm_fault.remote("hang:30", "train_step"))
        with PreemptionGuard(grace_s=1) as t.preempt:
            out = _run_to(t, 8)
        assert t.preempt.overdue and "preempt_grace_s=1s" in t.preempt.stopped
        assert out["preempted"] == tmp_path / "heal" / "global_step_7" and t.step == 7
        assert not (tmp_path / "heal" / "global_step_8").exists()
        print(f"\nlearner killed at step 4: restored global_step_2, steps 1-6 in {heal_s:.1f}s "
              f"(incl. the restart); max |loss - uninterrupted| {worst:.2e}")
    finally:
        t.shutdown()
        ray.shutdown()


def _run_to(t, total):
    t.total_steps = total
    return t.run()


def _train_cli(synth, tiny_models, tmp_path, run):
    return [sys.executable, "-m", "tempsamp.cli", "train", "--config", str(DEMO),
            f"data.train_files=[{synth['train_jsonl']}]", f"model.path={tiny_models('qwen2_5_vl')}",
            f"trainer.run_name={run}", f"trainer.log_dir={tmp_path / 'logs'}", "rollout.backend=hf",
            "rollout.max_new_tokens=6", f"data.prompts_per_step={PROMPTS}", f"rollout.n={N}", "video.max_frames=4",
            f"checkpoint.output_dir={tmp_path / 'ck'}", "checkpoint.resume=auto", *RESUMABLE]


def _start_until(args, env, tmp_path, run, name, step):
    """Start the job (its own session: it and its local Ray form one process group) and return it once
    `step` is in its step log."""
    log = open(tmp_path / f"{name}.log", "w")
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    steps = tmp_path / "logs" / run / "steps.jsonl"
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if steps.exists() and any(json.loads(x)["step"] == step for x in steps.read_text().splitlines()[-2:]):
            return proc
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"{name}: step {step} not logged:\n" + (tmp_path / f"{name}.log").read_text()[-3000:])


@pytest.mark.slow
@pytest.mark.ray
def test_sigkilled_job_resumes_as_the_uninterrupted_run(uninterrupted, tiny_models, synth, tmp_path):
    """The job is SIGKILLed with its local Ray (no chance to save: an OOM kill, a lost node) after step 3,
    whose checkpoint is not written (save_freq 2); a half-written checkpoint is left behind too. The next
    job (`checkpoint.resume=auto`) ignores the half-written one, resumes from global_step_2 and redoes
    steps 3.. to the end; every step logged by both jobs has the uninterrupted run's batch, lr and loss.
    A SIGTERM (`ray job stop`, a pod eviction) is tested where users send it: tests/test_ops.py stops a
    `ray job submit` job and checks the checkpoint of its last step and the resume hint; the in-process
    SIGTERM during a learner step is in test_learner_rank_killed_at_step_4..."""
    from tempsamp.learner.checkpoint import complete_checkpoints

    base, _ = uninterrupted
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    run, ck = "killed", tmp_path / "ck"
    args = _train_cli(synth, tiny_models, tmp_path, run)
    proc = _start_until(args, env, tmp_path, run, "first", 3)
    os.killpg(proc.pid, signal.SIGKILL)  # the job and every process it started (its local Ray)
    proc.wait()
    first = _rows(tmp_path, run)
    last_ck = int(complete_checkpoints(ck)[-1].name.rsplit("_", 1)[1])
    assert first[0]["step"] == 1 and last_ck < first[-1]["step"], (last_ck, [r["step"] for r in first])
    (ck / f"global_step_{last_ck + 1}.tmp").mkdir(exist_ok=True)  # a checkpoint caught half-written
    (ck / f"global_step_{last_ck + 1}.tmp" / "rank0.safetensors").write_bytes(b"\0" * 100)
    res = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    second = _rows(tmp_path, run)[len(first):]
    assert second[0]["step"] == last_ck + 1 and second[-1]["step"] == 8  # the very next batch, then to the end
    worst = _as_uninterrupted(first + second, base)
    print(f"\nSIGKILL after step {first[-1]['step']}: resumed from global_step_{last_ck}; "
          f"max |loss - uninterrupted| {worst:.2e}")


@pytest.mark.slow
@pytest.mark.ray
def test_object_store_memory_stays_flat_over_20_steps(tiny_models, synth, tmp_path, monkeypatch):
    """Nothing a step puts in the object store outlives it: the store's bytes in steps 11-20 stay within
    the steps 3-10 peak + 10 % + 64 KiB. Ray keeps objects under 100 KiB in its workers' own memory, not
    in the object store, and every object of this tiny run is that small (the store read 0 bytes at every
    step, so the check could not fail): this cluster sends every object over 1 KiB to the store. Anything
    a step leaks (one step's frames alone are tens of KB) then adds up past the bound by step 20. The long
    run (300 steps with faults) is benchmarks/soak.py."""
    import ray

    from tempsamp.cluster import init_ray
    from tempsamp.trainer import Trainer

    monkeypatch.setenv("RAY_max_direct_call_object_size", "1024")  # read by every process of the new cluster
    init_ray(num_cpus=2, spill_dir=str(tmp_path / "spill"))
    t = Trainer(_cfg(synth, tmp_path, "mem", "data.prompts_per_step=1", "rollout.max_new_tokens=2",
                     "trainer.max_staleness=1", "trainer.max_steps=20"), model_dir=tiny_models("qwen2_5_vl"))
    try:
        t.run()
    finally:
        t.shutdown()
        ray.shutdown()
    used = [r["mem/object_store_bytes"] for r in _rows(tmp_path, "mem")]
    assert len(used) == 20
    early, late = max(used[2:10]), max(used[-10:])
    assert early > 64 << 10, f"the step's objects did not reach the object store: {used[:10]}"
    print(f"\nobject store bytes: step 1 {used[0]:.0f}, max steps 3-10 {early:.0f}, max steps 11-20 {late:.0f}")
    assert late <= early * 1.10 + (1 << 16), f"object store grows: {early:.0f} -> {late:.0f} bytes"


def test_a_call_to_an_already_replaced_actor_is_resubmitted_not_replaced_again(monkeypatch):
    """At max_staleness 1 step k+1 is in flight when a weight sync of step k finds its engine dead and
    replaces it; the old call then fails too. That must not replace the (healthy) replacement again."""
    from tempsamp.actors import step as step_mod
    from tempsamp.actors.step import InFlightStep, RolloutCall, StepRunner

    calls, replaced, synced = [], [], []

    class Engine:
        def __init__(self, name):
            self.generate = type("M", (), {"remote": lambda _, *a, **k: calls.append(name) or f"ref{len(calls)}"})()

    class Pools:
        generation = {("rollout", 0): 1}  # engine 0 was replaced once after the step was launched
        engines = [Engine("rollout-0.r1")]

        def replace(self, role, i, reason):
            replaced.append((role, i))
            self.generation[(role, i)] += 1

        def name(self, role, i):
            return f"{role}-{i}.r{self.generation[(role, i)]}"

    weights = type("W", (), {"bring_up_to_date": lambda _: synced.append(1)})()
    cfg = load_config(DEMO, ["rollout.backend=hf"], env={})
    runner = StepRunner(cfg, Pools(), weights, ["v.mp4"], ["p"], [(0.0, 1.0)], ["t.jsonl:1"])
    st = InFlightStep(step=6, epoch=0, indices=[0], decoder=[0], decoder_gen=[0], video_refs=["v"], status_refs=["s"])
    st.rollouts = [RolloutCall(0, [0], ref="old", gen=0)]
    answers = iter([[("dead", RuntimeError("EngineDead"))], [("ok", "groups")],
                    [("dead", RuntimeError("EngineDead"))], [("ok", "groups2")]])
    monkeypatch.setattr(step_mod, "wait_classified", lambda refs, timeout: next(answers))
    assert runner._collect_rollout(st) == (["groups"], True)
    assert replaced == [] and synced == [] and calls == ["rollout-0.r1"] and st.rollouts[0].gen == 1
    assert runner.faults["retried_calls"] == 1 and st.attempts == {}  # not charged to the step's retry budget
    # the same engine dying on a call it did receive is a real failure: replaced and brought up to date
    assert runner._collect_rollout(st) == (["groups2"], True)
    assert replaced == [("rollout", 0)] and synced == [1] and st.attempts == {"rollout": 1}


def test_undecodable_videos_beyond_the_bad_fraction_stop_the_run(tmp_path):
    from tempsamp.actors.step import InFlightStep, StepRunner

    cfg = load_config(DEMO, ["rollout.backend=hf", f"trainer.log_dir={tmp_path}", "trainer.run_name=frac"], env={})
    n = 200  # data.max_bad_fraction 0.01: 2 undecodable records are tolerated, a third stops the run
    runner = StepRunner(cfg, None, None, [f"v{i}.mp4" for i in range(n)], ["p"] * n, [(0.0, 1.0)] * n,
                        [f"t.jsonl:{i + 1}" for i in range(n)])
    st = InFlightStep(step=4, epoch=0, indices=[0, 1, 0, 2])
    for j in range(3):  # record 0 twice: counted once
        runner._skip(st, j, RuntimeError("moov atom not found"))
    with pytest.raises(BadSampleError, match=r"step 4: the videos of 3 of 200 records could not be decoded \(1.5 % "
                                             r"> data.max_bad_fraction 1 %\); every one is listed in .*frac/"
                                             r"bad_samples.jsonl; last: video v2.mp4 \(t.jsonl:3\)"):
        runner._skip(st, 3, RuntimeError("moov atom not found"))
    rows = [json.loads(x) for x in (tmp_path / "frac" / "bad_samples.jsonl").read_text().splitlines()]
    assert [(r["where"], r["reason"], r["step"]) for r in rows] == [
        ("t.jsonl:1", "undecodable_video", 4), ("t.jsonl:2", "undecodable_video", 4),
        ("t.jsonl:1", "undecodable_video", 4), ("t.jsonl:3", "undecodable_video", 4)]
