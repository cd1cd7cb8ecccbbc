"""Policy helpers shared by rollout and learner: model inputs from a record + decoded video,
HF generation of n responses, and per-token log-probs of given responses.

On-policy and GT rows go through the same `response_logprobs` path. Logits are computed only
at response positions (hidden states -> lm_head on a slice), so memory is O(B * L * V) for the
response only, not the prompt.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Sequence

import torch

# Frames from the Ray object store are read-only numpy views; the HF video processor only reads them
# (torch.from_numpy(...).contiguous() copies), so its "not writable" warning is noise.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

from ..data.prompts import split_problem
from .shared_prefix import packed_logits, shared_mode, vision_once_logits

if TYPE_CHECKING:  # torch + transformers are all this module needs at run time (benchmarks/gpu_learner.py)
    from ..data.video import VideoSample

VISUAL_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def render_prompt(processor, problem: str, thinking: bool = False) -> str:
    """Chat-templated prompt text (generation prompt added, thinking disabled)."""
    msgs = [{"role": "user", "content": split_problem(problem)}]
    kw = {"enable_thinking": thinking} if "enable_thinking" in (processor.chat_template or "") else {}
    return processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kw)


@dataclass
class PromptInputs:
    """One prompt's processor outputs (batch of 1): input_ids (1, P) and the visual tensors."""

    input_ids: torch.Tensor
    visual: dict
    mm_token_type_ids: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])


def build_inputs(processor, prompt_text: str, video: VideoSample | None) -> PromptInputs:
    if video is None:  # text-only prompt (diagnostics, weight-sync checks)
        out = processor(text=[prompt_text], return_tensors="pt")
    else:
        out = processor(text=[prompt_text], videos=[video.frames], video_metadata=[video.meta.hf_metadata()],
                        do_sample_frames=False, do_resize=False, return_tensors="pt")
    visual = {k: out[k] for k in VISUAL_KEYS if k in out}
    return PromptInputs(input_ids=out["input_ids"], visual=visual, mm_token_type_ids=out.get("mm_token_type_ids"))


def _trim_responses(seqs: torch.Tensor, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each row after its first EOS (kept); mask = 1 up to and including EOS."""
    is_eos = seqs == eos_id
    first = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full((seqs.shape[0],), seqs.shape[1] - 1))
    pos = torch.arange(seqs.shape[1])[None, :]
    mask = (pos <= first[:, None]).long()
    ids = torch.where(mask.bool(), seqs, torch.full_like(seqs, pad_id))
    return ids, mask


@torch.no_grad()
def generate(model, inputs: PromptInputs, n: int, max_new_tokens: int, temperature: float = 1.0,
             top_p: float = 1.0, top_k: int = -1, eos_id: int = 151645, pad_id: int = 151643,
             greedy: bool = False, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n responses for one prompt. Returns (ids (n, L), mask (n, L), logprobs (n, L)) where
    logprobs are of the sampled tokens under the distribution generate sampled from (the behaviour
    policy): the processed scores, after the temperature / top-k / top-p warpers (greedy: the
    plain log-softmax). The learner's `response_logprobs(..., temperature)` computes the same
    quantity when top-k / top-p keep the whole distribution."""
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    kw = dict(max_new_tokens=max_new_tokens, num_return_sequences=n, return_dict_in_generate=True,
              output_scores=True, eos_token_id=eos_id, pad_token_id=pad_id)
    if greedy:
        kw.update(do_sample=False, num_return_sequences=1)
    else:
        kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k if top_k > 0 else None)
    extra = {k: v.to(device) for k, v in inputs.visual.items()}
    if inputs.mm_token_type_ids is not None:
        extra["mm_token_type_ids"] = inputs.mm_token_type_ids.to(device)
    out = model.generate(input_ids=inputs.input_ids.to(device),
                         attention_mask=torch.ones_like(inputs.input_ids).to(device), **extra, **kw)
    seqs = out.sequences[:, inputs.length:].cpu()
    ids, mask = _trim_responses(seqs, eos_id, pad_id)
    scores = torch.stack(out.scores, dim=1).float().cpu()  # (n, L, V) processed: -inf outside top-k/top-p
    lp = torch.log_softmax(scores, -1).gather(-1, seqs[..., None]).squeeze(-1)
    return ids, mask, torch.where(mask.bool(), lp, torch.zeros_like(lp))


class ResponseScores(NamedTuple):
    logprobs: torch.Tensor  # (B, L) at the temperature, untruncated; carries the graph outside no_grad
    entropy: torch.Tensor | None  # (B, L) of that distribution, detached (None unless asked)
    sampled_logprobs: torch.Tensor  # (B, L) detached, under the distribution the engine samples from


def truncate_logits(logits: torch.Tensor, top_k: int = -1, top_p: float = 1.0) -> torch.Tensor:
    """(N, V) tempered logits with the engine's top-k / top-p filter applied (-inf outside): the rule of
    vLLM and transformers — keep the logits >= the k-th largest, then drop the smallest kept tokens while
    their cumulative probability stays <= 1 - top_p, always keeping the most likely one. With top-k
    only the k largest are looked at (no sort of the whole vocabulary)."""
    if top_k <= 0 and top_p >= 1.0:
        return logits
    V = logits.shape[-1]
    if 0 < top_k < V:
        thr = _top_k_threshold(logits.topk(top_k, dim=-1).values, top_p)
        return logits.masked_fill(logits < thr, -torch.inf)
    return _top_p_only(logits, top_p)


def _top_k_threshold(top: torch.Tensor, top_p: float) -> torch.Tensor:
    """(N, 1) smallest kept logit given the k largest (descending): the k-th, or with top_p < 1 the
    smallest of them the top-p rule keeps among the k (renormalised over them)."""
    if top_p >= 1.0:
        return top[..., -1:]
    asc = top.flip(-1)
    drop = asc.softmax(-1).cumsum(-1) <= 1.0 - top_p
    drop[..., -1] = False
    return asc.masked_fill(drop, torch.inf).min(-1, keepdim=True).values


def _top_p_candidates(logits: torch.Tensor, top_p: float, k: int):
    """The k largest logits ascending, which of them top-p drops and the smallest kept one (N, 1). Their
    ascending tail mass is (mass outside the k) + p_k + ... + p_j (see _top_p_only)."""
    vals = logits.topk(k, dim=-1).values.flip(-1)  # ascending
    p = (vals - logits.logsumexp(-1, keepdim=True)).exp()
    outside = (1.0 - p.sum(-1, keepdim=True)).clamp_min(0.0)
    drop = outside + p.cumsum(-1) <= 1.0 - top_p
    drop[..., -1] = False
    return vals, drop, vals.masked_fill(drop, torch.inf).min(-1, keepdim=True).values


# top-p alone: the nucleus is looked for among this many largest logits first; a row whose nucleus
# reaches past them (a flat distribution) is sorted whole. A trained model's nucleus at p 0.85 is
# usually tens of tokens; sorting every row of a 151,936-entry vocabulary cost 0.52 s per 64-token
# response row at the learner (benchmarks/learner_prefix.py, tiny random model, whose flat rows still sort).
TOP_P_CANDIDATES = 1024


def _top_p_only(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """`truncate_logits` with top_p only. Among the K largest logits (descending p_1..p_K) the
    ascending tail mass of candidate j is (mass outside the K) + p_K + ... + p_j; when the smallest
    candidate is dropped (its tail <= 1 - top_p), every token outside the K has a smaller tail and is
    dropped too, so the threshold is the smallest kept candidate: the full sort's answer."""
    V = logits.shape[-1]
    K = min(TOP_P_CANDIDATES, V)
    out = torch.empty_like(logits)
    flat = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
    if K < V:
        _, drop, thr = _top_p_candidates(logits, top_p, K)
        flat = ~drop[..., 0]
        out = logits.masked_fill(logits < thr, -torch.inf)
    if flat.any():
        rows = logits[flat]
        srt, order = rows.sort(dim=-1)
        drop = srt.softmax(-1).cumsum(-1) <= 1.0 - top_p
        drop[..., -1] = False
        out[flat] = torch.full_like(rows, -torch.inf).scatter(-1, order, srt.masked_fill(drop, -torch.inf))
    return out


def filtered_logprobs(logits: torch.Tensor, tokens: torch.Tensor, top_k: int = -1,
                      top_p: float = 1.0) -> torch.Tensor:
    """(N,) log-probs of `tokens` under the engine's filtered distribution: the values of
    `log_softmax(truncate_logits(logits, top_k, top_p)).gather(tokens)` (-inf for a token outside the
    kept set), without its (N, V) temporaries where the kept set lies among the largest logits: the
    token's logit minus the log-sum-exp of the kept logits, both found from the top-k (k + 1 values: a
    logit tied with the threshold outside them would be kept too) or the top-p candidates. Rows where
    that does not hold (a tie at the threshold, a top-p nucleus past the candidates) take
    `truncate_logits` + log_softmax. Measured on 96 tokens x the 151,936-entry vocabulary (2 cores):
    top-k 50 48 -> ~10 ms; it was ~19 % of the demo learner's time (py-spy over its actor)."""
    xt = logits.gather(-1, tokens[:, None])  # (N, 1)
    V = logits.shape[-1]
    if not 0 < top_k < V and top_p >= 1.0:  # nothing is cut
        return (xt - logits.logsumexp(-1, keepdim=True)).squeeze(-1)
    slow = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    if 0 < top_k < V:
        vals = logits.topk(top_k + 1, dim=-1).values  # descending; top_k < V, so k + 1 values exist
        cand = vals[:, :top_k]
        thr = _top_k_threshold(cand, top_p)
        slow |= vals[:, top_k] >= thr[:, 0]  # a tie at the threshold just outside the k largest
    else:  # top-p alone: among the TOP_P_CANDIDATES largest (see _top_p_only)
        K = min(TOP_P_CANDIDATES, V)
        vals, drop, thr = _top_p_candidates(logits, top_p, K)
        if K < V:  # the nucleus reaches past the candidates (a flat row), or ties the smallest of them
            slow |= ~drop[..., 0] | (thr[:, 0] <= vals[:, 0])
        slow |= (drop & (vals >= thr)).any(-1)  # a dropped token tied with the threshold (the sort splits ties)
        cand = vals
    lse = cand.masked_fill(cand < thr, -torch.inf).logsumexp(-1, keepdim=True)
    out = torch.where(xt >= thr, xt - lse, torch.full_like(xt, -torch.inf)).squeeze(-1)
    if slow.any():
        rows = slow.nonzero().squeeze(-1)
        full = torch.log_softmax(truncate_logits(logits[rows], top_k, top_p), -1)
        out[rows] = full.gather(-1, tokens[rows][:, None]).squeeze(-1)
    return out


def response_scores(model, inputs: PromptInputs, response_ids: torch.Tensor, response_mask: torch.Tensor,
                    temperature: float = 1.0, with_entropy: bool = False, top_k: int = -1,
                    top_p: float = 1.0, shared_prefix: bool = False) -> ResponseScores:
    """One forward: per-token log-probs (B, L) of `response_ids` after the prompt (B rows share the
    prompt+video) under the policy at `temperature` (logits / temperature, no top-k / top-p: the
    loss's policy); with `with_entropy` each position's entropy; and, detached, the log-probs under the
    distribution the engine samples from (also top-k / top-p filtered, renormalised) — what the
    engine's behaviour log-probs are compared with. Gradients flow outside no_grad; padding gets 0.
    The (L, V) temporaries of the detached quantities are made row by row. `shared_prefix`: encode the
    prompt + video once for the B rows (`shared_prefix.shared_mode`: the whole prefix when packing is
    exact for the model, else the vision tower); the same numbers as the unshared forward."""
    device = next(model.parameters()).device
    B, L = response_ids.shape
    P = inputs.length
    mode = shared_mode(model) if shared_prefix else "off"
    if mode == "packed":
        logits = packed_logits(model, inputs.input_ids, inputs.mm_token_type_ids, inputs.visual, response_ids,
                               response_mask, device).float()
    else:
        ids = torch.cat([inputs.input_ids.expand(B, P), response_ids], dim=1).to(device)
        attn = torch.cat([torch.ones(B, P, dtype=torch.long), response_mask.long()], dim=1).to(device)
        types = None
        if inputs.mm_token_type_ids is not None:
            types = torch.cat([inputs.mm_token_type_ids.expand(B, P),
                               torch.zeros(B, L, dtype=inputs.mm_token_type_ids.dtype)], 1).to(device)
        # The root forward (so FSDP's root hooks run) with logits only at the response positions:
        # all rows share the prompt length, so one index tensor serves the whole batch.
        keep = torch.arange(P - 1, P - 1 + L, device=device)
        if mode == "vision":
            logits = vision_once_logits(model, ids, attn, types, inputs.visual, B, keep, device).float()
        else:
            visual = {}
            for k, v in inputs.visual.items():
                if k == "pixel_values_videos":
                    visual[k] = v.repeat(B, 1).to(device)
                else:
                    visual[k] = v.repeat(B, *([1] * (v.dim() - 1))).to(device)
            if types is not None:
                visual["mm_token_type_ids"] = types
            out = model(input_ids=ids, attention_mask=attn, use_cache=False, logits_to_keep=keep, **visual)
            logits = out.logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, -1)
    lp = logp_all.gather(-1, response_ids.to(device)[..., None]).squeeze(-1)
    m = response_mask.to(device).to(lp.dtype)
    lp = lp * m
    ent = None
    with torch.no_grad():  # row by row: the temporaries stay (L, V)
        if with_entropy:
            la = logp_all.detach()
            ent = torch.stack([-(r.exp() * r).sum(-1) for r in la]) * m
        if top_k > 0 or top_p < 1.0:
            tok = response_ids.to(device)
            sampled = torch.stack([filtered_logprobs(r, t, top_k, top_p) for r, t in zip(logits.detach(), tok)])
            sampled = torch.where(m.bool(), sampled, torch.zeros_like(sampled))
        else:
            sampled = lp.detach()
    return ResponseScores(lp, ent, sampled)


def response_logprobs(model, inputs: PromptInputs, response_ids: torch.Tensor, response_mask: torch.Tensor,
                      temperature: float = 1.0, with_entropy: bool = False, shared_prefix: bool = False):
    """`response_scores`' log-probs (and entropy with `with_entropy`): the policy at `temperature`."""
    s = response_scores(model, inputs, response_ids, response_mask, temperature, with_entropy,
                        shared_prefix=shared_prefix)
    return (s.logprobs, s.entropy) if with_entropy else s.logprobs


def pad_responses(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    L = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), max(L, 1)), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), max(L, 1)), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask
