"""Reuse of the selection pass's image features in the training forward of the same batch (``dynamic`` only).

Dynamic CoT runs two forwards per micro-batch: the no-grad selection pass over the plain view, then the training
pass over the merged batch. Both carry the *same* images (:func:`~dyncot_plugin.train.selection.merge_views` keeps
the plain view's ``pixel_values`` tensor), so when nothing in the vision tower trains, the training pass would
recompute exactly the features the selection pass just computed. On Qwen2-VL-2B the ViT is a third of the
parameters; skipping its second forward is the largest saving available to the selection pass
(``benchmarks/bench_dynamic.py``: step-time ratio against sft 1.36x -> 1.13x on the CPU ``mid`` shape, losses
identical).

How: one instance attribute, ``get_image_features``, is set on the model's inner multimodal module (the module that
owns ``visual`` and calls ``self.get_image_features`` from its forward: ``Qwen2VLModel``, ``Qwen2_5_VLModel``).
While the selection pass runs, computed features are recorded together with the ``pixel_values`` and
``image_grid_thw`` they came from; a later call with the same images (:func:`same_images`: the same tensor, or
equal values, since the batch may be copied between the two forwards, as ``Trainer._prepare_inputs`` does under
DeepSpeed) gets the recorded features back and drops the entry. Entries are dropped before each optimizer step's
batches are built. Everything else, generation included, falls through to the class's method. The attribute is
removed by :meth:`ImageFeatureCache.remove`.

Used only when it cannot change results: every parameter of ``visual`` (the projector/merger included) is frozen
and ``visual`` has no active dropout, so its output does not depend on train/eval mode or on the graph.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from dyncot_plugin.train.families import DEFAULT_FAMILY, ModelFamily


def find_multimodal_module(model: nn.Module, family: ModelFamily = DEFAULT_FAMILY) -> nn.Module | None:
    """The module that owns the family's vision modules (``visual`` for Qwen) and defines ``get_image_features``
    (None when there is none)."""
    for module in model.modules():
        if all(isinstance(module._modules.get(name), nn.Module) for name in family.vision_modules) and callable(
            getattr(type(module), "get_image_features", None)
        ):
            return module
    return None


def why_not_reusable(module: nn.Module | None, family: ModelFamily = DEFAULT_FAMILY) -> str | None:
    """None when reusing image features is exact for this module, else the reason it is not."""
    if not family.reuse_image_features:
        return f"the {family.name} family's get_image_features is not one the cache wraps"
    if module is None:
        return f"the model has no module with {' and '.join(map(repr, family.vision_modules))} and `get_image_features`"
    towers = [module._modules[name] for name in family.vision_modules]
    if any(p.requires_grad for tower in towers for p in tower.parameters()):
        return "the vision tower or projector trains (freeze_vision_tower / freeze_multi_modal_projector are off)"
    if any(isinstance(m, nn.Dropout) and m.p > 0 for tower in towers for m in tower.modules()):
        return "the vision tower has dropout"
    return None


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return False
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


def same_images(pixels: torch.Tensor, grid: Any, other_pixels: torch.Tensor, other_grid: Any) -> bool:
    """Whether two ``get_image_features`` calls see the same images: the same tensors, or tensors of the same shape,
    dtype, device and values (then the frozen tower's output is the same). One comparison pass over the pixels, far
    cheaper than the tower's forward."""
    return _same(grid, other_grid) and _same(pixels, other_pixels)


class ImageFeatureCache:
    """Records image features during the selection pass and hands them to the training forward of the same batch."""

    def __init__(self, module: nn.Module) -> None:
        if "get_image_features" in module.__dict__:
            raise RuntimeError(f"{type(module).__name__}.get_image_features is already replaced on this instance")
        self.module = module
        self.recording = False
        self.entries: list[tuple[torch.Tensor, Any, Any]] = []  # (pixel_values, image_grid_thw, features)
        self.hits = 0
        self.misses = 0
        self._original = type(module).get_image_features.__get__(module)

        def get_image_features(pixel_values, image_grid_thw=None, **kwargs):
            for i, (pixels, grid, output) in enumerate(self.entries):
                if same_images(pixels, grid, pixel_values, image_grid_thw):
                    del self.entries[i]
                    self.hits += 1
                    return output
            output = self._original(pixel_values, image_grid_thw, **kwargs)
            if self.recording:
                self.entries.append((pixel_values, image_grid_thw, output))
            elif module.training:
                self.misses += 1
            return output

        module.get_image_features = get_image_features

    @contextlib.contextmanager
    def record(self):
        """Within this block (the selection pass), computed image features are kept for the training forward."""
        self.recording = True
        try:
            yield
        finally:
            self.recording = False

    def clear(self) -> None:
        """Drop entries no training forward used (called before each optimizer step's batches are built)."""
        self.entries.clear()

    def remove(self) -> None:
        self.clear()
        if self.module.__dict__.get("get_image_features") is not None:
            del self.module.get_image_features
