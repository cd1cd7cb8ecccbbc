"""Weight names: transformers' in-memory names <-> the names a family's checkpoint (and vLLM) uses.

transformers 5 holds `model.language_model.*` / `model.visual.*` in memory. Checkpoints of the
legacy Qwen2-VL layout (Qwen2.5-VL) use `model.*` for the text model and `visual.*` for the vision
tower, and vLLM loads those names; Qwen3-VL and Qwen3.5 checkpoints keep the in-memory names, and
vLLM maps those itself.
"""

from __future__ import annotations

LEGACY_LAYOUT_FAMILIES = ("qwen2_5_vl",)


def checkpoint_name(name: str, family: str = "qwen2_5_vl") -> str:
    """The name `name` (transformers' in-memory name) has in a `family` checkpoint, which is what
    vLLM's `load_weights` and our receivers expect."""
    if family not in LEGACY_LAYOUT_FAMILIES:
        return name
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    if name.startswith("model.visual."):
        return "visual." + name[len("model.visual."):]
    return name


def memory_name(name: str) -> str:
    """transformers' in-memory name for a checkpoint name of any family: legacy-layout names
    (`visual.*`, `model.*` outside `model.language_model.` / `model.visual.`) are mapped back;
    in-memory names pass through unchanged."""
    if name.startswith("visual."):
        return "model.visual." + name[len("visual."):]
    if name.startswith("model.") and not name.startswith(("model.language_model.", "model.visual.")):
        return "model.language_model." + name[len("model."):]
    return name
