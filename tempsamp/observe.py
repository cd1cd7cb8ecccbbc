"""Ray dashboard metrics (Prometheus/Grafana through Ray's metrics agent).

`DashboardMetrics.record(row)` maps one step-log row (the dict the trainer writes to steps.jsonl) to
`ray.util.metrics` Gauges, Counters and a Histogram, tagged with the run name and the role that
produced the value. Prometheus names get Ray's `ray_` prefix, e.g. `ray_tempsamp_reward_mean`.
Keeping the mapping in one table means a new step metric is one line here.
"""

from __future__ import annotations

STAGE_ROLE = {"decode": "decode", "rollout": "rollout", "reward": "reward", "learn": "learner", "sync": "sync"}

# gauge name -> (description, [(row key, extra tags)])
GAUGES: dict[str, tuple[str, list[tuple[str, dict]]]] = {
    "tempsamp_step": ("Last finished training step", [("step", {"role": "driver"})]),
    "tempsamp_weight_version": ("Learner weight version", [("version", {"role": "learner"})]),
    "tempsamp_reward_mean": ("Mean shaped score per row (with / without the injected GT rows)", [
        ("reward/score_mean", {"role": "reward", "subset": "all"}),
        ("reward/score_mean_no_gt", {"role": "reward", "subset": "no_gt"})]),
    "tempsamp_raw_score_mean": ("Mean unshaped IoU + 0.1*format of on-policy rows", [
        ("reward/raw_score_mean_no_gt", {"role": "reward", "subset": "no_gt"})]),
    "tempsamp_iou_mean": ("Mean IoU", [
        ("reward/iou_mean", {"role": "reward", "subset": "all"}),
        ("reward/iou_mean_no_gt", {"role": "reward", "subset": "no_gt"})]),
    "tempsamp_format_rate": ("Share of rows with a well-formed answer", [
        ("reward/format_rate", {"role": "reward", "subset": "all"}),
        ("reward/format_rate_no_gt", {"role": "reward", "subset": "no_gt"})]),
    "tempsamp_advantage": ("Group advantage statistics", [
        (f"adv/{k}", {"role": "reward", "stat": k}) for k in ("mean", "std", "min", "max", "zero_groups")]),
    "tempsamp_loss": ("Policy loss", [("learn/loss", {"role": "learner"})]),
    "tempsamp_rollout_mismatch": ("Rollout-vs-learner log-prob mismatch on sampled tokens", [
        ("learn/mismatch_abs_mean", {"role": "learner", "stat": "abs_mean"}),
        ("learn/mismatch_abs_max", {"role": "learner", "stat": "abs_max"}),
        ("learn/mismatch_k3", {"role": "learner", "stat": "k3_kl"})]),
    "tempsamp_is_weight": ("Rollout-correction importance weights (algorithm.rollout_correction)", [
        ("learn/is_weight_mean", {"role": "learner", "stat": "mean"}),
        ("learn/is_weight_min", {"role": "learner", "stat": "min"}),
        ("learn/is_weight_max", {"role": "learner", "stat": "max"}),
        ("learn/is_clipped_frac", {"role": "learner", "stat": "clipped_frac"})]),
    "tempsamp_clipfrac": ("PPO clip fraction", [("learn/clipfrac", {"role": "learner"})]),
    "tempsamp_entropy": ("Mean token entropy of sampled responses", [("learn/entropy", {"role": "learner"})]),
    "tempsamp_filter": ("Dynamic sampling (algorithm.filter_groups)", [
        ("filter/kept_groups", {"role": "reward", "stat": "kept_groups"}),
        ("filter/rounds", {"role": "driver", "stat": "rounds"})]),
    "tempsamp_grad_norm": ("Gradient norm before clipping", [("learn/grad_norm", {"role": "learner"})]),
    "tempsamp_tokens_per_s": ("Learner tokens per second", [("throughput/tokens_per_s", {"role": "learner"})]),
    "tempsamp_samples_per_s": ("Rows (rollouts) per second, whole step", [
        ("throughput/samples_per_s", {"role": "driver"})]),
    "tempsamp_weight_version_lag": ("Learner version minus the rollouts' weight version", [
        ("rollout/weight_version_lag", {"role": "rollout"})]),
    "tempsamp_cache_hit_rate": ("Stage B cache hit rate of the decode pool", [
        ("decode/cache_hit_rate", {"role": "decode"})]),
    "tempsamp_sync_bytes": ("Bytes broadcast per weight sync", [("sync/bytes", {"role": "sync"})]),
    "tempsamp_restarts": ("Actor replacements so far, per role", [
        (f"faults/restarts_{r}", {"role": r}) for r in ("decode", "rollout", "reward", "learner")]),
    "tempsamp_faults": ("Fault handling counters so far", [
        ("faults/retried_calls", {"role": "driver", "kind": "retried_calls"}),
        ("faults/skipped_samples", {"role": "driver", "kind": "skipped_samples"}),
        ("faults/resyncs", {"role": "sync", "kind": "resyncs"}),
        ("faults/learner_restarts", {"role": "learner", "kind": "learner_restarts"})]),
    "tempsamp_object_store_bytes": ("Ray object store bytes in use after the step", [
        ("mem/object_store_bytes", {"role": "driver"})]),
    "tempsamp_stage_seconds": ("Seconds of the last step spent in each stage", [
        (f"time/{s}", {"role": r, "stage": s}) for s, r in STAGE_ROLE.items()]),
}
STAGE_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900]


class DashboardMetrics:
    def __init__(self, run_name: str):
        from ray.util.metrics import Counter, Gauge, Histogram

        self.run = run_name
        self.gauges = {}
        for name, (desc, keys) in GAUGES.items():
            tag_keys = tuple(sorted({"run", *(k for _, tags in keys for k in tags)}))
            self.gauges[name] = Gauge(name, description=desc, tag_keys=tag_keys)
        self.steps = Counter("tempsamp_steps_total", description="Training steps finished", tag_keys=("run", "role"))
        self.samples = Counter("tempsamp_samples_total", description="Rollout rows trained on",
                               tag_keys=("run", "role"))
        self.stage_hist = Histogram("tempsamp_stage_seconds_hist", description="Per-stage time per step",
                                    boundaries=STAGE_BUCKETS, tag_keys=("run", "role", "stage"))
        self.val = Gauge("tempsamp_val", description="TimeLens-Bench metrics of in-training validation",
                         tag_keys=("run", "role", "dataset", "metric"))

    def record(self, row: dict) -> None:
        for name, (_, keys) in GAUGES.items():
            for key, tags in keys:
                v = row.get(key)
                if isinstance(v, (int, float)) and v == v:
                    self.gauges[name].set(float(v), tags={"run": self.run, **tags})
        if "time/step" in row:
            self.steps.inc(1.0, tags={"run": self.run, "role": "driver"})
            rows = float(row.get("batch/rows", 0.0))
            if rows > 0:  # Ray counters take positive increments only (a filtered step may train on none)
                self.samples.inc(rows, tags={"run": self.run, "role": "driver"})
            for stage, role in STAGE_ROLE.items():
                if f"time/{stage}" in row:
                    self.stage_hist.observe(float(row[f"time/{stage}"]),
                                            tags={"run": self.run, "role": role, "stage": stage})
        for key, v in row.items():
            if key.startswith("val/") and key.count("/") == 2 and isinstance(v, (int, float)):
                _, ds, metric = key.split("/")
                self.val.set(float(v), tags={"run": self.run, "role": "eval", "dataset": ds,
                                             "metric": metric.replace("@", "_at_")})


_GCS_STATE: dict = {}  # gcs address -> Ray's GlobalState client (one per cluster, not one per step)


def object_store_bytes() -> float:
    """Bytes used in the Ray object store, cluster-wide (NaN when unavailable). Ray has no public API
    for this; `ray memory` uses the same raylet call, so we do too."""
    try:
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        import ray

        addr = ray.get_runtime_context().gcs_address
        if addr not in _GCS_STATE:
            _GCS_STATE.clear()
            _GCS_STATE[addr] = get_state_from_address(addr)
        reply = get_memory_info_reply(_GCS_STATE[addr], timeout_seconds=10.0)
        return float(reply.store_stats.object_store_bytes_used)
    except Exception:  # metrics must never break a run
        return float("nan")
