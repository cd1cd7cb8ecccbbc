"""Operations: local Ray binds loopback only, dashboard metrics reach the node's Prometheus endpoint,
the demo config runs through `ray job submit` against a real local head, where a real browser sees it in
the Ray dashboard and a real Prometheus answers every query of our Grafana dashboard (jobs/grafana/)."""

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
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
GRAFANA_DASHBOARD = ROOT / "jobs" / "grafana" / "tempsamp_dashboard.json"


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
def _own_ray_head(env: dict | None = None) -> Iterator[tuple[str, str]]:
    """A Ray head of this test's own (127.0.0.1, free ports, its own temp dir; `env` added to its
    environment); yields (temp dir, dashboard address). Stopped by killing exactly its processes: `ray stop`
    would stop every Ray on the machine."""
    import psutil

    dash = free_port()
    # a short temp dir: Ray's socket paths under it must fit in 107 bytes
    with tempfile.TemporaryDirectory(prefix="ray-", ignore_cleanup_errors=True) as temp:
        start = [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(free_port()),
                 "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--include-dashboard", "true",
                 "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()),
                 "--metrics-export-port", str(free_port()),
                 "--num-cpus", "2", "--temp-dir", temp, "--disable-usage-stats"]
        try:
            res = subprocess.run(start, env={**_ray_env(), **(env or {}), HEAD_MARK: temp}, capture_output=True, text=True,
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


def _logged_rows(client, job: str, temp: str, done, what: str, timeout_s: float) -> tuple[Path, list[dict]]:
    """The job's step log (in Ray's unpacked copy of its working dir) once done(rows) holds, and its rows."""
    unpacked = Path(temp, "session_latest", "runtime_resources", "working_dir_files")
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for log in unpacked.glob("*/outputs/logs/demo/steps.jsonl"):
            rows = [json.loads(x) for x in log.read_text().splitlines(keepends=True) if x.endswith("\n")]
            if done(rows):
                return log, rows
        status = client.get_job_status(job)
        assert not status.is_terminal(), f"job {status} before {what}:\n{client.get_job_logs(job)[-4000:]}"
        time.sleep(2)
    pytest.fail(f"no {what} after {timeout_s}s:\n{client.get_job_logs(job)[-4000:]}")


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.vllm
def test_ray_job_submit_runs_the_demo_config(tmp_path):
    """The README's `ray job submit ... -- python jobs/train.py --config jobs/configs/demo.yaml` against a
    real local head, with only validation switched on by overrides (every 2 steps, one query per bench
    dataset): the job generates its data, builds its model, starts its vLLM engine
    and trains. While it runs: headless Chromium shows the job and our named actors in the Ray dashboard
    (and the dashboard's REST API lists them), and a real Prometheus, provisioned the way the README says,
    scrapes Ray's metrics export; every query of jobs/grafana/ returns data. The job is stopped after its
    first validation (the config runs 60 steps) with `ray job stop`: the driver gets SIGTERM, checkpoints
    the last finished step and exits with the preemption status and a resume hint."""
    from tempsamp.learner.checkpoint import complete_checkpoints
    from ray.job_submission import JobStatus, JobSubmissionClient

    for tool in ("prometheus", "chromium"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} not installed: run `bash scripts/system_packages.sh` (`make test` does)")
    app = tmp_path / "app"  # the job's working dir: what it needs, and nothing of this checkout's outputs/
    for name in ("jobs", "tempsamp"):
        shutil.copytree(ROOT / name, app / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", app)
    cfg = load_config(app / "jobs" / "configs" / "demo.yaml", [], env={})
    prom_port = free_port()
    with _own_ray_head({"RAY_PROMETHEUS_HOST": f"http://127.0.0.1:{prom_port}"}) as (temp, address), \
            _prometheus(temp, prom_port, tmp_path / "prometheus") as prom:
        _provision_grafana(temp, prom)
        job = "demo-verbatim"
        submit = [RAY, "job", "submit", "--address", address, "--submission-id", job, "--no-wait",
                  "--working-dir", ".", "--runtime-env", "jobs/runtime_env.yaml", "--",
                  "python", "jobs/train.py", "--config", "jobs/configs/demo.yaml", *VAL_OVERRIDES]
        res = subprocess.run(submit, env=_ray_env(), cwd=app, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        client = JobSubmissionClient(address)
        log, rows = _logged_rows(client, job, temp, lambda rs: len(rs) >= 2, "2 steps", timeout_s=600)
        run = cfg.trainer.run_name
        _dashboard_shows_job_and_actors(address, job, run, tmp_path)
        log, rows = _logged_rows(client, job, temp, lambda rs: any("val/seconds" in r for r in rs), "a validation",
                                 timeout_s=300)
        _every_panel_has_data(prom, run, timeout_s=120)
        subprocess.run([RAY, "job", "stop", "--address", address, job], env=_ray_env(), check=True,
                       capture_output=True, timeout=120)
        assert client.get_job_status(job) == JobStatus.STOPPED
        steps = [r["step"] for r in rows if "time/step" in r]
        assert steps[:2] == [1, 2]
        val = next(r for r in rows if "val/seconds" in r)
        assert val["step"] == 2 and {f"val/{d}/mIoU" for d in cfg.eval.datasets} <= val.keys()
        assert f"[{run}] step 2/{cfg.trainer.max_steps} " in client.get_job_logs(job)
        workdir = log.parents[3]  # relative paths of the config resolve in the job's working dir
        assert (workdir / cfg.data.synthetic_dir / "train.jsonl").is_file()
        logs = client.get_job_logs(job)
        # the driver checkpoints the last step it finished (or abandons the one in flight) and says how to go on
        saved = complete_checkpoints(workdir / cfg.checkpoint.output_dir)
        last = max(json.loads(x)["step"] for x in log.read_text().splitlines() if x.strip())
        assert saved and saved[-1].name == f"global_step_{last}" and last >= 2, (saved, last, logs[-3000:])
        hint = [x for x in logs.splitlines() if f"[{run}] preempted (SIGTERM" in x]
        assert len(hint) == 1 and "exit status 75" in hint[0], logs[-3000:]
        where = re.search(r"checkpoint\.resume=auto \(it resumes from (\S+)\)", hint[0])
        assert where and where.group(1).endswith(f"{cfg.checkpoint.output_dir}/{saved[-1].name}"), hint


# in-training validation on the synthetic bench the job generates (the demo config's eval section):
# after step 2, one query per dataset
VAL_OVERRIDES = ["eval.val_freq=2", "eval.val_max_samples=1"]


@contextlib.contextmanager
def _prometheus(temp: str, port: int, data_dir: Path) -> Iterator[str]:
    """Prometheus (Debian package) on 127.0.0.1:port with the scrape config Ray writes into its session
    (file service discovery of every node's metrics export), scraping every 2 s instead of Ray's 10 s."""
    import yaml

    ray_cfg = Path(temp, "session_latest", "metrics", "prometheus", "prometheus.yml")
    deadline = time.time() + 60
    while not ray_cfg.is_file() and time.time() < deadline:
        time.sleep(0.5)
    conf = yaml.safe_load(ray_cfg.read_text())
    sd_file = Path(conf["scrape_configs"][0]["file_sd_configs"][0]["files"][0])
    assert sd_file.parent.resolve() == Path(temp, "session_latest").resolve(), sd_file
    conf["global"].update(scrape_interval="2s", evaluation_interval="2s")
    data_dir.mkdir(parents=True)
    (data_dir / "prometheus.yml").write_text(yaml.safe_dump(conf))
    log = open(data_dir / "prometheus.log", "w")
    proc = subprocess.Popen(["prometheus", f"--config.file={data_dir / 'prometheus.yml'}",
                             f"--storage.tsdb.path={data_dir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{url}/-/ready", timeout=5).status == 200:
                    break
            assert proc.poll() is None and time.time() < deadline, (data_dir / "prometheus.log").read_text()[-3000:]
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _provision_grafana(temp: str, prom: str) -> None:
    """The README's provisioning step on the head: our dashboard JSON goes into the dashboards folder that
    Ray's Grafana provisioning (session_latest/metrics/grafana) loads, whose data source is
    RAY_PROMETHEUS_HOST."""
    import yaml

    grafana = Path(temp, "session_latest", "metrics", "grafana")
    provider = yaml.safe_load((grafana / "provisioning" / "dashboards" / "default.yml").read_text())["providers"][0]
    source = yaml.safe_load((grafana / "provisioning" / "datasources" / "default.yml").read_text())["datasources"][0]
    assert source["url"] == prom and source["type"] == "prometheus", source
    assert "provisioning" in (grafana / "grafana.ini").read_text()
    dashboards = Path(provider["options"]["path"])
    assert dashboards.resolve() == (grafana / "dashboards").resolve(), provider
    shutil.copy(GRAFANA_DASHBOARD, dashboards / GRAFANA_DASHBOARD.name)


def _prom_query(url: str, expr: str) -> list:
    q = urllib.parse.urlencode({"query": expr})
    body = json.loads(urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=30).read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def grafana_targets(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) of every query of every panel, rows' nested panels included."""
    out = []
    for p in dashboard["panels"]:
        for q in [*p.get("panels", []), p]:
            out += [(q["title"], t["expr"]) for t in q.get("targets", [])]
    return out


def _expand(expr: str, run: str) -> str:
    """Grafana's variables as the dashboard would fill them for one run."""
    return expr.replace("$__rate_interval", "1m").replace("$run", run)


def _every_panel_has_data(prom: str, run: str, timeout_s: float) -> None:
    """Polls until every query of the Grafana dashboard returns at least one finite sample for `run`."""
    targets = grafana_targets(json.loads(GRAFANA_DASHBOARD.read_text()))
    empty = list(targets)
    deadline = time.time() + timeout_s
    while empty and time.time() < deadline:
        empty = [(t, e) for t, e in empty
                 if not any(math.isfinite(float(s["value"][1])) for s in _prom_query(prom, _expand(e, run)))]
        if empty:
            time.sleep(3)
    assert not empty, f"Grafana queries without data after {timeout_s}s: {empty}"
    scraped = _prom_query(prom, 'up{job="ray"}')
    assert scraped and all(s["metric"]["instance"].startswith("127.0.0.1:") for s in scraped), scraped


def _chromium(url: str, out: Path, *action: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    """Headless Chromium (Debian package) on `url`; the page's scripts run for up to 15 s of virtual time."""
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--hide-scrollbars", f"--user-data-dir={out / 'chromium-profile'}", "--window-size=1600,1000",
           "--virtual-time-budget=15000", *action, url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the browser and the helper processes it started
        stdout, stderr = proc.communicate()
        pytest.fail(f"chromium on {url} did not finish in {timeout_s}s:\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _dashboard_shows_job_and_actors(address: str, job: str, run: str, out: Path) -> None:
    """The Ray dashboard's jobs and actors views, rendered by a real browser, show the running job and the
    run's named actors; the dashboard's REST API (Ray's own clients of it) says the same. Saves a screenshot
    of the actors view (copied to docs/ when TEMPSAMP_DOCS_SCREENSHOT=1)."""
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_actors

    names = [f"{run}-{role}-0" for role in ("decode", "rollout", "reward", "learner")]
    jobs = {j.submission_id: j for j in JobSubmissionClient(address).list_jobs()}
    assert jobs[job].status == "RUNNING", jobs[job]
    alive = {a.name for a in list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)}
    assert set(names) <= alive, f"REST API: {sorted(alive)}"

    jobs_dom = _chromium(f"{address}/#/jobs", out, "--dump-dom").stdout
    assert job in jobs_dom and "RUNNING" in jobs_dom, jobs_dom[-3000:]
    shot = out / "ray-dashboard-actors.png"  # one browser run: the rendered DOM and a screenshot
    actors_dom = _chromium(f"{address}/#/actors", out, "--dump-dom", f"--screenshot={shot}").stdout
    missing = [n for n in names if n not in actors_dom]
    assert not missing, f"actors view does not show {missing}"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("TEMPSAMP_DOCS_SCREENSHOT") == "1":
        shutil.copy(shot, ROOT / "docs" / shot.name)


# observe.py gauges the Grafana dashboard leaves out, and why (a new gauge must be placed or listed here)
NOT_ON_GRAFANA = {
    "tempsamp_cache_hit_rate": "only with data.use_preprocessed (the demo decodes videos in real time)",
    "tempsamp_filter": "only with algorithm.filter_groups (dynamic sampling)",
}
# what observe.py exports besides its GAUGES table (Prometheus names without Ray's ray_ prefix)
OTHER_SERIES = {"tempsamp_steps_total", "tempsamp_samples_total", "tempsamp_stage_seconds_hist_bucket",
                "tempsamp_stage_seconds_hist_sum", "tempsamp_stage_seconds_hist_count", "tempsamp_val"}


def test_grafana_dashboard_queries_our_metrics():
    """jobs/grafana/: every query names a series observe.py exports (with Ray's ray_ prefix) and filters
    by the run variable; the data source is a variable (Ray's provisioned one, or any other); the topics
    users look for each have a panel; every gauge is on it or listed in NOT_ON_GRAFANA."""
    import re

    from tempsamp.observe import GAUGES

    d = json.loads(GRAFANA_DASHBOARD.read_text())
    exported = {f"ray_{n}" for n in {*GAUGES, *OTHER_SERIES}}
    targets = grafana_targets(d)
    assert targets
    used = set()
    for title, expr in targets:
        names = set(re.findall(r"\bray_\w+", expr))
        assert names and names <= exported, f"{title!r}: {expr} names {names - exported or 'no series'}"
        assert expr.count("ray_") == expr.count('run=~"$run"'), f"{title!r}: not filtered by run: {expr}"
        used |= names
    gauges = {f"ray_{n}" for n in GAUGES}
    assert gauges - used == {f"ray_{n}" for n in NOT_ON_GRAFANA}
    assert {v["name"]: v["type"] for v in d["templating"]["list"]} == {"datasource": "datasource", "run": "query"}
    panels = [p for p in d["panels"] if p["type"] != "row"]
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)
    titles = " | ".join(p["title"] for p in panels).lower()
    for topic in ("reward", "iou", "format", "advantage", "stage seconds per role", "throughput",
                  "weight version lag", "mismatch", "faults and restarts", "validation r1", "validation miou"):
        assert topic in titles, topic
    assert len({p["id"] for p in d["panels"]}) == len(d["panels"])


def test_runtime_env_uploads_the_whole_package(tmp_path):
    """The working dir `ray job submit --runtime-env jobs/runtime_env.yaml` uploads, packaged by Ray's own
    packager: every file of the package and of jobs/ is in it, the big local folders are not."""
    import zipfile

    import yaml
    from ray._private.runtime_env.packaging import create_package

    app = tmp_path / "app"
    for name in ("jobs", "tempsamp"):
        shutil.copytree(ROOT / name, app / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("outputs/demo/data", "data", "models/tiny", ".venv/bin", "tempsamp/__pycache__"):
        (app / name).mkdir(parents=True, exist_ok=True)
        (app / name / "x.bin").write_bytes(b"x")
    excludes = yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())["excludes"]
    create_package(str(app), tmp_path / "pkg.zip", include_gitignore=True, excludes=excludes)
    shipped = set(zipfile.ZipFile(tmp_path / "pkg.zip").namelist())
    want = {str(p.relative_to(app)) for name in ("jobs", "tempsamp") for p in (app / name).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}
    assert not want - shipped, f"not uploaded: {sorted(want - shipped)[:10]}"
    assert not [f for f in shipped if f.endswith("x.bin")], sorted(shipped)


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
