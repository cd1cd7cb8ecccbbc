"""Stage A: raw TimeLens-100K JSONL -> trainer JSONL (RECIPE.md, "Stage A converter").

Same output as the original `convert_timelens_to_verl.py`, plus line-numbered errors, a skip-bad
option with a count, and a report of missing video files.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np

from .prompts import build_problem, extract_query
from .records import RecordError, iter_jsonl, write_jsonl

log = logging.getLogger(__name__)

_NUM = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
STRIP_PREFIXES = ("datasets/TimeLens-100K/", "datasets/")
GT_LEN_EDGES = (2.0, 5.0, 10.0, 20.0)  # <2, 2-5, 5-10, 10-20, >20 s
COVERAGE_EDGES = (0.05, 0.10, 0.20, 0.40)  # <5%, 5-10%, 10-20%, 20-40%, >40%
GT_LEN_TARGET = (0.1325, 0.3232, 0.1940, 0.1410, 0.2094)
COVERAGE_TARGET = (0.3454, 0.2075, 0.1831, 0.1236, 0.1405)
JOINT_TARGET = (
    (0.1217, 0.0102, 0.0006, 0.0, 0.0),
    (0.1560, 0.1069, 0.0536, 0.0066, 0.0001),
    (0.0644, 0.0364, 0.0482, 0.0410, 0.0039),
    (0.0033, 0.0525, 0.0339, 0.0267, 0.0246),
    (0.0, 0.0015, 0.0468, 0.0492, 0.1119),
)


class ConvertOptions(msgspec.Struct, kw_only=True):
    video_root: str
    answer_format: Literal["tags", "json"] = "tags"
    bare_query: bool = False  # problem = bare query instead of the full prompt
    min_difficulty: float | None = None
    max_difficulty: float | None = None
    min_duration: float | None = None
    max_duration: float | None = None
    min_gt_len: float | None = None
    max_gt_len: float | None = None
    min_coverage: float | None = None
    max_coverage: float | None = None
    duration_file: str | None = None  # sidecar JSONL {"video": basename-or-path, "duration": s}
    max_samples: int | None = None
    sort_by_difficulty: bool = False
    sampling: Literal["none", "gaussian"] = "none"
    gaussian_mu: float = 0.75
    gaussian_sigma: float = 0.2
    stratify_by: Literal["none", "gt_len", "coverage", "joint"] = "none"
    allow_oversample: bool = True
    seed: int = 42
    skip_bad: bool = False
    missing_videos: Literal["error", "drop", "keep"] = "error"


class ConvertReport(msgspec.Struct):
    read: int = 0
    written: int = 0
    bad_lines: int = 0
    filtered: int = 0
    missing_videos: int = 0
    bad_examples: list[str] = []
    missing_examples: list[str] = []

    def summary(self) -> str:
        s = f"read {self.read} lines, wrote {self.written} records"
        if self.bad_lines:
            s += f"; skipped {self.bad_lines} bad lines (first: {self.bad_examples[:3]})"
        if self.filtered:
            s += f"; {self.filtered} filtered out"
        if self.missing_videos:
            s += f"; {self.missing_videos} missing videos (first: {self.missing_examples[:5]})"
        return s


def resolve_video_path(raw_path: str, video_root: str) -> str:
    if Path(raw_path).is_absolute():
        return str(Path(raw_path))
    p = raw_path
    for prefix in STRIP_PREFIXES:
        if p.startswith(prefix):
            p = p[len(prefix):]
            break
    return str((Path(video_root) / p).absolute())


def _load_durations(path: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for lineno, obj, err in iter_jsonl(path):
        if err:
            raise RecordError(err)
        key = obj.get("video") or obj.get("video_id") or obj.get("path")
        if key is None or "duration" not in obj:
            raise RecordError(f"{path}:{lineno}: duration file rows need `video` and `duration`")
        out[Path(str(key)).stem] = float(obj["duration"])
    return out


def convert_line(obj: dict, where: str, opts: ConvertOptions, durations: dict[str, float]) -> dict:
    """One raw TimeLens line -> trainer record dict. Raises RecordError(`file:line: ...`)."""
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RecordError(f"{where}: missing field `messages` (a list with the user turn)")
    user = next((m for m in msgs if isinstance(m, dict) and m.get("role") == "user"), None)
    if user is None or not isinstance(user.get("content"), str):
        raise RecordError(f"{where}: `messages` has no user turn with string `content`")
    content = user["content"]
    videos = obj.get("videos")
    if not isinstance(videos, list) or not videos or not isinstance(videos[0], str):
        raise RecordError(f"{where}: missing field `videos` (a non-empty list of paths)")
    solution = obj.get("solution")
    if solution is None:
        raise RecordError(f"{where}: missing field `solution` (e.g. \"7.0 to 11.0\")")
    nums = _NUM.findall(str(solution))
    if len(nums) < 2:
        raise RecordError(f"{where}: `solution` {solution!r} holds no start/end pair")
    start, end = float(nums[0]), float(nums[1])
    if start > end:
        raise RecordError(f"{where}: span start {start} > end {end} in `solution` {solution!r}")
    if not content.startswith("<video>"):
        content = "<video>" + content
    if opts.bare_query:
        q = extract_query(content)
        if q is None:
            raise RecordError(f"{where}: cannot extract the event query from the prompt")
        problem = q
    else:
        problem = content
    answer = (
        f"<answer> {start} to {end} </answer>"
        if opts.answer_format == "tags"
        else json.dumps({"time": [start, end]})
    )
    rec: dict = {
        "problem": problem,
        "answer": answer,
        "problem_type": "temporal grounding",
        "data_type": "video",
        "videos": [resolve_video_path(videos[0], opts.video_root)],
    }
    if "difficulty" in obj and obj["difficulty"] is not None:
        rec["difficulty"] = float(obj["difficulty"])
    duration = obj.get("duration")
    if duration is None:
        duration = durations.get(Path(videos[0]).stem)
    if duration is not None:
        rec["duration"] = float(duration)
    rec["gt_len"] = round(end - start, 6)
    return rec


def _passes(rec: dict, o: ConvertOptions) -> bool:
    def within(v, lo, hi):
        if lo is None and hi is None:
            return True
        if v is None:
            return False
        return (lo is None or v >= lo) and (hi is None or v <= hi)

    d = rec.get("duration")
    cov = rec["gt_len"] / d if d else None
    return (
        within(rec.get("difficulty"), o.min_difficulty, o.max_difficulty)
        and within(d, o.min_duration, o.max_duration)
        and within(rec["gt_len"], o.min_gt_len, o.max_gt_len)
        and within(cov, o.min_coverage, o.max_coverage)
    )


def largest_remainder(total: int, weights) -> list[int]:
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    raw = w * total
    counts = np.floor(raw).astype(int)
    rest = total - counts.sum()
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:rest]] += 1
    return counts.tolist()


def _bucket(v: float, edges) -> int:
    return int(np.searchsorted(np.asarray(edges), v, side="right"))


def gaussian_sample(rows: list[dict], k: int, mu: float, sigma: float, rng: np.random.Generator) -> list[dict]:
    """Difficulty-weighted sampling without replacement: N(d; mu, sigma) / empirical density (100 bins)."""
    d = np.array([r.get("difficulty", 0.0) or 0.0 for r in rows])
    hist, edges = np.histogram(d, bins=100, range=(0.0, 1.0))
    idx = np.clip(np.searchsorted(edges, d, side="right") - 1, 0, 99)
    density = hist[idx] / len(d)
    w = np.exp(-0.5 * ((d - mu) / sigma) ** 2) / np.maximum(density, 1e-12)
    w = w / w.sum()
    k = min(k, int((w > 0).sum()))
    pick = rng.choice(len(rows), size=k, replace=False, p=w)
    return [rows[i] for i in pick]


def stratified_sample(rows: list[dict], k: int, by: str, oversample: bool, rng: np.random.Generator) -> list[dict]:
    def key(r):
        d = r.get("duration")
        cov = r["gt_len"] / d if d else 0.0
        g, c = _bucket(r["gt_len"], GT_LEN_EDGES), _bucket(cov, COVERAGE_EDGES)
        return {"gt_len": g, "coverage": c, "joint": g * 5 + c}[by]

    target = {
        "gt_len": GT_LEN_TARGET,
        "coverage": COVERAGE_TARGET,
        "joint": [x for row in JOINT_TARGET for x in row],
    }[by]
    buckets: dict[int, list[dict]] = {}
    for r in rows:
        buckets.setdefault(key(r), []).append(r)
    out: list[dict] = []
    for b, n in enumerate(largest_remainder(k, target)):
        pool = buckets.get(b, [])
        if n == 0:
            continue
        if not pool:
            log.warning("stratify_by=%s: bucket %d is empty; %d requested rows cannot be drawn", by, b, n)
            continue
        if n <= len(pool):
            out += [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]
        elif oversample:
            out += pool + [pool[i] for i in rng.choice(len(pool), size=n - len(pool), replace=True)]
        else:
            out += pool
    return out


def convert_file(input_path: str, output_path: str, opts: ConvertOptions) -> ConvertReport:
    if not Path(input_path).is_file():
        raise RecordError(f"{input_path}: input file not found")
    durations = _load_durations(opts.duration_file) if opts.duration_file else {}
    rep = ConvertReport()
    rows: list[dict] = []
    for lineno, obj, err in iter_jsonl(input_path):
        rep.read += 1
        if err is None:
            try:
                rec = convert_line(obj, f"{input_path}:{lineno}", opts, durations)
            except RecordError as e:
                err = str(e)
        if err is not None:
            if not opts.skip_bad:
                raise RecordError(err)
            rep.bad_lines += 1
            rep.bad_examples.append(err)
            continue
        if _passes(rec, opts):
            rec["_line"] = lineno
            rows.append(rec)
        else:
            rep.filtered += 1
    missing = [r for r in rows if not Path(r["videos"][0]).is_file()]
    rep.missing_videos = len(missing)
    rep.missing_examples = [f"{input_path}:{r['_line']}: {r['videos'][0]}" for r in missing[:5]]
    if missing:
        msg = f"{len(missing)} of {len(rows)} video files do not exist under --video_root {opts.video_root}: " + \
            ", ".join(rep.missing_examples)
        if opts.missing_videos == "error":
            raise RecordError(msg + " (use --missing-videos drop|keep to continue)")
        log.warning(msg)
        if opts.missing_videos == "drop":
            bad = {id(r) for r in missing}
            rows = [r for r in rows if id(r) not in bad]
    rng = np.random.default_rng(opts.seed)
    k = opts.max_samples if opts.max_samples is not None else len(rows)
    if opts.sampling == "gaussian":
        rows = gaussian_sample(rows, k, opts.gaussian_mu, opts.gaussian_sigma, rng)
    elif opts.stratify_by != "none":
        rows = stratified_sample(rows, k, opts.stratify_by, opts.allow_oversample, rng)
    else:
        rows = rows[:k]
    if opts.sort_by_difficulty:
        rows.sort(key=lambda r: r.get("difficulty") if r.get("difficulty") is not None else math.inf)
    for r in rows:
        r.pop("_line", None)
    rep.written = write_jsonl(output_path, rows)
    return rep
