"""End-to-end CPU demo, the user's whole loop: synthetic videos, a tiny random Qwen2.5-VL, the full
actor system on a local Ray (loopback only), vanilla GRPO vs TempSamp for the same steps; each arm's
final checkpoint is saved (HF export) and evaluated with `tempsamp eval` on the synthetic
TimeLens-Bench folder (held-out videos). Writes a PNG plot and a Markdown table of on-policy reward /
IoU / format rate per step for both, and one eval table: per arm R1@0.3/0.5/0.7, mIoU, parse rate.

The curves come from the runs. From a random init, vanilla GRPO sees all-zero rewards (zero
advantages: nothing to learn); TempSamp's injected GT row carries the only signal.
"""

from __future__ import annotations

import time
from pathlib import Path


def write_report(logs: dict[str, list[dict]], out: Path) -> tuple[Path, Path]:
    from .plots import training_curves

    png = training_curves(logs, out / "demo_curves.png")
    algos = list(logs)
    head = "| step | " + " | ".join(f"{a} score | {a} IoU | {a} format | {a} GT logp" for a in algos) + " |"
    sep = "|---|" + "---|" * (4 * len(algos))
    lines = [head, sep]
    steps = sorted({r["step"] for rows in logs.values() for r in rows})
    by = {a: {r["step"]: r for r in rows} for a, rows in logs.items()}
    for s in steps:
        cells = []
        for a in algos:
            r = by[a].get(s, {})
            cells += [f"{r.get('reward/raw_score_mean_no_gt', float('nan')):.3f}",
                      f"{r.get('reward/iou_mean_no_gt', float('nan')):.3f}",
                      f"{r.get('reward/format_rate_no_gt', float('nan')):.2f}",
                      f"{r.get('learn/gt_logp_per_token', float('nan')):.2f}"]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    md = out / "demo_table.md"
    md.write_text("On-policy rows only (GT rows excluded); score = IoU + 0.1 x format, unshaped, so both runs "
                  "are on one scale. GT logp = mean log-prob per token of the injected GT answer (TempSamp only).\n\n"
                  + "\n".join(lines) + "\n")
    return png, md


EVAL_COLS = ["R1@0.3", "R1@0.5", "R1@0.7", "mIoU", "parse_rate"]


def pooled_metrics(per_dataset: dict[str, dict]) -> dict:
    """All datasets' queries as one set: every metric is a mean over queries, so the count-weighted
    mean of the per-dataset values is the pooled value."""
    n = sum(m["count"] for m in per_dataset.values())
    if n == 0:
        return {**{c: 0.0 for c in EVAL_COLS}, "count": 0}
    return {**{c: sum(m[c] * m["count"] for m in per_dataset.values()) / n for c in EVAL_COLS}, "count": n}


def eval_table(evals: dict[str, dict[str, dict]]) -> str:
    """One Markdown table: per arm, each dataset and all datasets pooled."""
    lines = ["| arm | dataset | R1@0.3 | R1@0.5 | R1@0.7 | mIoU | parse rate | queries |", "|---" * 8 + "|"]
    for arm, per_ds in evals.items():
        for ds, m in {**per_ds, "all": pooled_metrics(per_ds)}.items():
            lines.append(f"| {arm} | {ds} | " + " | ".join(f"{m[c]:.1f}" for c in EVAL_COLS) + f" | {m['count']} |")
    return "\n".join(lines) + "\n"


def run_demo(out: str = "outputs/demo", steps: int | None = None, quick: bool = False,
             algorithms: tuple[str, ...] = ("grpo", "tempsamp"), backend: str | None = None) -> int:
    from .cluster import init_ray
    from .config import DEMO_CONFIG, load_config
    from .data.synthetic import generate
    from .evaluation.runner import run_eval
    from .plots import read_steps
    from .models.tiny import build_tiny_model
    from .trainer import Trainer

    out_p = Path(out).absolute()
    out_p.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = generate(out_p / "data", n_train=8 if quick else 16, n_bench=2 if quick else 4, seed=0)
    model_dir = str(build_tiny_model(out_p / "models" / "tiny_qwen2_5_vl", "qwen2_5_vl"))
    print(f"demo: data + tiny model ready in {time.time() - t0:.0f}s ({out_p})", flush=True)
    init_ray(num_cpus=2)
    logs: dict[str, list[dict]] = {}
    shares, ckpts = {}, {}
    for algo in algorithms:
        ov = [f"algorithm.name={algo}",  # the preset decides GT injection and shaping (config.PRESETS)
              f"data.train_files=[{data['train_jsonl']}]", f"trainer.run_name=demo-{algo}",
              f"trainer.log_dir={out_p / 'logs'}", f"checkpoint.output_dir={out_p / 'checkpoints' / algo}",
              "checkpoint.resume=never", f"eval.bench_dir={data['bench_dir']}"]
        if steps is not None:
            ov.append(f"trainer.max_steps={steps}")
        elif quick:
            ov.append("trainer.max_steps=2")
        if backend is not None:
            ov.append(f"rollout.backend={backend}")
        cfg = load_config(DEMO_CONFIG, ov, env={})
        log_path = Path(cfg.trainer.log_dir) / cfg.trainer.run_name / "steps.jsonl"
        log_path.unlink(missing_ok=True)
        print(f"demo: training {algo} for {cfg.trainer.max_steps} steps ({cfg.rollout.backend} rollout)", flush=True)
        trainer = Trainer(cfg, model_dir=model_dir)
        try:
            res = trainer.run()
            ckpts[algo] = (cfg, trainer.save_checkpoint() / "actor")
        finally:
            trainer.shutdown()
        logs[algo] = read_steps(log_path)
        shares[algo] = res["stage_shares"]
    png, md = write_report(logs, out_p)
    print(md.read_text())
    evals = {}
    for algo, (cfg, actor) in ckpts.items():
        print(f"demo: evaluating {algo}'s final checkpoint {actor} on {cfg.eval.bench_dir}", flush=True)
        rep = run_eval(cfg, str(actor), str(out_p / "eval" / algo), progress=False)
        evals[algo] = rep.metrics
    ev = out_p / "demo_eval.md"
    ev.write_text("TimeLens-Bench protocol (eval parse mode) on the synthetic bench's held-out videos, each arm's "
                  "final checkpoint; per-query predictions under eval/<arm>/.\n\n" + eval_table(evals))
    print(ev.read_text())
    for algo, rows in logs.items():
        last = rows[-3:]
        mean = lambda k: sum(r[k] for r in last) / len(last)  # noqa: E731
        print(f"{algo:9s} last-3-step mean: score {mean('reward/raw_score_mean_no_gt'):.3f} "
              f"IoU {mean('reward/iou_mean_no_gt'):.3f} format {mean('reward/format_rate_no_gt'):.2f} | "
              "time shares " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares[algo].items()))
    print(f"demo: plot {png}\ndemo: table {md}\ndemo: eval {ev}\ndemo: done in {time.time() - t0:.0f}s")
    return 0
