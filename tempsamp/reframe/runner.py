"""Run a re-framing baseline over an index on Ray. `center` needs only each video's geometry (Ray
tasks, in parallel). `qwen` runs the two stages on engine actors (HF on CPU / vLLM on GPU) with the
decode pool feeding frames. Lines are appended as videos finish (resumable: finished ids are skipped
on rerun); the raw model replies go to `<out>.raw.jsonl` beside the submission."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import msgspec

from ..progress import progress_bar
from .baselines import (STAGE1_PROMPT, STAGE2_PROMPT, boxes_for_clips, center_predictions, keyframes,
                        parse_center, parse_segments, segments_to_frames)
from .submission import IndexEntry, read_submission, video_geometry, video_path

log = logging.getLogger(__name__)


class ReframeOptions(msgspec.Struct, kw_only=True):
    method: str = "center"  # center | qwen
    model: str = ""
    backend: str = "auto"  # auto (vllm when the cluster has GPUs, else hf) | hf | vllm
    frame_stride: int = 1
    num_engines: int = 1
    num_decoders: int = 1
    cpus_per_actor: float = 0.5
    gpus_per_engine: float = -1.0  # -1 = by backend: 1 for vllm, 0 for hf
    stage1_fps: float = 2.0
    max_pixels: int = 360 * 640
    min_pixels: int = 4096
    total_pixels: int = 14_680_064
    max_new_tokens: int = 64
    on_no_segment: str = "whole"  # stage 1 gave no clip: "whole" video as the clip, or "empty" (no highlight)
    call_timeout_s: float = 1800.0
    progress: bool = True


def resolve_backend(opts: ReframeOptions, cluster: dict, notice=print) -> ReframeOptions:
    """`opts` with the engine backend and GPUs per engine decided: backend auto = vllm when `cluster`
    has GPUs, else hf on CPU (one notice line); gpus_per_engine -1 = 1 for vllm, 0 for hf."""
    backend = opts.backend
    if backend == "auto":
        backend = "vllm" if float(cluster.get("GPU", 0.0)) > 0 else "hf"
        if backend == "hf":
            notice("reframe: --backend auto: the Ray cluster has no GPUs, running the hf engine on CPU")
    if backend not in ("hf", "vllm"):
        raise ValueError(f"unknown reframe backend {opts.backend!r} (auto | hf | vllm)")
    gpus = opts.gpus_per_engine if opts.gpus_per_engine >= 0 else (1.0 if backend == "vllm" else 0.0)
    return msgspec.structs.replace(opts, backend=backend, gpus_per_engine=gpus)


def _geometry_task(path: str):
    return video_geometry(path)


def run_reframe(index: list[IndexEntry], video_dir: str, out: str, opts: ReframeOptions) -> dict:
    from ..cluster import init_ray

    out_p = Path(out)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    done = {o["video_id"] for o in read_submission(out_p)[0] if isinstance(o.get("video_id"), str)}
    todo = [e for e in index if e.video_id not in done]
    log.info("reframe: %d videos in the index, %d already done, %d to run (%s)", len(index), len(index) - len(todo),
             len(todo), opts.method)
    t0 = time.time()
    missing = 0
    bar = progress_bar(total=len(todo), desc=f"reframe {opts.method}", unit="video", enabled=opts.progress)
    f = open(out_p, "a")
    raw_f = open(str(out_p) + ".raw.jsonl", "a")

    def emit(e: IndexEntry, preds: list[dict], raw: dict | None = None) -> None:
        f.write(json.dumps({"video_id": e.video_id, "targetRatioWH": list(e.targetRatioWH), "predictions": preds}) + "\n")
        f.flush()
        os.fsync(f.fileno())
        if raw is not None:
            raw_f.write(json.dumps({"video_id": e.video_id, **raw}) + "\n")
            raw_f.flush()
        bar.update(1)

    try:
        present = []
        for e in todo:
            if video_path(video_dir, e.video_id).is_file():
                present.append(e)
            else:  # the original writes the line anyway, with no boxes
                missing += 1
                log.warning("reframe: video %s missing at %s: empty prediction", e.video_id,
                            video_path(video_dir, e.video_id))
                emit(e, [], {"error": "video missing"})
        if present:
            init_ray()
            if opts.method == "center":
                _run_center(present, video_dir, opts, emit)
            elif opts.method == "qwen":
                _run_qwen(present, video_dir, opts, emit)
            else:
                raise ValueError(f"unknown method {opts.method!r} (center | qwen)")
    finally:
        f.close()
        raw_f.close()
        bar.close()
    return {"videos": len(index), "ran": len(todo), "resumed": len(index) - len(todo), "missing": missing,
            "seconds": time.time() - t0}


def _run_center(entries, video_dir, opts, emit) -> None:
    import ray

    task = ray.remote(num_cpus=opts.cpus_per_actor)(_geometry_task)
    refs = {task.remote(str(video_path(video_dir, e.video_id))): e for e in entries}
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=opts.call_timeout_s)
        if not ready:
            raise TimeoutError(f"reframe: no video finished within {opts.call_timeout_s}s")
        e = refs.pop(ready[0])
        n, w, h, fps = ray.get(ready[0])
        emit(e, center_predictions(n, w, h, tuple(e.targetRatioWH), opts.frame_stride),
             {"frames": n, "width": w, "height": h, "fps": fps})


def _run_qwen(entries, video_dir, opts, emit) -> None:
    """Per video: stage 1 on the whole video (decoded at stage1_fps), then stage 2 on keyframes of the
    chosen clip; videos are spread over the engines, one in flight per engine."""
    import ray

    from ..actors.pools import Pools, decode_factory, engine_factory
    from ..cluster import cluster_resources
    from ..data.video import VideoParams
    from ..models.loading import PATCH_SIZE, detect_family, load_processor
    from ..models.policy import render_prompt
    from ..placement.plan import make_serving_plan
    from ..rollout.base import PromptRequest, SamplingSpec

    if not opts.model:
        raise ValueError("--method qwen needs --model DIR")
    family = detect_family(opts.model)
    params = VideoParams(fps=opts.stage1_fps, max_frames=0, min_pixels=opts.min_pixels, max_pixels=opts.max_pixels,
                         total_pixels=opts.total_pixels, patch_size=PATCH_SIZE[family])
    processor = load_processor(opts.model)
    p1 = render_prompt(processor, "<video>" + STAGE1_PROMPT)
    p2 = render_prompt(processor, "<video>" + STAGE2_PROMPT)
    spec = SamplingSpec(n=1, greedy=True, temperature=0.0, max_new_tokens=opts.max_new_tokens)
    cluster = cluster_resources()
    opts = resolve_backend(opts, cluster)
    kw = {"dtype": "float32"} if opts.backend == "hf" else {"dtype": "bfloat16", "enforce_eager": True}
    plan = make_serving_plan(opts.num_engines, opts.gpus_per_engine, opts.cpus_per_actor, opts.num_decoders,
                             cluster, engines_by="--num-engines x gpus_per_engine (1 with --backend vllm)",
                             decoders_by="ReframeOptions.num_decoders x cpus_per_actor")
    pools = Pools(plan, {"rollout": engine_factory(opts.backend, opts.model, kw), "decode": decode_factory(params)},
                  "reframe", opts.call_timeout_s)
    engines, decoders = pools.engines, pools.decode
    try:
        geom_task = ray.remote(num_cpus=0)(_geometry_task)
        queue = list(entries)
        state: dict = {}  # ref -> (engine index, entry, stage, context)
        free = list(range(len(engines)))
        k = 0

        def start(i: int, e: IndexEntry) -> None:
            nonlocal k
            path = str(video_path(video_dir, e.video_id))
            vref = decoders[k % len(decoders)].decode_with.remote(path, params)
            k += 1
            ref = engines[i].generate.remote([PromptRequest(key=0, prompt_text=p1)], spec, vref)
            state[ref] = (i, e, 1, {"path": path, "geom": ray.get(geom_task.remote(path))})

        while queue or state:
            while free and queue:
                start(free.pop(0), queue.pop(0))
            ready, _ = ray.wait(list(state), num_returns=1, timeout=opts.call_timeout_s)
            if not ready:
                raise TimeoutError(f"reframe: no engine call finished within {opts.call_timeout_s}s")
            i, e, stage, ctx = state.pop(ready[0])
            groups = ray.get(ready[0])
            n, w, h, fps = ctx["geom"]
            ratio = tuple(e.targetRatioWH)
            if stage == 1:
                text = groups[0].texts[0]
                segs = parse_segments(text)
                clips = segments_to_frames(segs, fps, n)
                ctx["stage1"] = text
                if not clips:
                    if opts.on_no_segment == "empty":
                        emit(e, [], {"stage1": text, "clips": [], "fallback": "no segment: empty"})
                        free.append(i)
                        continue
                    clips = [(0, n - 1)]
                    ctx["fallback"] = "no segment: whole video"
                ctx["clips"] = clips
                ctx["keys"] = keyframes(clips)
                reqs, vids = [], []
                for j, fr in enumerate(ctx["keys"]):
                    reqs.append(PromptRequest(key=j, prompt_text=p2))
                    vids.append(decoders[j % len(decoders)].decode_frames.remote(ctx["path"], [fr, fr], params))
                ref = engines[i].generate.remote(reqs, spec, *vids)
                state[ref] = (i, e, 2, ctx)
                continue
            texts = [g.texts[0] for g in sorted(groups, key=lambda g: g.key)]
            centres = {}
            for fr, t in zip(ctx["keys"], texts):
                c = parse_center(t, w, h)
                if c is not None:
                    centres[fr] = c
            preds = boxes_for_clips(ctx["clips"], centres, w, h, ratio, opts.frame_stride)
            emit(e, preds, {"stage1": ctx["stage1"], "clips": ctx["clips"], "stage2": dict(zip(ctx["keys"], texts)),
                            "parsed_keyframes": len(centres), "fallback": ctx.get("fallback", "")
                            + ("" if centres else "; no keyframe parsed: centred boxes")})
            free.append(i)
    finally:
        pools.shutdown()
