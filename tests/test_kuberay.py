"""KubeRay manifests: valid against the ray.io/v1 CRD schemas (unknown fields rejected), free of secret
values, their GPU and CPU counts agree with `tempsamp plan` for the config their entrypoint runs, and
training pods leave a preempted run the time to checkpoint."""

import copy
import functools
import gzip
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from tempsamp.config import load_config
from tempsamp.placement.plan import make_plan

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT / "tests" / "fixtures" / "kuberay-crds"  # vendored, gzipped: see its README.md
MANIFESTS = sorted((ROOT / "jobs" / "kuberay").glob("*.yaml"))
SECRET_ENV = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|KEY|APIKEY|CREDENTIALS?)(_|$)", re.I)
CREDENTIALS = {
    "a Hugging Face token": re.compile(r"hf_[A-Za-z0-9]{20,}"),
    "a GitHub token": re.compile(r"(gh[pousr]_|github_pat_)[A-Za-z0-9_]{20,}"),
    "an sk- API key": re.compile(r"sk-[A-Za-z0-9_-]{20,}"),
    "an AWS access key id": re.compile(r"(AKIA|ASIA)[0-9A-Z]{16}"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
}


def _strict(schema):
    """Kubernetes rejects unknown fields (structural schemas); JSON Schema allows them unless told."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(x) for x in schema]
    return schema


@functools.lru_cache(maxsize=None)
def _schema(kind: str, version: str) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(gzip.decompress((CRDS / f"ray.io_{kind.lower()}s.yaml.gz").read_bytes()), Loader=loader)
    assert crd["spec"]["names"]["kind"] == kind
    (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return _strict(v["schema"]["openAPIV3Schema"])


def _validate(doc: dict) -> None:
    group, version = doc["apiVersion"].split("/")
    assert group == "ray.io"
    jsonschema.validate(doc, _schema(doc["kind"], version))


def _is_blob(word: str) -> bool:
    """32+ characters of hex, or of base64 mixing digits and both cases: what generated secrets look like."""
    if re.fullmatch(r"[0-9a-fA-F]{32,}", word):
        return True
    mixed = all(re.search(c, word) for c in ("[0-9]", "[a-z]", "[A-Z]"))
    return mixed and bool(re.fullmatch(r"[A-Za-z0-9+/]{32,}={0,2}", word))


def _env_findings(path: str, name: str, value, from_secret: bool) -> list[str]:
    out = []
    if SECRET_ENV.search(name) and not from_secret:
        out.append(f"{path}: env var {name} is set inline (a secret may only come from valueFrom.secretKeyRef)")
    if isinstance(value, str) and any(_is_blob(w) for w in re.split(r"[\s,;:='\"]+", value)):
        out.append(f"{path}: env var {name} holds a long base64/hex blob")
    return out


def _secret_findings(node, path: str = "$") -> list[str]:
    """What in a manifest looks like a secret value, as "path: reason" (empty: none). Walks every key and string,
    including the parsed `runtimeEnvYAML`; env vars named like secrets must come from `valueFrom.secretKeyRef`
    (container env) and may not appear in a runtime env's `env_vars` at all."""
    if isinstance(node, str):
        return [f"{path}: looks like {kind}" for kind, rx in CREDENTIALS.items() if rx.search(node)]
    if isinstance(node, list):
        return [f for i, x in enumerate(node) for f in _secret_findings(x, f"{path}[{i}]")]
    if not isinstance(node, dict):
        return []
    out = []
    for k, v in node.items():
        p = f"{path}.{k}"
        if k == "runtimeEnvYAML" and isinstance(v, str):
            v = yaml.safe_load(v)
        out += _secret_findings(str(k), f"{p} (key)") + _secret_findings(v, p)
        if k == "env_vars" and isinstance(v, dict):
            out += [f for name, val in v.items() for f in _env_findings(f"{p}.{name}", str(name), val, False)]
        if k == "env" and isinstance(v, list):
            out += [f for i, e in enumerate(v) for f in _env_findings(
                f"{p}[{i}]", e.get("name", ""), e.get("value"),
                "value" not in e and "secretKeyRef" in (e.get("valueFrom") or {}))]
    return out


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _cluster_resources(spec: dict) -> tuple[int, float, int]:
    """(GPUs, CPUs Ray may schedule on, GPUs per node) across worker groups; the head runs no tasks."""
    assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0"
    gpus = cpus = 0
    per_node = set()
    for g in spec["workerGroupSpecs"]:
        (c,) = g["template"]["spec"]["containers"]
        lim = c["resources"]["limits"]
        g_gpu = int(lim.get("nvidia.com/gpu", 0))
        assert int(g["rayStartParams"]["num-gpus"]) == g_gpu, "Ray's num-gpus must match the pod's GPU limit"
        assert float(g["rayStartParams"]["num-cpus"]) <= float(lim["cpu"])
        assert g["minReplicas"] == g["replicas"] == g["maxReplicas"], "training needs a fixed-size cluster"
        gpus += g["replicas"] * g_gpu
        cpus += g["replicas"] * float(g["rayStartParams"]["num-cpus"])
        per_node.add(g_gpu)
    assert len(per_node) == 1
    return gpus, cpus, per_node.pop()


def _entry_config(doc: dict):
    """The config the manifest runs: --config X plus dotted overrides of its entrypoint."""
    if doc["kind"] == "RayCluster":
        return "train", load_config(ROOT / doc["metadata"]["annotations"]["tempsamp.io/config"], [], env={}), {}
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "python" and argv[1].startswith("/app/jobs/")
    script = Path(argv[1]).stem
    flags, overrides, i = {}, [], 2
    while i < len(argv):
        if argv[i].startswith("--"):
            flags[argv[i]] = argv[i + 1]
            i += 2
        else:
            overrides.append(argv[i])
            i += 1
    cfg_path = ROOT / Path(flags["--config"]).relative_to("/app")
    return script, load_config(cfg_path, overrides, env={}), flags


def test_there_are_manifests_for_each_use():
    names = {p.name for p in MANIFESTS}
    assert {"raycluster-8xh20.yaml", "rayjob-train-8xh20.yaml", "rayjob-train-2node.yaml",
            "rayjob-eval.yaml"} <= names
    docker = (ROOT / "jobs" / "kuberay" / "Dockerfile").read_text()
    assert "'.[gpu]'" in docker
    for p in MANIFESTS:
        assert "ghcr.io/tempsamp/tempsamp:0.1.0-gpu" in p.read_text()  # the image the Dockerfile builds


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_crd_schema(path):
    doc = yaml.safe_load(path.read_text())
    _validate(doc)
    spec = _cluster_spec(doc)
    assert spec["authOptions"]["mode"] == "token"
    assert _secret_findings(doc) == []
    if doc["kind"] == "RayJob":
        assert doc["spec"]["shutdownAfterJobFinishes"] is True
        yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
        mounts = {m["mountPath"] for g in spec["workerGroupSpecs"]
                  for m in g["template"]["spec"]["containers"][0]["volumeMounts"]}
        assert {"/data", "/checkpoints"} <= mounts


def test_strict_schema_rejects_unknown_and_mistyped_fields():
    doc = yaml.safe_load((ROOT / "jobs" / "kuberay" / "rayjob-train-8xh20.yaml").read_text())
    bad = copy.deepcopy(doc)
    bad["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParam"] = {}  # typo of rayStartParams
    with pytest.raises(jsonschema.ValidationError, match="rayStartParam"):
        _validate(bad)
    bad = copy.deepcopy(doc)
    bad["spec"]["shutdownAfterJobFinishes"] = "yes"
    with pytest.raises(jsonschema.ValidationError):
        _validate(bad)
    bad = copy.deepcopy(doc)
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"]["num-gpus"] = 8  # must be a string
    with pytest.raises(jsonschema.ValidationError):
        _validate(bad)


def _container(doc: dict, group: str) -> dict:
    g = _cluster_spec(doc)[group]
    return (g[0] if isinstance(g, list) else g)["template"]["spec"]["containers"][0]


def test_secret_scan_finds_tokens_planted_anywhere():
    clean = yaml.safe_load((ROOT / "jobs" / "kuberay" / "rayjob-train-8xh20.yaml").read_text())
    assert _secret_findings(clean) == []
    fake = "hf_" + "q7Rk2Lm9Xv4Tn8Bz3Wc6Pd1Hs5"  # shaped like a Hugging Face token; not a real one
    head = "$.spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].env"
    worker = "$.spec.rayClusterSpec.workerGroupSpecs[0].template.spec.containers[0].env"

    doc = copy.deepcopy(clean)  # (i) the head group's container env
    _container(doc, "headGroupSpec")["env"] = [{"name": "RAY_AUTH_TOKEN", "value": "local-dev"},
                                               {"name": "EXTRA", "value": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b"}]
    assert _secret_findings(doc) == [
        f"{head}[0]: env var RAY_AUTH_TOKEN is set inline (a secret may only come from valueFrom.secretKeyRef)",
        f"{head}[1]: env var EXTRA holds a long base64/hex blob"]

    doc = copy.deepcopy(clean)  # (ii) the runtime env
    doc["spec"]["runtimeEnvYAML"] += f"  HF_TOKEN: {fake}\n"
    assert _secret_findings(doc) == [
        "$.spec.runtimeEnvYAML.env_vars.HF_TOKEN: looks like a Hugging Face token",
        "$.spec.runtimeEnvYAML.env_vars.HF_TOKEN: env var HF_TOKEN is set inline "
        "(a secret may only come from valueFrom.secretKeyRef)"]

    doc = copy.deepcopy(clean)  # (iii) a worker group: a Secret reference passes (and is schema-valid), a value fails
    env = _container(doc, "workerGroupSpecs").setdefault("env", [])
    env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}})
    _validate(doc)
    assert _secret_findings(doc) == []
    env.append({"name": "HUB_ARGS", "value": f"--token {fake}"})
    assert _secret_findings(doc) == [f"{worker}[1].value: looks like a Hugging Face token"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_gpu_counts_agree_with_tempsamp_plan(path):
    doc = yaml.safe_load(path.read_text())
    gpus, cpus, per_node = _cluster_resources(_cluster_spec(doc))
    script, cfg, flags = _entry_config(doc)
    if script == "train":
        plan = make_plan(cfg)
        planned = sum(r.gpus for r in plan.roles.values() if not r.shares_with)
        assert planned == gpus == cfg.placement.num_nodes * cfg.placement.gpus_per_node, (planned, gpus)
        assert per_node == cfg.placement.gpus_per_node
        assert sum(r.actors * r.cpus_per_actor for r in plan.roles.values()) <= cpus
    else:
        engines = int(flags.get("--num-engines", cfg.eval.num_engines))
        assert engines * cfg.rollout.tensor_parallel_size == gpus
        assert cfg.placement.use_gpus


# what a preempted run needs after its grace (trainer.preempt_grace_s): the checkpoint of a 4B model (sharded
# params + AdamW state, the HF export) on the checkpoints volume, and the driver's shutdown
CHECKPOINT_WRITE_S = 180
TRAINING = [p for p in MANIFESTS if "eval" not in p.name]


def _pod_templates(doc: dict) -> list[dict]:
    spec = _cluster_spec(doc)
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: p.name)
def test_training_pods_give_a_preempted_run_time_to_checkpoint(path):
    """`ray job stop` (and a pod's preStop hook, which calls it) sends SIGTERM and waits
    RAY_JOB_STOP_WAIT_TIME_S before SIGKILL; the pods live that long and more."""
    doc = yaml.safe_load(path.read_text())
    _, cfg, _ = _entry_config(doc)
    if doc["kind"] == "RayJob":
        env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])["env_vars"]
    else:  # a standing cluster: jobs are submitted with jobs/runtime_env.yaml
        env = yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())["env_vars"]
    stop_wait = int(env["RAY_JOB_STOP_WAIT_TIME_S"])
    assert stop_wait >= cfg.trainer.preempt_grace_s + CHECKPOINT_WRITE_S
    for tpl in _pod_templates(doc):
        assert tpl["spec"]["terminationGracePeriodSeconds"] > stop_wait
        if doc["kind"] == "RayJob":  # evicted or reclaimed: the job is stopped gracefully before Ray goes
            (c,) = tpl["spec"]["containers"]
            hook = " ".join(c["lifecycle"]["preStop"]["exec"]["command"])
            assert "ray job stop --address http://" in hook and hook.split()[-3] == doc["spec"]["jobId"], hook
