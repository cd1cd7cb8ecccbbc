"""Architecture contracts (pyproject.toml [tool.importlinter]) hold, and breaking one fails."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_contracts_hold():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "tempsamp", tmp_path / "tempsamp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + "\n" + line + "\n")


def test_a_pure_core_importing_ray_breaks_a_contract(tmp_path):
    root = _copy(tmp_path)
    _append(root / "tempsamp" / "reward" / "grounding.py", "import ray  # noqa")
    r = _lint(root)
    assert r.returncode != 0
    assert "Pure cores never import Ray" in r.stdout and "tempsamp.reward.grounding -> ray" in r.stdout


def test_an_upward_import_and_a_cycle_break_contracts(tmp_path):
    root = _copy(tmp_path)
    _append(root / "tempsamp" / "config.py", "from tempsamp import trainer  # noqa")  # config is the bottom layer
    _append(root / "tempsamp" / "data" / "video.py", "from tempsamp.data import sampler  # noqa")
    _append(root / "tempsamp" / "data" / "sampler.py", "from tempsamp.data import video  # noqa")  # a cycle
    r = _lint(root)
    assert r.returncode != 0
    assert "tempsamp.config is not allowed to import tempsamp.trainer" in r.stdout
    assert "No import cycles" in r.stdout and "BROKEN" in r.stdout.split("No import cycles")[1].splitlines()[0]
