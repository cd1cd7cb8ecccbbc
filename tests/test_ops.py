"""Operations: local Ray binds loopback only, dashboard metrics reach the node's Prometheus endpoint,
and the demo config runs verbatim through `ray job submit` against a real local head."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tempsamp.sync.weights import free_port

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


@pytest.mark.ray
def test_local_ray_listens_on_loopback_and_exports_dashboard_metrics(monkeypatch):
    import psutil
    import ray

    from tempsamp.observe import DashboardMetrics
    from tempsamp.trainer import init_ray

    port = free_port()
    monkeypatch.setenv("TEMPSAMP_METRICS_PORT", str(port))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    init_ray(num_cpus=1)
    try:
        me = psutil.Process()
        pids = {me.pid} | {p.pid for p in me.children(recursive=True)}
        listening = [c for c in psutil.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.pid in pids]
        assert listening, "no Ray server sockets found"
        exposed = [(c.laddr.ip, c.laddr.port) for c in listening if c.laddr.ip not in LOOPBACK]
        assert not exposed, f"Ray servers listening beyond loopback: {exposed}"
        assert any(c.laddr.port == port for c in listening), "metrics export port not bound"

        m = DashboardMetrics("opsrun")
        row = {"step": 3, "reward/score_mean": 0.5, "reward/score_mean_no_gt": 0.25, "reward/iou_mean_no_gt": 0.1,
               "reward/format_rate_no_gt": 0.5, "adv/std": 0.9, "time/step": 2.0, "time/rollout": 0.5,
               "time/learn": 1.25, "throughput/tokens_per_s": 100.0, "rollout/weight_version_lag": 1,
               "decode/cache_hit_rate": 0.75, "batch/rows": 16, "val/charades-timelens/R1@0.5": 12.5}
        want = ['ray_tempsamp_reward_mean{', 'subset="no_gt"', 'ray_tempsamp_stage_seconds{',
                'ray_tempsamp_weight_version_lag{', 'ray_tempsamp_cache_hit_rate{', 'ray_tempsamp_steps_total',
                'ray_tempsamp_tokens_per_s{', 'ray_tempsamp_val{', 'metric="R1_at_0.5"']
        text = ""
        deadline = time.time() + 90
        while time.time() < deadline:
            m.record(row)
            time.sleep(2)
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            if all(w in text for w in want):
                break
        missing = [w for w in want if w not in text]
        assert not missing, f"not exported: {missing}"
        line = next(x for x in text.splitlines() if x.startswith("ray_tempsamp_reward_mean{") and 'subset="no_gt"' in x)
        assert 'run="opsrun"' in line and 'role="reward"' in line and float(line.rsplit(" ", 1)[1]) == 0.25
        stage = next(x for x in text.splitlines() if x.startswith("ray_tempsamp_stage_seconds{") and 'stage="learn"' in x)
        assert 'role="learner"' in stage and float(stage.rsplit(" ", 1)[1]) == 1.25
    finally:
        ray.shutdown()


def _ray_env():
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["RAY_AUTH_MODE"] = "disabled"  # local head bound to 127.0.0.1 only; said explicitly for this test
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return env


@pytest.mark.slow
@pytest.mark.ray
def test_ray_job_submit_runs_the_demo_config(tmp_path, synth, tiny_models):
    env = _ray_env()
    ray_bin = str(Path(sys.executable).parent / "ray")
    gcs, dash = free_port(), free_port()
    start = [ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--include-dashboard", "true",
             "--num-cpus", "2", "--disable-usage-stats"]
    subprocess.run(start, check=True, env=env, cwd=ROOT, capture_output=True, timeout=120)
    try:
        out = tmp_path / "job"
        cmd = [ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", ".",
               "--runtime-env", "jobs/runtime_env.yaml", "--",
               "python", "jobs/train.py", "--config", "jobs/configs/demo.yaml",
               # absolute paths: the job's cwd is Ray's unpacked copy of the working dir
               # the session's synthetic set and tiny model (the config alone would generate/build them)
               f"data.train_files=[{synth['train_jsonl']}]", f"model.path={tiny_models('qwen2_5_vl')}",
               f"trainer.log_dir={out / 'logs'}",
               f"checkpoint.output_dir={out / 'ck'}", "checkpoint.save_freq=2", "trainer.max_steps=2",
               "rollout.backend=hf", "rollout.max_new_tokens=8"]
        res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        log = res.stdout + res.stderr
        assert res.returncode == 0 and "succeeded" in log, log[-4000:]
        rows = [json.loads(x) for x in (out / "logs" / "demo" / "steps.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2]
        assert (out / "ck" / "global_step_2" / "COMPLETE").exists()
        assert (out / "ck" / "global_step_2" / "actor" / "config.json").exists()
        status = subprocess.run([ray_bin, "job", "list", "--address", f"http://127.0.0.1:{dash}"], env=env,
                                capture_output=True, text=True, timeout=60).stdout
        assert "SUCCEEDED" in status
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_no_pickle_loading_and_no_secrets_in_dumped_config(monkeypatch):
    import re

    from tempsamp.config import config_to_dict, load_config

    src = "\n".join(p.read_text() for p in (ROOT / "tempsamp").rglob("*.py"))
    assert not re.search(r"pickle\.loads?\(|torch\.load\(|np\.load\([^)]*allow_pickle=True", src)
    secret = "tok-3f9a1c77e1"
    monkeypatch.setenv("RAY_AUTH_TOKEN", secret)
    monkeypatch.setenv("HF_TOKEN", secret)
    cfg = load_config(ROOT / "jobs" / "configs" / "tempsamp.yaml", [])
    assert secret not in json.dumps(config_to_dict(cfg))
