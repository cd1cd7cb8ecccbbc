"""Load any supported family (tiny or a real checkpoint such as Qwen3.5-4B) with the right
attention implementation: flash-attention 2 when installed and on CUDA, sdpa otherwise; load a
processor, and save one as published checkpoints carry it (`save_processor`)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

FAMILY_OF_MODEL_TYPE = {"qwen2_5_vl": "qwen2_5_vl", "qwen2_vl": "qwen2_5_vl", "qwen3_vl": "qwen3_vl",
                        "qwen3_5": "qwen3_5", "qwen3_5_moe": "qwen3_5"}
PATCH_SIZE = {"qwen2_5_vl": 14, "qwen3_vl": 16, "qwen3_5": 16}


class ModelLoadError(RuntimeError):
    pass


def detect_family(model_dir: str | Path) -> str:
    cfg = Path(model_dir) / "config.json"
    if not cfg.is_file():
        raise ModelLoadError(f"{model_dir}: no config.json (not a Hugging Face model folder)")
    mt = json.loads(cfg.read_text()).get("model_type", "")
    if mt not in FAMILY_OF_MODEL_TYPE:
        raise ModelLoadError(f"{cfg}: model_type {mt!r} is not supported; supported: {sorted(FAMILY_OF_MODEL_TYPE)}")
    return FAMILY_OF_MODEL_TYPE[mt]


def pick_attn_implementation(requested: str = "auto", device: str | torch.device = "cpu") -> str:
    if requested != "auto":
        return requested
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_model(model_dir: str | Path, dtype: str | torch.dtype = "float32", device: str = "cpu",
               attn_implementation: str = "auto"):
    from transformers import AutoModelForImageTextToText

    detect_family(model_dir)
    dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    attn = pick_attn_implementation(attn_implementation, device)
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=dt, attn_implementation=attn)
    from .mrope import install

    install(model)  # Qwen2.5-VL video positions as trained and as vLLM computes them (see mrope.py)
    return model.to(device)


def load_processor(model_dir: str | Path, base_model_dir: str | Path | None = None):
    """The processor of `model_dir`, or of `base_model_dir` when the checkpoint has none."""
    from transformers import AutoProcessor

    for d in (model_dir, base_model_dir):
        if d is not None and (Path(d) / "tokenizer.json").exists() or (d and (Path(d) / "tokenizer_config.json").exists()):
            return AutoProcessor.from_pretrained(str(d))
    raise ModelLoadError(f"{model_dir}: no processor/tokenizer files; pass a base model folder that has them")


def save_processor(processor, folder: str | Path) -> None:
    """`processor.save_pretrained(folder)`, with the tokenizer's added (special) tokens written into
    tokenizer_config.json as `added_tokens_decoder`, the way published Qwen checkpoints carry them.
    transformers 5's `save_pretrained` leaves the field out, and without it every later `from_pretrained`
    parses the whole tokenizer.json (11 MB for Qwen) once more just to find those tokens: measured here
    0.4 of 1.1 CPU-s per tokenizer load, paid by every learner, engine and eval actor and three times per
    vLLM engine start. Nothing else changes: the ids and tokens are the tokenizer's own."""
    processor.save_pretrained(folder)
    path = Path(folder) / "tokenizer_config.json"
    conf = json.loads(path.read_text())
    conf["added_tokens_decoder"] = {
        str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                 "single_word": t.single_word, "special": t.special}
        for i, t in sorted(processor.tokenizer.added_tokens_decoder.items())}
    path.write_text(json.dumps(conf, indent=2, ensure_ascii=False) + "\n")
