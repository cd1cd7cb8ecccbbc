"""KubeRay manifests: valid against the ray.io/v1 CRD schemas (unknown fields rejected), and their GPU
and CPU counts agree with `tempsamp plan` for the config their entrypoint runs."""

import copy
import functools
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from tempsamp.config import load_config
from tempsamp.placement.plan import make_plan

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT.parent / "shared" / "kuberay-crds"
if not CRDS.is_dir():
    CRDS = Path("/work/shared/kuberay-crds")
MANIFESTS = sorted((ROOT / "jobs" / "kuberay").glob("*.yaml"))


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
    crd = yaml.load((CRDS / f"ray.io_{kind.lower()}s.yaml").read_text(), Loader=loader)
    assert crd["spec"]["names"]["kind"] == kind
    (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return _strict(v["schema"]["openAPIV3Schema"])


def _validate(doc: dict) -> None:
    group, version = doc["apiVersion"].split("/")
    assert group == "ray.io"
    jsonschema.validate(doc, _schema(doc["kind"], version))


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
    assert "token" not in str(spec["workerGroupSpecs"]).lower()  # no secret values inline
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
