"""The models shipped inside the package and the ``--model`` argument: a shipped model's
name or a model folder (:func:`resolve_model`), and ``hespot models [DIR ...]``
(``python -m regress.catalog``), one line per model from its ``model.json``.

Shipped models live in ``regress/ready/<name>/`` (package data: an installed hespot has
them), each a model folder as ``hespot fit`` writes it (:mod:`regress.bundle`) with its
card; ``make ready-model`` rebuilds ``her2st-breast`` from the bundled sample.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from data.cli import Parser, entry_point, setup_logging
from data.errors import ConfigError, DataError
from regress.bundle import read_meta
from regress.bundle_meta import MODEL_JSON

log = logging.getLogger("hespot")

READY_ROOT = Path(__file__).resolve().parent / "ready"
DEFAULT_MODEL = "her2st-breast"  # the shipped model ``hespot map`` uses by default


def shipped_models(root: Path | None = None) -> dict[str, Path]:
    """name -> folder of every model shipped in the package (``regress/ready/<name>/``
    holding a model.json), sorted by name. ``root``: another folder of models (tests)."""
    root = READY_ROOT if root is None else Path(root)
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / MODEL_JSON).is_file()}


def resolve_model(name_or_dir: str | Path, root: Path | None = None) -> Path:
    """The model folder that ``--model`` names: a shipped model's name first (write
    ``./NAME`` for a folder of that name), else a path that exists (a folder that is not
    a model folder is reported by :func:`regress.bundle.read_meta` when it is read).

    Raises:
        ConfigError: neither a shipped name nor an existing path; the message lists the
            shipped names.
    """
    text = str(name_or_dir)
    shipped = shipped_models(root)
    if text in shipped:
        return shipped[text]
    path = Path(text).expanduser()
    if path.exists():
        return path
    names = ", ".join(shipped) or "none (this installation ships no model)"
    raise ConfigError(f"--model {text!r} is neither a model folder (model.json and its "
                      f"files, as hespot fit writes them) nor a shipped model; shipped: "
                      f"{names} (hespot models lists them); or run `make fit` and pass "
                      "its folder")


def _mean(entry: Mapping[str, Any] | None, key: str, digits: int = 3) -> str:
    """An entry's mean LOSO score ``key`` as text ("-" where it has none)."""
    value = ((entry or {}).get("loso") or {}).get("mean", {}).get(key)
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def model_line(name: str, meta: Mapping[str, Any], folder: Path | str) -> str:
    """One line of ``hespot models``: the name, cell types, training slides, the
    submitted rank model's mean LOSO Spearman per spot / per type, the abundance model's
    mean LOSO TV ratio to the training mean (lower is better; 1 = no better than the
    mean) and the folder."""
    first = meta["models"][0]
    rank = first["id"] if len(meta["models"]) == 1 else f"{len(meta['models'])} models"
    ab = meta.get("abundance")
    ratio = f"{_mean(ab, 'tv_ratio', 2)} ({ab.get('name')})" if ab else "- (rank only)"
    slides = meta.get("train_slides", [])
    return (f"{name}: {len(meta['cell_types'])} cell types; trained on {len(slides)} slides "
            f"({', '.join(slides)}); LOSO Spearman per spot {_mean(first, 'spot')} / per "
            f"type {_mean(first, 'type')} ({rank}); abundance TV ratio {ratio}; {folder}")


def list_models(folders: Sequence[str], root: Path | None = None) -> tuple[list[str], list[str]]:
    """(one line per readable model: the shipped ones, then each folder given; one line
    per folder that is not a readable model folder)."""
    lines, bad, seen = [], [], set()
    named = list(shipped_models(root).items())
    named += [(Path(f).resolve().name or str(f), Path(f)) for f in folders]
    for name, folder in named:
        if folder.resolve() in seen:  # a shipped model's folder given again
            continue
        seen.add(folder.resolve())
        try:
            meta = read_meta(folder)
        except DataError as exc:
            bad.append("hespot: " + " ".join(str(exc).split()))  # it names the folder
            continue
        lines.append(model_line(name, meta, folder))
    return lines, bad


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="hespot models", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="*", metavar="DIR",
                   help="model folders (hespot fit) to list beside the shipped models")
    p.add_argument("--quiet", action="store_true", help="warnings and errors only")
    return p


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    lines, bad = list_models(args.folders)
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stderr.write("".join(f"{line}\n" for line in bad))
    return 2 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
