"""The backbone registry (embed.backbones): lookup, sources, and every entry consistent with
the timm model it names (feature width, stage widths), checked shape-only on the meta device."""

from __future__ import annotations

import pytest
import timm
import torch

from embed.backbones import REGISTRY, WEIGHT_SOURCES, Backbone, get_backbone, list_backbones
from embed.device import DeviceChoice
from embed.extract import FeatureExtractor


def test_get_backbone_known():
    b = get_backbone("efficientnet_lite0")
    assert b.name == "efficientnet_lite0"
    assert b.source == "pypi"


def test_get_backbone_unknown_lists_known_names():
    with pytest.raises(ValueError) as err:
        get_backbone("no_such_net")
    msg = str(err.value)
    assert "no_such_net" in msg
    for name in REGISTRY:
        assert name in msg


def test_every_entry_has_a_valid_source():
    assert REGISTRY
    for name, b in REGISTRY.items():
        assert b.name == name
        assert b.source in WEIGHT_SOURCES
        assert b.num_features > 0 and b.input_size > 0
        assert len(b.mean) == 3 and len(b.std) == 3
        if b.source == "pypi":
            assert b.package and b.package_file, name


def test_invalid_source_rejected():
    with pytest.raises(ValueError, match="source"):
        Backbone(name="bad", timm_id="resnet18", source="internet", num_features=512)


def test_rows_are_keyword_only():
    """A row names every value it sets: a positional row (easy to shift by one) is refused."""
    with pytest.raises(TypeError):
        Backbone("bad", "resnet18", "hub", 512)  # type: ignore[misc]


def test_list_backbones_filters_by_source():
    assert list_backbones() == list(REGISTRY)
    union = []
    for source in WEIGHT_SOURCES:
        names = list_backbones(source)
        assert all(REGISTRY[n].source == source for n in names)
        union += names
    assert sorted(union) == sorted(REGISTRY)
    assert set(list_backbones("pypi")) >= {"efficientnet_lite0", "efficientnet_lite2",
                                           "mobilenet_v2"}
    assert list_backbones("random") == ["tiny_random"]
    assert set(list_backbones("file")) == {"uni", "hoptimus0"}
    assert list_backbones("nonsense") == []


@pytest.mark.parametrize("name", list(REGISTRY))
def test_entry_matches_its_timm_model(name):
    """num_features and stage_dims() agree with what the model really outputs (meta tensors:
    no weights, no compute, no download)."""
    b = REGISTRY[name]
    with torch.device("meta"):
        model = timm.create_model(b.timm_id, pretrained=False, num_classes=0, **b.timm_kwargs)
        x = torch.empty(1, 3, b.input_size, b.input_size)
        pooled = model(x)
        assert pooled.shape == (1, b.num_features), name
        if b.stage_indices:
            ex = FeatureExtractor(model, b, DeviceChoice(torch.device("meta"), None, False),
                                  n_views=1, stage_indices=b.stage_indices)
            final, inter = model.forward_intermediates(x, indices=list(b.stage_indices))
            assert len(inter) == len(b.stage_indices)
            assert 2 * sum(f.shape[1] for f in inter) == ex.stage_dims(), name
            assert model.forward_head(final, pre_logits=True).shape == (1, b.num_features)
