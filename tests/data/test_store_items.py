"""The store's item grammar (data.store.items): ``--backbones`` items, store groups, array
names and feature specs, read and written in one place."""

from __future__ import annotations

import pytest

from data.errors import ConfigError
from data.store import BackboneItem, FeatureSpec, array_name, parse_crop, split_group

ITEMS = {  # text -> (name, stages, px, µm, stain); str() of the parsed item
    "efficientnet_lite0": (("efficientnet_lite0", False, (), (), ()), "efficientnet_lite0"),
    "efficientnet_lite0+stages": (("efficientnet_lite0", True, (), (), ()),
                                  "efficientnet_lite0+stages"),
    "efficientnet_lite0+stages+448": (("efficientnet_lite0", True, (448,), (), ()),
                                      "efficientnet_lite0+stages+448"),
    "efficientnet_lite0+stages+448+110um": (
        ("efficientnet_lite0", True, (448,), (110.0,), ()),
        "efficientnet_lite0+stages+448+110um"),
    "efficientnet_lite0+110um+2.5um+.5um+220.0um": (
        ("efficientnet_lite0", False, (), (110.0, 2.5, 0.5, 220.0), ()),
        "efficientnet_lite0+110um+2.5um+0.5um+220um"),
    "efficientnet_lite0+macenko": (("efficientnet_lite0", False, (), (), ("macenko",)),
                                   "efficientnet_lite0-macenko"),
    "efficientnet_lite0+hed+macenko": (
        ("efficientnet_lite0", False, (), (), ("macenko", "hed")),
        "efficientnet_lite0-macenko-hed"),
    "efficientnet_lite0-hed+macenko+stages": (
        ("efficientnet_lite0", True, (), (), ("macenko", "hed")),
        "efficientnet_lite0-macenko-hed+stages"),
    "tiny_random+hed+stages+448+110um+2.5um+macenko": (
        ("tiny_random", True, (448,), (110.0, 2.5), ("macenko", "hed")),
        "tiny_random-macenko-hed+stages+448+110um+2.5um"),
    " mobilenet_v2+448+224+448 ": (("mobilenet_v2", False, (448, 224), (), ()),
                                   "mobilenet_v2+448+224"),
    "swin_tiny-macenko+stages+448+110um": (
        ("swin_tiny", True, (448,), (110.0,), ("macenko",)),
        "swin_tiny-macenko+stages+448+110um"),
}


@pytest.mark.parametrize("text", ITEMS)
def test_items_parse_and_write_back(text):
    fields, written = ITEMS[text]
    item = BackboneItem.parse(text)
    assert (item.name, item.stages, item.contexts, item.contexts_um, item.stain) == fields
    assert str(item) == written
    assert BackboneItem.parse(str(item)) == item  # str() reads back equal
    assert item.key == "-".join((item.name, *item.stain)) == str(item).split("+")[0]
    assert BackboneItem.of_group(item.key, item.stages, item.contexts, item.contexts_um) == item


def test_global_options_join_the_items_own():
    """``--stages`` and ``--context`` (px as int, µm as text) come before the item's own."""
    item = BackboneItem.parse("resnet18+448", stages=True, contexts=(96, "110um", 448))
    assert item == BackboneItem("resnet18", True, (96, 448), (110.0,))
    assert [parse_crop(t) for t in (" 448", "110um", "2.5um")] == [448, "110um", "2.5um"]


def test_groups_split_into_name_and_levers():
    assert split_group("efficientnet_lite0") == ("efficientnet_lite0", ())
    assert split_group("efficientnet_lite0-macenko-hed") == ("efficientnet_lite0",
                                                              ("macenko", "hed"))
    assert split_group("a-b-hed") == ("a-b", ("hed",))
    assert split_group("hed") == ("hed", ())  # a name is never empty


@pytest.mark.parametrize("option", ["vahadane", "-5", "448px", "110µm", "um", "1e3um", ""])
def test_unknown_options_are_refused_with_examples(option):
    text = f"efficientnet_lite0+{option}"
    with pytest.raises(ConfigError) as err:
        BackboneItem.parse(text)
    message = str(err.value)
    assert repr(option) in message and repr(text) in message
    assert "'stages', 'macenko', 'hed'" in message and "in µm" in message
    assert "efficientnet_lite0+stages+448" in message and "+macenko+110um" in message


def test_the_name_is_checked_before_the_options():
    seen = []

    def check(name):
        seen.append(name)
        raise ConfigError(f"unknown backbone {name!r}")

    with pytest.raises(ConfigError, match="unknown backbone 'nope'"):
        BackboneItem.parse("nope-macenko+vahadane", check_name=check)
    assert seen == ["nope"]
    assert BackboneItem.parse("ok+stages", check_name=lambda n: None).stages


@pytest.mark.parametrize("layer, px, primary, um, name", [
    ("pooled", 224, 224, None, "features"),
    ("stages", 224, 224, None, "stages"),
    ("pooled", 448, 224, None, "features_448px"),
    ("stages", 448, 224, None, "stages_448px"),
    ("pooled", 160, 224, 110.0, "features_110um"),
    ("stages", 224, 224, 2.5, "stages_2.5um"),  # in µm: named so whatever its px
])
def test_array_names(layer, px, primary, um, name):
    assert array_name(layer, px, primary, um) == name
    item = BackboneItem.of_array("efficientnet_lite0-hed", name)
    assert item.stain == ("hed",) and item.stages == (layer == "stages")
    assert item.contexts == ((px,) if um is None and px != primary else ())
    assert item.contexts_um == ((um,) if um is not None else ())
    # the item that stores an array stores it
    crops = [(primary, None)] + [(c, None) for c in item.contexts] + \
        [(px, u) for u in item.contexts_um]
    assert name in item.arrays(crops, primary)


def test_an_items_arrays_crop_by_crop():
    item = BackboneItem.parse("b+stages+448+110um")
    crops = [(224, None), (448, None), (160, 110.0)]
    assert item.arrays(crops, 224) == {
        "features": {"layer": "pooled", "crop_px": 224},
        "stages": {"layer": "stages", "crop_px": 224},
        "features_448px": {"layer": "pooled", "crop_px": 448},
        "stages_448px": {"layer": "stages", "crop_px": 448},
        "features_110um": {"layer": "pooled", "crop_px": 160, "crop_um": 110.0},
        "stages_110um": {"layer": "stages", "crop_px": 160, "crop_um": 110.0}}
    assert list(item.arrays(crops, 224, stages=False)) == [
        "features", "features_448px", "features_110um"]
    assert list(BackboneItem("b").arrays([(224, None)], 224)) == ["features"]


def test_feature_specs_name_the_item_that_stores_them():
    for text, item in [("efficientnet_lite0", "efficientnet_lite0"),
                       ("efficientnet_lite0-macenko:stages_110um",
                        "efficientnet_lite0-macenko+stages+110um"),
                       ("b:features_448px", "b+448"), ("b:stages", "b+stages"),
                       ("b:features_2.5um", "b+2.5um")]:
        spec = FeatureSpec.parse(text)
        assert str(spec) == text and str(spec.item) == item
    assert FeatureSpec.parse(" b : ") == FeatureSpec("b", "features")
