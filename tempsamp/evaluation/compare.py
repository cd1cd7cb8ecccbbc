"""Two evaluation runs side by side: per dataset, each run's metrics (from its metrics.json) and the
per-query IoU deltas over the queries both runs answered (win / tie / loss of B against A)."""

from __future__ import annotations

import json
from pathlib import Path

from .bench import BenchError
from .metrics import Prediction

TIE_EPS = 1e-9
COLUMNS = ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")


def _run(folder: str | Path) -> tuple[dict, dict[str, Prediction]]:
    from .runner import read_predictions

    d = Path(folder)
    mj = d / "metrics.json"
    if not mj.is_file():
        raise BenchError(f"{d}: no metrics.json (not a `tempsamp eval` output folder)")
    try:
        metrics = json.loads(mj.read_text())
    except json.JSONDecodeError as e:
        raise BenchError(f"{mj}: not valid JSON ({e})") from None
    return metrics, {p.key: p for p in read_predictions(d / "predictions.jsonl")}


def compare_runs(a: str | Path, b: str | Path) -> dict:
    """{"parse_modes": (A, B), "datasets": {ds: {"a": metrics, "b": metrics, "common": n, "win": n,
    "tie": n, "loss": n, "mean_delta_iou": x}}} for every dataset in either run."""
    ma, pa = _run(a)
    mb, pb = _run(b)
    out = {"parse_modes": (ma.get("parse_mode", ""), mb.get("parse_mode", "")), "datasets": {}}
    for ds in list(dict.fromkeys([*ma.get("datasets", {}), *mb.get("datasets", {})])):
        keys = sorted(k for k, p in pa.items() if p.dataset == ds and k in pb)
        deltas = [pb[k].iou - pa[k].iou for k in keys]
        out["datasets"][ds] = {
            "a": ma.get("datasets", {}).get(ds), "b": mb.get("datasets", {}).get(ds), "common": len(keys),
            "win": sum(d > TIE_EPS for d in deltas), "tie": sum(abs(d) <= TIE_EPS for d in deltas),
            "loss": sum(d < -TIE_EPS for d in deltas),
            "mean_delta_iou": sum(deltas) / len(deltas) if deltas else float("nan")}
    return out


def comparison_table(cmp: dict, label_a: str = "A", label_b: str = "B") -> str:
    """Markdown: one row per dataset, A / B / delta per metric, then B's per-query win/tie/loss."""
    head = "| dataset | " + " | ".join(f"{c} {label_a} / {label_b} (Δ)" for c in COLUMNS) + \
        f" | queries in both | {label_b} win / tie / loss |"
    lines = [head, "|---" * (len(COLUMNS) + 3) + "|"]
    for ds, r in cmp["datasets"].items():
        cells = []
        for c in COLUMNS:
            va = r["a"][c] if r["a"] else None
            vb = r["b"][c] if r["b"] else None
            cells.append(f"{'—' if va is None else f'{va:.2f}'} / {'—' if vb is None else f'{vb:.2f}'}"
                         + (f" ({vb - va:+.2f})" if va is not None and vb is not None else ""))
        lines.append(f"| {ds} | " + " | ".join(cells) + f" | {r['common']} | {r['win']} / {r['tie']} / {r['loss']} |")
    pa, pb = cmp["parse_modes"]
    note = "" if pa == pb else f"\nNote: parse modes differ ({label_a}: {pa}, {label_b}: {pb}); rerun one with --parse-mode.\n"
    return "\n".join(lines) + "\n" + note
