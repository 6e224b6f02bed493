"""Configuration precedence shared by every stage: dataclass defaults < JSON config file <
command-line flags that were given."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from data.errors import DataError, Problem

C = TypeVar("C")


def _coerce(cls: type, values: dict[str, Any], source: str) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise DataError(Problem(source, "", ", ".join(unknown),
                                f"settings of {cls.__name__}: {sorted(fields)}",
                                "unknown settings", "remove or rename them"))
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def config_parser(prog: str, description: str | None, cls: type) -> argparse.ArgumentParser:
    """A stage's argument parser: flags default to absent (``argparse.SUPPRESS``), as
    :func:`resolve_config` needs, and ``--config`` reads a JSON file of ``cls`` settings."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--config", help=f"JSON file of {cls.__name__} settings (flags win)")
    return p


def resolve_config(cls: type[C], args: argparse.Namespace) -> C:
    """Build ``cls`` from defaults, then ``args.config`` (JSON) if given, then the flags.

    ``args`` must come from :func:`config_parser` (or any parser built with
    ``argument_default=argparse.SUPPRESS``) so that it holds only the flags the user gave.
    """
    given = {k: v for k, v in vars(args).items() if k != "config"}
    values: dict[str, Any] = {}
    config_path = getattr(args, "config", None)
    if config_path:
        path = Path(config_path)
        try:
            values.update(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(Problem(str(path), "", "", "a JSON object of settings",
                                    f"error: {exc}", "fix the config file")) from exc
    values.update(given)
    return cls(**_coerce(cls, values, str(config_path or "command line")))


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

