"""Plumbing every command shares: logging, the runner that turns user errors into one
line, configuration layering (dataclass defaults < ``--config`` JSON < flags given) and
the flags and default paths that every stage uses.

A stage declares one frozen config dataclass, builds its parser with
:func:`config_parser` and :func:`add_common`, and resolves it with
:func:`resolve_config`; its ``main(argv)`` is decorated with :func:`entry_point` and, for a
stage that writes an output folder, returns :func:`run_stage`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from data.errors import ConfigError, DataError, Problem
from data.lock import output_lock

log = logging.getLogger("hespot")

C = TypeVar("C")

EXIT_USER_ERROR = 2

# The default paths of `make demo` (the Makefile's OUT, H5 and STORE).
DEFAULT_OUT = "out"
DEFAULT_H5 = f"{DEFAULT_OUT}/her2st.h5"
DEFAULT_STORE = f"{DEFAULT_OUT}/embeddings.zarr"

# Flags shared by the stages: name -> (option strings, argparse keywords).
COMMON_FLAGS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "h5": (("--h5",), {"help": f"canonical HDF5 file (default {DEFAULT_H5})"}),
    "store": (("--store",), {"help": f"embeddings Zarr store (default {DEFAULT_STORE})"}),
    "out": (("--out",), {"help": "output folder: predictions/, report.json, report.md "
                         f"(default {DEFAULT_OUT})"}),
    "device": (("--device",), {"choices": ["auto", "cpu", "cuda"],
                               "help": "auto: CUDA when present, else CPU"}),
    "precision": (("--precision",), {"choices": ["auto", "fp32", "bf16", "fp16"],
                                     "help": "auto: bf16 on a CPU with AMX, fp16 on CUDA"}),
    "threads": (("--threads",), {"type": int, "help": "torch intra-op threads"}),
    "workers": (("--workers",), {"type": int, "help": "run on a Dask cluster of N worker "
                                 "processes started on this machine for this run"}),
    "threads_per_worker": (("--threads-per-worker",), {
        "type": int, "help": "threads per Dask worker (each runs one task at a time)"}),
    "scheduler": (("--scheduler",), {"help": "run on an existing Dask cluster, e.g. "
                                     "tcp://10.0.0.5:8786 (dask-jobqueue, Kubernetes, or "
                                     "`dask scheduler` + `dask worker`)"}),
    "spatialdata": (("--spatialdata",), {
        "action": argparse.BooleanOptionalAction,
        "help": "also write OUT/predictions.zarr, a SpatialData store (needs "
                "pip install 'hespot[spatial]')"}),
    "quiet": (("--quiet",), {"action": argparse.BooleanOptionalAction,
                             "help": "warnings and errors only, no progress bars"}),
}


def setup_logging(quiet: bool = False) -> None:
    """Configure the ``hespot`` logger once for a command-line run."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def run_cli(main: Callable[[Sequence[str] | None], int],
            argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``. A :class:`DataError` (bad input) or :class:`ConfigError` (bad
    setting) becomes one line on stderr (several problems separated by `` | ``) and exit
    code 2; any other exception is a bug and propagates with its traceback."""
    try:
        return main(argv)
    except (DataError, ConfigError) as exc:
        text = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        sys.stderr.write(f"hespot: {text}\n")
        return EXIT_USER_ERROR


def entry_point(body: Callable[[Sequence[str] | None], int]
                ) -> Callable[[Sequence[str] | None], int]:
    """Decorate a command's ``main(argv)`` so that it runs under :func:`run_cli`: a user
    error is one line on stderr and exit code 2."""
    @functools.wraps(body)
    def main(argv: Sequence[str] | None = None) -> int:
        return run_cli(body, argv)
    return main


def run_stage(cfg: C, run: Callable[[C], object], *,
              check: Callable[[C], object] | None = None,
              lock: str | None = "output folder") -> int:
    """The body a stage's ``main`` shares once its config ``cfg`` is resolved
    (:func:`resolve_config`): set up logging, log the settings, run ``check(cfg)`` (cheap
    checks, before anything is locked or written), then ``run(cfg)`` holding the lock on
    ``cfg.out`` (named ``lock`` in its messages; None: no lock). Returns exit code 0."""
    setup_logging(cfg.quiet)
    log.info("config: %s", json.dumps(config_dict(cfg)))
    if check is not None:
        check(cfg)
    if lock is None:
        run(cfg)
    else:
        with output_lock(cfg.out, lock):
            run(cfg)
    return 0


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors (unknown flag, bad choice, wrong type) are one
    line on stderr and exit code 2, like every other user error of hespot."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"hespot: {self.prog}: {message} (--help lists the flags)\n")


def config_parser(prog: str, description: str | None, cls: type,
                  common: Sequence[str] = ()) -> argparse.ArgumentParser:
    """A stage's argument parser: flags default to absent (``argparse.SUPPRESS``), as
    :func:`resolve_config` needs; ``--config`` reads a JSON file of ``cls`` settings; the
    shared flags named in ``common`` (keys of :data:`COMMON_FLAGS`) come first."""
    p = Parser(prog=prog, description=description,
               formatter_class=argparse.RawDescriptionHelpFormatter,
               argument_default=argparse.SUPPRESS)
    p.add_argument("--config", help=f"JSON file of {cls.__name__} settings, - to read them "
                   "from stdin (flags win)")
    add_common(p, *common)
    return p


def add_common(parser: argparse.ArgumentParser, *names: str) -> None:
    """Add the shared flags ``names`` (keys of :data:`COMMON_FLAGS`) to ``parser``."""
    for name in names:
        flags, kwargs = COMMON_FLAGS[name]
        parser.add_argument(*flags, dest=name, **kwargs)


def lists_as_tuples(values: dict[str, Any]) -> dict[str, Any]:
    """JSON's lists as the tuples that frozen config dataclasses and estimators take."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _coerce(cls: type, values: dict[str, Any], source: str) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown settings {unknown} of {cls.__name__}; known: "
                          f"{sorted(fields)}. Remove or rename them")
    return lists_as_tuples(values)


def resolve_config(cls: type[C], args: argparse.Namespace) -> C:
    """Build ``cls`` from defaults, then ``args.config`` (a JSON file; ``-``: JSON read from
    stdin) if given, then the flags.

    ``args`` must come from :func:`config_parser` (or any parser built with
    ``argument_default=argparse.SUPPRESS``) so that it holds only the flags the user gave.

    Raises:
        DataError: the config file is missing or not JSON.
        ConfigError: it names settings ``cls`` does not have.
    """
    given = {k: v for k, v in vars(args).items() if k != "config"}
    values: dict[str, Any] = {}
    config_path = getattr(args, "config", None)
    source = "stdin" if config_path == "-" else str(config_path or "command line")
    if config_path:
        try:
            loaded = json.loads(sys.stdin.read() if config_path == "-"
                                else Path(config_path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(Problem(source, "", "", "a JSON object of settings",
                                    f"error: {exc}", "fix the config file")) from exc
        if not isinstance(loaded, dict):
            raise DataError(Problem(source, "", "", "a JSON object of settings",
                                    type(loaded).__name__, "fix the config file"))
        values.update(loaded)
    values.update(given)
    return cls(**_coerce(cls, values, source))


def config_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (paths as strings)."""
    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}


def parse_list(text: str, kind: type = str) -> tuple:
    """'a,b,c' -> ('a', 'b', 'c') converted with ``kind``; for argparse ``type=``."""
    return tuple(kind(t) for t in text.split(",") if t.strip())


def check_name(kind: str, name: str, known: Sequence[str]) -> str:
    """``name`` if it is one of ``known``, else a :class:`ConfigError` listing them."""
    if name not in known:
        raise ConfigError(f"unknown {kind} {name!r}; known: {', '.join(map(str, known))}")
    return name


def require_settings(config: Any, **flags: str) -> None:
    """:class:`ConfigError` unless every setting ``name`` of ``flags`` (name -> what it
    is) is set in ``config`` (on the command line or in ``--config`` JSON)."""
    for name, what in flags.items():
        if getattr(config, name) in (None, (), ""):
            raise ConfigError(f"--{name.replace('_', '-')} is required ({what}); give it "
                              "on the command line or in the --config JSON file")
