"""The canonical HDF5's groups (:mod:`data.h5.reader`): which must be there and be groups,
checked when a file is opened, and what h5py raises on a file that is damaged."""

from __future__ import annotations

import h5py

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
