"""Installed into the environment's site-packages by scripts/setup_env.sh (with a .pth line).

The only torchvision wheel on the index is a CUDA build whose compiled ops do not load next to the
CPU torch; importing it then fails with ``operator torchvision::nms does not exist`` and breaks the
transformers video processors. Defining the op schemas before torchvision's own import fixes that.
vLLM spawns EngineCore/worker processes and Ray spawns workers, so this must run in every
interpreter: the hook below does it lazily, only when something imports torchvision (no torch
import at interpreter start).
"""
import importlib.abc
import sys

_LIBS = []


def _define_schemas() -> None:
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in (
        "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
        "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    ):
        try:
            lib.define(schema)
        except RuntimeError:  # already defined (a working torchvision build)
            pass
    _LIBS.append(lib)


class _TorchvisionShimFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            try:
                sys.meta_path.remove(self)
            except ValueError:
                pass
            _define_schemas()
        return None


def install() -> None:
    if not any(isinstance(f, _TorchvisionShimFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionShimFinder())
