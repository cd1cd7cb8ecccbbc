"""The training set of a run: data.train_files (or the built-in synthetic set) read, checked and
filtered by the bad-sample policy — the same for `tempsamp train` and the recipe check.

Policy (data.on_bad_sample): `skip` drops a bad row, counts it per reason (records.BAD_REASONS) and
writes it to `<log_dir>/<run>/bad_samples.jsonl` (`where` = file:line, `video`, `reason`, `detail`);
more than data.max_bad_fraction of the rows bad stops the run here, before any training, with the
counts. `stop` raises at the first bad row. A span ending past the video's duration by at most
data.span_overrun_tolerance_s is clamped (kept, counted, written with action `clamped`). Videos that
only decoding can tell are bad are skipped at run time by the step runner into the same file."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

import msgspec

from ..errors import BadSampleError
from .records import RecordError, TrainRecord, read_records

log = logging.getLogger(__name__)
BAD_SAMPLES_FILE = "bad_samples.jsonl"


class BadSample(msgspec.Struct, kw_only=True):
    """One row of bad_samples.jsonl."""
    where: str  # file:line of the row
    video: str  # "" when the row did not get as far as naming one
    reason: str  # records.BAD_REASONS, or span_clamped
    action: str = "skipped"  # skipped | clamped
    detail: str = ""
    step: int | None = None  # set for rows skipped at run time (undecodable video)


def bad_samples_path(cfg) -> Path:
    return Path(cfg.trainer.log_dir) / cfg.trainer.run_name / BAD_SAMPLES_FILE


def append_bad_samples(path: str | Path, rows: list[BadSample]) -> None:
    """Add rows to a bad_samples.jsonl (run-time skips)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        for r in rows:
            f.write(msgspec.json.encode(r) + b"\n")


def write_load_report(path: str | Path, rows: list[BadSample]) -> None:
    """Write the load-time rows, keeping the run-time rows (`step` set) of an earlier attempt of the same
    run (a resumed run re-reads its data; what it skipped while training stays on record)."""
    from ..io import atomic_path

    path = Path(path)
    kept: list[bytes] = []
    if path.exists():
        for line in path.read_bytes().splitlines():
            try:
                if json.loads(line).get("step") is not None:
                    kept.append(line)
            except ValueError:
                continue
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for r in rows:
            f.write(msgspec.json.encode(r) + b"\n")
        for line in kept:
            f.write(line + b"\n")


def _bad(e: RecordError) -> BadSample:
    where = e.where or str(e).split(": ", 1)[0]
    return BadSample(where=where, video=e.video, reason=e.reason, detail=str(e))


def check_bad_fraction(n_rows: int, bad: list[BadSample], max_fraction: float, files: list[str],
                       report: str) -> None:
    """Raise BadSampleError, with the counts per reason, when more than `max_fraction` of `n_rows` are bad."""
    if not n_rows or len(bad) / n_rows <= max_fraction:
        return
    counts = Counter(b.reason for b in bad)
    first = "; ".join(b.detail for b in bad[:3])
    raise BadSampleError(
        f"data: {len(bad)} of {n_rows} rows of {', '.join(files)} are bad ({100 * len(bad) / n_rows:.1f} % > "
        f"data.max_bad_fraction {100 * max_fraction:g} %): "
        + ", ".join(f"{k} {v}" for k, v in counts.most_common())
        + f". Every one is listed in {report}; first: {first}. Fix the data (or data.video_root), or raise "
        "data.max_bad_fraction to train on the rest")


def load_dataset(cfg) -> tuple[list[TrainRecord], list[BadSample]]:
    """Records of data.train_files (or the synthetic set) and every row skipped (file:line, video,
    reason). data.on_bad_sample=stop raises RecordError on the first bad row; with `skip`, too many bad
    rows raise BadSampleError (data.max_bad_fraction)."""
    d = cfg.data
    files = list(d.train_files)
    if not files and d.synthetic_dir:
        from .synthetic import generate

        files = [generate(d.synthetic_dir, n_train=d.synthetic_n_train, n_bench=2, seed=0)["train_jsonl"]]
    if not files:
        raise ValueError("data.train_files is empty (set it in the config, TIMELENS_TRAIN_FILES, or an override)")
    skip = d.on_bad_sample == "skip"
    check_videos = not (d.use_preprocessed and d.video_source_mode == "preprocessed_only")
    records: list[TrainRecord] = []
    skipped: list[BadSample] = []
    clamped: list[BadSample] = []
    hint = " (data.on_bad_sample=skip to skip and count)"
    for f in files:
        try:
            recs, errs = read_records(f, d.video_root or None, skip_bad=skip,
                                      overrun_tolerance_s=d.span_overrun_tolerance_s)
        except RecordError as e:
            if e.where == str(f):  # the file itself, not one of its rows
                raise
            raise RecordError(str(e) + hint, e.reason, e.where, e.video) from None
        skipped += [_bad(e) for e in errs]
        for r in recs:
            if check_videos and not os.path.exists(r.video):
                msg = f"{r.source}: video not found: {r.video}"
                if not skip:
                    raise RecordError(msg + hint, "missing_video", r.source, r.video)
                skipped.append(BadSample(where=r.source, video=r.video, reason="missing_video", detail=msg))
                continue
            if r.clamped_from is not None:
                clamped.append(BadSample(
                    where=r.source, video=r.video, reason="span_clamped", action="clamped",
                    detail=f"{r.source}: span end {r.clamped_from:g} s clamped to the duration {r.duration:g} s"))
            records.append(r)
    report = bad_samples_path(cfg)
    if skipped or clamped or report.exists():
        write_load_report(report, skipped + clamped)
    for b in skipped[:20]:
        log.warning("skipped bad record (%s): %s", b.reason, b.detail)
    if len(skipped) > 20:
        log.warning("... and %d more bad records skipped", len(skipped) - 20)
    if skipped or clamped:
        counts = Counter(b.reason for b in skipped)
        print(f"data: {len(records)} records; {len(skipped)} skipped"
              + (" (" + ", ".join(f"{k} {v}" for k, v in counts.most_common()) + ")" if skipped else "")
              + f"; {len(clamped)} spans clamped to the video's duration; each row in {report}", flush=True)
    check_bad_fraction(len(records) + len(skipped), skipped, d.max_bad_fraction, files, str(report))
    return records, skipped
