"""Per-GPU memory estimate of every GPU role, from the model's config.json alone (no weights).

`model_shape` reads a config.json (a model folder, or one of the architecture-only configs shipped in
`model_configs/`: Qwen3.5-4B, Qwen2.5-VL-7B-Instruct, Qwen3-VL-8B-Instruct) and counts parameters
exactly by building the model on torch's meta device (transformers; nothing is allocated). Everything
else is pure arithmetic on that `ModelShape`, tested without Ray or a GPU:

- learner rank (`learner_memory`): parameters, gradients and AdamW state under FSDP2 sharding over the
  learner ranks (the model trains in `model.dtype`: gradients and both AdamW moments in that dtype, no
  fp32 master copy — what LearnerCore builds); FSDP2's unsharded working set (the root unit — vision
  tower, embeddings, lm_head — stays gathered through forward and backward; two decoder layers are
  gathered at a time, plus one layer's unsharded gradients); activations of one micro-batch with and
  without gradient checkpointing; the response logits; the vision tower's transient (frozen) or saved
  (trained) activations; a runtime reserve (CUDA context, NCCL buffers, allocator slack).
- rollout engine GPU (`rollout_memory`): weights / TP, vLLM's profiled activations (a chunked-prefill
  batch, the sampler's logits, one max-size video through the vision encoder), a runtime reserve, and the
  KV cache (plus Gated-DeltaNet state for Qwen3.5) of one `rollout.max_model_len` sequence, which must fit
  in what `rollout.gpu_memory_utilization` leaves.

Micro-batch tokens (learner.micro_batch_tokens = T, prompt P = data.max_prompt_length, response
R = rollout.max_new_tokens, n = rollout.n): unshared, a micro-batch holds rows = clamp(T // (P + R), 1, n)
whole rows, each with its own copy of the video; with `learner.shared_prefix` packed (full attention,
sdpa/eager) one prefix of P tokens and k = clamp((T - P) // R, 1, n) responses; shared but not packed
(Qwen3.5's linear attention, flash-attention 2: learner/step.py) whole rows as unshared, the video once.

Per-token activation sizes are counted tensor by tensor (what autograd saves in a decoder layer with
flash/SDPA attention, no P x P scores); they are estimates, validated against measured peaks of the tiny
models on CPU (benchmarks/memory_plan.py, RESULTS.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import msgspec

GiB = 1 << 30
MODEL_CONFIGS = Path(__file__).with_name("model_configs")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
RUNTIME_RESERVE_GIB = 2.0  # learner: CUDA context + NCCL buffers + allocator slack (assumed, not measured here)
ENGINE_RESERVE_GIB = 1.5  # engine: CUDA context + CUDA graphs (assumed; 0.75 with enforce_eager)
VLLM_BATCHED_TOKENS = 8192  # vLLM's default chunked-prefill budget on GPU (max_num_batched_tokens)
VLLM_MAX_SEQS = 256  # vLLM's default max_num_seqs (sampler logits rows)


class ModelShape(msgspec.Struct, frozen=True, kw_only=True):
    """What the estimate needs from a config.json."""

    name: str
    model_type: str
    params_total: int
    params_vision: int
    params_root: int  # outside the decoder layers: vision, embeddings, lm_head, final norm (FSDP2 root unit)
    params_layer_max: int  # the largest decoder layer (one FSDP2 unit)
    vocab: int
    tied_embeddings: bool  # lm_head shares the input embedding
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    qk_norm: bool
    attn_output_gate: bool
    full_attention_layers: int  # layers with a per-token KV cache
    linear_attention_layers: int  # Gated-DeltaNet layers (Qwen3.5): a fixed state per sequence
    lin_k_heads: int = 0
    lin_v_heads: int = 0
    lin_k_dim: int = 0
    lin_v_dim: int = 0
    lin_conv_kernel: int = 0
    vision_hidden: int
    vision_intermediate: int
    vision_depth: int
    vision_patch_dim: int  # values per patch: channels x temporal_patch x patch^2
    merge: int  # spatial merge: merge^2 patches -> one LM token


class Estimate(msgspec.Struct, frozen=True):
    """Named parts in bytes; `total` is their sum."""

    parts: dict[str, int]
    notes: dict[str, str] = {}

    @property
    def total(self) -> int:
        return sum(self.parts.values())


# ---- config.json -> ModelShape ----------------------------------------------------------------------

def find_model_config(model_path: str, explicit: str = "") -> Path:
    """The config.json the estimate reads: `explicit` (a folder or a config.json), else `model_path`'s own
    config.json, else the shipped architecture config named like model_path's last component
    (model.path=/data/models/Qwen3.5-4B -> model_configs/Qwen3.5-4B). Error names what was tried."""
    tried = []
    for cand in ([explicit] if explicit else []) + ([model_path] if model_path else []):
        p = Path(cand)
        p = p if p.name == "config.json" else p / "config.json"
        tried.append(str(p))
        if p.is_file():
            return p
        if explicit:
            raise FileNotFoundError(f"model config {p} not found")
    if model_path:
        name = Path(model_path.rstrip("/")).name
        for cand in (name, f"{name}-Instruct", name.removesuffix("-Instruct")):
            p = MODEL_CONFIGS / cand / "config.json"
            tried.append(str(p))
            if p.is_file():
                return p
    shipped = ", ".join(sorted(d.name for d in MODEL_CONFIGS.iterdir() if (d / "config.json").is_file()))
    raise FileNotFoundError(f"no config.json for model.path={model_path!r} (tried {', '.join(tried) or 'nothing'}); "
                            f"shipped architecture configs: {shipped}; pass --model-config DIR")


def _text(cfg) -> object:
    return getattr(cfg, "text_config", None) or cfg


def model_shape(config, name: str = "") -> ModelShape:
    """ModelShape of a transformers config object, or of a config.json path / its folder. Parameter
    counts are exact: the model is built on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    if isinstance(config, (str, Path)):
        p = Path(config)
        folder = p.parent if p.name == "config.json" else p
        name = name or folder.name
        try:
            config = AutoConfig.from_pretrained(str(folder))
        except (OSError, ValueError, json.JSONDecodeError) as e:
            raise ValueError(f"{folder / 'config.json'}: not a usable model config ({e})") from None
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    total = vision = layers_sum = 0
    per_layer: dict[str, int] = {}
    for n, prm in model.named_parameters():
        k = prm.numel()
        total += k
        if ".visual." in n or n.startswith("visual."):
            vision += k
        if ".layers." in n and "language_model" in n:
            idx = n.split(".layers.")[1].split(".")[0]
            per_layer[idx] = per_layer.get(idx, 0) + k
            layers_sum += k
    t, v = _text(config), config.vision_config
    types = list(getattr(t, "layer_types", None) or ["full_attention"] * t.num_hidden_layers)
    n_full = sum(1 for x in types if x == "full_attention")
    heads = t.num_attention_heads
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // heads
    in_ch = getattr(v, "in_channels", None) or getattr(v, "in_chans", 3)
    return ModelShape(
        name=name or getattr(config, "_name_or_path", "") or config.model_type, model_type=config.model_type,
        params_total=total, params_vision=vision, params_root=total - layers_sum,
        params_layer_max=max(per_layer.values(), default=0), vocab=t.vocab_size,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False) or getattr(t, "tie_word_embeddings", False)),
        hidden=t.hidden_size,
        intermediate=t.intermediate_size, layers=t.num_hidden_layers, heads=heads, kv_heads=t.num_key_value_heads,
        head_dim=head_dim, qk_norm=config.model_type != "qwen2_5_vl",
        attn_output_gate=bool(getattr(t, "attn_output_gate", False)), full_attention_layers=n_full,
        linear_attention_layers=len(types) - n_full, lin_k_heads=getattr(t, "linear_num_key_heads", 0) or 0,
        lin_v_heads=getattr(t, "linear_num_value_heads", 0) or 0, lin_k_dim=getattr(t, "linear_key_head_dim", 0) or 0,
        lin_v_dim=getattr(t, "linear_value_head_dim", 0) or 0,
        lin_conv_kernel=getattr(t, "linear_conv_kernel_dim", 0) or 0,
        vision_hidden=v.hidden_size, vision_intermediate=v.intermediate_size, vision_depth=v.depth,
        vision_patch_dim=in_ch * v.temporal_patch_size * v.patch_size ** 2, merge=v.spatial_merge_size)


# ---- pure estimates ---------------------------------------------------------------------------------

def _lin_conv_dim(s: ModelShape) -> int:
    return 2 * s.lin_k_heads * s.lin_k_dim + s.lin_v_heads * s.lin_v_dim


def layer_activation_bytes(s: ModelShape, b: int, linear: bool = False) -> float:
    """Bytes per token that autograd keeps for one decoder layer's backward (dtype size `b`)."""
    h, i = s.hidden, s.intermediate
    mlp = 2 * h + 4 * i  # post-attention norm in + normed; gate, up, act(gate), act*up
    if linear:  # Gated-DeltaNet: qkv proj out, conv out, silu out; z, gates; q,k repeated to v heads; output
        c = _lin_conv_dim(s)
        nv = s.lin_v_heads
        mixer = 3 * c + 2 * nv * s.lin_k_dim + 4 * nv * s.lin_v_dim + 64 * nv  # + chunk attention matrix
        return b * (2 * h + mixer + mlp) + 4 * 2 * nv
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    attn = 2 * q + 2 * kv + (q + kv if s.qk_norm else 0) + (3 * q if s.attn_output_gate else 0)
    return b * (2 * h + attn + mlp) + 4 * s.heads  # + the attention's fp32 log-sum-exp


def lm_activation_bytes(s: ModelShape, b: int) -> tuple[float, float]:
    """(sum over layers, largest layer) of `layer_activation_bytes` per token."""
    full = layer_activation_bytes(s, b)
    lin = layer_activation_bytes(s, b, linear=True) if s.linear_attention_layers else 0.0
    return full * s.full_attention_layers + lin * s.linear_attention_layers, max(full, lin)


def micro_batch(prompt: int, response: int, n: int, micro_batch_tokens: int, shared_prefix: bool,
                packed: bool = True) -> tuple[int, int, int]:
    """(LM tokens, response rows, video copies) of one micro-batch (see the module docstring). A shared
    prefix that is not `packed` (learner/step.py: linear-attention layers or flash-attention 2) encodes
    the video once but still runs every row's prompt through the LM."""
    if shared_prefix and not packed:
        rows = min(n, max(1, micro_batch_tokens // max(prompt + response, 1)))
        return rows * (prompt + response), rows, 1
    if shared_prefix:
        k = min(n, max(1, (micro_batch_tokens - prompt) // max(response, 1)))
        return prompt + k * response, k, 1
    rows = min(n, max(1, micro_batch_tokens // max(prompt + response, 1)))
    return rows * (prompt + response), rows, rows


def learner_memory(s: ModelShape, *, dtype_bytes: int, ranks: int, fsdp: bool, micro_batch_tokens: int,
                   prompt_tokens: int, response_tokens: int, n: int, gradient_checkpointing: bool,
                   shared_prefix: bool, freeze_vision: bool, use_kl: bool, video_tokens: int | None = None,
                   reserve_gib: float = RUNTIME_RESERVE_GIB, packed: bool = True) -> Estimate:
    """One learner rank's peak (bytes), by part."""
    b = dtype_bytes
    shard = ranks if (fsdp and ranks > 1) else 1
    trainable = s.params_total - (s.params_vision if freeze_vision else 0)
    parts: dict[str, int] = {
        "parameters": math.ceil(s.params_total * b / shard),
        "gradients": math.ceil(trainable * b / shard),
        "AdamW state": math.ceil(2 * trainable * b / shard),
    }
    if use_kl:
        parts["reference model"] = math.ceil(s.params_total * b / shard)
    if shard > 1:
        root_trainable = s.params_root - (s.params_vision if freeze_vision else 0)
        parts["FSDP2 gathered (root + 2 layers, 1 layer's grads)"] = (
            (s.params_root + 3 * s.params_layer_max + root_trainable) * b)
    tokens, rows, copies = micro_batch(prompt_tokens, response_tokens, n, micro_batch_tokens, shared_prefix, packed)
    total_layers, largest = lm_activation_bytes(s, b)
    vt = prompt_tokens if video_tokens is None else video_tokens
    patches = vt * s.merge ** 2 * copies
    vblock = b * (8 * s.vision_hidden + 3 * s.vision_intermediate)  # qkv, attention out, norms, MLP per patch
    # the processor's float32 pixels (one copy per row unshared) stay alive through the step, + a cast copy
    parts["video pixels"] = patches * s.vision_patch_dim * (4 + (b if b != 4 else 0))
    if not freeze_vision:  # a trained tower keeps every block's activations until its backward
        parts["vision tower activations (trained)"] = patches * vblock * s.vision_depth
    # The rest is the largest of the step's phases, which do not overlap in time:
    embed = tokens * s.hidden * b * 2  # inputs_embeds + final norm
    saved = tokens * s.layers * s.hidden * b if gradient_checkpointing else tokens * total_layers
    logits = rows * response_tokens * s.vocab * (b + (4 if b != 4 else 0) + 4)  # + float32 copy, log-softmax
    phases = {
        "vision forward": patches * vblock if freeze_vision else 0,  # one frozen block's transient
        "logits + saved activations": saved + embed + logits,  # end of forward / start of backward
        "layer backward": saved + embed + 2 * tokens * largest,  # one layer (recomputed) and its gradients
        "tied embedding gradient": s.vocab * s.hidden * b if s.tied_embeddings else 0,  # end of backward
    }
    peak = max(phases, key=phases.get)
    parts["activations (largest phase)"] = int(phases[peak])
    if reserve_gib:
        parts["runtime reserve"] = int(reserve_gib * GiB)
    notes = {"tokens": f"{tokens} LM tokens, {rows} response row{'' if rows == 1 else 's'}, "
                       f"{copies} video cop{'y' if copies == 1 else 'ies'}",
             "phases": ", ".join(f"{k} {v / GiB:.2f}" for k, v in phases.items())}
    return Estimate(parts, notes)


def kv_bytes_per_token(s: ModelShape, b: int, tp: int) -> int:
    return s.full_attention_layers * 2 * math.ceil(s.kv_heads / tp) * s.head_dim * b


def state_bytes_per_sequence(s: ModelShape, b: int, tp: int) -> int:
    """Gated-DeltaNet recurrent state (float32) + conv state per sequence (0 for full attention models)."""
    if not s.linear_attention_layers:
        return 0
    ssm = math.ceil(s.lin_v_heads / tp) * s.lin_k_dim * s.lin_v_dim * 4
    conv = math.ceil(_lin_conv_dim(s) / tp) * max(s.lin_conv_kernel - 1, 0) * b
    return s.linear_attention_layers * (ssm + conv)


def rollout_memory(s: ModelShape, *, dtype_bytes: int, tp: int, gpu_bytes: int, gpu_memory_utilization: float,
                   max_model_len: int, max_new_tokens: int, enforce_eager: bool = False) -> Estimate:
    """One engine GPU: what vLLM reserves inside gpu_memory_utilization x GPU memory, and the KV cache
    left for sequences. parts: weights, activations (profiled), reserve, KV cache (what is left)."""
    b = dtype_bytes
    budget = int(gpu_memory_utilization * gpu_bytes)
    weights = math.ceil(s.params_total * b / tp)
    batched = min(max_model_len, VLLM_BATCHED_TOKENS)
    _, largest = lm_activation_bytes(s, b)
    lm_act = batched * largest / tp + VLLM_MAX_SEQS * s.vocab * 4 * 2  # one layer's transients + sampler logits
    patches = max(max_model_len - max_new_tokens, 0) * s.merge ** 2  # one video filling the prompt
    enc = patches * (b * (8 * s.vision_hidden + 3 * s.vision_intermediate) + s.vision_patch_dim * (4 + b))
    reserve = int((0.75 if enforce_eager else ENGINE_RESERVE_GIB) * GiB)
    kv = budget - weights - int(lm_act + enc) - reserve
    need = kv_bytes_per_token(s, b, tp) * max_model_len + state_bytes_per_sequence(s, b, tp)
    parts = {"weights": weights, "activations (profiled: prefill batch, sampler, encoder)": int(lm_act + enc),
             "runtime reserve": reserve, "KV cache (what is left)": kv}
    notes = {"budget": str(budget), "need_one": str(need), "seqs": str(max(kv, 0) // max(need, 1)),
             "max_model_len": str(max_model_len)}
    return Estimate(parts, notes)


# ---- a config's plan --------------------------------------------------------------------------------

class RoleMemory(msgspec.Struct, frozen=True):
    role: str
    columns: dict[str, Estimate]  # scenario -> estimate
    chosen: str  # the config's own scenario
    capacity: int  # bytes the role may use on one GPU
    shortfall: int  # bytes over capacity in the chosen scenario (0 = fits)
    why: str = ""  # what sized it (named when it does not fit)


class MemoryPlan(msgspec.Struct, frozen=True):
    shape: ModelShape
    gpu_bytes: int
    dtype: str
    roles: list[RoleMemory]


def _scenario(ckpt: bool, shared: bool) -> str:
    return f"{'ckpt' if ckpt else 'no-ckpt'}{'+shared' if shared else ''}"


def memory_plan(cfg, shape: ModelShape) -> MemoryPlan:
    """Estimate every GPU role of `cfg` (learner: the four checkpointing x shared-prefix scenarios,
    the config's own marked; rollout: one engine GPU)."""
    lc, r, p = cfg.learner, cfg.rollout, cfg.placement
    b = DTYPE_BYTES[cfg.model.dtype]
    gpu = int(p.gpu_memory_gib * GiB)
    shared_cfg = bool(getattr(lc, "shared_prefix", True))
    learner_cap = int(gpu * (1 - r.gpu_memory_utilization)) if p.colocate else gpu
    # the shared prefix packs the prompt once through the LM only with full attention and sdpa/eager
    # (models/shared_prefix.py); on a GPU "auto" attention is flash-attention 2 (the gpu extra has it)
    attn = cfg.model.attn_implementation
    attn = ("flash_attention_2" if p.use_gpus else "sdpa") if attn == "auto" else attn
    packed = shape.linear_attention_layers == 0 and attn in ("sdpa", "eager")
    cols = {}
    for ckpt in (True, False):
        for shared in (True, False):
            cols[_scenario(ckpt, shared)] = learner_memory(
                shape, dtype_bytes=b, ranks=lc.num_ranks, fsdp=lc.fsdp, micro_batch_tokens=lc.micro_batch_tokens,
                prompt_tokens=cfg.data.max_prompt_length, response_tokens=r.max_new_tokens, n=r.n,
                gradient_checkpointing=ckpt, shared_prefix=shared, freeze_vision=lc.freeze_vision_tower,
                use_kl=cfg.algorithm.use_kl, packed=packed)
    chosen = _scenario(lc.gradient_checkpointing, shared_cfg)
    roles = [RoleMemory("learner", cols, chosen, learner_cap, max(0, cols[chosen].total - learner_cap),
                        "learner.micro_batch_tokens, learner.num_ranks, learner.gradient_checkpointing, "
                        "data.max_prompt_length")]
    if r.backend == "vllm":
        est = rollout_memory(shape, dtype_bytes=b, tp=r.tensor_parallel_size, gpu_bytes=gpu,
                             gpu_memory_utilization=r.gpu_memory_utilization, max_model_len=r.max_model_len,
                             max_new_tokens=r.max_new_tokens, enforce_eager=r.enforce_eager)
        short = max(0, int(est.notes["need_one"]) - est.parts["KV cache (what is left)"])
        why = "rollout.gpu_memory_utilization, rollout.max_model_len, rollout.tensor_parallel_size"
        roles.append(RoleMemory("rollout", {"engine GPU": est}, "engine GPU", int(est.notes["budget"]), short, why))
    return MemoryPlan(shape, gpu, cfg.model.dtype, roles)


def check_memory(plan: MemoryPlan) -> None:
    """PlacementError naming the first role that does not fit one GPU, by how much, and its keys."""
    from .plan import PlacementError

    for rm in plan.roles:
        if rm.shortfall <= 0:
            continue
        est = rm.columns[rm.chosen]
        if rm.role == "rollout":
            need = int(est.notes["need_one"])
            raise PlacementError(
                f"role `rollout` does not fit: one sequence of rollout.max_model_len={est.notes['max_model_len']} needs "
                f"{need / GiB:.1f} GiB of KV cache but only {max(est.parts['KV cache (what is left)'], 0) / GiB:.1f} GiB "
                f"are left of gpu_memory_utilization x {plan.gpu_bytes / GiB:g} GiB = {rm.capacity / GiB:.1f} GiB after "
                f"weights and activations; short by {rm.shortfall / GiB:.1f} GiB (sized by {rm.why})")
        big = max(est.parts, key=est.parts.get)
        raise PlacementError(
            f"role `learner` does not fit: ~{est.total / GiB:.1f} GiB per GPU ({rm.chosen}) but a GPU gives it "
            f"{rm.capacity / GiB:.1f} GiB (placement.gpu_memory_gib{', minus the colocated engine' if rm.capacity < plan.gpu_bytes else ''}); "
            f"short by {rm.shortfall / GiB:.1f} GiB; largest part: {big} {est.parts[big] / GiB:.1f} GiB "
            f"(sized by {rm.why})")


def check_run_memory(cfg, model_dir: str) -> MemoryPlan | None:
    """What a training run checks before any actor starts: on a GPU plan with `placement.memory_check`
    on, `tempsamp plan`'s estimate for the model folder the run uses (its config.json, else the shipped
    architecture config of the same name); PlacementError naming the role that does not fit. None when
    there is nothing to check (CPU plan, or the check switched off)."""
    if not cfg.placement.use_gpus or not cfg.placement.memory_check:
        return None
    plan = memory_plan(cfg, model_shape(find_model_config(model_dir)))
    check_memory(plan)
    return plan


def format_memory(plan: MemoryPlan) -> str:
    s = plan.shape
    lines = [f"memory per GPU (GiB) — {s.name}: {s.params_total / 1e9:.2f} B parameters "
             f"({s.params_vision / 1e9:.2f} B vision), {plan.dtype}, GPU {plan.gpu_bytes / GiB:g} GiB "
             "(placement.gpu_memory_gib)"]
    for rm in plan.roles:
        names = list(rm.columns)
        rows = [[f"{rm.role}"] + [n + (" *" if n == rm.chosen else "") for n in names]]
        keys: list[str] = []
        for est in rm.columns.values():
            keys += [k for k in est.parts if k not in keys]
        for k in keys:
            rows.append(["  " + k] + [f"{rm.columns[n].parts.get(k, 0) / GiB:.2f}" for n in names])
        if rm.role == "learner":
            rows.append(["  total"] + [f"{rm.columns[n].total / GiB:.2f}" for n in names])
            rows.append([f"  fits {rm.capacity / GiB:.1f} GiB"] + [
                "yes" if rm.columns[n].total <= rm.capacity else f"NO (+{(rm.columns[n].total - rm.capacity) / GiB:.1f})"
                for n in names])
        else:
            est = rm.columns[names[0]]
            need, seqs = int(est.notes["need_one"]), int(est.notes["seqs"])
            rows.append([f"  budget (gpu_memory_utilization)", f"{rm.capacity / GiB:.2f}"])
            rows.append(["  one max_model_len sequence (KV + state)", f"{need / GiB:.2f}"])
            rows.append(["  max_model_len sequences that fit", f"{seqs}" + ("" if seqs >= 1 else "  NO")])
        widths = [max(len(row[i]) if i < len(row) else 0 for row in rows) for i in range(len(rows[0]))]
        lines.append("")
        for j, row in enumerate(rows):
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
            if j == 0:
                lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    learner = next((rm for rm in plan.roles if rm.role == "learner"), None)
    if learner is not None:
        for shared in (True, False):
            n = _scenario(True, shared)
            lines.append(f"micro-batch {'shared prefix' if shared else 'prefix per row'}: {learner.columns[n].notes['tokens']}")
    if learner is not None:
        lines.append(f"activation phases of this config (GiB): {learner.columns[learner.chosen].notes['phases']}")
    lines.append("ckpt = learner.gradient_checkpointing, shared = learner.shared_prefix; * = this config. "
                 "How it is estimated: tempsamp/placement/memory.py; checked against measured peaks: "
                 "benchmarks/RESULTS.md (memory_plan).")
    return "\n".join(lines)
