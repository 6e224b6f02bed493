"""The reading side of stage 1: a slide's inputs gathered once (spot positions, content
fingerprint, pixel size, primary crop), and a background thread that reads ahead
(:func:`prefetch`). A unit's patches are cut by :func:`embed.worker.unit_batches`."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from data.errors import DataError, Problem
from data.h5 import CanonicalH5
from data.patches import resolve_patch_px
from data.spots import SpotTable
from data.store import BackboneItem, Crop
from embed.config import EmbedConfig


@dataclass(frozen=True)
class SlideInputs:
    """What every backbone needs of one slide, read once before the backbone loop.

    Attributes:
        table: the spot positions (x, y float (n_spots,); no abundances).
        fingerprint: sha256 of spot positions and image content (``CanonicalH5.fingerprint``).
        pixel_size_um: µm per pixel, or None where the file does not record it.
        primary_px: the primary crop side in pixels (``--patch-px``, or ``--patch-um``
            converted with the pixel size).
        path: the canonical file (named in errors).
    """

    slide: str
    table: SpotTable
    fingerprint: str
    pixel_size_um: float | None
    primary_px: int
    path: str = ""

    @property
    def n_spots(self) -> int:
        return len(self.table)

    def crops(self, contexts: Sequence[int]) -> list[int]:
        """Crop sides in px: the primary one first, then the other ``contexts``."""
        return [self.primary_px] + [c for c in contexts if c != self.primary_px]

    def job_crops(self, job: BackboneItem) -> list[Crop]:
        """(px, µm or None) of every crop of ``job`` on this slide: the primary one, the px
        contexts (:meth:`crops`), then the µm contexts at this slide's pixel size (each its
        own array, even where its px equal another crop's).

        Raises:
            DataError: ``job`` has crops in µm and the slide records no pixel size.
        """
        crops: list[Crop] = [(c, None) for c in self.crops(job.contexts)]
        if job.contexts_um and not self.pixel_size_um:
            wanted = ", ".join(f"+{u:g}um" for u in job.contexts_um)
            raise DataError(Problem(self.path, self.slide, "pixel_size_um",
                                    f"a recorded pixel size (crops {wanted} of {job.key} are "
                                    "in µm)", "none", "give those crops in px (e.g. +448), "
                                    "or import the slide again with its pixel size "
                                    "(import-wsi --mpp, import-her2st --pixel-size, "
                                    "import-table's pixel_size_um column)"))
        px = self.pixel_size_um or 1.0
        return crops + [(max(1, int(round(u / px))), u) for u in job.contexts_um]


def read_slide_inputs(h5: CanonicalH5, slide: str, cfg: EmbedConfig) -> SlideInputs:
    """Gather one slide's :class:`SlideInputs` (hashes the image once). Only the spot
    positions are read (:meth:`CanonicalH5.positions`): stage 1 never needs abundances,
    and a table of a million spots costs 16 MB, not a copy of every field.

    Raises:
        DataError: unknown slide, or a patch size in µm on a slide without a pixel size.
    """
    pixel = h5.pixel_size_um(slide)
    primary = resolve_patch_px(cfg.patch_px, cfg.patch_um, pixel, f"{h5.path}, slide {slide}")
    return SlideInputs(slide, h5.positions(slide), h5.fingerprint(slide), pixel, primary,
                       str(h5.path))


def prefetch(iterator: Iterator, depth: int) -> Iterator:
    """Run ``iterator`` in a background thread, ``depth`` items ahead; re-raise its errors.
    ``depth`` 0: run it in the caller's thread."""
    if depth <= 0:
        yield from iterator
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in iterator:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as exc:  # handed to the consumer, re-raised there
            q.put(exc)
        q.put(done)

    thread = threading.Thread(target=work, daemon=True, name="patch-reader")
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a worker waiting on a full queue
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
