"""hespot's version: the installed package's, or, run from a source tree on ``PYTHONPATH``
(how the code travels to a GPU machine), the one its ``pyproject.toml`` states."""

from __future__ import annotations

import tomllib
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

#: pyproject.toml beside the packages of a source tree
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


@cache
def hespot_version() -> str:
    """The installed hespot's version; not installed: ``pyproject.toml``'s
    (``<version>+source``), else ``unknown``."""
    try:
        return version("hespot")
    except PackageNotFoundError:
        pass
    try:
        return tomllib.loads(PYPROJECT.read_text())["project"]["version"] + "+source"
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"
