"""Checkpoints: each learner rank's shard file and the HF export (rank side), and the driver's
checkpoint folders (`global_step_N`, staged as `global_step_N.tmp`, complete once `COMPLETE` exists).

torch, safetensors and transformers are imported inside the rank-side functions, so the driver can
use the folder helpers without loading them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config


# ---- rank side ------------------------------------------------------------------------------------
def save_shard(ckpt_dir: str, model, opt, sched, rank: int, world: int, step: int) -> str:
    """Write this rank's parameter shards and AdamW state to `ckpt_dir`/rank{rank}.safetensors
    (atomically), with rank, world, step and scheduler position as metadata. Returns the path."""
    import torch
    from safetensors.torch import save_file

    from ..io import atomic_path
    from .sharding import local_tensor

    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, p in model.named_parameters():
        tensors[f"model/{name}"] = local_tensor(p.detach()).contiguous().cpu()
        for k, v in opt.state.get(p, {}).items():
            if torch.is_tensor(v):
                tensors[f"optim/{name}/{k}"] = local_tensor(v).detach().contiguous().cpu()
    meta = {"rank": str(rank), "world": str(world), "step": str(step), "sched_last_epoch": str(sched.last_epoch)}
    with atomic_path(d / f"rank{rank}.safetensors") as tmp:
        save_file(tensors, tmp, metadata=meta)
    return str(d / f"rank{rank}.safetensors")


def load_shard(ckpt_dir: str, model, opt, sched, rank: int, world: int) -> int:
    """Restore this rank's parameters, AdamW state and scheduler position (and the LR it implies)
    from `ckpt_dir`/rank{rank}.safetensors; the file must come from a run with `world` ranks.
    Returns the saved learner step."""
    import torch
    from safetensors import safe_open

    from .sharding import local_tensor

    path = Path(ckpt_dir) / f"rank{rank}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        if int(meta["world"]) != world:
            raise RuntimeError(f"{path}: saved with {meta['world']} learner ranks, this run has {world}")
        keys = set(f.keys())
        for name, p in model.named_parameters():
            with torch.no_grad():
                local_tensor(p.data).copy_(f.get_tensor(f"model/{name}"))
            st = {}
            for k in ("step", "exp_avg", "exp_avg_sq"):
                key = f"optim/{name}/{k}"
                if key in keys:
                    t = f.get_tensor(key).to(local_tensor(p.data).device)
                    if k != "step" and hasattr(p, "device_mesh"):
                        from torch.distributed.tensor import DTensor

                        t = DTensor.from_local(t, p.device_mesh, p.placements)
                    st[k] = t
            if st:
                opt.state[p] = st
        step = int(meta["step"])
        sched.last_epoch = int(meta["sched_last_epoch"])
        for g, base, fn in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas):
            g["lr"] = base * fn(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in opt.param_groups]
    return step


def export_hf(out_dir: str, model, processor, model_dir: str, rank: int, step: int) -> str | None:
    """Gather full weights (a collective: all ranks call it) and, on rank 0, write a plain HF folder
    (`model_dir`'s architecture with these weights, the processor, tempsamp_export.json) atomically.
    Returns the folder on rank 0, None elsewhere."""
    from .sharding import full_tensor

    full = {name: full_tensor(p.detach()).cpu() for name, p in model.named_parameters()}
    if rank != 0:
        return None
    from transformers import AutoModelForImageTextToText

    fresh = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=next(iter(full.values())).dtype)
    missing, unexpected = fresh.load_state_dict(full, strict=False)
    if unexpected:
        raise RuntimeError(f"export: unexpected keys {unexpected[:5]}")
    from ..io import atomic_dir
    from ..models.loading import save_processor

    with atomic_dir(out_dir) as tmp:  # files get the user's umask (safetensors writes 0600)
        fresh.save_pretrained(tmp)
        save_processor(processor, tmp)  # with the added tokens, as the base checkpoint has them
        (tmp / "tempsamp_export.json").write_text(json.dumps({"step": step, "base_model": model_dir}))
    return str(Path(out_dir))


# ---- driver side: checkpoint folders ---------------------------------------------------------------
def checkpoint_dir(root: str | Path, step: int) -> Path:
    """The folder of the checkpoint at trainer step `step` under `root`."""
    return Path(root) / f"global_step_{step}"


def complete_checkpoints(root: str | Path) -> list[Path]:
    """The complete checkpoints under `root` (a COMPLETE marker, not a .tmp staging folder), oldest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = [p for p in root.glob("global_step_*") if (p / "COMPLETE").is_file() and not p.name.endswith(".tmp")]
    return sorted(out, key=lambda p: int(p.name.rsplit("_", 1)[1]))


def resolve_resume(cfg: Config) -> Path | None:
    """The checkpoint `cfg.checkpoint.resume` names: None for "never" (or "auto" with none complete),
    the newest complete one for "auto", else that path, which must be complete."""
    r = cfg.checkpoint.resume
    if r == "never":
        return None
    if r == "auto":
        done = complete_checkpoints(cfg.checkpoint.output_dir)
        return done[-1] if done else None
    p = Path(r)
    if not (p / "COMPLETE").is_file():
        raise FileNotFoundError(f"checkpoint.resume={r}: not a complete checkpoint (no COMPLETE marker)")
    return p


def rng_state() -> dict:
    """The driver's Python and torch RNG states (numpy generators are re-derived from seeds + step,
    so only these two carry state)."""
    import torch

    return {"python": repr(random.getstate()), "torch": torch.get_rng_state().tolist()}


def staging_dir(root: str | Path, step: int) -> Path:
    """A fresh, empty `global_step_{step}.tmp` under `root` (a stale one from a crash is removed)."""
    tmp = Path(root) / f"global_step_{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def finalize_checkpoint(tmp: Path, final: Path, state: dict, save_limit: int) -> Path:
    """Complete a staged checkpoint: write trainer_state.json (`state` plus "rng": rng_state(), added
    as the last key), then the COMPLETE marker, replace `final` by `tmp` (os.replace), and delete the
    oldest complete checkpoints next to it beyond `save_limit`. Returns `final`."""
    state = {**state, "rng": rng_state()}
    (tmp / "trainer_state.json").write_text(json.dumps(state))
    (tmp / "COMPLETE").write_text(str(time.time()))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    done = complete_checkpoints(final.parent)
    for old in done[: max(0, len(done) - save_limit)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_trainer_state(ckpt: Path) -> dict:
    """The trainer_state.json of checkpoint folder `ckpt`."""
    return json.loads((Path(ckpt) / "trainer_state.json").read_text())
