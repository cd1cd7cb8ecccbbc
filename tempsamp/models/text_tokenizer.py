"""The policy's tokenizer as the reward role needs it: text -> token ids (no special tokens added), and
the ids that end (`<|im_end|>`) and pad (`pad_token`, else `<|endoftext|>`) a response.

Read with `tokenizers` (the library behind transformers' fast tokenizers) straight from the model's
`tokenizer.json`, so the reward actor never imports transformers: measured on this 2-core machine, a
reward actor's start (imports + tokenizer) takes 2.2 CPU-seconds this way against 6.1 through
`AutoProcessor` (most of it importing transformers' auto classes), and every training run, eval and
fault test starts one or more. A folder without `tokenizer.json` (slow-tokenizer files only) goes
through transformers. tests/test_models.py checks that both give the same ids."""

from __future__ import annotations

import json
from pathlib import Path

EOS_TOKEN = "<|im_end|>"  # ends an assistant turn of the Qwen chat template
PAD_FALLBACK = "<|endoftext|>"  # pads when the tokenizer names no pad_token


def special_ids(tokenizer) -> tuple[int, int]:
    """(eos_id, pad_id) of a transformers Qwen chat tokenizer: `<|im_end|>` ends a response, the
    tokenizer's pad token (else `<|endoftext|>`) pads."""
    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.convert_tokens_to_ids(PAD_FALLBACK)
    return eos, pad


class TextTokenizer:
    def __init__(self, model_dir: str | Path):
        d = Path(model_dir)
        if (d / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(d / "tokenizer.json"))
            conf_path = d / "tokenizer_config.json"
            conf = json.loads(conf_path.read_text()) if conf_path.is_file() else {}
            pad = conf.get("pad_token")
            pad = pad.get("content") if isinstance(pad, dict) else pad
            self._encode = lambda text: tok.encode(text, add_special_tokens=False).ids
            self.eos_id = self._id(tok.token_to_id(EOS_TOKEN), EOS_TOKEN, d)
            self.pad_id = self._id(tok.token_to_id(pad or PAD_FALLBACK), pad or PAD_FALLBACK, d)
        else:
            from transformers import AutoTokenizer

            hf = AutoTokenizer.from_pretrained(str(d))
            self._encode = lambda text: hf.encode(text, add_special_tokens=False)
            self.eos_id, self.pad_id = special_ids(hf)

    @staticmethod
    def _id(found: int | None, token: str, d: Path) -> int:
        if found is None:
            raise ValueError(f"{d / 'tokenizer.json'}: no token {token!r} (not a Qwen chat tokenizer)")
        return found

    def encode(self, text: str) -> list[int]:
        return self._encode(text)
