"""Small helpers several test modules share (fixtures are in ``conftest.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.wsi.base import Level, SlideImage

ROOT = Path(__file__).resolve().parents[1]


class ArrayImage(SlideImage):
    """A one-level slide held in memory: ``pixels`` (H, W, 3) uint8."""

    reader = "array"

    def __init__(self, pixels: np.ndarray, mpp: float | None = 1.0, name: str = "S1"):
        self.pixels, self.path, self.slide = pixels, f"{name}.tif", name
        self.levels = (Level(pixels.shape[0], pixels.shape[1], 1.0),)
        self.pixel_size_um = mpp

    def read_level(self, level, y0, y1, x0, x1):
        return self.pixels[y0:y1, x0:x1]


def run_submit(h5: Path, out: Path, *args: str) -> int:
    """``hespot submit`` on ``out``'s predictions (quiet); its exit code."""
    import regress.submit

    return regress.submit.main(["--h5", str(h5), "--out", str(out), "--quiet", *args])


def assert_slides(h5, train: list[str], test: list[str], types) -> None:
    """The canonical file ``h5`` (open) holds these train and test slides and cell types."""
    assert h5.train_slides == train
    assert h5.test_slides == test
    assert h5.cell_types == tuple(types)


def refused(capsys, argv: list, *words: str) -> str:
    """Run ``hespot argv``: exit 2, the last stderr line one ``hespot:`` line holding
    ``words``, no traceback; returns that line."""
    from data import commands

    rc = commands.main([str(a) for a in argv])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("hespot: ") and "Traceback" not in err, err
    assert all(w in last for w in words), last
    return last

