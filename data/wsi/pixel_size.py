"""Pixel size (µm per level-0 pixel) from a slide file's metadata.

Order of trust: ``openslide.mpp-x``/``-y`` (OpenSlide's own reading of the vendor's
fields), then vendor fields OpenSlide does not map (Aperio ``MPP`` in the description,
OME ``PhysicalSizeX``), then TIFF resolution tags (``XResolution`` with a centimetre or
inch unit). Values outside :data:`PLAUSIBLE_UM` (a 72-dpi default tag reads as 353 µm)
are ignored with a log line; ``--mpp`` overrides all of them.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping

from data.errors import ConfigError

log = logging.getLogger("hespot")

#: µm per pixel a microscope scan can have: anything else is a default or a mistake
PLAUSIBLE_UM = (0.05, 50.0)
#: µm per resolution unit (TIFF ResolutionUnit 2 = inch, 3 = centimetre)
UNIT_UM = {2: 25_400.0, 3: 10_000.0, "inch": 25_400.0, "centimeter": 10_000.0,
           "cm": 10_000.0}
OME_UNIT_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4,
               "m": 1e6, "Å": 1e-4}


def plausible(value: float | None, source: str, path: str) -> float | None:
    """``value`` if it is a plausible µm/px, else None (logged)."""
    if value is None:
        return None
    if PLAUSIBLE_UM[0] <= value <= PLAUSIBLE_UM[1]:
        return float(value)
    log.info("%s: ignoring pixel size %.4g um from %s (outside %s um)", path, value, source,
             PLAUSIBLE_UM)
    return None


def mean_xy(x: float | None, y: float | None, source: str, path: str) -> float | None:
    """The mean of the x and y pixel sizes (either alone if one is missing); a warning
    when they differ by more than 1 % (patches are cut square)."""
    x, y = plausible(x, source, path), plausible(y, source, path)
    if x is None or y is None:
        return x if y is None else y
    if abs(x - y) > 0.01 * max(x, y):
        log.warning("%s: pixels are not square (%.4g x %.4g um, from %s); using their mean",
                    path, x, y, source)
    return (x + y) / 2


def _float(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if out > 0 else None


def from_resolution(xres: object, yres: object, unit: object, source: str,
                    path: str) -> float | None:
    """µm/px from TIFF resolution values (pixels per unit, a float or a (num, den) pair)."""
    per_unit = UNIT_UM.get(unit.lower() if isinstance(unit, str) else unit)  # type: ignore
    if per_unit is None:
        return None

    def size(res: object) -> float | None:
        if isinstance(res, tuple | list) and len(res) == 2:
            res = res[0] / res[1] if res[1] else None
        res = _float(res)
        return per_unit / res if res else None

    return mean_xy(size(xres), size(yres), source, path)


def from_openslide(props: Mapping[str, str], path: str) -> float | None:
    """µm/px from OpenSlide's properties: its mpp, Aperio's MPP, then TIFF tags."""
    got = mean_xy(_float(props.get("openslide.mpp-x")), _float(props.get("openslide.mpp-y")),
                  "openslide.mpp-x/-y", path)
    if got is None:
        got = plausible(_float(props.get("aperio.MPP")), "aperio.MPP", path)
    if got is None:
        got = from_resolution(props.get("tiff.XResolution"), props.get("tiff.YResolution"),
                              props.get("tiff.ResolutionUnit"), "TIFF resolution tags", path)
    return got


def from_aperio_description(description: str, path: str) -> float | None:
    """Aperio's ``|MPP = 0.2520|`` in a TIFF ImageDescription."""
    m = re.search(r"\bMPP\s*=\s*([0-9.eE+-]+)", description or "")
    return plausible(_float(m.group(1)), "Aperio MPP", path) if m else None


def from_ome(xml: str | None, path: str) -> float | None:
    """OME-XML ``Pixels`` PhysicalSizeX/Y with their units (µm when none is given)."""
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        log.info("%s: unreadable OME-XML, pixel size not taken from it", path)
        return None
    pixels = next((el for el in root.iter()
                   if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)
    if pixels is None:
        return None

    def size(axis: str) -> float | None:
        value = _float(pixels.get(f"PhysicalSize{axis}"))
        factor = OME_UNIT_UM.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        return value * factor if value is not None and factor else None

    return mean_xy(size("X"), size("Y"), "OME PhysicalSizeX/Y", path)


def check_override(mpp: float | None) -> float | None:
    """A ``--mpp`` value, checked (ConfigError when not a plausible pixel size)."""
    if mpp is None:
        return None
    if not PLAUSIBLE_UM[0] <= mpp <= PLAUSIBLE_UM[1]:
        raise ConfigError(f"--mpp must be a pixel size in µm between {PLAUSIBLE_UM[0]} and "
                          f"{PLAUSIBLE_UM[1]}, got {mpp}")
    return float(mpp)
