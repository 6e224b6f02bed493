"""The grammar of the store's items: what ``hespot embed --backbones`` asks for, which
store group holds it and how its arrays are named. Written once here and read by stage 1
(its jobs), the store's reader (how to make a missing array), ``tune`` and ``predict``
(the item that remakes a model's features)::

    efficientnet_lite0+stages+448+110um+macenko   an item (options in any order)
    efficientnet_lite0-macenko+stages+448+110um   the same item as str() writes it
    efficientnet_lite0-macenko                    its store group: name, stain levers
    features  stages  features_448px  stages_110um  its arrays (pooled or stages, at the
                                                  primary crop, a crop in px or in µm)

The stain levers' words (``macenko``, ``hed``) are reserved: no backbone's name ends in
``-macenko`` or ``-hed``. Whether a name is a known backbone is stage 1's to check (its
registry): :meth:`BackboneItem.parse` takes the check as ``check_name``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from data.errors import ConfigError

#: stain levers of an item (:mod:`embed.stain`), in the order they name the store group:
#: ``efficientnet_lite0-macenko-hed``
STAIN_OPTIONS = ("macenko", "hed")
#: a crop side in µm as an item's option: ``110um``, ``2.5um``
_UM = re.compile(r"(\d+(?:\.\d*)?|\.\d+)um")
#: a feature array's name: layer, then a crop in px or in µm where it is not the primary
_ARRAY = re.compile(r"_(\d+(?:\.\d+)?)(um|px)$")

#: one crop of a slide: its side in px, and in µm where it was asked for in µm
Crop = tuple[int, float | None]


def parse_crop(text: str) -> int | str:
    """A ``--context`` value: ``448`` (px) -> 448; ``110um`` stays as written (checked by
    :meth:`BackboneItem.parse`)."""
    text = text.strip()
    return int(text) if text.isdigit() else text


def split_group(group: str) -> tuple[str, tuple[str, ...]]:
    """A store group's (or an item head's) backbone name and stain levers:
    ``efficientnet_lite0-macenko`` -> ``("efficientnet_lite0", ("macenko",))``."""
    parts = group.strip().split("-")
    stain: list[str] = []
    while len(parts) > 1 and parts[-1] in STAIN_OPTIONS:
        stain.insert(0, parts.pop())
    return "-".join(parts), tuple(stain)


def array_name(layer: str, crop_px: int, primary_px: int, crop_um: float | None = None
               ) -> str:
    """Name of a feature array: ``features``/``stages`` for the primary crop, else
    ``features_448px``/``stages_448px``; a crop given in µm (``crop_um``, whatever its
    pixels on a slide) ``features_110um``/``stages_110um`` (the µm value formatted ``:g``)."""
    base = "features" if layer == "pooled" else layer
    if crop_um is not None:
        return f"{base}_{crop_um:g}um"
    return base if crop_px == primary_px else f"{base}_{crop_px}px"


def _number(value: float) -> str:
    """``value`` as an item writes it: 110.0 -> ``110``, 2.5 -> ``2.5`` (read back equal)."""
    return repr(float(value)).removesuffix(".0")


@dataclass(frozen=True)
class BackboneItem:
    """One backbone and its stage-1 options: a ``--backbones`` item
    ``name[+stages][+<crop px>...][+<crop µm>um...][+macenko][+hed]`` (the name may be a
    store group's, ``efficientnet_lite0-macenko``, which carries its stain levers).
    ``str()`` writes the group, then the options; :meth:`parse` reads it back equal.

    Attributes:
        name: the backbone's registry name.
        stages: also the mean+std of intermediate stages (arrays ``stages``...).
        contexts: extra crop sides in px (arrays ``features_448px``...).
        contexts_um: extra crop sides in µm, converted per slide with its pixel size
            (arrays ``features_110um``...).
        stain: stain levers in :data:`STAIN_OPTIONS` order: ``macenko`` (normalisation to
            the reference stains), ``hed`` (HED jitter of the TTA views).
    """

    name: str
    stages: bool = False
    contexts: tuple[int, ...] = ()
    contexts_um: tuple[float, ...] = ()
    stain: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The store group of this item's features: the name, then its stain levers."""
        return "-".join((self.name, *self.stain))

    def __str__(self) -> str:
        return "".join((self.key, "+stages" * self.stages,
                        *(f"+{c}" for c in self.contexts),
                        *(f"+{_number(u)}um" for u in self.contexts_um)))

    @classmethod
    def of_group(cls, group: str, stages: bool = False, contexts: Iterable[int] = (),
                 contexts_um: Iterable[float] = (), stain: Iterable[str] = ()
                 ) -> BackboneItem:
        """The item of store group ``group`` with these options (repeats dropped, stain
        levers of the group and of ``stain`` in :data:`STAIN_OPTIONS` order)."""
        name, levers = split_group(group)
        levers = {*levers, *stain}
        return cls(name, bool(stages), tuple(dict.fromkeys(int(c) for c in contexts)),
                   tuple(dict.fromkeys(float(u) for u in contexts_um)),
                   tuple(s for s in STAIN_OPTIONS if s in levers))

    @classmethod
    def parse(cls, text: str, stages: bool = False, contexts: Sequence[int | str] = (),
              check_name: Callable[[str], Any] | None = None) -> BackboneItem:
        """The item written ``text``, with ``stages`` and ``contexts`` (``--stages`` and
        ``--context``: px as int, µm as ``"110um"``) added to its own options.

        Args:
            check_name: called with the backbone's name before the options are read
                (stage 1 passes its registry's lookup, which names the known ones).

        Raises:
            ConfigError: an option that is none of these, naming it and giving examples.
        """
        head, *opts = text.strip().split("+")
        if check_name is not None:
            check_name(split_group(head)[0])
        px: list[int] = []
        um: list[float] = []
        levers: list[str] = []
        for o in (*contexts, *opts):
            if isinstance(o, int):
                px.append(o)
                continue
            o = str(o)
            if o == "stages":
                stages = True
            elif o in STAIN_OPTIONS:
                levers.append(o)
            elif o.isdigit():
                px.append(int(o))
            elif _UM.fullmatch(o):
                um.append(float(o[:-2]))
            else:
                raise ConfigError(f"backbone option {o!r} in {text!r}: expected 'stages', "
                                  f"{', '.join(map(repr, STAIN_OPTIONS))}, a crop size in px "
                                  "or in µm, e.g. efficientnet_lite0+stages+448 or "
                                  "efficientnet_lite0+macenko+110um")
        return cls.of_group(head, stages, px, um, levers)

    @classmethod
    def of_array(cls, group: str, array: str) -> BackboneItem:
        """The item that stores array ``array`` of ``group`` (``efficientnet_lite0-macenko``,
        ``stages_110um`` -> ``efficientnet_lite0-macenko+stages+110um``); a name not
        ending in a crop is the primary crop's."""
        crop = _ARRAY.search(array)
        px = [int(crop[1])] if crop and crop[2] == "px" else []
        um = [float(crop[1])] if crop and crop[2] == "um" else []
        return cls.of_group(group, array.startswith("stages"), px, um)

    def arrays(self, crops: Sequence[Crop], primary_px: int, stages: bool | None = None
               ) -> dict[str, dict[str, Any]]:
        """name -> ``{"layer", "crop_px"[, "crop_um"]}`` of every array the item stores on
        a slide whose crops are ``crops`` (the primary one first), crop by crop, pooled
        before stages. ``stages``: whether the stages are stored (default :attr:`stages`;
        a backbone without intermediate stages stores none)."""
        layers = ("pooled", "stages") if (self.stages if stages is None else stages) \
            else ("pooled",)
        out: dict[str, dict[str, Any]] = {}
        for px, um in crops:
            crop = {"crop_px": px} if um is None else {"crop_px": px, "crop_um": um}
            for layer in layers:
                out[array_name(layer, px, primary_px, um)] = {"layer": layer, **crop}
        return out


@dataclass(frozen=True)
class FeatureSpec:
    """One array of the store: ``backbone`` (a store group) and array name (``features``,
    ``stages``, ``features_448px``...). Written ``backbone`` or ``backbone:array`` on the
    command line (stage 2's ``--features``: ``efficientnet_lite0-macenko:features_220um``)."""

    backbone: str
    array: str = "features"

    @classmethod
    def parse(cls, text: str) -> FeatureSpec:
        backbone, _, array = text.partition(":")
        return cls(backbone.strip(), array.strip() or "features")

    def __str__(self) -> str:
        return self.backbone if self.array == "features" else f"{self.backbone}:{self.array}"

    @property
    def item(self) -> BackboneItem:
        """The ``--backbones`` item that stores this array (:meth:`BackboneItem.of_array`)."""
        return BackboneItem.of_array(self.backbone, self.array)
