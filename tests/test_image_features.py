"""Unit tests of the image-feature reuse: what it finds, when it refuses, matching images, clean removal."""

import pytest
import torch
from torch import nn

from dyncot_plugin.train.image_features import ImageFeatureCache, find_multimodal_module, why_not_reusable


class Inner(nn.Module):
    """Shaped like Qwen2VLModel: owns `visual`, calls self.get_image_features from forward."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.visual = nn.Sequential(nn.Linear(3, 2), nn.Dropout(dropout))
        self.visual.requires_grad_(False)
        self.calls = 0

    def get_image_features(self, pixel_values, image_grid_thw=None):
        self.calls += 1
        return self.visual(pixel_values.type(self.visual[0].weight.dtype))  # as Qwen2VLModel casts

    def forward(self, pixel_values):
        return self.get_image_features(pixel_values)


class Outer(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.model = Inner(**kwargs)


def test_finds_the_inner_module_and_checks_exactness():
    outer = Outer()
    assert find_multimodal_module(outer) is outer.model
    assert find_multimodal_module(nn.Linear(2, 2)) is None
    assert why_not_reusable(outer.model) is None
    outer.model.visual[0].weight.requires_grad_(True)
    assert "trains" in why_not_reusable(outer.model)
    assert "dropout" in why_not_reusable(Outer(dropout=0.1).model)
    assert "no module" in why_not_reusable(None)


def test_recorded_features_are_handed_back_once_for_the_same_images_only():
    inner = Outer().model
    cache = ImageFeatureCache(inner)
    pixels = torch.randn(4, 3)
    inner.eval()
    with cache.record():
        first = inner(pixels)
    inner.train()
    other = pixels.clone()
    other[0, 0] += 1
    assert inner(other) is not first  # other images: recomputed
    assert inner.calls == 2 and cache.misses == 1
    assert inner(pixels.double()) is not first  # another dtype: recomputed
    assert inner.calls == 3 and cache.misses == 2
    assert inner(pixels.clone()) is first  # the same images in a copy (DeepSpeed copies the batch): reused
    assert inner.calls == 3 and cache.hits == 1
    inner(pixels)  # the entry was used up
    assert inner.calls == 4 and cache.entries == []


def test_clear_and_remove_restore_the_class_method():
    inner = Outer().model
    cache = ImageFeatureCache(inner)
    assert "get_image_features" in inner.__dict__
    with pytest.raises(RuntimeError, match="already replaced"):
        ImageFeatureCache(inner)
    with cache.record():
        inner(torch.randn(1, 3))
    cache.clear()
    assert cache.entries == []
    cache.remove()
    assert "get_image_features" not in inner.__dict__
    assert inner.get_image_features.__func__ is Inner.get_image_features
    cache.remove()  # idempotent
