"""The clock of a stage-1 run: how long the command took to its first batch (start-up, by
phase, from the process's own start) and how fast it ran after it (the steady rate)."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_age_s() -> float | None:
    """Seconds since this process started (the interpreter's start, imports included),
    from ``/proc``; None where there is none."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class RunClock:
    """Phases of a run up to its first batch, then its batches.

    ``mark(name)`` closes the phase that ran since the previous mark (the first phase,
    ``imports``, is the process's age when the clock starts: interpreter, imports,
    parsing); ``batch(spots)`` is called after every model batch."""

    def __init__(self) -> None:
        self.t0 = self.last = time.perf_counter()
        self.phases: dict[str, float] = {"imports": process_age_s() or 0.0}
        self.first: tuple[float, int] | None = None  # (time, spots) at the first batch
        self.spots = 0

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self.last
        self.last = now

    def batch(self, spots: int) -> None:
        self.spots += spots
        if self.first is None:
            self.mark("first batch")
            self.first = (self.last, self.spots)

    def timing(self, views_per_spot: int) -> dict:
        """``startup_s`` (process start to the first batch's features), ``steady_views_per_s``
        (the views after the first batch over the time after it; None with one batch),
        ``run_s`` (process start to now) and the ``phases`` (s)."""
        now = time.perf_counter()
        steady = None
        if self.first is not None and self.spots > self.first[1] and now > self.first[0]:
            steady = (self.spots - self.first[1]) * views_per_spot / (now - self.first[0])
        startup = self.phases["imports"] + ((self.first[0] if self.first else now) - self.t0)
        return {"startup_s": startup, "steady_views_per_s": steady,
                "run_s": self.phases["imports"] + now - self.t0,
                "phases": dict(self.phases)}

    def describe(self) -> str:
        """``start-up 5.1 s (imports 2.0, checks 0.1, ...)`` up to the first batch."""
        parts = ", ".join(f"{k} {v:.1f}" for k, v in self.phases.items())
        total = sum(self.phases.values())
        return f"start-up {total:.1f} s to the first batch ({parts})"
