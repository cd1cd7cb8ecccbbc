"""The training set of a run: data.train_files (or the built-in synthetic set) read, checked and
filtered by the bad-sample policy — the same for `tempsamp train` and the recipe check."""

from __future__ import annotations

import logging
import os

from .records import RecordError, TrainRecord, read_records

log = logging.getLogger(__name__)


def load_dataset(cfg) -> tuple[list[TrainRecord], list[str]]:
    """Records of data.train_files (or the synthetic set) and the reasons for every record skipped
    (bad line, span beyond duration, missing video — each with file:line). data.on_bad_sample=stop
    raises on the first one instead."""
    files = list(cfg.data.train_files)
    if not files and cfg.data.synthetic_dir:
        from .synthetic import generate

        files = [generate(cfg.data.synthetic_dir, n_train=cfg.data.synthetic_n_train, n_bench=2, seed=0)["train_jsonl"]]
    if not files:
        raise ValueError("data.train_files is empty (set it in the config, TIMELENS_TRAIN_FILES, or an override)")
    skip = cfg.data.on_bad_sample == "skip"
    records: list[TrainRecord] = []
    skipped: list[str] = []
    for f in files:
        recs, errs = read_records(f, cfg.data.video_root or None, skip_bad=skip)
        skipped += errs
        for r in recs:
            if not (cfg.data.use_preprocessed and cfg.data.video_source_mode == "preprocessed_only") \
                    and not os.path.exists(r.video):
                msg = f"{r.source}: video not found: {r.video}"
                if not skip:
                    raise RecordError(msg + " (data.on_bad_sample=skip to skip and count)")
                skipped.append(msg)
                continue
            records.append(r)
    for e in skipped[:20]:
        log.warning("skipped bad record: %s", e)
    if len(skipped) > 20:
        log.warning("... and %d more bad records skipped", len(skipped) - 20)
    if skipped:
        print(f"data: {len(records)} records, {len(skipped)} skipped (reasons in the log)", flush=True)
    return records, skipped
