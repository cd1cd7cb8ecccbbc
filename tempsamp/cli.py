"""`tempsamp` command line: convert | cache | synth | build-tiny | plan | train | eval | eval-compare | plot | demo | reframe | reframe-check | reframe-preview."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _add_convert(sub):
    p = sub.add_parser("convert", help="Stage A: raw TimeLens JSONL -> trainer JSONL")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--video_root", "--video-root", dest="video_root", required=True)
    p.add_argument("--answer-format", choices=["tags", "json"], default="tags")
    p.add_argument("--bare-query", action="store_true", help="problem = the bare event query")
    for k in ("difficulty", "duration", "gt_len", "coverage"):
        p.add_argument(f"--min_{k}", f"--min-{k.replace('_', '-')}", dest=f"min_{k}", type=float)
        p.add_argument(f"--max_{k}", f"--max-{k.replace('_', '-')}", dest=f"max_{k}", type=float)
    p.add_argument("--duration-file", "--duration_file", dest="duration_file")
    p.add_argument("--max_samples", "--max-samples", dest="max_samples", type=int)
    p.add_argument("--sort-by-difficulty", action="store_true")
    p.add_argument("--sampling", choices=["none", "gaussian"], default="none")
    p.add_argument("--stratify_by", "--stratify-by", dest="stratify_by",
                   choices=["none", "gt_len", "coverage", "joint"], default="none")
    p.add_argument("--no-oversample", action="store_true")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--skip-bad", action="store_true", help="skip bad lines (counted) instead of stopping")
    p.add_argument("--missing-videos", choices=["error", "drop", "keep"], default="error")


def cmd_convert(a) -> int:
    from .data.convert import ConvertOptions, convert_file

    opts = ConvertOptions(
        video_root=a.video_root, answer_format=a.answer_format, bare_query=a.bare_query,
        min_difficulty=a.min_difficulty, max_difficulty=a.max_difficulty, min_duration=a.min_duration,
        max_duration=a.max_duration, min_gt_len=a.min_gt_len, max_gt_len=a.max_gt_len,
        min_coverage=a.min_coverage, max_coverage=a.max_coverage, duration_file=a.duration_file,
        max_samples=a.max_samples, sort_by_difficulty=a.sort_by_difficulty, sampling=a.sampling,
        stratify_by=a.stratify_by, allow_oversample=not a.no_oversample, seed=a.seed,
        skip_bad=a.skip_bad, missing_videos=a.missing_videos,
    )
    rep = convert_file(a.input, a.output, opts)
    print(f"convert: {rep.summary()} -> {a.output}")
    return 0


def _add_config_args(p):
    p.add_argument("--config", help="YAML config (see jobs/configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. algorithm.name=tempsamp")


def _config(a):
    from .config import load_config

    return load_config(a.config, a.overrides)


def cmd_cache(a) -> int:
    from .data.cache import build_cache, failure_report
    from .data.video import VideoParams

    from .preflight import check_cache

    check_cache(a.input, a.output_dir, a.output)
    cfg = _config(a)
    family = cfg.model.family if cfg.model.family != "auto" else _family_for(cfg)
    params = VideoParams.from_config(cfg.video, family)
    rep = build_cache(a.input, a.output_dir, a.output, params, workers=a.workers,
                      rebuild=a.rebuild or cfg.data.rebuild_cache)
    print(f"cache: {rep.total} videos: {rep.built} built, {rep.reused} reused, {rep.failed} failed "
          f"in {rep.seconds:.1f}s -> {a.output_dir}; rows -> {a.output}")
    if rep.failed:
        print(f"tempsamp cache: {rep.failed} videos failed:\n" + "\n".join(failure_report(rep)), file=sys.stderr)
    return 0 if rep.failed == 0 else 3


def _family_for(cfg) -> str:
    if cfg.model.path:
        from .models.loading import detect_family

        return detect_family(cfg.model.path)
    return cfg.model.tiny_family


def cmd_synth(a) -> int:
    from .data.synthetic import generate

    m = generate(a.out, n_train=a.n_train, n_bench=a.n_bench, seed=a.seed)
    print(f"synth: {m['n_train']} train videos, {m['n_bench']} per bench dataset -> {a.out}")
    for k in ("raw_jsonl", "train_jsonl", "bench_dir", "video_root"):
        print(f"  {k}: {m[k]}")
    return 0


def cmd_build_tiny(a) -> int:
    from .models.tiny import build_tiny_model

    print(build_tiny_model(a.out, a.family, seed=a.seed, overwrite=True))
    return 0


def cmd_plan(a) -> int:
    from .placement.memory import check_memory, find_model_config, format_memory, memory_plan, model_shape
    from .placement.plan import PlacementError, format_plan, make_plan, resolve_use_gpus

    cfg = _config(a)
    print(format_plan(make_plan(cfg)))
    cfg = resolve_use_gpus(cfg, None, notice=lambda _: None)
    if not cfg.placement.use_gpus:
        print("\nmemory: CPU-only plan (placement.use_gpus=false): no GPU memory to check")
        return 0
    if cfg.model.path or a.model_config:
        try:
            src = find_model_config(cfg.model.path, a.model_config or "")
        except FileNotFoundError as e:
            raise PlacementError(f"memory check: {e}") from None
        shape = model_shape(src)
    else:  # no model.path: the tiny model the run would build
        from .models.tiny import tiny_config

        shape = model_shape(tiny_config(cfg.model.tiny_family), name=f"tiny {cfg.model.tiny_family}")
    plan = memory_plan(cfg, shape)
    print()
    print(format_memory(plan))
    check_memory(plan)
    return 0


def cmd_train(a) -> int:
    from .trainer import train_main

    return train_main(_config(a), config_path=a.config)


def cmd_eval(a) -> int:
    import os

    import msgspec

    from .evaluation.bench import parse_dataset_list
    from .evaluation.runner import checkpoint_step, log_eval_results, run_eval

    cfg = _config(a)
    e = cfg.eval
    upd = {}
    if a.bench_dir:
        upd["bench_dir"] = a.bench_dir
    if a.datasets:
        upd["datasets"] = parse_dataset_list(a.datasets)
    for k in ("parse_mode", "backend", "num_engines", "max_new_tokens"):
        if getattr(a, k) is not None:
            upd[k] = getattr(a, k)
    if a.skip_missing_videos:
        upd["skip_missing_videos"] = True
    cfg = msgspec.structs.replace(cfg, eval=msgspec.structs.replace(e, **upd))
    if not cfg.eval.bench_dir:
        print("tempsamp eval: error: no bench dir (--bench-dir, BENCH_DIR or eval.bench_dir)", file=sys.stderr)
        return 2
    from .preflight import check_eval

    check_eval(cfg, a.model, a.output)
    if a.run:
        cfg = msgspec.structs.replace(cfg, trainer=msgspec.structs.replace(cfg.trainer, run_name=a.run))
    rep = run_eval(cfg, a.model, a.output, base_model=a.base_model or os.environ.get("BASE_MODEL") or None)
    print(open(rep.table_md).read())
    if a.run:
        step = a.step if a.step is not None else checkpoint_step(a.model)
        log_eval_results(cfg, rep.metrics, step or 0)
        print(f"eval: results logged to run {a.run} at step {step or 0} ({', '.join(cfg.trainer.loggers)} under "
              f"{cfg.trainer.log_dir}/{a.run})")
    skipped = sum(len(v) for v in rep.skipped.values())
    print(f"eval: {rep.generated} new + {rep.resumed} resumed predictions, {skipped} videos skipped, "
          f"{rep.seconds:.1f}s -> {rep.predictions}, {rep.metrics_json}, {rep.table_md}")
    return 0


def cmd_eval_compare(a) -> int:
    from .evaluation.compare import compare_runs, comparison_table

    print(comparison_table(compare_runs(a.a, a.b), a.labels[0], a.labels[1]), end="")
    return 0


def cmd_reframe(a) -> int:
    from .reframe.runner import ReframeOptions, run_reframe
    from .reframe.submission import read_index

    opts = ReframeOptions(method=a.method, model=a.model or "", backend=a.backend, frame_stride=a.frame_stride,
                          num_engines=a.num_engines, on_no_segment=a.on_no_segment)
    rep = run_reframe(read_index(a.index), a.video_dir, a.out, opts)
    print(f"reframe: {rep['ran']} videos run, {rep['resumed']} resumed, {rep['missing']} missing "
          f"({rep['seconds']:.1f}s) -> {a.out} (raw model replies: {a.out}.raw.jsonl)")
    return 0


def cmd_reframe_check(a) -> int:
    from .reframe.submission import read_index, validate

    errors, summary = validate(read_index(a.index), a.predictions, a.video_dir)
    for e in errors[:50]:
        print(e)
    if len(errors) > 50:
        print(f"... and {len(errors) - 50} more errors")
    print(f"reframe-check: {summary['index_videos']} videos in the index, {summary['lines']} lines, "
          f"{summary['videos_with_boxes']} videos with boxes, {summary['boxes']} boxes, {len(errors)} errors")
    return 0 if not errors else 1


def cmd_reframe_preview(a) -> int:
    from .reframe.preview import contact_sheet
    from .reframe.submission import read_submission, video_path

    lines, _ = read_submission(a.predictions)
    line = next((o for o in lines if o.get("video_id") == a.video_id), None)
    if line is None:
        print(f"tempsamp reframe-preview: error: video {a.video_id!r} not in {a.predictions}", file=sys.stderr)
        return 2
    out = contact_sheet(video_path(a.video_dir, a.video_id), line["predictions"], tuple(line["targetRatioWH"]), a.out)
    print(f"reframe-preview: {out}")
    return 0


def cmd_plot(a) -> int:
    from pathlib import Path

    from .plots import plot_runs

    runs = [Path(r) for r in a.run]
    if a.out:
        out = Path(a.out)
    else:  # next to the run, or in the folder that holds them all
        dirs = [r.parent if r.name == "steps.jsonl" else r for r in runs]
        out = (dirs[0] if len(dirs) == 1 else Path(os.path.commonpath([d.absolute() for d in dirs]))) / "curves.png"
    keys = [k for k in (a.keys or "").replace(",", " ").split() if k] or None
    print(f"plot: {plot_runs(runs, out, keys)}")
    return 0


def cmd_demo(a) -> int:
    from .demo import run_demo

    return run_demo(a.out, steps=a.steps, quick=a.quick)


def cmd_recipe_check(a) -> int:
    from .recipe_check import run_recipe_check

    run_recipe_check(a.out, steps=a.steps, config=a.config, overrides=a.overrides)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(prog="tempsamp", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    _add_convert(sub)
    p = sub.add_parser("cache", help="Stage B: decode videos once into a fingerprinted cache")
    p.add_argument("--input", required=True)
    p.add_argument("--output-dir", "--output_dir", dest="output_dir", required=True)
    p.add_argument("--output", required=True, help="trainer JSONL with the successfully cached rows")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rebuild", action="store_true", help="rebuild entries built with other parameters")
    _add_config_args(p)
    p = sub.add_parser("synth", help="generate synthetic videos, raw/trainer JSONL and a bench folder")
    p.add_argument("--out", required=True)
    p.add_argument("--n-train", type=int, default=24)
    p.add_argument("--n-bench", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("build-tiny", help="write a tiny random checkpoint of a supported family")
    p.add_argument("--out", required=True)
    p.add_argument("--family", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl", "qwen3_5"])
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("plan", help="print the placement plan and per-GPU memory estimate for a config")
    p.add_argument("--model-config", default="", help="folder (or config.json) of the model's architecture; default: "
                   "model.path's config.json, else the shipped one named like model.path (tempsamp/placement/model_configs)")
    _add_config_args(p)
    p = sub.add_parser("train", help="train (GRPO or TempSamp) on the Ray actor system")
    _add_config_args(p)
    p = sub.add_parser("eval", help="TimeLens-Bench: R1@0.3/0.5/0.7 and mIoU per dataset for a checkpoint")
    p.add_argument("--model", required=True, help="exported actor folder (global_step_N/actor) or a base model")
    p.add_argument("--base-model", help="processor source when --model has none (env BASE_MODEL)")
    p.add_argument("--bench-dir", help="folder with <dataset>-timelens.json and video_shards/ (env BENCH_DIR)")
    p.add_argument("--datasets", help="comma/space separated, e.g. charades-timelens (env DATASETS)")
    p.add_argument("--output", required=True, help="folder for predictions.jsonl, metrics.json, results.md")
    p.add_argument("--parse-mode", choices=["eval", "training"], default=None)
    p.add_argument("--backend", choices=["auto", "vllm", "hf"], default=None)
    p.add_argument("--num-engines", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--skip-missing-videos", action="store_true", help="skip (and count) missing/undecodable videos")
    p.add_argument("--run", help="also log the results into this training run's trackers (trainer.loggers under "
                   "trainer.log_dir): eval/<dataset>/<metric> at the checkpoint's step")
    p.add_argument("--step", type=int, default=None, help="the step to log at (default: N of global_step_N in --model)")
    _add_config_args(p)
    p = sub.add_parser("eval-compare", help="two eval output folders side by side, with per-query win/tie/loss")
    p.add_argument("a", help="eval output folder A (the baseline)")
    p.add_argument("b", help="eval output folder B")
    p.add_argument("--labels", nargs=2, default=["A", "B"], metavar=("LABEL_A", "LABEL_B"))
    p = sub.add_parser("reframe", help="Highlight Video Re-framing baselines (center | qwen) on Ray")
    p.add_argument("--index", required=True, help="test_index.json")
    p.add_argument("--video-dir", required=True, help="folder with <video_id>.mp4")
    p.add_argument("--out", required=True, help="submission JSONL (appended; finished ids are skipped on rerun)")
    p.add_argument("--method", choices=["center", "qwen"], default="center")
    p.add_argument("--model", help="Qwen-VL model folder (method qwen)")
    p.add_argument("--backend", choices=["auto", "hf", "vllm"], default="auto",
                   help="auto: vllm (1 GPU per engine) when the Ray cluster has GPUs, else hf on CPU")
    p.add_argument("--num-engines", type=int, default=1)
    p.add_argument("--frame-stride", type=int, default=1)
    p.add_argument("--on-no-segment", choices=["whole", "empty"], default="whole",
                   help="stage 1 gave no clip: use the whole video, or predict no highlight")
    p = sub.add_parser("reframe-check", help="validate a re-framing submission against every format rule")
    p.add_argument("--index", required=True)
    p.add_argument("--predictions", required=True)
    p.add_argument("--video-dir", required=True)
    p = sub.add_parser("reframe-preview", help="contact sheet PNG of one video's crops")
    p.add_argument("--predictions", required=True)
    p.add_argument("--video-dir", required=True)
    p.add_argument("--video-id", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("plot", help="training curves (PNG) of one or more runs from their steps.jsonl")
    p.add_argument("--run", action="append", required=True,
                   help="a run's log folder (<trainer.log_dir>/<run>) or its steps.jsonl; repeat for more runs")
    p.add_argument("--out", help="PNG path (default: curves.png in the run folder, or in the folder holding the runs)")
    p.add_argument("--keys", help="row keys to plot, comma separated (default: on-policy score, IoU, format rate, "
                   "GT log-prob)")
    p = sub.add_parser("demo", help="end-to-end CPU demo: GRPO vs TempSamp on synthetic data")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="reduced demo (CI)")
    p = sub.add_parser("recipe-check", help="in-process (no Ray) GRPO vs TempSamp curves on synthetic data")
    p.add_argument("--out", default="outputs/recipe_check")
    p.add_argument("--steps", type=int, default=80, help="steps per algorithm (default 80, ~12 min for both on 2 cores)")
    p.add_argument("--config", default=None, help="default: jobs/configs/demo.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. learner.lr=1e-3")
    a = ap.parse_args(argv)
    handlers = {"recipe-check": cmd_recipe_check, "convert": cmd_convert, "cache": cmd_cache, "synth": cmd_synth, "build-tiny": cmd_build_tiny,
                "plan": cmd_plan, "train": cmd_train, "eval": cmd_eval, "eval-compare": cmd_eval_compare, "demo": cmd_demo,
                "plot": cmd_plot, "reframe": cmd_reframe, "reframe-check": cmd_reframe_check, "reframe-preview": cmd_reframe_preview}
    from .config import ConfigError
    from .data.cache import CacheMismatchError, CacheMissError
    from .data.records import RecordError
    from .data.video import VideoDecodeError
    from .evaluation.bench import BenchError
    from .reframe.submission import ReframeError
    from .models.loading import ModelLoadError
    from .placement.plan import PlacementError
    from .errors import BadSampleError
    from .plots import PlotError
    from .preflight import PreflightError

    try:
        return handlers[a.cmd](a)
    except (ConfigError, RecordError, VideoDecodeError, CacheMismatchError, CacheMissError, PlacementError,
            ModelLoadError, BenchError, ReframeError, PreflightError, BadSampleError, PlotError) as e:
        print(f"tempsamp {a.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
