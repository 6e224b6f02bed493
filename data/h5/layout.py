"""The canonical HDF5's groups (:mod:`data.h5.reader`): which must be there and be groups,
checked when a file is opened; a tissue mask, checked before it is read; and what h5py
raises on a file that is damaged."""

from __future__ import annotations

import h5py

from data.errors import DataError, Problem
from data.validate import check_stored
from data.wsi.tissue import TissueMask

SPLITS = ("Train", "Test")
#: what h5py raises on a damaged file (structures, links that lead nowhere)
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError)


def layout_problem(f: h5py.File) -> tuple[str, str]:
    """(the path at fault, what is there) when ``images`` or ``spots`` is missing or is not
    a group, or one of their ``Train``/``Test`` members is not a group; else ("", "")."""
    missing = [top for top in ("images", "spots") if top not in f]
    if missing:
        return "/".join(missing), f"no group {', '.join(missing)}"
    for top in ("images", "spots"):
        if not isinstance(f[top], h5py.Group):
            return top, "a dataset"
        for split in SPLITS:
            if split in f[top] and not isinstance(f[top][split], h5py.Group):
                return f"{top}/{split}", "a dataset"
    return "", ""


#: the widest tissue mask read (imports write about 2048 px a side)
MAX_MASK_SIDE = 1 << 16


def read_mask(node: h5py.Dataset | h5py.Group, path: str, slide: str) -> TissueMask:
    """The tissue mask at ``node``, its shape, type, stored size and attributes checked
    before it is read whole.

    Raises:
        DataError: naming the mask and what is wrong with it.
    """
    if not isinstance(node, h5py.Dataset) or node.ndim != 2 or node.dtype.kind not in "biu" \
            or max(node.shape) > MAX_MASK_SIDE:
        why = f"{type(node).__name__} {getattr(node, 'shape', '')} {getattr(node, 'dtype', '')}"
    else:
        stored = check_stored(path, slide, node.name, node.shape, node.dtype.itemsize,
                              node.id.get_storage_size(), node.chunks)
        why = stored[0].found if stored else ""
    if not why:
        try:
            return TissueMask.read(node)
        except (KeyError, ValueError, TypeError) as exc:  # its scale and thresholds
            why = f"attributes: {exc}"
    raise DataError(Problem(path, slide, node.name, "the 2-D tissue mask an import writes",
                            why, "import the slide again"))
