"""Learner rank core (no Ray): FSDP2 policy, PPO-clip step, weight-sync gather, checkpoints.

One instance per rank; ranks join one torch.distributed group (nccl on CUDA, gloo on CPU).
Each rank takes every world-th prompt group; micro-batches are cut by a token budget; all ranks
run the same number of micro-batches (FSDP collectives must line up), padding with zero-weight ones.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .algo.batch import TrainBatch
from .algo.grpo import kl_penalty, policy_loss
from .models.loading import detect_family, load_model, load_processor
from .models.policy import build_inputs, response_logprobs
from .sync.weights import SyncPlan, checkpoint_name, plan_buckets, send_streaming

log = logging.getLogger(__name__)


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def lr_lambda(warmup_steps: int, total_steps: int, schedule: str):
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "cosine" and total_steps > warmup_steps:
            prog = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))
        return 1.0

    return f


class LearnerCore:
    def __init__(self, cfg, model_dir: str, rank: int = 0, world_size: int = 1, dist_addr: str | None = None,
                 total_steps: int = 1, device: str | None = None):
        self.cfg, self.rank, self.world, self.model_dir = cfg, rank, world_size, model_dir
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if world_size > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, init_method=f"tcp://{dist_addr}", rank=rank, world_size=world_size,
                                    timeout=timedelta(seconds=cfg.learner.timeout_s))
        lc = cfg.learner
        self.family = detect_family(model_dir)
        self.model = load_model(model_dir, dtype=cfg.model.dtype, device=str(self.device),
                                attn_implementation=cfg.model.attn_implementation)
        if lc.freeze_vision_tower:
            for p in self.model.model.visual.parameters():
                p.requires_grad_(False)
        if lc.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.config.use_cache = False
        self.ref = None
        if cfg.algorithm.use_kl:
            self.ref = load_model(model_dir, dtype=cfg.model.dtype, device=str(self.device)).eval()
            for p in self.ref.parameters():
                p.requires_grad_(False)
        if world_size > 1 and lc.fsdp:
            self._shard(self.model)
            if self.ref is not None:
                self._shard(self.ref)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lc.lr, betas=tuple(lc.betas), weight_decay=lc.weight_decay)
        warm = int(round(lc.warmup_ratio * total_steps))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(warm, total_steps, lc.lr_schedule))
        self.processor = load_processor(model_dir)
        self.step = 0
        self._sync_groups: list[list[torch.Tensor]] = []
        self._sync_plan: SyncPlan | None = None

    def _shard(self, model):
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.language_model.layers:
            fully_shard(layer)
        fully_shard(model)

    # ---- training ------------------------------------------------------------------------
    def _micro_batches(self, batch: TrainBatch, inputs: dict):
        """[(group_idx, row_slice)] for this rank; rows * seq_len <= micro_batch_tokens."""
        budget = self.cfg.learner.micro_batch_tokens
        out = []
        for gi, g in enumerate(batch.groups):
            if gi % self.world != self.rank:
                continue
            seq = inputs[gi].length + g.response_ids.shape[1]
            per = max(1, budget // max(seq, 1))
            n = g.response_ids.shape[0]
            out += [(gi, slice(s, min(n, s + per))) for s in range(0, n, per)]
        return out

    def _count_all(self, n: int) -> int:
        if self.world == 1:
            return n
        t = torch.tensor([n], device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def _sum_all(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def train_step(self, batch: TrainBatch, videos: dict) -> dict:
        """One optimizer step per mini-batch (default 1) over the rollout batch. `videos`: key -> sample."""
        t0 = time.time()
        cfg, ac = self.cfg, self.cfg.algorithm
        self.model.train()
        inputs = {gi: build_inputs(self.processor, g.prompt_text, videos[g.key]) for gi, g in enumerate(batch.groups)
                  if gi % self.world == self.rank}
        micro = self._micro_batches(batch, inputs)
        n_micro = self._count_all(len(micro))
        total_tokens = max(1, batch.total_tokens)
        # mini-batches: contiguous chunks of each rank's micro-batches, one optimizer step each; the loss
        # of a chunk is its token (or sequence) mean over all ranks, so each step's gradient - and the
        # grad-norm clip - is on the scale of one mini-batch, as with one mini-batch per step
        chunks = max(1, cfg.learner.mini_batches_per_step)
        per_chunk = math.ceil(n_micro / chunks) if n_micro else 0
        counts = [0.0] * (2 * chunks)
        for k, (gi, sl) in enumerate(micro):
            c = min(k // max(1, per_chunk), chunks - 1)
            counts[c] += float(batch.groups[gi].response_mask[sl].sum())
            counts[chunks + c] += float(batch.groups[gi].response_mask[sl].shape[0])
        counts = self._sum_all(counts)
        # FSDP averages gradients over ranks: scale so the sum over ranks is the global mean.
        denoms = [max(1.0, counts[c]) / self.world for c in range(chunks)]
        seq_denoms = [max(1.0, counts[chunks + c]) / self.world for c in range(chunks)]
        metrics = {"loss": 0.0, "clipfrac": 0.0, "kl": 0.0}
        gt_lp_sum, gt_tok, on_lp_sum, on_tok = 0.0, 0.0, 0.0, 0.0
        need_old = cfg.learner.ppo_epochs > 1 or cfg.learner.mini_batches_per_step > 1
        old = {}
        if need_old:
            with torch.no_grad():
                for k, (gi, sl) in enumerate(micro):
                    g = batch.groups[gi]
                    old[k] = response_logprobs(self.model, inputs[gi], torch.as_tensor(g.response_ids[sl]),
                                               torch.as_tensor(g.response_mask[sl]))
        updates = 0
        gnorm = 0.0
        for _ in range(cfg.learner.ppo_epochs):
            for c in range(chunks):
                lo, hi = c * per_chunk, min(n_micro, (c + 1) * per_chunk)
                if lo >= hi and c > 0:
                    break
                for k in range(lo, hi):
                    dummy = k >= len(micro)
                    gi, sl = micro[k] if not dummy else (next(iter(inputs)) if inputs else 0, slice(0, 1))
                    g = batch.groups[gi]
                    ids = torch.as_tensor(g.response_ids[sl])
                    mask = torch.as_tensor(g.response_mask[sl])
                    inp = inputs[gi] if gi in inputs else build_inputs(self.processor, g.prompt_text, videos[g.key])
                    lp = response_logprobs(self.model, inp, ids, mask)
                    m = mask.to(lp.device).to(lp.dtype)
                    old_lp = old[k].to(lp.device) if (need_old and not dummy) else lp.detach()
                    adv = torch.as_tensor(g.advantages[sl]).to(lp.device)
                    loss, pm = policy_loss(lp, old_lp, adv, m, ac.clip_ratio_low, ac.clip_ratio_high,
                                           ac.clip_ratio_dual, ac.loss_agg_mode, global_tokens=denoms[c],
                                           global_seqs=seq_denoms[c])
                    if self.ref is not None and not dummy:
                        with torch.no_grad():
                            ref_lp = response_logprobs(self.ref, inp, ids, mask)
                        kl = (kl_penalty(lp, ref_lp, ac.kl_type) * m).sum() / denoms[c]
                        loss = loss + ac.kl_coef * kl
                        metrics["kl"] += float(kl.detach()) / self.world / max(1, cfg.learner.ppo_epochs)
                    if not dummy:
                        with torch.no_grad():
                            gmask = m * torch.as_tensor(g.is_gt[sl]).to(lp.device)[:, None].to(m.dtype)
                            gt_lp_sum += float((lp * gmask).sum())
                            gt_tok += float(gmask.sum())
                            on_lp_sum += float((lp * (m - gmask)).sum())
                            on_tok += float((m - gmask).sum())
                    if dummy:
                        loss = loss * 0.0
                    else:
                        # local loss is scaled by world (FSDP averages grads); report this rank's share
                        metrics["loss"] += float(loss.detach()) / self.world / max(1, cfg.learner.ppo_epochs)
                        metrics["clipfrac"] += pm["clipfrac"] * float(m.sum()) / total_tokens / max(1, cfg.learner.ppo_epochs)
                    loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(self.params, cfg.learner.grad_clip)
                gnorm = float(_full(gnorm))
                if math.isfinite(gnorm):
                    self.opt.step()
                else:
                    log.warning("rank %d step %d: non-finite grad norm, update skipped", self.rank, self.step)
                self.opt.zero_grad(set_to_none=True)
                updates += 1
        self.sched.step()
        self.step += 1
        if self.world > 1:
            t = torch.tensor([gt_lp_sum, gt_tok, on_lp_sum, on_tok, metrics["loss"], metrics["clipfrac"],
                              metrics["kl"]], dtype=torch.float64,
                             device=self.device if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(t)
            gt_lp_sum, gt_tok, on_lp_sum, on_tok, metrics["loss"], metrics["clipfrac"], metrics["kl"] = t.tolist()
        per_epoch = max(1, updates // max(1, cfg.learner.ppo_epochs))  # each mini-batch's loss is its own mean
        metrics["loss"] /= per_epoch
        metrics["kl"] /= per_epoch
        metrics["gt_logp_per_token"] = gt_lp_sum / gt_tok if gt_tok else float("nan")
        metrics["onpolicy_logp_per_token"] = on_lp_sum / on_tok if on_tok else float("nan")
        metrics.update({"grad_norm": gnorm, "lr": self.sched.get_last_lr()[0], "updates": updates,
                        "micro_batches": len(micro), "learn_s": time.time() - t0})
        return metrics

    # ---- weight sync ------------------------------------------------------------------------
    def prepare_sync(self, version: int, bucket_mb: int, trainable_only: bool) -> SyncPlan | None:
        """All ranks gather full tensors (FSDP collective); rank 0 packs buckets and returns the plan."""
        named = []
        for name, p in self.model.named_parameters():
            if trainable_only and not p.requires_grad:
                continue
            full = _full(p.detach())
            if self.rank == 0:
                named.append((checkpoint_name(name, self.family), full))
        if self.rank != 0:
            return None
        plan, self._sync_groups = plan_buckets(named, bucket_mb << 20, version)
        self._sync_plan = plan
        return plan

    def send_sync(self, pg, corrupt: bool = False) -> float:
        """Broadcast the prepared buckets, each followed by its checksum (packing and checksumming
        overlap the transfer). `corrupt` (fault injection) flips one byte of the first bucket after
        its checksum was taken, as a bad link or a partial update would."""
        t = time.time()
        send_streaming(pg, self._sync_plan, self._sync_groups, corrupt=corrupt)
        self._sync_groups, self._sync_plan = [], None
        return time.time() - t

    # ---- checkpoints ------------------------------------------------------------------------
    def save_shard(self, ckpt_dir: str) -> str:
        from safetensors.torch import save_file

        d = Path(ckpt_dir)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name, p in self.model.named_parameters():
            tensors[f"model/{name}"] = _local(p.detach()).contiguous().cpu()
            for k, v in self.opt.state.get(p, {}).items():
                if torch.is_tensor(v):
                    tensors[f"optim/{name}/{k}"] = _local(v).detach().contiguous().cpu()
        meta = {"rank": str(self.rank), "world": str(self.world), "step": str(self.step),
                "sched_last_epoch": str(self.sched.last_epoch)}
        from .io import atomic_path

        with atomic_path(d / f"rank{self.rank}.safetensors") as tmp:
            save_file(tensors, tmp, metadata=meta)
        return str(d / f"rank{self.rank}.safetensors")

    def load_shard(self, ckpt_dir: str) -> int:
        from safetensors import safe_open

        path = Path(ckpt_dir) / f"rank{self.rank}.safetensors"
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            if int(meta["world"]) != self.world:
                raise RuntimeError(f"{path}: saved with {meta['world']} learner ranks, this run has {self.world}")
            keys = set(f.keys())
            for name, p in self.model.named_parameters():
                with torch.no_grad():
                    _local(p.data).copy_(f.get_tensor(f"model/{name}"))
                st = {}
                for k in ("step", "exp_avg", "exp_avg_sq"):
                    key = f"optim/{name}/{k}"
                    if key in keys:
                        t = f.get_tensor(key).to(_local(p.data).device)
                        if k != "step" and hasattr(p, "device_mesh"):
                            from torch.distributed.tensor import DTensor

                            t = DTensor.from_local(t, p.device_mesh, p.placements)
                        st[k] = t
                if st:
                    self.opt.state[p] = st
            self.step = int(meta["step"])
            self.sched.last_epoch = int(meta["sched_last_epoch"])
            for g, base, fn in zip(self.opt.param_groups, self.sched.base_lrs, self.sched.lr_lambdas):
                g["lr"] = base * fn(self.sched.last_epoch)
            self.sched._last_lr = [g["lr"] for g in self.opt.param_groups]
        return self.step

    def export_hf(self, out_dir: str) -> str | None:
        """Gather full weights (all ranks) and write a plain HF folder on rank 0 (atomically)."""
        import shutil

        full = {name: _full(p.detach()).cpu() for name, p in self.model.named_parameters()}
        if self.rank != 0:
            return None
        from transformers import AutoModelForImageTextToText

        fresh = AutoModelForImageTextToText.from_pretrained(self.model_dir, dtype=next(iter(full.values())).dtype)
        missing, unexpected = fresh.load_state_dict(full, strict=False)
        if unexpected:
            raise RuntimeError(f"export: unexpected keys {unexpected[:5]}")
        out = Path(out_dir)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        fresh.save_pretrained(tmp)
        self.processor.save_pretrained(tmp)
        (tmp / "tempsamp_export.json").write_text(json.dumps({"step": self.step, "base_model": self.model_dir}))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        return str(out)
