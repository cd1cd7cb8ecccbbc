"""HF (transformers generate) rollout engine — same interface as the vLLM engine."""

from __future__ import annotations

from ..models.loading import load_model, load_processor
from ..models.policy import PromptInputs, build_inputs, generate
from ..models.text_tokenizer import special_ids
from ..sync.weights import IN_FLIGHT, BufferRing, SyncPlan, WeightSyncError, load_into_hf, make_group, receive_plan
from .base import RolloutGroup, SamplingSpec, request_seed


def sample_group(model, tokenizer, inputs: PromptInputs, key: int, spec: SamplingSpec, version: int,
                 engine: str = "") -> RolloutGroup:
    """spec.n responses of `model` to one prompt (seed request_seed(spec.seed, key)) as a RolloutGroup."""
    eos_id, pad_id = special_ids(tokenizer)
    seed = None if spec.seed is None else request_seed(spec.seed, key)
    ids, mask, lp = generate(model, inputs, n=spec.n, max_new_tokens=spec.max_new_tokens, temperature=spec.temperature,
                             top_p=spec.top_p, top_k=spec.top_k, eos_id=eos_id, pad_id=pad_id, greedy=spec.greedy,
                             seed=seed)
    lens = mask.sum(1).tolist()
    rows = [ids[r, : lens[r]].tolist() for r in range(ids.shape[0])]
    return RolloutGroup(key=key, response_ids=rows, texts=tokenizer.batch_decode(rows, skip_special_tokens=True),
                        logprobs=[lp[r, : lens[r]].tolist() for r in range(ids.shape[0])], weight_version=version,
                        engine=engine)


class HFEngine:
    def __init__(self, model_dir: str, dtype: str = "float32", device: str = "cpu", name: str = "hf-0",
                 attn_implementation: str = "auto"):
        self.model = load_model(model_dir, dtype=dtype, device=device, attn_implementation=attn_implementation)
        self.model.eval()
        self.processor = load_processor(model_dir)
        self.eos_id, self.pad_id = special_ids(self.processor.tokenizer)
        self.name, self.version, self.device = name, 0, device
        self._pg = None
        self._ring = BufferRing(IN_FLIGHT + 1)  # receive buffers reused across syncs (load_into_hf copies)

    def inputs(self, prompt_text: str, video) -> PromptInputs:
        return build_inputs(self.processor, prompt_text, video)

    def generate(self, requests: list, videos: list, spec: SamplingSpec) -> list[RolloutGroup]:
        return [sample_group(self.model, self.processor.tokenizer, self.inputs(req.prompt_text, video), req.key, spec,
                             self.version, self.name)
                for req, video in zip(requests, videos)]

    def init_weight_group(self, host, port, rank, world_size, backend, timeout_s) -> bool:
        self._pg, self._store = make_group(host, port, rank, world_size, backend, timeout_s)
        return True

    def receive_weights(self, plan: SyncPlan) -> dict:
        if self._pg is None:
            raise WeightSyncError(f"{self.name}: weight group not initialised")
        n = 0
        for named in receive_plan(self._pg, plan, device=self.device, ring=self._ring):
            n += load_into_hf(self.model, named)
        self.version = plan.version
        return {"version": plan.version, "tensors": n}

    def named_weights(self, names: list[str]) -> dict:
        from ..models.names import memory_name

        params = dict(self.model.named_parameters())
        return {n: params[memory_name(n)].detach().float().clone() for n in names if memory_name(n) in params}
