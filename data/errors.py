"""The two errors a user can fix: bad input (:class:`DataError`) and bad settings
(:class:`ConfigError`).

A :class:`Problem` names the file, slide and field at fault, what was expected, what was
found and how to fix it. A :class:`DataError` carries one or more problems. Command-line
entry points (:func:`data.cli.run_cli`) turn either error into one message and exit code 2;
every other exception is a bug and shows its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger("hespot")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input, located precisely.

    Attributes:
        file: the file or folder at fault.
        slide: the slide name, or "" when the problem is not about one slide.
        field: the field, column, group or attribute at fault ("" for the whole file).
        expected: what a valid input has there.
        found: what was found instead.
        fix: how to fix it.
        level: "error" (the input cannot be used) or "warning" (usable, but suspicious).
    """

    file: str
    slide: str
    field: str
    expected: str
    found: str
    fix: str
    level: str = "error"

    def __str__(self) -> str:
        where = self.file
        if self.slide:
            where += f", slide {self.slide}"
        if self.field:
            where += f", field {self.field}"
        found = " ".join(str(self.found).split())  # a parser's message may span lines
        return (
            f"{self.level}: {where}: expected {self.expected}; found {found}. "
            f"Fix: {self.fix}"
        )


class DataError(Exception):
    """An input is unusable. ``problems`` lists every reason found, not only the first."""

    def __init__(self, problems: Problem | Sequence[Problem]):
        self.problems: list[Problem] = (
            [problems] if isinstance(problems, Problem) else list(problems)
        )
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(self):  # raised on a Dask worker, re-raised by the coordinator
        return (type(self), (self.problems,))


class InterruptedRun(DataError):
    """A run stopped by something outside its inputs (a reader process killed or out of
    memory): what it finished is kept, so the same command resumes."""


def raise_errors(problems: Sequence[Problem]) -> None:
    """Log warnings among ``problems`` and raise :class:`DataError` if any is an error."""
    for p in problems:
        if p.level == "warning":
            log.warning("%s", p)
    errors = [p for p in problems if p.level == "error"]
    if errors:
        raise DataError(errors)


class ConfigError(ValueError):
    """A setting is unknown or cannot be honoured (a recipe, model, backbone, target or
    preset name, a value out of range, a combination of flags). The message says which
    setting, what is allowed and how to fix the call."""
