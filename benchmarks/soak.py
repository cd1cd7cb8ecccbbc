"""Soak benchmark: a long run of the demo config (vLLM rollout engine as shipped, local Ray, CPU) at
trainer.max_staleness 1 with periodic injected faults — the rollout engine's EngineCore SIGKILLed
inside a live actor (engine kill), the decode actor's process exiting (decode kill), and one flipped
byte in a weight-broadcast bucket (corrupted bucket) — cycled every `--fault-every` steps. Every
`--sample-every` steps it records, per actor process (RSS and open file descriptors of the actor and
its child processes, e.g. vLLM's EngineCore), the driver's own RSS and fds, the Ray object-store bytes
and the step time, and reports the growth of each (least-squares slope per 100 steps, after the
warm-up). Not part of the test suite; appends a summary to RESULTS.md and writes every sample to
<work>/soak.json.

    python benchmarks/soak.py [--steps 300] [--fault-every 25] [--sample-every 5] [--backend vllm]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEMO, append_results, demo_inputs, stamp, workdir  # noqa: E402

# (label, role, method, fault kind) — cycled in this order
FAULTS = [("engine kill", "rollout", "generate", "kill_engine"),
          ("decode kill", "decode", "decode", "exit"),
          ("corrupted bucket", "learner", "send_sync", "corrupt")]
ROLES = ("decode", "rollout", "reward", "learner")


def tree_usage(pid: int) -> tuple[float, int]:
    """(RSS bytes, open fds) of a process and all its descendants (0, 0 when it is gone)."""
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0, 0
    rss, fds = 0.0, 0
    for p in procs:
        try:
            rss += p.memory_info().rss
            fds += p.num_fds()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return rss, fds


def slope_per_100(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (steps), scaled to 100 steps; NaN with fewer than 3 points."""
    if len(xs) < 3 or len(set(xs)) < 2:
        return float("nan")
    return statistics.linear_regression(xs, ys).slope * 100


class Soak:
    """Hooks into the trainer's step log: after each step row is written it samples resources and arms
    the next fault (fire and forget, so the driver never waits on a busy actor)."""

    def __init__(self, trainer, fault_every: int, sample_every: int):
        self.t, self.fault_every, self.sample_every = trainer, fault_every, sample_every
        self.pids: dict[tuple[str, int, int], int] = {}
        self.samples: list[dict] = []
        self.injected: list[dict] = []
        self.rows: list[dict] = []
        self._write = trainer.logger.write
        trainer.logger.write = self.on_row

    def _pid(self, role: str, i: int) -> tuple[str, int]:
        import ray

        gen = self.t.pools.generation.get((role, i), 0)
        key = (role, i, gen)
        if key not in self.pids:  # once per actor process (a replacement gets a new generation)
            actor = self.t.pools.actors(role)[i]
            self.pids[key] = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=600)
        return f"{role}-{i}" + (f".r{gen}" if gen else ""), self.pids[key]

    def sample(self, step: int, row: dict) -> None:
        s = {"step": step, "time": time.time(), "object_store_bytes": row.get("mem/object_store_bytes"),
             "step_s": row.get("time/step"), "actors": {}}
        for role in ROLES:
            for i in range(len(self.t.pools.actors(role))):
                name, pid = self._pid(role, i)
                rss, fds = tree_usage(pid)
                s["actors"][name] = {"role": role, "pid": pid, "rss": rss, "fds": fds}
        rss, fds = tree_usage(os.getpid())  # the driver (its children are Ray's own servers)
        import psutil

        me = psutil.Process()
        s["actors"]["driver"] = {"role": "driver", "pid": os.getpid(), "rss": float(me.memory_info().rss),
                                 "fds": me.num_fds()}
        self.samples.append(s)

    def on_row(self, row: dict) -> None:
        self._write(row)
        if "time/step" not in row:
            return
        self.rows.append(row)
        step = int(row["step"])
        if step == 1 or step % self.sample_every == 0:
            self.sample(step, row)
        if self.fault_every and step % self.fault_every == 0 and step + 2 <= self.t.total_steps:
            label, role, method, kind = FAULTS[(step // self.fault_every - 1) % len(FAULTS)]
            self.t.pools.actors(role)[0].arm_fault.remote(kind, method)  # hits the next call of `method`
            self.injected.append({"armed_after_step": step, "fault": label, "role": role, "method": method})
            print(f"[soak] step {step}: armed {label} ({role} {method} {kind})", flush=True)


def summarise(soak: Soak, warmup: int) -> dict:
    """Per actor process and per series: first/last value and slope per 100 steps after `warmup`."""
    out: dict = {"actors": {}, "object_store": {}, "step_time": {}}
    names = sorted({n for s in soak.samples for n in s["actors"]})
    for n in names:
        pts = [(s["step"], s["actors"][n]) for s in soak.samples if n in s["actors"] and s["step"] > warmup]
        if not pts:
            continue
        xs = [p[0] for p in pts]
        out["actors"][n] = {
            "role": pts[0][1]["role"], "steps": f"{xs[0]}-{xs[-1]}", "samples": len(pts),
            "rss_first_mb": pts[0][1]["rss"] / 2**20, "rss_last_mb": pts[-1][1]["rss"] / 2**20,
            "rss_slope_mb_per_100": slope_per_100(xs, [p[1]["rss"] / 2**20 for p in pts]),
            "fds_first": pts[0][1]["fds"], "fds_last": pts[-1][1]["fds"],
            "fds_slope_per_100": slope_per_100(xs, [float(p[1]["fds"]) for p in pts])}
    rows = [r for r in soak.rows if r["step"] > warmup]
    obj = [(r["step"], r["mem/object_store_bytes"] / 2**20) for r in rows
           if r.get("mem/object_store_bytes") == r.get("mem/object_store_bytes")]
    if obj:
        out["object_store"] = {"first_mb": obj[0][1], "last_mb": obj[-1][1], "max_mb": max(v for _, v in obj),
                               "slope_mb_per_100": slope_per_100([s for s, _ in obj], [v for _, v in obj])}
    # step time: steps without a repair (a fault step's time is the repair's, not a trend)
    prev, clean = None, []
    for r in soak.rows:
        key = (r.get("faults/restarts"), r.get("faults/resyncs"), r.get("faults/retried_calls"))
        if prev is not None and key == prev and r["step"] > warmup:
            clean.append((r["step"], r["time/step"]))
        prev = key
    if clean:
        xs, ys = [s for s, _ in clean], [v for _, v in clean]
        third = max(1, len(ys) // 3)
        out["step_time"] = {"clean_steps": len(ys), "median_s": statistics.median(ys),
                            "first_third_median_s": statistics.median(ys[:third]),
                            "last_third_median_s": statistics.median(ys[-third:]),
                            "slope_s_per_100": slope_per_100(xs, ys)}
        fault_steps = [r["time/step"] for r in soak.rows if r["step"] > warmup and (r["step"], r["time/step"])
                       not in set(clean)]
        if fault_steps:
            out["step_time"]["repair_steps"] = len(fault_steps)
            out["step_time"]["repair_median_s"] = statistics.median(fault_steps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--fault-every", type=int, default=25, help="arm the next fault of the cycle every N steps")
    ap.add_argument("--sample-every", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of the slopes")
    ap.add_argument("--backend", default="vllm", choices=["vllm", "hf"],
                    help="rollout backend (the demo config ships vllm; hf has no engine process to kill)")
    a = ap.parse_args()
    from tempsamp.cluster import init_ray
    from tempsamp.config import load_config
    from tempsamp.trainer import Trainer

    work = workdir("soak")
    train, model = demo_inputs(work)
    os.environ.pop("RAY_ADDRESS", None)
    init_ray(num_cpus=2, spill_dir=str(work / "spill"))
    cfg = load_config(DEMO, [f"data.train_files=[{train}]", "trainer.run_name=soak", f"trainer.log_dir={work / 'logs'}",
                             f"checkpoint.output_dir={work / 'ck'}", "checkpoint.resume=never",
                             f"rollout.backend={a.backend}", f"trainer.max_steps={a.steps}",
                             "trainer.max_staleness=1", "trainer.call_timeout_s=120", "trainer.max_retries=3"],
                      env={})
    t0 = time.time()
    t = Trainer(cfg, model_dir=model)
    start_s = time.time() - t0
    soak = Soak(t, a.fault_every, a.sample_every)
    if a.backend == "hf":  # no EngineCore process: an engine kill is the rollout actor's own death
        FAULTS[0] = ("engine kill", "rollout", "generate", "exit")
    error = ""
    try:
        t.run()
    except Exception as e:  # a failed soak is a result too: report how far it got
        error = f"{type(e).__name__}: {e}"
        print(f"[soak] stopped: {error}", flush=True)
    finally:
        faults = t.fault_metrics()
        t.shutdown()
    wall = time.time() - t0
    summ = summarise(soak, a.warmup)
    (work / "soak.json").write_text(json.dumps({"args": vars(a), "samples": soak.samples, "injected": soak.injected,
                                                "summary": summ, "faults": faults, "error": error}, indent=1))
    done = soak.rows[-1]["step"] if soak.rows else 0
    lines = [stamp("soak", f"demo config, {a.backend} rollout, max_staleness 1, {done}/{a.steps} steps, "
                           f"a fault every {a.fault_every} steps, sampled every {a.sample_every}, "
                           f"slopes after step {a.warmup}"),
             f"- wall {wall / 60:.1f} min (start {start_s:.0f} s); faults injected: "
             + ", ".join(f"{x['fault']} after step {x['armed_after_step']}" for x in soak.injected),
             "- repairs: " + ", ".join(f"{k.split('/')[1]} {v:.0f}" for k, v in faults.items())
             + (f"; STOPPED: {error}" if error else "; the run completed every step"),
             "", "| process | steps | RSS first -> last MB | RSS MB / 100 steps | fds first -> last | fds / 100 steps |",
             "|---|---|---|---|---|---|"]
    for n, v in summ["actors"].items():
        lines.append(f"| {n} | {v['steps']} | {v['rss_first_mb']:.0f} -> {v['rss_last_mb']:.0f} | "
                     f"{v['rss_slope_mb_per_100']:+.1f} | {v['fds_first']} -> {v['fds_last']} | "
                     f"{v['fds_slope_per_100']:+.1f} |")
    o, st = summ["object_store"], summ["step_time"]
    if o:
        lines.append(f"- object store after each step: {o['first_mb']:.1f} -> {o['last_mb']:.1f} MB "
                     f"(max {o['max_mb']:.1f}), slope {o['slope_mb_per_100']:+.2f} MB / 100 steps")
    if st:
        lines.append(f"- step time (steps without a repair, n={st['clean_steps']}): median {st['median_s']:.2f} s, "
                     f"first third {st['first_third_median_s']:.2f} s, last third {st['last_third_median_s']:.2f} s, "
                     f"slope {st['slope_s_per_100']:+.3f} s / 100 steps"
                     + (f"; steps with a repair (n={st['repair_steps']}): median {st['repair_median_s']:.1f} s"
                        if "repair_steps" in st else ""))
    lines.append(f"- samples: {work / 'soak.json'}")
    append_results(lines)


if __name__ == "__main__":
    main()
