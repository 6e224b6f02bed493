"""Print what a canonical file holds: ``python -m data.summary FILE``.

Slides per split, spots, cell types, image sizes and pixel size.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from data.cli import Parser, entry_point
from data.h5 import CanonicalH5


def summarize(path: str) -> str:
    """A plain-text table of the file's slides."""
    lines = []
    with CanonicalH5(path) as h5:
        types = h5.cell_types
        lines.append(f"{path}: {len(h5.train_slides)} train, {len(h5.test_slides)} test slides; "
                     f"{len(types)} cell types")
        lines.append(f"{'split':<6} {'slide':<12} {'spots':>6} {'image (H x W)':>16} "
                     f"{'µm/px':>7} {'patch 224 px':>13}")
        total = 0
        for split, slides in (("Train", h5.train_slides), ("Test", h5.test_slides)):
            for slide in slides:
                n = h5.n_spots(slide)
                total += n
                h, w = h5.image_shape(slide)[:2]
                px = h5.pixel_size_um(slide)
                px_s = f"{px:.3f}" if px else "?"
                um = f"{224 * px:.0f} µm" if px else "?"
                lines.append(f"{split:<6} {slide:<12} {n:>6} {f'{h} x {w}':>16} {px_s:>7} "
                             f"{um:>13}")
        lines.append(f"{total} spots in all")
        shown = ", ".join(types[:8]) + (", ..." if len(types) > 8 else "")
        lines.append(f"cell types: {shown}")
    return "\n".join(lines)


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m data.summary", description=__doc__)
    p.add_argument("file")
    args = p.parse_args(argv)
    sys.stdout.write(summarize(args.file) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
