"""Run TimeLens-Bench on Ray: decode actors feed engine actors (data-parallel, greedy), predictions
stream to a JSONL file as they arrive (so a crash loses at most the calls in flight), and a rerun skips
what is already there. Metrics are recomputed from the stored raw texts, so changing the parse mode
needs no new generation."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import deque
from pathlib import Path

import msgspec

from ..config import Config
from ..data.prompts import build_problem
from ..data.video import VideoParams
from ..io import atomic_path
from ..progress import progress_bar
from .bench import BenchError, BenchSample, load_bench
from .metrics import Prediction, all_metrics, markdown_table, score_reply
from .protocol import eval_video_params, make_prediction

log = logging.getLogger(__name__)

PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json", "preprocessor_config.json",
                   "video_preprocessor_config.json", "processor_config.json")


class EvalReport(msgspec.Struct):
    metrics: dict
    predictions: str
    metrics_json: str
    table_md: str
    generated: int  # new predictions this run
    resumed: int  # predictions already on disk
    skipped: dict  # dataset -> video ids skipped (missing / undecodable)
    seconds: float
    gt_changed: int = 0  # stored predictions rescored because the bench's ground truth changed


def resolve_model_dir(model: str, base_model: str | None, work_dir: str | Path) -> str:
    """`model` itself when it has processor files; else a folder of links to `model`'s files plus the
    base model's processor files (the checkpoint folder itself is never modified)."""
    from ..models.loading import ModelLoadError, detect_family

    m = Path(model)
    detect_family(m)
    if (m / "tokenizer.json").exists() or (m / "tokenizer_config.json").exists():
        return str(m.absolute())
    if not base_model:
        raise ModelLoadError(f"{model}: checkpoint has no processor/tokenizer files; pass --base-model "
                             "(or BASE_MODEL) pointing at the model it was trained from")
    b = Path(base_model)
    if not (b / "tokenizer_config.json").exists() and not (b / "tokenizer.json").exists():
        raise ModelLoadError(f"--base-model {base_model}: no tokenizer files there either")
    view = Path(work_dir) / ".model_view"
    if view.exists():
        for f in view.iterdir():
            f.unlink()
    view.mkdir(parents=True, exist_ok=True)
    for f in m.iterdir():
        if f.is_file():
            os.symlink(f.absolute(), view / f.name)
    for name in PROCESSOR_FILES:
        if (b / name).exists() and not (view / name).exists():
            os.symlink((b / name).absolute(), view / name)
    return str(view)


def read_predictions(path: Path) -> list[Prediction]:
    """Predictions already on disk. A torn last line (crash mid-write) is dropped and the file cut back
    to its last complete line; a malformed line elsewhere is an error naming the line."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    out, good_bytes = [], 0
    dec = msgspec.json.Decoder(Prediction)
    for i, line in enumerate(lines):
        if not line.strip():
            good_bytes += len(line) + 1
            continue
        last = i == len(lines) - 1 or all(not x.strip() for x in lines[i + 1:])
        try:
            out.append(dec.decode(line))
        except msgspec.DecodeError as e:
            if last and not raw.endswith(b"\n"):
                log.warning("%s:%d: dropping a torn last line (interrupted write)", path, i + 1)
                with open(path, "r+b") as f:
                    f.truncate(good_bytes)
                break
            raise BenchError(f"{path}:{i + 1}: not a prediction record ({e}); delete the line or the file") from None
        good_bytes += len(line) + 1
    return out


def _rescore(p: Prediction, mode: str) -> Prediction:
    span, used, iou = score_reply(p.text, tuple(p.gt), p.duration, mode)
    return msgspec.structs.replace(p, span=span, eval_span=used, iou=iou, parsed=span is not None, parse_mode=mode)


def _video_groups(samples: list[BenchSample], per_call: int) -> list[list[BenchSample]]:
    """Queries grouped by video (decode once), cut into calls of at most `per_call` queries."""
    by: dict[str, list[BenchSample]] = {}
    for s in samples:
        by.setdefault(s.video, []).append(s)
    calls = []
    for group in by.values():
        for i in range(0, len(group), max(1, per_call)):
            calls.append(group[i: i + per_call])
    return calls


def generate_predictions(samples: list[BenchSample], engines: list, decoders: list, params: VideoParams,
                         processor, cfg: Config, sink, skip_bad_videos: bool, progress: bool = True
                         ) -> tuple[int, dict[str, list[str]]]:
    """Greedy replies for `samples` on `engines` (actor handles with `generate`), videos decoded by
    `decoders` (`decode_with`). Each finished call's predictions go to `sink(list[Prediction])`.
    Work is handed to whichever engine is free; decodes run ahead by one call per engine."""
    import ray

    from ..cluster import error_text, wait_classified
    from ..models.policy import render_prompt
    from ..rollout.base import PromptRequest, SamplingSpec

    e = cfg.eval
    spec = SamplingSpec(n=1, greedy=True, temperature=0.0, max_new_tokens=e.max_new_tokens)
    calls = deque(_video_groups(samples, e.queries_per_call))
    decoded: deque = deque()  # (call, video_ref) decoded ahead
    decode_i = 0
    free = list(range(len(engines)))
    inflight: dict = {}  # ref -> (engine index, call, video_ref)
    skipped: dict[str, list[str]] = {}
    done = 0
    bar = progress_bar(total=len(samples), desc="eval", unit="query", enabled=progress)

    def prefetch():
        nonlocal decode_i
        while calls and len(decoded) < 2 * len(engines):
            call = calls.popleft()
            decoded.append((call, decoders[decode_i % len(decoders)].decode_with.remote(call[0].video, params)))
            decode_i += 1

    prefetch()
    while decoded or inflight:
        while free and decoded:
            call, vref = decoded.popleft()
            i = free.pop(0)
            reqs = [PromptRequest(key=k, prompt_text=render_prompt(processor, build_problem(s.query)))
                    for k, s in enumerate(call)]
            inflight[engines[i].generate.remote(reqs, spec, *([vref] * len(reqs)))] = (i, call, vref)
            prefetch()
        ready, _ = ray.wait(list(inflight), num_returns=1, timeout=e.call_timeout_s)
        if not ready:
            stuck = ", ".join(f"engine {i} on {c[0].dataset}/{c[0].video_id}" for i, c, _ in inflight.values())
            raise TimeoutError(f"eval: no engine call finished within eval.call_timeout_s={e.call_timeout_s}s "
                               f"({stuck})")
        ref = ready[0]
        i, call, vref = inflight.pop(ref)
        free.append(i)
        (kind, groups), = wait_classified([ref], e.call_timeout_s)
        if kind != "ok":
            (vkind, verr), = wait_classified([vref], e.call_timeout_s)  # was it the video (decode) or the engine?
            if vkind in ("error", "refused"):
                s0 = call[0]
                if skip_bad_videos:
                    log.warning("eval: skipping undecodable video %s/%s: %s", s0.dataset, s0.video_id, error_text(verr))
                    skipped.setdefault(s0.dataset, []).append(s0.video_id)
                    bar.update(len(call))
                    continue
                raise BenchError(f"{s0.dataset}: video {s0.video_id!r} ({s0.video}) could not be decoded: "
                                 f"{error_text(verr)}") from None
            raise RuntimeError(f"eval: engine {i} failed on {call[0].dataset}/{call[0].video_id}: {kind} "
                               f"({error_text(groups) if groups is not None else 'no reply in time'})") from None
        preds = [make_prediction(s, g.texts[0] if g.texts else "", e.parse_mode, g.weight_version)
                 for s, g in zip(call, sorted(groups, key=lambda g: g.key))]
        sink(preds)
        done += len(preds)
        bar.update(len(preds))
    bar.close()
    return done, skipped


def refresh_predictions(preds: list[Prediction], truth: dict[str, BenchSample], mode: str
                        ) -> tuple[list[Prediction], set[str]]:
    """Stored predictions scored against the bench as it is now: a prediction whose ground truth or
    duration differs from the bench file's takes the bench's values and is rescored (its key is
    returned in the changed set); one scored in another parse mode is rescored with `mode`."""
    out, changed = [], set()
    for p in preds:
        s = truth.get(p.key)
        if s is not None and (tuple(p.gt) != tuple(s.gt) or p.duration != s.duration):
            p = msgspec.structs.replace(p, gt=tuple(s.gt), duration=s.duration, parse_mode="")
            changed.add(p.key)
        out.append(_rescore(p, mode) if p.parse_mode != mode else p)
    return out, changed


def write_outputs(all_preds: list[Prediction], wanted: set[str], datasets: list[str], out: Path, mode: str,
                  extra: dict, truth: dict[str, BenchSample] | None = None, plots: bool = False
                  ) -> tuple[dict, Path, Path, Path]:
    """Rescore every stored prediction with `mode` and against `truth` (the bench's samples by key;
    rewritten in place, nothing dropped: other datasets' lines stay), then metrics over the `wanted`
    keys; metrics.json counts the wanted predictions whose ground truth changed (`gt_changed`).
    `plots`: per-dataset figures under `out/plots/` (tempsamp/plots.py), linked from results.md."""
    all_preds, changed = refresh_predictions(all_preds, truth or {}, mode)
    gt_changed = len(changed & wanted)
    if gt_changed:
        log.warning("eval: %d stored predictions had another ground truth or duration than the bench file; "
                    "rescored against the bench (first: %s)", gt_changed, ", ".join(sorted(changed & wanted)[:3]))
    extra = {**extra, "gt_changed": gt_changed}
    pred_path = out / "predictions.jsonl"
    enc = msgspec.json.Encoder()
    with atomic_path(pred_path) as tmp:
        with open(tmp, "wb") as f:
            for p in all_preds:
                f.write(enc.encode(p) + b"\n")
    metrics = all_metrics([p for p in all_preds if p.key in wanted], datasets)
    mj = out / "metrics.json"
    with atomic_path(mj) as tmp:
        Path(tmp).write_text(json.dumps({"parse_mode": mode, "datasets": metrics, **extra}, indent=1))
    md = out / "results.md"
    title = f"TimeLens-Bench — {extra.get('model', '')} (parse: {mode})"
    text = markdown_table(metrics, title)
    if plots:
        text += plot_section([p for p in all_preds if p.key in wanted], datasets, out)
    with atomic_path(md) as tmp:
        Path(tmp).write_text(text)
    return metrics, pred_path, mj, md


PLOT_TITLES = {"iou_histogram": "IoU histogram", "r1_vs_iou": "R1 vs IoU threshold",
               "timeline": "predicted vs ground-truth spans"}


def plot_section(preds: list[Prediction], datasets: list[str], out: Path) -> str:
    """Each dataset's plots under `out/plots/`, as a Markdown section of relative image links."""
    from ..plots import eval_plots

    lines = ["", "### Plots", ""]
    for ds in datasets:
        ps = [p for p in preds if p.dataset == ds]
        if not ps:
            continue
        pngs = eval_plots(ps, ds, out / "plots")
        lines += [f"#### {ds}", "", " ".join(f"![{ds}: {PLOT_TITLES[k]}]({png.relative_to(out).as_posix()})"
                                             for k, png in pngs.items()), ""]
    return "\n".join(lines) + "\n"


def run_eval(cfg: Config, model: str, output: str, base_model: str | None = None,
             datasets: list[str] | None = None, progress: bool = True) -> EvalReport:
    """Evaluate `model` (an exported actor folder or a base model) on the bench; see module doc."""
    from ..actors.pools import Pools, decode_factory, engine_factory
    from ..cluster import cluster_resources, init_ray
    from ..models.loading import detect_family, load_processor
    from ..placement.plan import make_serving_plan, resolve_use_gpus
    from ..rollout.engine_args import engine_args
    from ..rollout.support import check_engine_support

    t0 = time.time()
    e = cfg.eval
    datasets = datasets or list(e.datasets)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    samples, missing = load_bench(e.bench_dir, datasets, e.skip_missing_videos)
    for ds, ids in missing.items():
        if ids:
            log.warning("eval: %s: %d videos missing, skipped (first: %s)", ds, len(ids), ", ".join(ids[:5]))
    pred_path = out / "predictions.jsonl"
    existing = read_predictions(pred_path)
    wanted = {s.key for s in samples}
    have = {p.key for p in existing}
    todo = [s for s in samples if s.key not in have]
    log.info("eval: %d queries in %s; %d already predicted, %d to run", len(samples), ",".join(datasets),
             len(samples) - len(todo), len(todo))
    model_dir = resolve_model_dir(model, base_model, out)
    generated, skipped = 0, {ds: list(ids) for ds, ids in missing.items() if ids}
    params = eval_video_params(cfg, detect_family(model_dir))
    if todo:
        init_ray()
        cfg = resolve_use_gpus(cfg, cluster_resources())
        processor = load_processor(model_dir)
        backend = e.backend if e.backend != "auto" else ("vllm" if cfg.placement.use_gpus else "hf")
        family = detect_family(model_dir)
        check_engine_support(cfg, backend, family)
        kw, env = engine_args(cfg, backend, family)
        gpus = cfg.rollout.tensor_parallel_size if cfg.placement.use_gpus else 0
        plan = make_serving_plan(e.num_engines, gpus, e.cpus_per_actor, e.num_decoders, cluster_resources(),
                                 engines_by="eval.num_engines x rollout.tensor_parallel_size",
                                 decoders_by="eval.num_decoders x eval.cpus_per_actor")
        pools = Pools(plan, {"rollout": engine_factory(backend, model_dir, kw, env), "decode": decode_factory(params)},
                      f"{cfg.trainer.run_name}-eval", cfg.trainer.actor_start_timeout_s)
        enc = msgspec.json.Encoder()
        f = open(pred_path, "ab")

        def sink(preds):
            f.write(b"".join(enc.encode(p) + b"\n" for p in preds))
            f.flush()
            os.fsync(f.fileno())

        try:
            generated, bad = generate_predictions(todo, pools.engines, pools.decode, params, processor, cfg, sink,
                                                  e.skip_missing_videos, progress)
        finally:
            f.close()
            pools.shutdown()
        for ds, ids in bad.items():
            skipped.setdefault(ds, []).extend(ids)
    extra = {"model": model, "base_model": base_model or "", "bench_dir": e.bench_dir,
             "video_params": params.as_dict(),
             "max_new_tokens": e.max_new_tokens, "skipped_videos": skipped}
    metrics, pj, mj, md = write_outputs(read_predictions(pred_path), wanted, datasets, out, e.parse_mode, extra,
                                        truth={s.key: s for s in samples}, plots=True)
    gt_changed = json.loads(Path(mj).read_text())["gt_changed"]
    return EvalReport(metrics=metrics, predictions=str(pj), metrics_json=str(mj), table_md=str(md),
                      generated=generated, resumed=len(samples) - len(todo), skipped=skipped,
                      seconds=time.time() - t0, gt_changed=gt_changed)


def checkpoint_step(model: str) -> int | None:
    """The training step of an exported checkpoint path (`.../global_step_N/actor` -> N), else None."""
    m = re.search(r"global_step_(\d+)", str(model))
    return int(m.group(1)) if m else None


def log_eval_results(cfg: Config, metrics: dict[str, dict], step: int) -> dict:
    """Log eval metrics into the run `trainer.run_name` under `trainer.log_dir`, through its trackers
    (`trainer.loggers` less `console`; the wandb / MLflow runs the training recorded in trackers.json
    are continued): one row `{"step": step, "eval/<dataset>/<metric>": value}`. Returns the row."""
    from ..trackers import Trackers

    row = {"step": step, **{f"eval/{ds}/{k}": v for ds, m in metrics.items() for k, v in m.items()}}
    trackers = Trackers(cfg, params=None, resume=True)
    try:
        trackers.log(row)
    finally:
        trackers.close()
    return row
