"""One stage-1 run in a fresh interpreter, as a command runs: ``python -m embed.bench.once
CFG_JSON`` runs stage 1 with those :class:`~embed.config.EmbedConfig` fields and prints
its timing (``embed.run.run``'s: spots, views, work seconds, start-up from the process's
start, steady rate) as one JSON line. The benchmarks' fresh runs (:func:`fresh_run`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace

from data.cli import lists_as_tuples, setup_logging


def one_run(cfg_json: str) -> dict:
    """Run stage 1 with the EmbedConfig fields in ``cfg_json``; its timing."""
    from embed.config import EmbedConfig
    from embed.run import run
    cfg = replace(EmbedConfig(), **lists_as_tuples(json.loads(cfg_json)))
    timing: dict = {}
    run(cfg, timing)
    return timing


def fresh_run(cfg: dict) -> tuple[dict, float]:
    """:func:`one_run` in a new interpreter, as ``make embeddings`` runs: (its timing, the
    wall seconds of the whole process, seen from here).

    Raises:
        RuntimeError: the run failed (the end of its stderr)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "embed.bench.once", json.dumps(cfg)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"stage 1 ({cfg}) failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m embed.bench.once CFG_JSON``: the timing as one JSON line."""
    args = list(sys.argv[1:] if argv is None else argv)
    setup_logging(quiet=True)
    sys.stdout.write(json.dumps(one_run(args[0])) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
