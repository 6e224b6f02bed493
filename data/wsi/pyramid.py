"""Write pyramidal tiled TIFFs (what OpenSlide reads as generic tiled TIFF, and tifffile
as a series with reduced levels): the tests' and benchmarks' whole-slide images.

``python -m data.wsi.pyramid --image data/samples/her2st/images/C2.jpg --repeat 3x3
--mpp 0.69 --out out/big.tif`` tiles a bundled image 3 x 3 into a ~28k x 30k px slide
(``make big-slide``). Tiles are generated and written one at a time: the slide is never
held whole.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile

from data.atomic import atomic_path
from data.cli import (
    check_name,
    config_parser,
    entry_point,
    require_settings,
    resolve_config,
    setup_logging,
)
from data.config import COMPRESSIONS, MakeWsiConfig
from data.errors import ConfigError
from data.images import load_image

log = logging.getLogger("hespot")

#: (level, y0, y1, x0, x1) -> uint8 (y1 - y0, x1 - x0, 3)
Source = Callable[[int, int, int, int, int], np.ndarray]


def box_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """uint8 (H // f, W // f, 3): the mean of each f x f block (rounded)."""
    if factor == 1:
        return image
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[:h * factor, :w * factor].reshape(h, factor, w, factor, -1)
    return np.round(blocks.mean(axis=(1, 3), dtype=np.float32)).astype(np.uint8)


def _tiles(source: Source, level: int, shape: tuple[int, int], tile: int) -> Iterator:
    h, w = shape
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
            out = np.full((tile, tile, 3), 255, np.uint8)  # edge tiles padded white
            out[:y1 - y0, :x1 - x0] = source(level, y0, y1, x0, x1)
            yield out


def write_pyramid(path: str | Path, source: Source, shapes: Sequence[tuple[int, int]],
                  mpp: float | None, tile: int = 256, compression: str = "jpeg",
                  quality: int = 90) -> Path:
    """Write a pyramidal tiled TIFF atomically.

    Args:
        source: reads a window of a level (level 0 = full resolution).
        shapes: (H, W) of each level, level 0 first, each a 2x reduction of the one above.
        mpp: µm per level-0 pixel, written as resolution tags (centimetre unit); None
            writes none.
        compression: "jpeg" (lossy, as scanners write), "zlib" or "none".
    """
    kwargs = {"compression": None if compression == "none" else compression}
    if compression == "jpeg":
        kwargs["compressionargs"] = {"level": quality}
    path = Path(path)
    with atomic_path(path, suffix=".tmp.tif") as tmp, \
            tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        for level, (h, w) in enumerate(shapes):
            ds = shapes[0][1] / w
            res = {} if mpp is None else {"resolution": (1e4 / (mpp * ds),) * 2,
                                          "resolutionunit": "CENTIMETER"}
            tw.write(_tiles(source, level, (h, w), tile), shape=(h, w, 3), dtype=np.uint8,
                     tile=(tile, tile), photometric="rgb", subfiletype=1 if level else 0,
                     **res, **kwargs)
    return path


def level_shapes(h: int, w: int, min_side: int = 512) -> list[tuple[int, int]]:
    """Level sizes halving until the longest side is below ``min_side`` (at least 1)."""
    shapes = [(h, w)]
    while max(shapes[-1]) // 2 >= min_side:
        shapes.append((shapes[-1][0] // 2, shapes[-1][1] // 2))
    return shapes


def write_array_pyramid(path: str | Path, image: np.ndarray, mpp: float | None,
                        n_levels: int = 3, **kwargs) -> Path:
    """A pyramid of an in-memory uint8 (H, W, 3) image (tests): each level the box
    downsample of the full image by 2^k."""
    levels = [box_downsample(image, 2 ** k) for k in range(n_levels)]
    return write_pyramid(path, lambda k, y0, y1, x0, x1: levels[k][y0:y1, x0:x1],
                         [lv.shape[:2] for lv in levels], mpp, **kwargs)


def write_repeated(path: str | Path, image: np.ndarray, repeat: tuple[int, int],
                   mpp: float | None, **kwargs) -> Path:
    """A slide that repeats ``image`` (ny, nx) times, with a pyramid; only ``image`` and
    its reductions are held in memory."""
    h, w = image.shape[0] * repeat[0], image.shape[1] * repeat[1]
    shapes = level_shapes(h, w)
    small = [box_downsample(image, 2 ** k) for k in range(len(shapes))]

    def source(level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        src = small[level]
        rows = np.arange(y0, y1) % src.shape[0]
        cols = np.arange(x0, x1) % src.shape[1]
        return src[rows][:, cols]

    return write_pyramid(path, source, shapes, mpp, **kwargs)


def _repeat(text: str) -> tuple[int, int]:
    try:
        ny, nx = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise ConfigError(f"--repeat must look like 3x3, got {text!r}") from exc
    if ny < 1 or nx < 1:
        raise ConfigError(f"--repeat must be positive, got {text!r}")
    return ny, nx


def build_parser() -> argparse.ArgumentParser:
    p = config_parser("hespot make-wsi", __doc__, MakeWsiConfig, common=("quiet",))
    p.add_argument("--image", help="source image (JPEG/PNG/TIFF; required)")
    p.add_argument("--repeat", help="tiles, rows x columns, e.g. 3x3 (default 1x1)")
    p.add_argument("--mpp", type=float, help="µm per pixel to record")
    p.add_argument("--tile", type=int, help="tile side in pixels (default 256)")
    p.add_argument("--compression", choices=COMPRESSIONS, help="default jpeg")
    p.add_argument("--out", help="pyramidal TIFF to write (required)")
    return p


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = resolve_config(MakeWsiConfig, build_parser().parse_args(argv))
    setup_logging(cfg.quiet)
    require_settings(cfg, image="the source image", out="the pyramidal TIFF to write")
    check_name("--compression", cfg.compression, COMPRESSIONS)
    repeat = _repeat(cfg.repeat)
    image = load_image(Path(cfg.image))
    path = write_repeated(Path(cfg.out), image, repeat, cfg.mpp, tile=cfg.tile,
                          compression=cfg.compression)
    h, w = image.shape[0] * repeat[0], image.shape[1] * repeat[1]
    log.info("wrote %s: %d x %d px, %.0f MB", path, h, w, path.stat().st_size / 1e6)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
