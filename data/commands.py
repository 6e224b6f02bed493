"""The ``hespot`` command: ``hespot <subcommand> [flags]`` runs the ``main(argv)`` of the
module that owns that step, so ``hespot embed --help`` and ``python -m embed.run --help``
are the same parser.

The table below names modules as strings and imports only the one asked for, so
``hespot --help`` starts in a fraction of a second and ``data`` imports neither stage.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module whose main(argv) runs it, one line of help), in pipeline order
COMMANDS: dict[str, tuple[str, str]] = {
    "import-her2st": ("data.importers.her2st",
        "import a her2st folder into the canonical HDF5"),
    "import-visium": ("data.importers.visium",
        "import Space Ranger (Visium) outputs"),
    "import-table": ("data.importers.table",
        "import images plus spot tables (CSV) listed in a manifest"),
    "import-wsi": ("data.importers.wsi",
        "import H&E slides read in place: spots from a CSV or a tissue grid"),
    "make-wsi": ("data.wsi.pyramid",
        "write a pyramidal tiled TIFF (tests, benchmarks)"),
    "check": ("data.check",
        "check a canonical HDF5 file: every problem, located"),
    "summary": ("data.summary",
        "slides, spots and cell types of a canonical HDF5 file"),
    "embed": ("embed.run",
        "stage 1: CNN embeddings of every spot into the Zarr store"),
    "bench-embed": ("embed.bench.embed",
        "stage 1 speed: pipeline vs model limit vs a naive loop"),
    "bench-read": ("embed.bench.read",
        "stage 1's reader alone (patches/s) beside the model (spots/s)"),
    "bench-scale": ("embed.bench.scale",
        "stage 1 in-process vs 1 and 2 Dask workers: views/s and identical features"),
    "finetune": ("embed.finetune.run",
        "the fine-tuned CNN path, LOSO, stage-2 predictions"),
    "bench-finetune": ("embed.bench.finetune",
        "fine-tuning throughput, fp32 vs bf16"),
    "regress": ("regress.run",
        "stage 2: LOSO over the train slides, then predict the test"),
    "tune": ("regress.tune",
        "choose a recipe by LOSO (ablation table, OUT/tuned.json)"),
    "submit": ("regress.submit",
        "submission.csv and predictions.h5ad from chosen models"),
    "fit": ("regress.fit",
        "save the chosen models, fitted on all train slides, as a folder"),
    "predict": ("regress.predict",
        "apply a model folder to slides: embeds them as its spec says"),
    "map": ("regress.map",
        "H&E slides to cell-type maps: grid, stage 1, prediction, QuPath GeoJSON, page"),
    "models": ("regress.catalog",
        "the shipped models and any model folder given, one line each"),
    "report": ("regress.report.page",
        "one HTML page of the data and results"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: hespot <command> [flags]   (hespot <command> --help for its flags)",
             "", "Cell-type abundance per spot from H&E images.", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its module's ``main(argv[1:])``; exit code 2 for an unknown
    command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        sys.stderr.write(f"hespot: unknown command {name!r}; known: {', '.join(COMMANDS)}\n")
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
