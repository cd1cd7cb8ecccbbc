"""Operations: local Ray binds loopback only, dashboard metrics reach the node's Prometheus endpoint,
and the demo config runs verbatim through `ray job submit` against a real local head."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tempsamp.config import load_config
from tempsamp.sync.weights import free_port

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")
RAY = str(Path(sys.executable).parent / "ray")
HEAD_MARK = "TEMPSAMP_TEST_RAY_HEAD"  # set in the environment of the test's own Ray head


@pytest.mark.ray
def test_local_ray_listens_on_loopback_and_exports_dashboard_metrics(monkeypatch):
    import psutil
    import ray

    from tempsamp.observe import DashboardMetrics
    from tempsamp.cluster import init_ray

    port = free_port()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    init_ray(num_cpus=1, metrics_port=port)
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


def _head_processes(temp: str) -> list:
    """The processes of the Ray head started with HEAD_MARK=temp in its environment (all it launches inherit
    it, whatever their process title) and their descendants: workers, the job's driver, vLLM's processes."""
    import psutil

    found = {}
    for p in psutil.process_iter(["environ"]):
        if (p.info["environ"] or {}).get(HEAD_MARK) == temp:
            found[p.pid] = p
            with contextlib.suppress(psutil.Error):
                found.update((c.pid, c) for c in p.children(recursive=True))
    return list(found.values())


@contextlib.contextmanager
def _own_ray_head() -> Iterator[tuple[str, str]]:
    """A Ray head of this test's own (127.0.0.1, free ports, its own temp dir); yields (temp dir, dashboard
    address). Stopped by killing exactly its processes: `ray stop` would stop every Ray on the machine."""
    import psutil

    dash = free_port()
    # a short temp dir: Ray's socket paths under it must fit in 107 bytes
    with tempfile.TemporaryDirectory(prefix="ray-", ignore_cleanup_errors=True) as temp:
        start = [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(free_port()),
                 "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--include-dashboard", "true",
                 "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()),
                 "--num-cpus", "2", "--temp-dir", temp, "--disable-usage-stats"]
        try:
            res = subprocess.run(start, env={**_ray_env(), HEAD_MARK: temp}, capture_output=True, text=True,
                                 timeout=120)
            assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
            yield temp, f"http://127.0.0.1:{dash}"
        finally:
            procs = _head_processes(temp)
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(procs, timeout=30)
            assert not _head_processes(temp), "processes of the test's Ray head survived"


def _logged_steps(client, job: str, temp: str, n: int, timeout_s: float) -> tuple[Path, list[dict]]:
    """The job's step log (in Ray's unpacked copy of its working dir) once it holds n steps, and its rows."""
    unpacked = Path(temp, "session_latest", "runtime_resources", "working_dir_files")
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for log in unpacked.glob("*/outputs/logs/demo/steps.jsonl"):
            rows = [json.loads(x) for x in log.read_text().splitlines(keepends=True) if x.endswith("\n")]
            if len(rows) >= n:
                return log, rows
        status = client.get_job_status(job)
        assert not status.is_terminal(), f"job {status} before {n} steps:\n{client.get_job_logs(job)[-4000:]}"
        time.sleep(2)
    pytest.fail(f"fewer than {n} steps after {timeout_s}s:\n{client.get_job_logs(job)[-4000:]}")


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.vllm
def test_ray_job_submit_runs_the_demo_config(tmp_path):
    """The README's `ray job submit ... -- python jobs/train.py --config jobs/configs/demo.yaml`, with no
    overrides: the job generates its data, builds its model, starts its vLLM engine and trains. It is stopped
    once 2 steps are logged (the config runs 60) with `ray job stop`: the driver gets SIGTERM, checkpoints
    the last finished step and exits with the preemption status and a resume hint."""
    from tempsamp.learner.checkpoint import complete_checkpoints
    from ray.job_submission import JobStatus, JobSubmissionClient

    app = tmp_path / "app"  # the job's working dir: what it needs, and nothing of this checkout's outputs/
    for name in ("jobs", "tempsamp"):
        shutil.copytree(ROOT / name, app / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", app)
    cfg = load_config(app / "jobs" / "configs" / "demo.yaml", [], env={})
    with _own_ray_head() as (temp, address):
        job = "demo-verbatim"
        submit = [RAY, "job", "submit", "--address", address, "--submission-id", job, "--no-wait",
                  "--working-dir", ".", "--runtime-env", "jobs/runtime_env.yaml", "--",
                  "python", "jobs/train.py", "--config", "jobs/configs/demo.yaml"]
        res = subprocess.run(submit, env=_ray_env(), cwd=app, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        client = JobSubmissionClient(address)
        log, rows = _logged_steps(client, job, temp, 2, timeout_s=600)
        subprocess.run([RAY, "job", "stop", "--address", address, job], env=_ray_env(), check=True,
                       capture_output=True, timeout=120)
        assert client.get_job_status(job) == JobStatus.STOPPED
        assert [r["step"] for r in rows[:2]] == [1, 2]
        assert f"[demo] step 2/{cfg.trainer.max_steps} " in client.get_job_logs(job)
        workdir = log.parents[3]  # relative paths of the config resolve in the job's working dir
        assert (workdir / cfg.data.synthetic_dir / "train.jsonl").is_file()
        logs = client.get_job_logs(job)
        assert "[demo] preempted (SIGTERM" in logs and "exit status 75" in logs, logs[-3000:]
        saved = complete_checkpoints(workdir / cfg.checkpoint.output_dir)
        assert saved and int(saved[-1].name.rsplit("_", 1)[1]) >= 2, logs[-3000:]


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
