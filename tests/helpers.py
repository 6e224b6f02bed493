"""Small helpers several test modules share (fixtures are in ``conftest.py``)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_submit(h5: Path, out: Path, *args: str) -> int:
    """``hespot submit`` on ``out``'s predictions (quiet); its exit code."""
    import regress.submit

    return regress.submit.main(["--h5", str(h5), "--out", str(out), "--quiet", *args])
