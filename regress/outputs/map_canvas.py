"""What the pictures of a slide's maps are drawn on: the spots as a raster and the slide's
thumbnail with its tissue outline, each made once per slide and reused for every map.

Spots are not drawn one patch each (that costs ~ n_spots per panel, minutes for a
whole-slide grid of tens of thousands of spots times 35 cell types): a
:class:`SpotRaster` records, once, which spot each pixel of a panel shows (the nearest
spot within its radius, else none), and a map is then ``values[index]`` through the
colour map over the thumbnail (:class:`MapCanvas`, the thumbnail resampled once onto the
raster's pixels): one RGB ``imshow``, whatever the number of spots.

Coordinates are level-0 (full-resolution) pixels: ``x`` = column, ``y`` = row. A box
``(x0, x1, y1, y0)`` is an ``imshow`` extent (top row ``y0``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Colormap, Normalize
from matplotlib.image import AxesImage
from PIL import Image
from scipy.spatial import cKDTree
from skimage.measure import find_contours

from data.wsi.tissue import TissueMask

Extent = tuple[float, float, float, float]
#: drawn spot diameter as a share of the spot spacing (as the report draws them)
SPOT_FILL = 0.7
#: spots fewer pixels apart than this are drawn as tiles rather than discs
MIN_SPOT_PX = 5
#: the thumbnail is blended towards white by this much, so the colours read first
FADE = 0.45
#: colour of the tissue outline (the report's)
OUTLINE = "#ff8f00"


def spots_box(x: np.ndarray, y: np.ndarray, margin: float) -> Extent:
    """The spots' bounding box plus ``margin`` pixels: ``(x0, x1, y1, y0)``."""
    return (float(x.min()) - margin, float(x.max()) + margin,
            float(y.max()) + margin, float(y.min()) - margin)


@dataclass(frozen=True)
class SpotRaster:
    """Which spot each pixel of a picture shows.

    Attributes:
        index: int32 (h, w): the spot (row of the slide's values) drawn at each pixel,
            -1 where none is.
        box: the level-0 extent the raster covers.
    """

    index: np.ndarray
    box: Extent

    def paint(self, values: np.ndarray) -> np.ma.MaskedArray:
        """float (h, w) of ``values`` (float (n_spots,)) at their spots' pixels; masked
        (transparent) between spots and where a value is not finite."""
        values = np.asarray(values, float)
        out = values[np.maximum(self.index, 0)]
        return np.ma.masked_array(out, mask=(self.index < 0) | ~np.isfinite(out))


def spot_raster(x: np.ndarray, y: np.ndarray, box: Extent, long_px: int,
                spacing: float) -> SpotRaster:
    """Rasterise spots (float (n,) each, level-0 pixels, median nearest-neighbour distance
    ``spacing``) over ``box`` at ``long_px`` pixels on its longest side. Where spots are at
    least :data:`MIN_SPOT_PX` pixels apart, a pixel shows the spot whose centre lies within
    :data:`SPOT_FILL` / 2 spacings (discs with gaps, the thumbnail between them); on a
    denser grid (a whole slide on a small panel) the nearest spot within 0.75 spacing (a
    tiled heat map: discs of a pixel or two would shimmer or vanish)."""
    x0, x1, y1, y0 = box
    step = max(x1 - x0, y1 - y0) / max(1, long_px)
    w, h = max(1, int(np.ceil((x1 - x0) / step))), max(1, int(np.ceil((y1 - y0) / step)))
    cx = x0 + (np.arange(w) + 0.5) * step
    cy = y0 + (np.arange(h) + 0.5) * step
    radius = SPOT_FILL * spacing / 2 if spacing >= MIN_SPOT_PX * step else 0.75 * spacing
    radius = max(radius, 0.75 * step)
    tree = cKDTree(np.stack([x, y], axis=1))
    grid = np.stack(np.meshgrid(cx, cy), axis=-1).reshape(-1, 2)
    dist, idx = tree.query(grid, k=1, distance_upper_bound=radius)
    index = np.where(np.isfinite(dist), idx, -1).astype(np.int32).reshape(h, w)
    return SpotRaster(index, (x0, x0 + w * step, y0 + h * step, y0))


def tissue_outline(tissue: TissueMask | None) -> list[np.ndarray]:
    """The outline of a tissue mask: float (k, 2) polylines of (x, y) level-0 pixels
    (none without a mask, or for a mask that is all or no tissue)."""
    if tissue is None or not tissue.mask.any() or tissue.mask.all():
        return []
    fy, fx = tissue.scale
    padded = np.pad(tissue.mask.astype(np.float32), 1)      # closed outlines at the border
    return [np.stack([(c[:, 1] - 0.5) * fx, (c[:, 0] - 0.5) * fy], axis=1)
            for c in find_contours(padded, 0.5) if len(c) > 2]


def under_raster(thumb: np.ndarray | None, extent: Extent | None, raster: SpotRaster
                 ) -> np.ndarray:
    """uint8 (h, w, 3): ``thumb`` (uint8 (th, tw, 3) of level-0 ``extent``) on the
    raster's pixels (box-averaged or enlarged to its pixel size, then sampled at the pixel
    centres), faded by :data:`FADE`; white where there is no thumbnail."""
    h, w = raster.index.shape
    out = np.full((h, w, 3), 255, np.uint8)
    if thumb is None or extent is None or not thumb.size:
        return out
    x0, x1, y1, y0 = raster.box
    step = (x1 - x0) / w
    th, tw = thumb.shape[:2]
    size = (max(1, round((extent[1] - extent[0]) / step)),
            max(1, round((extent[2] - extent[3]) / step)))
    method = Image.Resampling.BOX if size[0] < tw else Image.Resampling.BILINEAR
    big = np.asarray(Image.fromarray(thumb).resize(size, method))
    fx, fy = (extent[1] - extent[0]) / size[0], (extent[2] - extent[3]) / size[1]
    cols = np.floor((x0 + (np.arange(w) + 0.5) * step - extent[0]) / fx).astype(np.int64)
    rows = np.floor((y0 + (np.arange(h) + 0.5) * step - extent[3]) / fy).astype(np.int64)
    ci, ri = (cols >= 0) & (cols < size[0]), (rows >= 0) & (rows < size[1])
    part = big[np.ix_(rows[ri], cols[ci])].astype(np.float32)
    out[np.ix_(ri, ci)] = (part * (1 - FADE) + 255 * FADE).astype(np.uint8)
    return out


@dataclass(frozen=True)
class MapCanvas:
    """What every map of a slide at one size is drawn on.

    Attributes:
        raster: which spot each pixel shows.
        under: uint8 (h, w, 3) the faded thumbnail on the raster's pixels.
        outline: float (k, 2) polylines (x, y) of the tissue outline, level-0 pixels.
    """

    raster: SpotRaster
    under: np.ndarray
    outline: list[np.ndarray]

    def rgb(self, values: np.ndarray, norm: Normalize, cmap: str | Colormap) -> np.ndarray:
        """uint8 (h, w, 3): the spots coloured by ``values`` (float (n_spots,)) over the
        thumbnail (values that are not finite leave it showing). Each spot is coloured
        once, then its colour copied to its pixels."""
        values = np.asarray(values, float)
        lut = colormaps[cmap] if isinstance(cmap, str) else cmap
        colours = np.asarray(lut(np.ma.filled(norm(values), np.nan), bytes=True))[:, :3]
        index = self.raster.index
        shown = index >= 0
        shown[shown] = np.isfinite(values[index[shown]])
        out = self.under.copy()
        out[shown] = colours[index[shown]]
        return out


def map_canvas(x: np.ndarray, y: np.ndarray, box: Extent, long_px: int, spacing: float,
               thumb: np.ndarray | None, extent: Extent | None,
               outline: list[np.ndarray]) -> MapCanvas:
    """The :class:`MapCanvas` of spots ``x``, ``y`` (float (n,), level-0 pixels, median
    spacing ``spacing``) over ``box`` at ``long_px`` pixels on its longest side."""
    raster = spot_raster(x, y, box, long_px, spacing)
    return MapCanvas(raster, under_raster(thumb, extent, raster), outline)


def draw_map(ax, canvas: MapCanvas, values: np.ndarray, norm: Normalize,
             cmap: str | Colormap, linewidth: float = 0.6, interpolation: str = "antialiased"
             ) -> tuple[AxesImage, ScalarMappable]:
    """Draw the spots coloured by ``values`` (float (n_spots,)) over the thumbnail and the
    tissue outline on ``ax`` (limits: the raster's box); returns the image and the
    mappable a colour bar reads. ``interpolation="nearest"`` where the axes are as many
    screen pixels as the raster (nothing to smooth, and a third faster)."""
    box = canvas.raster.box
    image = ax.imshow(canvas.rgb(values, norm, cmap), extent=box, interpolation=interpolation)
    if canvas.outline:
        ax.add_collection(LineCollection(canvas.outline, colors=OUTLINE,
                                         linewidths=linewidth))
    ax.set_xlim(box[0], box[1])
    ax.set_ylim(box[2], box[3])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    return image, ScalarMappable(norm, cmap)
