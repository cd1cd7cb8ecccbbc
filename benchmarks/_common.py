"""Shared set-up for the Ray benchmarks: synthetic data, the tiny model, a Trainer on local Ray."""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "jobs" / "configs" / "demo.yaml"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, CPU only"


def workdir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"tempsamp-bench-{name}-"))


def demo_inputs(work: Path, n_train: int = 16) -> tuple[str, str]:
    from tempsamp.data.synthetic import generate
    from tempsamp.models.tiny import build_tiny_model

    data = generate(work / "data", n_train=n_train, n_bench=1, seed=0)
    return data["train_jsonl"], str(build_tiny_model(work / "model", "qwen2_5_vl"))


def run_trainer(work: Path, train_jsonl: str, model_dir: str, run: str, steps: int, *overrides: str) -> list[dict]:
    """Train `steps` steps of the demo workload (HF rollout: no 60-100 s vLLM start per config) and
    return the step rows."""
    import json

    from tempsamp.config import load_config
    from tempsamp.trainer import Trainer

    cfg = load_config(DEMO, [f"data.train_files=[{train_jsonl}]", f"trainer.run_name={run}",
                             f"trainer.log_dir={work / 'logs'}", f"checkpoint.output_dir={work / run}",
                             "checkpoint.resume=never", "rollout.backend=hf", f"trainer.max_steps={steps}",
                             *overrides], env={})
    t = Trainer(cfg, model_dir=model_dir)
    try:
        t.run()
    finally:
        t.shutdown()
    return [json.loads(x) for x in (work / "logs" / run / "steps.jsonl").read_text().splitlines()]


def append_results(lines: list[str]) -> None:
    text = "\n".join(lines + [""])
    print(text)
    with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
        f.write(text + "\n")


def stamp(name: str, extra: str = "") -> str:
    return f"## {name} — {time.strftime('%Y-%m-%d %H:%M')} — {machine()}" + (f" — {extra}" if extra else "")
